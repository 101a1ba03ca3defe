"""TrafficBotsVecEnv: equivalence with the single env, autoreset modes, partial resets, torch output."""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import trafficbots_gym  # noqa: F401  (registers TrafficBots-v0)
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv

from conftest import NO_TERMINATION, REFERENCE_SCENES


@pytest.fixture(scope="module")
def scene_files(womd_scene: Path) -> list[Path]:
    """The two reference scenes plus the real WOMD scenario (three scenes in two files)."""
    return [REFERENCE_SCENES, womd_scene]


def _log_replay(num_envs: int, **kwargs) -> TrafficBotsVecEnv:
    return TrafficBotsVecEnv(num_envs, scenes=REFERENCE_SCENES, background="log_replay", **kwargs)


def test_make_vec_builds_the_batched_env_with_next_step_autoreset():
    for mode in (None, "vector_entry_point"):
        env = gym.make_vec("TrafficBots-v0", num_envs=3, vectorization_mode=mode, scenes=REFERENCE_SCENES,
                           background="log_replay")
        assert isinstance(env, TrafficBotsVecEnv) and env.num_envs == 3
        assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        obs, info = env.reset(seed=0)
        assert obs.shape == (3, env.single_observation_space.shape[0]) and info["_scene_index"].all()
        assert env.action_space.shape == (3, 2)


def test_one_row_reproduces_the_single_env_across_autoresets(scene_files, small_checkpoint):
    kwargs = {"scenes": scene_files, "checkpoint": small_checkpoint, "horizon": 4}
    single, vec = TrafficBotsEnv(**kwargs), TrafficBotsVecEnv(1, **kwargs)
    s_obs, s_info = single.reset(seed=9)
    v_obs, v_info = vec.reset(seed=9)
    np.testing.assert_array_equal(v_obs[0], s_obs)
    rng = np.random.default_rng(0)
    single_done, episodes = False, 1
    for _ in range(14):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        v_obs, v_reward, v_term, v_trunc, v_info = vec.step(action[None])
        if single_done:   # the vector env resets this row now and ignores the action
            s_obs, s_info = single.reset()
            assert v_reward[0] == 0.0 and not v_term[0] and not v_trunc[0]
            single_done, episodes = False, episodes + 1
        else:
            s_obs, s_reward, s_term, s_trunc, s_info = single.step(action)
            assert v_reward[0] == pytest.approx(s_reward, abs=0) and (v_term[0], v_trunc[0]) == (s_term, s_trunc)
            single_done = s_term or s_trunc
        np.testing.assert_array_equal(v_obs[0], s_obs)
        assert v_info["scenario_id"][0] == s_info["scenario_id"]
        assert torch.equal(vec.core.sim.state.pos, single.core.sim.state.pos)   # learned agents too
    assert episodes >= 3


def test_rows_match_single_envs_seeded_seed_plus_row():
    vec = _log_replay(3, horizon=2)
    singles = [TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay", horizon=2) for _ in range(3)]
    v_obs, _ = vec.reset(seed=20)
    for row, env in enumerate(singles):
        np.testing.assert_array_equal(v_obs[row], env.reset(seed=20 + row)[0])
    action = np.array([0.3, -0.2], np.float32)
    v_obs, *_ = vec.step(np.tile(action, (3, 1)))
    for row, env in enumerate(singles):
        np.testing.assert_array_equal(v_obs[row], env.step(action)[0])


def test_same_seed_same_batch_with_learned_agents(scene_files, small_checkpoint):
    def run() -> tuple[list[np.ndarray], torch.Tensor]:
        env = TrafficBotsVecEnv(2, scenes=scene_files, checkpoint=small_checkpoint, horizon=3)
        outs = [env.reset(seed=4)[0]]
        for _ in range(5):
            outs.append(env.step(np.full((2, 2), 0.2, np.float32))[0])
        return outs, env.core.sim.state.pos
    (a, pos_a), (b, pos_b) = run(), run()
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and torch.equal(pos_a, pos_b)


def test_next_step_autoreset_resets_only_the_finished_row():
    # reference scene 0: the SDC collides on its first step; scene 1 runs on
    env = _log_replay(2)
    env.reset(seed=0, options={"scene_index": [0, 1]})
    _, reward, terminated, _, info = env.step(np.zeros((2, 2), np.float32))
    assert terminated.tolist() == [True, False]
    assert info["_episode"].tolist() == [True, False] and info["episode"]["collided"][0]
    obs, reward, terminated, truncated, info = env.step(np.zeros((2, 2), np.float32))
    assert reward[0] == 0.0 and not terminated[0] and not truncated[0]
    assert info["step"].tolist() == [10, 12]
    assert not info["_speed"][0] and info["_speed"][1]
    assert env.core.sim.step_index.tolist() == [10, 12]


def test_same_step_autoreset_reports_the_final_observation():
    env = _log_replay(2, autoreset_mode="SameStep")
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    env.reset(seed=0, options={"scene_index": [0, 1]})
    obs, _, terminated, _, info = env.step(np.zeros((2, 2), np.float32))
    assert terminated.tolist() == [True, False]
    assert info["_final_obs"].tolist() == [True, False] and info["final_obs"][1] is None
    assert info["final_info"]["collided"][0] and info["final_info"]["episode"]["l"][0] == 1
    assert info["step"].tolist() == [10, 11]
    assert not np.array_equal(info["final_obs"][0], obs[0])
    assert env.core.sim.step_index.tolist() == [10, 11]


def test_disabled_autoreset_and_reset_mask_restart_chosen_rows():
    env = _log_replay(3, autoreset_mode=AutoresetMode.DISABLED, termination=NO_TERMINATION)
    env.reset(seed=1)
    for _ in range(3):
        env.step(np.zeros((3, 2), np.float32))
    _, info = env.reset(options={"reset_mask": np.array([False, True, False]), "scene_index": 0})
    assert env.core.sim.step_index.tolist() == [13, 10, 13]
    assert info["_scene_index"].tolist() == [False, True, False] and info["scene_index"][1] == 0
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([0, 1, 0])})


def test_torch_output_keeps_the_numpy_values_on_the_device():
    np_env = _log_replay(2, obs_mode="dict", termination=NO_TERMINATION)
    torch_env = _log_replay(2, obs_mode="dict", termination=NO_TERMINATION, torch_output=True)
    a, _ = np_env.reset(seed=3)
    b, _ = torch_env.reset(seed=3)
    actions = np.array([[0.5, 0.1], [-0.5, 0.0]], np.float32)
    a, ra, *_ = np_env.step(actions)
    b, rb, tb, _, info = torch_env.step(torch.from_numpy(actions))
    assert isinstance(b["ego"], torch.Tensor) and isinstance(rb, torch.Tensor) and tb.dtype == torch.bool
    assert all(np.array_equal(a[k], b[k].cpu().numpy()) for k in a)
    assert np.allclose(ra, rb.cpu().numpy()) and isinstance(info["speed"], torch.Tensor)


def test_per_row_options_and_their_length_check():
    env = _log_replay(2)
    _, info = env.reset(seed=0, options={"scenario_id": ["ffd409acfa262602", "434231d74aab17f7"]})
    assert info["scene_index"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="num_envs=2"):
        env.reset(options={"scene_index": [0, 1, 0]})


def test_rgb_frames_per_row():
    env = _log_replay(2, render_mode="rgb_array", render_width=48, render_height=40)
    env.reset(seed=0)
    frames = env.render()
    assert len(frames) == 2 and all(f.shape == (40, 48, 3) for f in frames)
    env.close()
