"""Prefetching the next random scene: resets with an explicit scene do not pile up unused prefetches."""
from __future__ import annotations

import pytest

from trafficbots_gym.env.scenes import SceneLoader
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv

from conftest import REFERENCE_SCENES


def test_resets_with_an_explicit_scene_keep_at_most_one_pending_prefetch():
    env = TrafficBotsEnv(background="log_replay", scenes=REFERENCE_SCENES)
    for i in range(6):
        env.reset(seed=0 if i == 0 else None, options={"scene_index": 1})
        assert env.core.loader.pending <= 1
    env.close()


class _CountingSource:
    """A scene source that records its reads and returns a fresh object per read."""

    def __init__(self) -> None:
        self.reads: list[int] = []

    def load(self, index: int) -> dict[str, int]:
        self.reads.append(index)
        return {"index": index}

    def close(self) -> None:
        pass


def test_prefetches_of_the_same_scene_share_one_read_until_each_is_loaded_or_discarded():
    source = _CountingSource()
    loader = SceneLoader(source)  # type: ignore[arg-type]
    for index in (3, 3, 3, 5):
        loader.prefetch(index)
    assert loader.pending == 4
    first, second = loader.load(3), loader.load(3)
    assert first is second and first == {"index": 3}
    loader.discard(3)                       # the third request of scene 3 is not used
    assert loader.pending == 1
    assert loader.load(5) == {"index": 5}
    assert loader.load(3) == {"index": 3}   # nothing pending any more: read now
    loader.close()
    assert sorted(source.reads) == [3, 3, 5]


def test_a_vector_env_of_many_rows_reads_each_distinct_scene_once_for_its_reset_and_once_ahead():
    from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
    env = TrafficBotsVecEnv(12, background="log_replay", scenes=REFERENCE_SCENES)
    reads: list[int] = []
    load = env.core.source.load
    env.core.source.load = lambda i: (reads.append(i), load(i))[1]  # type: ignore[method-assign]
    env.reset(seed=0)
    loader = env.core.loader
    assert loader.pending == 12                                  # every row's next scene is on its way ...
    next_scenes = [loader.load(index) for index in env.core._next_random]
    env.close()
    assert len({id(arrays) for arrays in next_scenes}) == 2      # ... shared by the rows of each scene
    assert sorted(reads) == [0, 0, 1, 1]    # one read per scene for the reset, one for the prefetch


def test_scene_cache_keeps_read_scenes_read_only_within_its_budget_and_is_not_pickled():
    import pickle

    from trafficbots_gym.env.scenes import SceneSource
    source = SceneSource(REFERENCE_SCENES, cache_mb=1.0)      # room for one full-size scene (~0.6 MiB)
    reads: list[int] = []
    read = source._read
    source._read = lambda i: (reads.append(i), read(i))[1]  # type: ignore[method-assign]
    first = source.load(0)
    assert source.load(0) is first and reads == [0]          # the second load comes from memory
    with pytest.raises(ValueError, match="read-only"):
        first["map_pos"][0, 0, 0] = 1.0
    source.load(1)                                           # evicts scene 0 (least recently used)
    assert source.cached_scenes == 1
    source.load(0)
    assert reads == [0, 1, 0]
    del source._read                                         # back to the method
    copy = pickle.loads(pickle.dumps(source))
    assert copy.cached_scenes == 0 and copy.load(1)["map_pos"].shape == first["map_pos"].shape
    with pytest.raises(ValueError, match="cache_mb"):
        SceneSource(REFERENCE_SCENES, cache_mb=-1)


def test_env_resets_of_a_scene_seen_before_do_not_read_it_again():
    env = TrafficBotsEnv(background="log_replay", scenes=REFERENCE_SCENES, prefetch=False)
    reads: list[int] = []
    read = env.core.source._read
    env.core.source._read = lambda i: (reads.append(i), read(i))[1]  # type: ignore[method-assign]
    for seed in range(4):
        env.reset(seed=seed, options={"scene_index": 1})
        env.step(env.action_space.sample())
    env.close()
    assert reads == [1]
    uncached = TrafficBotsEnv(background="log_replay", scenes=REFERENCE_SCENES, scene_cache_mb=0)
    assert uncached.core.source.cache_bytes == 0
    uncached.close()
