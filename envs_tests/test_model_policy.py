"""Specification of the simulator-facing policy API (trafficbots_gym.model.policy.TrafficBotsPolicy)."""
from __future__ import annotations

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.navigation import outside_map
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.model.reference_import import import_reference_checkpoint
from trafficbots_gym.model.rollout import rollout
from trafficbots_gym.model.traffic_bots import TrafficBots
from trafficbots_gym.simulation.state import AgentState

from conftest import REFERENCE_CKPT, tiny_model

MODEL = dict(gru_layers=2, add_goal_mlp_in_layers=1)
"""Overrides of the tiny TrafficBots configuration used here."""


def _model(compat: bool = False) -> TrafficBots:
    return tiny_model(**MODEL, reference_compat=compat).eval()


def drive(policy: TrafficBotsPolicy, batch: SceneBatch, start: AgentState, first: int, last: int) -> list[AgentState]:
    """A minimal simulator: every agent follows the policy; agents leaving the map off-log are removed."""
    state, states = start, []
    for t in range(first, last + 1):
        action = policy.act(state, torch.full((batch.batch_size,), t))
        state = state.step(action[..., 0], action[..., 1])
        gone = outside_map(state.valid, state.pos, batch.map_boundary) & ~batch.agent_valid[:, t]
        state.valid = state.valid & ~gone
        states.append(state)
    return states


def test_policy_driven_loop_reproduces_the_joint_future_rollout_exactly(reference_batch):
    model, _ = import_reference_checkpoint(REFERENCE_CKPT)
    torch.manual_seed(0)
    with torch.no_grad():
        ref = rollout(model, reference_batch, procedure="joint_future", n_steps=30)
    policy = TrafficBotsPolicy(model)
    policy.reset(reference_batch, latent="prior", deterministic_latent=True, destination="argmax")
    warm = policy.warm_start_state
    valid = reference_batch.agent_valid[:, 10]
    assert torch.equal(warm.pos[valid], reference_batch.agent_pos[:, 10][valid])
    states = drive(policy, reference_batch, warm, 11, 30)
    for i, state in enumerate(states):
        step_index = 10 + i
        assert torch.equal(state.pos[ref.pred_valid[:, step_index]],
                           ref.pred_pos[:, step_index][ref.pred_valid[:, step_index]]), step_index
    assert torch.equal(policy.dest_reached, ref.dest_reached[:, 29])


def test_actions_respect_the_type_limits_and_invalid_agents_get_zero(reference_batch):
    policy = TrafficBotsPolicy(_model())
    policy.reset(reference_batch, generator=torch.Generator().manual_seed(0))
    state = policy.warm_start_state
    state.valid[0, :5] = False
    action = policy.act(state, torch.full((2,), 11))
    assert action.shape == (2, 64, 2) and action.dtype == torch.float32
    assert not action[0, :5].any()
    assert not policy._loop.hidden.view(-1, 2, 64, 32)[:, 0, :5].any()
    veh = reference_batch.agent_type[..., 0]
    assert (action[veh].abs() <= torch.tensor([5.0, 1.5]) + 1e-6).all()


def test_same_generator_seed_same_episode_different_seed_different_episode(reference_batch):
    def episode(seed: int) -> torch.Tensor:
        policy = TrafficBotsPolicy(_model())
        policy.reset(reference_batch, generator=torch.Generator().manual_seed(seed), deterministic_action=False)
        return torch.stack([s.pos for s in drive(policy, reference_batch, policy.warm_start_state, 11, 14)])

    a, b, c = episode(5), episode(5), episode(6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_partial_reset_replaces_only_the_given_rows(reference_scenes, reference_batch):
    policy = TrafficBotsPolicy(_model())
    policy.reset(reference_batch, destination="argmax", deterministic_latent=True)
    state = policy.warm_start_state
    for t in (11, 12):
        policy.act(state, torch.full((2,), t))
    hidden_row0 = policy._loop.hidden.view(2, 2, 64, 32)[:, 0].clone()
    dest_row0 = policy.destinations[0].clone()

    scene0 = SceneBatch.from_scenes([reference_scenes[0]])
    policy.reset(scene0, env_ids=torch.tensor([1]), destination="argmax", deterministic_latent=True)
    assert torch.equal(policy._loop.hidden.view(2, 2, 64, 32)[:, 0], hidden_row0)
    assert torch.equal(policy.destinations[0], dest_row0)
    assert torch.equal(policy.destinations[1], policy.destinations[0])   # row 1 now holds scene 0 too

    fresh = TrafficBotsPolicy(policy.model)
    fresh.reset(scene0, destination="argmax", deterministic_latent=True)
    mixed = policy.warm_start_state
    step = torch.tensor([13, 11])
    action = policy.act(mixed, step)
    expected = fresh.act(fresh.warm_start_state, torch.tensor([11]))
    torch.testing.assert_close(action[1], expected[0], atol=1e-5, rtol=0)


def test_fixed_mode_reads_the_simulated_kinematics_compat_mode_latches_them(reference_batch):
    for compat in (False, True):
        policy = TrafficBotsPolicy(_model(compat))
        policy.reset(reference_batch, destination="argmax", deterministic_latent=True)
        state = policy.warm_start_state
        hidden = policy._loop.hidden.clone()
        a = policy.act(state, torch.full((2,), 11))
        policy._loop.hidden = hidden
        moved = state.clone()
        moved.vel = moved.vel + 3.0
        moved.acc = moved.acc + 1.0
        b = policy.act(moved, torch.full((2,), 11))
        assert torch.equal(a, b) == compat


def test_misuse_is_reported(reference_batch, reference_scenes):
    policy = TrafficBotsPolicy(_model())
    with pytest.raises(RuntimeError, match="reset"):
        policy.act(AgentState.from_log(reference_batch, 10), torch.full((2,), 11))
    history = SceneBatch.from_scenes(reference_scenes, history_only=True)
    with pytest.raises(ValueError, match="posterior"):
        policy.reset(history, latent="posterior")
    with pytest.raises(ValueError, match="logged destinations"):
        policy.reset(history, destination="logged")
    policy.reset(history)   # prior latent + predicted destination work from the history alone
    with pytest.raises(ValueError, match="env_ids"):
        policy.reset(history, env_ids=torch.tensor([0]))


def test_act_and_partial_reset_keep_the_cached_tensors_in_place(reference_scenes, reference_batch):
    """Needed to replay ``act`` from a captured CUDA graph: its inputs must stay at the same addresses."""
    policy = TrafficBotsPolicy(_model(compat=True))
    policy.reset(reference_batch)
    tensors = [policy._loop.hidden, policy._loop.goal_valid, policy._loop.dest_reached, policy._inputs.vel,
               policy._ctx.map.kv[0][0], policy._ctx.tl_kv[0][1], policy._ctx.latent, policy._dest]
    pointers = [t.data_ptr() for t in tensors]
    state = policy.warm_start_state
    policy.act(state, torch.full((2,), 11))
    policy.reset(SceneBatch.from_scenes([reference_scenes[1]]), env_ids=torch.tensor([0]))
    policy.act(state, torch.full((2,), 12))
    current = [policy._loop.hidden, policy._loop.goal_valid, policy._loop.dest_reached, policy._inputs.vel,
               policy._ctx.map.kv[0][0], policy._ctx.tl_kv[0][1], policy._ctx.latent, policy._dest]
    assert [t.data_ptr() for t in current] == pointers
