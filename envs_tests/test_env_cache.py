"""Specification of the per-scene encoding cache (trafficbots_gym.model.encoding_cache) and its use by the
policy and the environments: reuse gives exactly the episodes of a fresh encoding, memory stays within the
budget, changed weights or a rewritten scene file never reuse stale encodings."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
from trafficbots_gym.model.encoding_cache import EncodingCache
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.simulation.buffers import object_tensors

from conftest import NO_TERMINATION, REFERENCE_SCENES, tiny_model

MIB = 2**20


def _entry(n_floats: int) -> list[torch.Tensor]:
    return [torch.zeros(n_floats)]


# ------------------------------------------------------------------------------------- EncodingCache
def test_cache_evicts_least_recently_used_entries_to_stay_within_its_byte_budget():
    model = tiny_model()
    cache = EncodingCache(max_bytes=3 * 400)
    cache.bind(model)
    for key in "abc":
        cache.put(key, _entry(100))                # 400 bytes each
    assert cache.get("a") is not None               # "a" is now the most recently used
    cache.put("d", _entry(100))
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.nbytes == 1200 and len(cache) == 3
    cache.put("e", _entry(200))                     # 800 bytes: evicts c, then a
    assert [k for k in "acde" if k in cache] == ["d", "e"] and cache.nbytes == 1200


def test_an_entry_larger_than_the_budget_is_not_stored_and_a_zero_budget_stores_nothing():
    cache = EncodingCache(max_bytes=100)
    cache.put("big", _entry(1000))
    assert len(cache) == 0 and cache.nbytes == 0
    off = EncodingCache(max_bytes=0)
    off.put("x", _entry(1))
    assert off.get("x") is None
    with pytest.raises(ValueError, match=">= 0"):
        EncodingCache(max_bytes=-1)


def test_changing_the_weights_in_place_clears_the_cache():
    model = tiny_model()
    cache = EncodingCache(max_bytes=MIB)
    cache.bind(model)
    cache.put("scene", _entry(10))
    cache.bind(model)
    assert "scene" in cache                         # same weights: kept
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    cache.bind(model)
    assert "scene" not in cache and cache.nbytes == 0
    cache.put("scene", _entry(10))
    model.load_state_dict(tiny_model(seed=1).state_dict())
    cache.bind(model)
    assert len(cache) == 0


# ---------------------------------------------------------------------------------------- policy
def _policy_episode(policy: TrafficBotsPolicy, batch, keys, seed: int, n: int = 6) -> list[torch.Tensor]:
    policy.reset(batch, generator=torch.Generator().manual_seed(seed), deterministic_action=False,
                 cache_keys=keys)
    state, out = policy.warm_start_state, [policy.warm_start_state.pos, policy.destinations]
    for t in range(11, 11 + n):
        action = policy.act(state, torch.full((batch.batch_size,), t))
        state = state.step(action[..., 0], action[..., 1])
        out.append(action)
    return out


def test_policy_reset_from_the_cache_gives_exactly_the_episode_of_a_fresh_encoding(reference_batch):
    model = tiny_model()
    fresh = _policy_episode(TrafficBotsPolicy(model, cache_mb=0), reference_batch, None, seed=5)
    cached = TrafficBotsPolicy(model)
    _policy_episode(cached, reference_batch, ["s0", "s1"], seed=11)          # fills the cache
    assert cached.cache.hits == 0 and len(cached.cache) == 2
    reused = _policy_episode(cached, reference_batch, ["s0", "s1"], seed=5)
    assert cached.cache.hits == 2
    for a, b in zip(fresh, reused):
        assert torch.equal(a, b)


def test_policy_cache_entries_are_per_scene_and_per_encoding_variant(reference_batch):
    model = tiny_model()
    policy = TrafficBotsPolicy(model)
    policy.reset(reference_batch, cache_keys=["s0", None])          # None: never cached
    assert len(policy.cache) == 1
    policy.reset(reference_batch.index(torch.tensor([0])), env_ids=torch.tensor([1]), cache_keys=["s0"])
    assert policy.cache.hits == 1
    policy.reset(reference_batch, latent="posterior", cache_keys=["s0", "s1"])   # another variant
    assert policy.cache.hits == 1 and len(policy.cache) == 3
    with pytest.raises(ValueError, match="cache_keys"):
        policy.reset(reference_batch, cache_keys=["s0"])


def test_policy_cache_is_not_part_of_the_step_state(reference_batch):
    policy = TrafficBotsPolicy(tiny_model())
    policy.reset(reference_batch, cache_keys=["s0", "s1"])
    assert not any(".cache" in path for path in object_tensors(policy))


# ------------------------------------------------------------------------------------------- env
def _env_episode(env: TrafficBotsEnv, scene: int, seed: int, n: int = 8) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed, options={"scene_index": scene})
    rng = np.random.default_rng(seed)
    out = [obs]
    for _ in range(n):
        obs, reward, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        out += [obs, np.array([reward])]
    return out


def test_env_episodes_with_the_cache_equal_episodes_without_it(tiny_checkpoint):
    kwargs = dict(scenes=REFERENCE_SCENES, checkpoint=tiny_checkpoint, termination=NO_TERMINATION, prefetch=False)
    plain, cached = TrafficBotsEnv(encoding_cache_mb=0, **kwargs), TrafficBotsEnv(**kwargs)
    for scene, seed in ((0, 1), (1, 2), (0, 3), (1, 3), (0, 1)):
        for a, b in zip(_env_episode(plain, scene, seed), _env_episode(cached, scene, seed)):
            assert np.array_equal(a, b)
    cache = cached.core.sim._background.policy.cache
    assert cache.hits == 3 and len(cache) == 2
    assert len(plain.core.sim._background.policy.cache) == 0


def test_env_cache_holds_at_most_its_budget(tiny_checkpoint):
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=tiny_checkpoint, prefetch=False)
    sizes = []
    for scene in (0, 1):
        env.reset(seed=0, options={"scene_index": scene})
        sizes.append(env.core.sim._background.policy.cache.nbytes - sum(sizes))
    budget_mb = 1.2 * max(sizes) / MIB                # room for one scene, not two
    assert budget_mb * MIB < sum(sizes)
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=tiny_checkpoint, prefetch=False,
                         encoding_cache_mb=budget_mb)
    cache = env.core.sim._background.policy.cache
    for scene in (0, 1, 0, 1):
        env.reset(seed=0, options={"scene_index": scene})
        assert len(cache) == 1 and cache.nbytes == sizes[scene] <= budget_mb * MIB
    assert cache.hits == 0
    with pytest.raises(ValueError, match="encoding_cache_mb"):
        TrafficBotsEnv(scenes=REFERENCE_SCENES, encoding_cache_mb=-1)


def test_a_rewritten_scene_file_is_encoded_again(tiny_checkpoint, tmp_path: Path):
    scenes = tmp_path / "scenes.h5"
    shutil.copy(REFERENCE_SCENES, scenes)
    env = TrafficBotsEnv(scenes=scenes, checkpoint=tiny_checkpoint, prefetch=False)
    env.reset(seed=0, options={"scene_index": 0})
    env.reset(seed=0, options={"scene_index": 0})
    cache = env.core.sim._background.policy.cache
    assert cache.hits == 1
    key = env.core.source.scene_key(0)
    stat = os.stat(scenes)
    os.utime(scenes, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert env.core.source.scene_key(0) != key
    env.reset(seed=0, options={"scene_index": 0})
    assert cache.hits == 1 and len(cache) == 2


def test_a_pickled_cache_keeps_its_budget_but_not_its_entries():
    import pickle
    cache = EncodingCache(max_bytes=MIB)
    cache.bind(tiny_model())
    cache.put("scene", _entry(100))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.max_bytes == MIB and len(copy) == 0 and copy.nbytes == 0 and len(cache) == 1
