"""TrafficBots-v0 (single env): API checks, episodes, seeding, errors, pickling, rendering."""
from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from safetensors import safe_open
from safetensors.torch import save_file
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import trafficbots_gym  # noqa: F401  (registers TrafficBots-v0)
from trafficbots_gym.data.h5io import SceneFormatError
from trafficbots_gym.env.core import EPISODE_KEYS, STEP_INFO_KEYS
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv

from conftest import NO_TERMINATION, REFERENCE_SCENES, WOMD_EGO


def _logged_action(env: TrafficBotsEnv, step: int) -> np.ndarray:
    """The ego's logged (acc, yaw rate) into ``step``, normalised by the vehicle limits."""
    sim = env.unwrapped.core.sim
    e = int(sim.ego_index[0])
    acc, yaw_rate = sim.batch.agent_acc[0, step, e].item(), sim.batch.agent_yaw_rate[0, step, e].item()
    return np.array([acc / 5.0, yaw_rate / 1.5], np.float32)


def _rollout(env: gym.Env, seed: int, n: int, options=None) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed, options=options)
    observations, rewards = [obs], []
    rng = np.random.default_rng(seed)
    for _ in range(n):
        obs, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


# --------------------------------------------------------------------------------------- API checks
@pytest.mark.parametrize("obs_mode,action_mode", [("flat", "continuous"), ("dict", "discrete")])
def test_gymnasium_and_sb3_env_checkers_pass(obs_mode, action_mode):
    kwargs = {"scenes": REFERENCE_SCENES, "background": "log_replay", "obs_mode": obs_mode,
              "action_mode": action_mode}
    check_env(gym.make("TrafficBots-v0", **kwargs).unwrapped, skip_render_check=True)
    with warnings.catch_warnings():  # SB3 recommends 1-D boxes; the dict groups are [slots, features] tables
        warnings.filterwarnings("ignore", "Your observation .* unconventional shape")
        sb3_check_env(gym.make("TrafficBots-v0", **kwargs))


def test_checkers_pass_with_the_learned_background(womd_scene, small_checkpoint):
    env = gym.make("TrafficBots-v0", scenes=womd_scene, checkpoint=str(small_checkpoint), ego=WOMD_EGO, horizon=3)
    check_env(env.unwrapped, skip_render_check=True)


def test_make_passes_keywords_and_config_dict():
    env = gym.make("TrafficBots-v0", config={"horizon": 7}, scenes=REFERENCE_SCENES, background="idm",
                   reward={"collision": -3.0}, num_agents_obs=4)
    cfg = env.unwrapped.config
    assert (cfg.horizon, cfg.background, cfg.reward.collision, cfg.num_agents_obs) == (7, "idm", -3.0, 4)
    with pytest.raises(ValueError, match="valid keys"):
        gym.make("TrafficBots-v0", scenes=REFERENCE_SCENES, background="log_replay", termination={"crash": True})


# ------------------------------------------------------------------------------------------ episodes
def test_episode_truncates_after_the_horizon_with_a_summary():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", horizon=6, termination=NO_TERMINATION)
    obs, info = env.reset(seed=0, options={"scene_index": 1})
    assert info["step"] == 10 and info["scenario_id"] == "ffd409acfa262602"
    for i in range(6):
        obs, reward, terminated, truncated, info = env.step(_logged_action(env, 11 + i))
        assert not terminated and truncated == (i == 5)
    assert info["step"] == 16
    assert set(STEP_INFO_KEYS) <= set(info) and set(info["episode"]) == set(EPISODE_KEYS)
    assert info["episode"]["l"] == 6 and info["episode"]["ade"] < 1e-3   # logged actions reproduce the log
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))


def test_reward_is_the_sum_of_the_reported_terms():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", termination=NO_TERMINATION)
    env.reset(seed=0, options={"scene_index": 1})
    _, reward, _, _, info = env.step(np.array([1.0, 0.3], np.float32))
    assert reward == pytest.approx(sum(info["rewards"].values()), abs=1e-5)
    assert info["rewards"]["progress"] == pytest.approx(0.1 * info["progress"], abs=1e-5)


