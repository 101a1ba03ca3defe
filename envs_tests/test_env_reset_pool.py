"""Specification of spare-episode autoresets (``reset_pool``): a finished row takes over a spare episode
started ahead of time by a row copy, and then runs exactly as that spare would have run on its own."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.spare_pool import row_layout, transfer_rows
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv

from conftest import NO_TERMINATION, REFERENCE_SCENES


def _env(checkpoint, background: str = "trafficbots", num_envs: int = 3, **kwargs) -> TrafficBotsVecEnv:
    return TrafficBotsVecEnv(num_envs, scenes=REFERENCE_SCENES, checkpoint=checkpoint, background=background,
                             termination=NO_TERMINATION, torch_output=True, prefetch=False, device="cpu", **kwargs)


def test_row_layouts_are_rows_groups_of_rows_or_shared() -> None:
    assert row_layout(torch.zeros(3, 4), torch.zeros(2, 4), 3, 2) == ("rows", 0)
    assert row_layout(torch.zeros(5, 3 * 64, 8), torch.zeros(5, 2 * 64, 8), 3, 2) == ("grouped", 1)
    assert row_layout(torch.zeros(35, 2), torch.zeros(35, 2), 3, 2) == ("shared", -1)
    assert row_layout(torch.zeros(3, 4), torch.zeros(2, 5), 3, 2) is None
    assert row_layout(torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.int64), 3, 2) is None


def test_transfer_copies_rows_and_refuses_mismatched_objects_without_writing() -> None:
    class Holder:
        def __init__(self, n: int, width: int = 2) -> None:
            self.state = torch.arange(n * width, dtype=torch.float32).reshape(n, width)
            self.hidden = torch.arange(4 * n * 3, dtype=torch.float32).reshape(4, n * 3)
    Holder.__module__ = "trafficbots_gym.tests"   # object_tensors walks the package's own objects
    dst, src = Holder(3), Holder(2)
    src.state += 100
    src.hidden += 100
    assert transfer_rows(dst, [2], 3, src, [1], 2)
    assert torch.equal(dst.state[2], src.state[1]) and torch.equal(dst.state[:2], Holder(3).state[:2])
    assert torch.equal(dst.hidden.reshape(4, 3, 3)[:, 2], src.hidden.reshape(4, 2, 3)[:, 1])
    before = dst.state.clone()
    assert not transfer_rows(dst, [0], 3, Holder(2, width=5), [0], 2)
    assert torch.equal(dst.state, before)
    with pytest.raises(ValueError, match="different sizes"):
        transfer_rows(dst, [0], 3, Holder(3), [0], 3)


@pytest.mark.parametrize("background", ["trafficbots", "idm"])
def test_a_row_started_from_the_pool_runs_exactly_like_its_spare(background, small_checkpoint) -> None:
    env = _env(small_checkpoint, background, reset_pool=2)
    env.reset(seed=0)
    actions = torch.tensor([[0.3, 0.1], [0.2, -0.1], [-0.4, 0.0]])
    for _ in range(3):
        env.step(actions)
    core = env.core
    core.reset([1], [None])                   # an autoreset of row 1: takes spare 0
    pool = core._pool
    assert pool is not None and core._pool_ready == [1]
    assert core.scene_index[1] == pool.scene_index[0]
    main_obs, pool_obs = core.observe(), pool.observe()
    for key in main_obs:
        torch.testing.assert_close(main_obs[key][1], pool_obs[key][0], rtol=0, atol=0, msg=key)
    for _ in range(4):
        main, spare = core.step(actions), pool.step(actions[[1, 0]])
        torch.testing.assert_close(main.reward[1], spare.reward[0], rtol=0, atol=0)
        main_obs, pool_obs = core.observe(), pool.observe()
        for key in main_obs:
            torch.testing.assert_close(main_obs[key][1], pool_obs[key][0], rtol=0, atol=0, msg=key)


def test_pool_refills_in_one_batched_reset_and_episodes_stay_seed_deterministic(small_checkpoint) -> None:
    def run() -> list[np.ndarray]:
        env = _env(small_checkpoint, reset_pool=2, horizon=3)
        obs, _ = env.reset(seed=7)
        out = []
        for _ in range(8):     # every row ends each 3 steps: 3 rows per refill of 2 -> direct resets too
            obs, reward, *_ = env.step(torch.zeros(3, 2))
            out.append(reward.numpy().copy())
        return out
    first, second = run(), run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_partial_autoresets_use_the_pool_and_full_resets_do_not(small_checkpoint) -> None:
    env = _env(small_checkpoint, reset_pool=4, num_envs=3)
    env.reset(seed=1)
    assert env.core._pool is None              # the first (full) reset starts every row directly
    env.core.reset([0, 2], [None, None])
    assert env.core._pool is not None and env.core._pool_ready == [2, 3]
    main_policy, pool_policy = env.core.sim.policy, env.core._pool.sim.policy
    assert pool_policy is not main_policy                        # episodes of its own ...
    assert pool_policy.model is main_policy.model and pool_policy.cache is main_policy.cache  # ... same network
    assert env.core._pool.source is env.core.source                # ... and the same scenes and scene cache
    env.core.reset([1], [{"scene_index": 0}])  # an explicit scene is never taken from the pool
    assert env.core._pool_ready == [2, 3]
    env.close()                                # closes the shared scenes once, through their owner


def test_reset_pool_must_be_a_non_negative_int() -> None:
    with pytest.raises(ValueError, match="reset_pool"):
        EnvConfig(reset_pool=-1)
