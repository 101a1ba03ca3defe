"""Specification of the policy's per-scene encoding cache on multi-scene resets, with and without the CPU
reset shortcuts (without them, as on a GPU, some encoded fields are absent): cached resets give the
actions of uncached ones."""
from __future__ import annotations

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.policy import TrafficBotsPolicy

from conftest import tiny_model


def _actions(policy: TrafficBotsPolicy, batch: SceneBatch, keys: list[str] | None, destination: str) -> torch.Tensor:
    policy.reset(batch, generator=torch.Generator().manual_seed(0), latent="posterior", destination=destination,
                 deterministic_latent=True, cache_keys=keys)
    state = policy.warm_start_state
    return policy.act(state, torch.full((batch.batch_size,), 11))


@pytest.mark.parametrize("fast_reset", [True, False])
@pytest.mark.parametrize("destination", ["logged", "argmax"])
def test_cached_multi_scene_resets_give_the_uncached_actions(reference_scenes, fast_reset, destination) -> None:
    batch = SceneBatch.from_scenes([reference_scenes[0], reference_scenes[1], reference_scenes[0]])
    keys = ["scene-0", "scene-1", "scene-0"]
    model = tiny_model()
    plain = _actions(TrafficBotsPolicy(model, cache_mb=0, fast_reset=fast_reset), batch, None, destination)
    cached = TrafficBotsPolicy(model, cache_mb=64, fast_reset=fast_reset)
    first = _actions(cached, batch, keys, destination)
    second = _actions(cached, batch, keys, destination)  # every row from the cache now
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(second, plain)
