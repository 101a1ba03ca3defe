"""SB3 VecEnv adapter: SB3 autoreset semantics, infos, PPO training on it, and a memory soak."""
from __future__ import annotations

import gc
import resource

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from trafficbots_gym import make_sb3_vec_env
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv

from conftest import NO_TERMINATION, REFERENCE_SCENES


def test_adapter_is_an_sb3_vec_env_with_sb3_autoreset():
    env = make_sb3_vec_env(2, scenes=REFERENCE_SCENES, background="log_replay", horizon=3)
    assert isinstance(env, VecEnv) and env.num_envs == 2
    env.seed(0)
    obs = env.reset()
    assert obs.shape == (2, env.observation_space.shape[0])
    env.set_options({"scene_index": 1})
    obs = env.reset()
    for step in range(3):
        obs, reward, dones, infos = env.step(np.zeros((2, 2), np.float32))
        assert reward.dtype == np.float32 and dones.tolist() == [step == 2] * 2
    for row, info in enumerate(infos):
        assert info["TimeLimit.truncated"] and info["episode"]["l"] == 3 and info["step"] == 13
        assert info["terminal_observation"].shape == obs.shape[1:]
        assert not np.array_equal(info["terminal_observation"], obs[row])
        new_scene = env.reset_infos[row]["scene_index"]
        fresh = TrafficBotsEnv(scenes=REFERENCE_SCENES, background="log_replay")
        np.testing.assert_array_equal(obs[row], fresh.reset(options={"scene_index": new_scene})[0])


def test_termination_is_not_flagged_as_truncation():
    env = make_sb3_vec_env(2, scenes=REFERENCE_SCENES, background="log_replay")
    env.set_options({"scene_index": 0})             # the SDC of scene 0 collides on its first step
    env.reset()
    _, reward, dones, infos = env.step(np.zeros((2, 2), np.float32))
    assert dones.all() and not infos[0]["TimeLimit.truncated"] and infos[0]["collided"]
    assert reward[0] == pytest.approx(sum(infos[0]["rewards"].values()), abs=1e-5)


@pytest.mark.parametrize("obs_mode,policy", [("flat", "MlpPolicy"), ("dict", "MultiInputPolicy")])
def test_ppo_trains_on_the_batched_env(obs_mode, policy):
    env = make_sb3_vec_env(4, scenes=REFERENCE_SCENES, background="log_replay", horizon=5, obs_mode=obs_mode,
                           num_map_points=16, num_agents_obs=4)
    model = PPO(policy, env, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64 and len(model.ep_info_buffer) > 0
    assert {"r", "l"} <= set(model.ep_info_buffer[0])
    env.close()


@pytest.mark.slow
def test_soak_with_resets_does_not_grow_memory():
    env = make_sb3_vec_env(2, scenes=REFERENCE_SCENES, background="log_replay", horizon=4,
                           termination=NO_TERMINATION, num_map_points=32)
    env.seed(0)
    env.reset()
    actions = np.zeros((2, 2), np.float32)

    def run(steps: int) -> None:
        for _ in range(steps):
            env.step(actions)
        gc.collect()

    run(60)                                           # warm-up: caches, allocator pools, prefetch thread
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(240)                                          # 480 env steps, 120 resets
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 20_000, f"peak RSS grew by {grown_kib} KiB"
    env.close()