def test_overspeed_counts_the_speed_above_the_egos_top_logged_speed(womd_scene):
    env = TrafficBotsEnv(scenes=womd_scene, background="log_replay", ego=WOMD_EGO, termination=NO_TERMINATION,
                         reward={"overspeed": -1.0})
    env.reset(seed=0)
    sim = env.unwrapped.core.sim
    e = int(sim.ego_index[0])
    top = float(sim.batch.agent_spd[0, :, e][sim.batch.agent_valid[0, :, e]].abs().max())
    done, penalties = False, []
    while not done:  # full throttle, straight on, to the horizon
        _, _, terminated, truncated, info = env.step(np.array([1.0, 0.0], np.float32))
        assert info["rewards"]["overspeed"] == pytest.approx(-max(0.0, float(info["speed"]) - top), abs=1e-4)
        penalties.append(-info["rewards"]["overspeed"])
        done = terminated or truncated
    assert max(penalties) > 0.0  # 8 s at 5 m/s^2 beat any logged urban speed
    assert info["episode"]["max_overspeed"] == pytest.approx(max(penalties), abs=1e-4)


def test_ahead_of_log_is_the_route_the_ego_gained_on_its_logged_driver(womd_scene):
    env = TrafficBotsEnv(scenes=womd_scene, background="log_replay", ego=WOMD_EGO, termination=NO_TERMINATION,
                         reward={"ahead_of_log": -1.0}, action_mode="route")
    env.reset(seed=0)
    sim = env.unwrapped.core.sim
    e = int(sim.ego_index[0])
    pos, valid = sim.batch.agent_pos[0, :, e], sim.batch.agent_valid[0, :, e]
    assert valid[10:].all()  # the logged arc length below is then the plain path length
    logged_arc = torch.cat([torch.zeros(1), (pos[11:] - pos[10:-1]).norm(dim=-1).cumsum(0)])
    done, gains = False, []
    while not done:  # full throttle along the route: soon ahead of the log
        _, _, terminated, truncated, info = env.step(np.array([1.0, 0.0], np.float32))
        expected = max(0.0, float(info["progress"]) - float(logged_arc[info["step"] - 10]))
        assert info["ahead_of_log"] == pytest.approx(expected, abs=1e-3)
        assert -info["rewards"]["ahead_of_log"] == pytest.approx(expected, abs=1e-3)
        gains.append(expected)
        done = terminated or truncated
    assert max(gains) > 5.0
    replay = TrafficBotsEnv(scenes=womd_scene, background="log_replay", ego=WOMD_EGO, termination=NO_TERMINATION,
                            reward={"ahead_of_log": -1.0})
    replay.reset(seed=0)
    for t in range(11, 40):  # replaying its logged controls, the ego stays level with its log
        _, _, _, _, info = replay.step(_logged_action(replay, t))
        assert -info["rewards"]["ahead_of_log"] < 0.5


def test_collision_terminates_and_can_be_switched_off():
    # in scene 0 of the reference vectors the SDC overlaps another agent at step 11
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay")
    env.reset(seed=0, options={"scene_index": 0})
    _, reward, terminated, _, info = env.step(_logged_action(env, 11))
    assert terminated and info["collided"] and info["episode"]["collided"]
    assert info["rewards"]["collision"] == -1.0
    quiet = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", termination=NO_TERMINATION)
    quiet.reset(seed=0, options={"scene_index": 0})
    assert not quiet.step(_logged_action(quiet, 11))[2]


def test_goal_reached_terminates_with_the_goal_reward(womd_scene):
    env = TrafficBotsEnv(scenes=womd_scene, background="log_replay", ego=WOMD_EGO, goal_radius=70.0,
                         termination={"collision": False, "offroad": False})
    env.reset(seed=0)
    for t in range(11, 91):
        _, reward, terminated, _, info = env.step(_logged_action(env, t))
        if terminated:
            break
    assert info["goal_reached"] and info["dist_to_goal"] < 70.0
    assert info["rewards"]["goal_reached"] == 1.0 and info["episode"]["goal_reached"]


def test_stationary_logged_ego_has_no_goal_to_reach(womd_scene):
    env = TrafficBotsEnv(scenes=womd_scene, background="log_replay")   # the SDC of this scene stands still
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.array([-1.0, 0.0], np.float32))
    assert not terminated and not info["goal_reached"]


def test_horizon_past_the_log_end_holds_the_last_traffic_lights():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="constant_velocity", horizon=83,
                         termination=NO_TERMINATION, obs_mode="dict", num_tl_obs=40, obs_range=1000.0)
    env.reset(seed=0, options={"scene_index": 1})
    for _ in range(83):
        obs, _, terminated, truncated, info = env.step(np.array([-0.05, 0.0], np.float32))
    assert truncated and info["step"] == 93
    assert obs["traffic_lights"][:, -1].sum() == env.core.sim.batch.tl_valid[0, -1].sum().item()
    assert info["log_deviation"] == 0.0


