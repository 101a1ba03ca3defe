"""Per-agent metrics restricted to selected agents (``agents=``) equal those agents' entries of the full
per-agent result, and a simulator without per-agent metrics (what the environments use) reports the
same ego flags as one with them."""
from __future__ import annotations

import torch

from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.simulation import metrics as M
from trafficbots_gym.simulation.simulator import BatchedSimulator
from trafficbots_gym.simulation.state import AgentState


def _perturbed_states(batch, seed: int = 0) -> list[tuple[AgentState, AgentState, int]]:
    """(previous, current, step) pairs near the log, jittered so that boxes and lines overlap now and then."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(STEP_CURRENT + 1, batch.num_steps, 9):
        for scale in (0.0, 1.0, 3.0):
            state = AgentState.from_log(batch, t)
            state.pos = state.pos + scale * torch.randn(state.pos.shape, generator=g)
            state.yaw = state.yaw + 0.3 * scale * torch.randn(state.yaw.shape, generator=g)
            out.append((AgentState.from_log(batch, t - 1), state, t))
    return out


def test_selected_agent_metrics_equal_their_entries_of_the_full_metrics(reference_batch):
    b = reference_batch
    geom = M.MapGeometry.from_batch(b)
    rows = torch.arange(2).unsqueeze(1)
    hits = torch.zeros(3, dtype=torch.long)
    for prev, state, t in _perturbed_states(b):
        lights = (b.tl_valid[:, t], b.tl_state[:, t], b.tl_pos[:, t])
        full = (M.collisions(state, b.agent_size, b.agent_type), M.offroad(state, b.agent_size, b.agent_type, geom),
                M.red_light_violation(prev, state, *lights, b.agent_type, tl_dir=b.tl_dir[:, t]))
        for agents in (torch.arange(64).expand(2, -1), torch.tensor([[0, 7, 7], [63, 1, 30]])):
            part = (M.collisions(state, b.agent_size, b.agent_type, agents=agents),
                    M.offroad(state, b.agent_size, b.agent_type, geom, agents=agents),
                    M.red_light_violation(prev, state, *lights, b.agent_type, tl_dir=b.tl_dir[:, t], agents=agents))
            for f, p in zip(full, part):
                assert torch.equal(f[rows, agents], p)
        hits += torch.tensor([int(f.sum()) for f in full])
    assert (hits[:2] > 0).all()                         # collisions and off-road flags were exercised


def test_simulator_without_per_agent_metrics_reports_the_same_ego_flags(reference_batch):
    ego = torch.tensor([0, 5])
    outs = []
    for agent_metrics in (True, False):
        sim = BatchedSimulator(background="log_replay", agent_metrics=agent_metrics)
        sim.reset(reference_batch, ego)
        g = torch.Generator().manual_seed(0)
        outs.append([sim.step(torch.randn(2, 2, generator=g) * 3) for _ in range(30)])
    for full, ego_only in zip(*outs):
        assert ego_only.collided is None and ego_only.offroad is None and ego_only.red_light is None
        for name in ("ego_collided", "ego_offroad", "ego_red_light", "ego_outside_map", "ego_progress",
                     "ego_dest_reached"):
            assert torch.equal(getattr(full, name), getattr(ego_only, name)), name
        assert torch.equal(full.state.pos, ego_only.state.pos)
    assert any(bool(out.ego_offroad.any()) for out in outs[0])     # the ego left the road at some point
