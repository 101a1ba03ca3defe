"""Specification of the learned ("trafficbots") and "mixed" backgrounds of the batched simulator.

A small random-init TrafficBots keeps these fast; behaviour is not tested, only the wiring.
"""
from __future__ import annotations

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.model.traffic_bots import TrafficBots
from trafficbots_gym.simulation import BatchedSimulator

from conftest import tiny_model


@pytest.fixture(scope="module")
def model() -> TrafficBots:
    return tiny_model()


def _simulator(model: TrafficBots, background: str = "trafficbots", **kwargs) -> BatchedSimulator:
    return BatchedSimulator(background=background, policy=TrafficBotsPolicy(model), **kwargs)


def _expert(batch: SceneBatch, ego: torch.Tensor, step: int) -> torch.Tensor:
    rows = torch.arange(batch.batch_size)
    return torch.stack([batch.agent_acc[rows, step, ego], batch.agent_yaw_rate[rows, step, ego]], -1)


def _run(sim: BatchedSimulator, batch: SceneBatch, ego: torch.Tensor, n: int, seed: int = 7) -> list:
    sim.reset(batch, ego, generator=torch.Generator().manual_seed(seed))
    return [sim.step(_expert(batch, ego, STEP_CURRENT + 1 + i)) for i in range(n)]


def test_learned_background_moves_agents_away_from_the_log_while_the_ego_follows_its_action(reference_batch, model):
    ego = torch.tensor([0, 0])
    outs = _run(_simulator(model), reference_batch, ego, n=5)
    last, t = outs[-1].state, STEP_CURRENT + 5
    torch.testing.assert_close(last.pos[:, 0], reference_batch.agent_pos[:, t, 0], atol=1e-3, rtol=0)
    both = last.valid & reference_batch.agent_valid[:, t]
    both[:, 0] = False
    assert (last.pos - reference_batch.agent_pos[:, t]).norm(dim=-1)[both].max() > 0.1


def test_same_generator_seed_gives_identical_stochastic_rollouts(reference_batch, model):
    ego = torch.tensor([0, 0])
    kwargs = dict(destination="sample", deterministic_action=False)
    a = _run(_simulator(model, **kwargs), reference_batch, ego, n=4, seed=3)
    b = _run(_simulator(model, **kwargs), reference_batch, ego, n=4, seed=3)
    c = _run(_simulator(model, **kwargs), reference_batch, ego, n=4, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x.state.pos, y.state.pos) and torch.equal(x.state.valid, y.state.valid)
    assert not torch.equal(a[-1].state.pos, c[-1].state.pos)


def test_learned_batch_of_two_equals_two_batches_of_one(reference_batch, model):
    ego = torch.tensor([0, 3])
    kwargs = dict(destination="argmax", deterministic_latent=True)
    both = _run(_simulator(model, **kwargs), reference_batch, ego, n=4)
    for row in range(2):
        one = _run(_simulator(model, **kwargs), reference_batch.index([row]), ego[row:row + 1], n=4)
        for x, y in zip(both, one):
            torch.testing.assert_close(x.state.pos[row], y.state.pos[0], atol=1e-5, rtol=0)
            assert torch.equal(x.state.valid[row], y.state.valid[0])


def test_learned_reset_with_env_ids_leaves_other_rows_running(reference_batch, model):
    ego = torch.tensor([0, 0])
    kwargs = dict(destination="argmax", deterministic_latent=True)
    sim, reference = _simulator(model, **kwargs), _simulator(model, **kwargs)
    _run(sim, reference_batch, ego, n=2)
    _run(reference, reference_batch, ego, n=2)
    sim.reset(reference_batch.index([0]), torch.tensor([0]), env_ids=torch.tensor([1]))
    fresh = _simulator(model, **kwargs)
    fresh.reset(reference_batch.index([0]), torch.tensor([0]))
    for t in range(13, 16):
        action = _expert(reference_batch, ego, t)
        out = sim.step(torch.stack([action[0], _expert(reference_batch, ego, t - 2)[0]]))
        ref = reference.step(action)
        one = fresh.step(_expert(reference_batch, ego, t - 2)[:1])
        torch.testing.assert_close(out.state.pos[0], ref.state.pos[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.state.pos[1], one.state.pos[0], atol=1e-5, rtol=0)


def test_mixed_background_drives_only_agents_near_the_ego_and_replays_the_rest(reference_batch, model):
    ego = torch.tensor([0, 0])
    sim = _simulator(model, "mixed", mixed_radius=25.0)
    outs = _run(sim, reference_batch, ego, n=5)
    pos10 = reference_batch.agent_pos[:, STEP_CURRENT]
    near = (pos10 - pos10[:, :1]).norm(dim=-1) <= 25.0
    expected = near & reference_batch.agent_valid[:, STEP_CURRENT]
    expected[:, 0] = False
    assert torch.equal(sim.reactive, expected)
    t = STEP_CURRENT + 5
    replay = ~sim.reactive & reference_batch.agent_valid[:, t]
    replay[:, 0] = False
    assert torch.equal(outs[-1].state.pos[replay], reference_batch.agent_pos[:, t][replay])
    moved = (outs[-1].state.pos - reference_batch.agent_pos[:, t]).norm(dim=-1)
    assert moved[sim.reactive & outs[-1].state.valid].max() > 0.1