def test_out_of_range_actions_are_clipped_and_non_finite_rejected():
    def first_obs(action):
        env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", termination=NO_TERMINATION)
        env.reset(seed=0, options={"scene_index": 1})
        return env.step(np.asarray(action, np.float32))[0], env
    clipped, env = first_obs([4.0, -9.0])
    np.testing.assert_array_equal(clipped, first_obs([1.0, -1.0])[0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0.0, np.inf], np.float32))


# --------------------------------------------------------------------------------------------- egos
def test_ego_by_index_or_track_id(womd_scene):
    env = TrafficBotsEnv(scenes=womd_scene, background="log_replay", ego=WOMD_EGO)
    _, info = env.reset(seed=0)
    index = info["ego_index"]
    assert info["ego_track_id"] == 1645
    by_index = TrafficBotsEnv(scenes=womd_scene, background="log_replay", ego=index)
    assert by_index.reset(seed=0)[1]["ego_track_id"] == 1645
    _, info = env.reset(options={"ego": "sdc"})
    assert info["ego_index"] == 0


def test_ego_invalid_at_the_current_step_is_a_clear_error():
    # agent 36 of reference scene 0 first appears at step 18
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", ego=36)
    with pytest.raises(ValueError, match="agent 36.*not valid at step 10"):
        env.reset(seed=0, options={"scene_index": 0})
    with pytest.raises(ValueError, match="no agent with track id 999999"):
        env.reset(seed=0, options={"scene_index": 0, "ego": {"track_id": 999999}})


# ------------------------------------------------------------------------------------------ seeding
def test_same_seed_gives_identical_episodes_with_learned_agents(womd_scene, small_checkpoint):
    def run(seed):
        env = TrafficBotsEnv(scenes=womd_scene, checkpoint=small_checkpoint, ego=WOMD_EGO, termination=NO_TERMINATION)
        obs, rewards = _rollout(env, seed, 4)
        return obs, rewards, env.core.sim.state.pos.clone()
    a, b, c = run(11), run(11), run(12)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]
    assert torch.equal(a[2], b[2])
    assert not torch.equal(a[2], c[2])   # another seed samples other latents / destinations


def test_reset_without_seed_continues_the_seeded_stream():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay")
    first = [env.reset(seed=3)[1]["scene_index"]] + [env.reset()[1]["scene_index"] for _ in range(6)]
    second = [env.reset(seed=3)[1]["scene_index"]] + [env.reset()[1]["scene_index"] for _ in range(6)]
    assert first == second and len(set(first)) == 2


def test_unknown_reset_option_lists_the_valid_ones():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay")
    with pytest.raises(ValueError, match="scene_idx.*scene_index"):
        env.reset(seed=0, options={"scene_idx": 1})


def test_reseeding_drops_the_unused_prefetch():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay")
    for seed in range(5):
        env.reset(seed=seed)
    assert env.core.loader.pending == 1


def test_prefetch_does_not_change_the_episodes():
    runs = []
    for prefetch in (True, False):
        env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", prefetch=prefetch)
        runs.append([env.reset(seed=5)[1]["scenario_id"]] + [env.reset()[1]["scenario_id"] for _ in range(5)])
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------------------- robustness
def test_missing_scene_file_fails_at_make_naming_the_path(tmp_path):
    with pytest.raises(SceneFormatError, match="nowhere.h5"):
        gym.make("TrafficBots-v0", scenes=tmp_path / "nowhere.h5", background="log_replay")


def test_corrupt_scene_file_fails_naming_the_path(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(SceneFormatError, match="broken.h5"):
        TrafficBotsEnv(scenes=bad, background="log_replay")


def test_checkpoint_mismatch_lists_the_keys(small_checkpoint, tmp_path):
    from trafficbots_gym.model.checkpoint import CheckpointError
    with safe_open(str(small_checkpoint), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=broken)


@pytest.mark.parametrize("background", ["idm", "trafficbots"])
def test_env_pickles_mid_episode_and_continues_identically(background, small_checkpoint):
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background=background, checkpoint=small_checkpoint,
                         termination=NO_TERMINATION)
    env.reset(seed=1, options={"scene_index": 1})
    for _ in range(3):
        env.step(np.array([0.5, 0.1], np.float32))
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(3):
        a = env.step(np.array([-0.2, 0.0], np.float32))
        b = clone.step(np.array([-0.2, 0.0], np.float32))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
    assert torch.equal(env.core.sim.state.pos, clone.core.sim.state.pos)
    assert env.reset()[1]["scene_index"] == clone.reset()[1]["scene_index"]


def test_rgb_array_render_draws_the_ego_view():
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", render_mode="rgb_array",
                         render_width=96, render_height=64, termination=NO_TERMINATION)
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    frame = env.render()
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8 and frame.std() > 0
    env.close()
