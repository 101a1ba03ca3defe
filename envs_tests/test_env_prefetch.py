"""Prefetching the next random scene: resets with an explicit scene do not pile up unused prefetches."""
from __future__ import annotations

from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv

from conftest import REFERENCE_SCENES


def test_resets_with_an_explicit_scene_keep_at_most_one_pending_prefetch():
    env = TrafficBotsEnv(background="log_replay", scenes=REFERENCE_SCENES)
    for i in range(6):
        env.reset(seed=0 if i == 0 else None, options={"scene_index": 1})
        assert env.core.loader.pending <= 1
    env.close()
