"""Differentiable collision and off-road penalties on a training rollout (not in the reference).

Imitation alone leaves closed-loop rollouts with far more collisions and off-road driving than the logs
(compounding errors: a vehicle that brakes a little too much is rear-ended by its follower). These two
terms penalise the events themselves, in the spirit of TrafficSim's "common sense" collision loss. Both
are smooth in the predicted positions and headings, so their gradient reaches the policy through the
differentiable dynamics of the training rollout, and both run with static shapes and no host
synchronisation (capturable in the training CUDA graph).

* **Collision**: every box is covered by ``N_DISCS`` discs of radius width / 2 along its length; for
  each agent-step and each of its ``COLLISION_NEIGHBOURS`` nearest valid neighbours (pedestrian pairs
  excluded, as the collision metric), the penalty is ``max over disc pairs of relu(1 - d / (r_i + r_j))``:
  0 once the discs are apart, 1 when two disc centres coincide. Summed over the neighbours. A
  ``margin`` (m) widens the contact distance to ``r_i + r_j + margin``: the penalty then starts that far
  before the boxes touch, a gradient for keeping a gap rather than only for leaving a contact. With
  ``at_fault_only`` a contact counts only for the agents that have the other one ahead of them (centre in
  front of their heading): the follower of a rear-end contact, both agents of a head-on or side contact,
  so that stopping does not shield a leader from a follower's mistake.
* **Off-road** (vehicles only, as the off-road metric): ``relu(1 - d_edge / r)`` averaged over the discs,
  with ``d_edge`` the distance of a disc centre to the nearest road-edge segment (the disc touches the
  edge), plus ``relu(d_lane - LANE_MARGIN)`` (m) with ``d_lane`` the centre's distance to the nearest
  vehicle-lane centreline, on maps that have lanes: it grows before the metric's 3.5 m threshold.

Inputs use the rollout layout ``[B, T, A, ...]``; both functions return the per-agent-step penalty
``[B, T, A]`` (0 where the agent is not valid), which :mod:`trafficbots_gym.model.losses` averages.
"""
from __future__ import annotations

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import ROAD_EDGE_TYPES, VEHICLE_LANE_TYPES, AgentType
from trafficbots_gym.simulation.metrics import MAX_LANE_DISTANCE, PolylineSet, any_class, point_segment_distance

N_DISCS = 3
"""Discs per agent box (centred at the rear, middle and front of the box's length minus its width)."""
COLLISION_NEIGHBOURS = 8
"""Nearest other agents (by centre distance) examined per agent-step."""
MAP_CANDIDATES = 4
"""Nearest lane / road-edge polylines (by their bounding boxes) examined per agent-step."""
LANE_MARGIN = MAX_LANE_DISTANCE - 1.0
"""m: distance to the nearest lane centreline from which the lane term grows (1 m before the metric's)."""
SELECTION_CHUNK = 8
"""Rollout steps whose map candidates are selected together (bounds the selection's temporary memory)."""
_FAR = 1.0e4
_EPS = 1.0e-6


def agent_discs(pos: Tensor, yaw: Tensor, length: Tensor, width: Tensor,
                n_discs: int = N_DISCS) -> tuple[Tensor, Tensor]:
    """Disc centres [..., n_discs, 2] and radius [...] covering boxes (pos [..., 2]; yaw, length, width [...]).

    The centres are spread evenly between the points half a width from either end of the box.
    """
    spread = 0.5 * (length - width).clamp(min=0.0)
    offsets = torch.linspace(-1.0, 1.0, n_discs, device=pos.device, dtype=pos.dtype) if n_discs > 1 \
        else pos.new_zeros(1)
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=-1)
    centres = pos.unsqueeze(-2) + (offsets * spread.unsqueeze(-1)).unsqueeze(-1) * heading.unsqueeze(-2)
    return centres, 0.5 * width


def collision_penalty(pos: Tensor, yaw: Tensor, valid: Tensor, size: Tensor, agent_type: Tensor,
                      k: int = COLLISION_NEIGHBOURS, at_fault_only: bool = False, margin: float = 0.0) -> Tensor:
    """[B, T, A] soft overlap of each agent with its ``k`` nearest neighbours (0 when more than ``margin``
    metres apart).

    ``pos`` [B, T, A, 2], ``yaw`` / ``valid`` [B, T, A], ``size`` [B, A, 3] (length, width, height),
    ``agent_type`` [B, A, 3] one-hot. ``at_fault_only``: count a neighbour only when its centre is ahead
    of the agent; ``margin`` (m, >= 0): the gap below which the penalty starts (see the module docstring).
    """
    if not margin >= 0.0:
        raise ValueError(f"collision margin must be >= 0 m, got {margin}")
    b, t, a = valid.shape
    k = min(k, a - 1)
    if k < 1:
        return pos.new_zeros(b, t, a)
    length, width = size[..., 0].unsqueeze(1).expand(b, t, a), size[..., 1].unsqueeze(1).expand(b, t, a)
    centres, radius = agent_discs(pos, yaw, length, width)                        # [B,T,A,D,2], [B,T,A]
    ped = agent_type[..., AgentType.PEDESTRIAN].bool()
    with torch.no_grad():
        allowed = valid.unsqueeze(-1) & valid.unsqueeze(-2)
        allowed &= ~torch.eye(a, dtype=torch.bool, device=valid.device)
        allowed &= ~(ped.unsqueeze(-1) & ped.unsqueeze(-2)).unsqueeze(1)
        centre_sq = (pos.unsqueeze(-2) - pos.unsqueeze(-3)).square().sum(-1).masked_fill(~allowed, float("inf"))
        nearest_sq, idx = torch.topk(centre_sq, k, dim=-1, largest=False)          # [B, T, A, k]
        pair_ok = torch.isfinite(nearest_sq)
    flat = idx.reshape(b * t, a * k)
    n_discs = centres.shape[-2]
    other_centres = torch.gather(centres.reshape(b * t, a, n_discs * 2), 1,
                                 flat.unsqueeze(-1).expand(-1, -1, n_discs * 2)).view(b, t, a, k, n_discs, 2)
    other_radius = torch.gather(radius.reshape(b * t, a), 1, flat).view(b, t, a, k)
    gap = torch.linalg.vector_norm(centres[:, :, :, None, :, None] - other_centres[:, :, :, :, None], dim=-1)
    reach = (radius.unsqueeze(-1) + other_radius + margin).clamp(min=_EPS)
    overlap = torch.relu(1.0 - gap / reach[..., None, None]).amax((-2, -1))              # [B, T, A, k]
    if at_fault_only:
        with torch.no_grad():
            other_pos = torch.gather(pos.reshape(b * t, a, 2), 1, flat.unsqueeze(-1).expand(-1, -1, 2))
            ahead = (other_pos.view(b, t, a, k, 2) - pos.unsqueeze(-2)) * \
                torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=-1).unsqueeze(-2)
            pair_ok = pair_ok & (ahead.sum(-1) > 0)
    return torch.where(pair_ok, overlap, 0.0).sum(-1) * valid


def offroad_penalty(pos: Tensor, yaw: Tensor, valid: Tensor, batch: SceneBatch,
                    k: int = MAP_CANDIDATES) -> Tensor:
    """[B, T, A] road-edge contact plus lane distance beyond ``LANE_MARGIN`` of vehicles (0 elsewhere).

    ``pos`` [B, T, A, 2], ``yaw`` / ``valid`` [B, T, A]; the map, sizes and types come from ``batch``.
    """
    b, t, a = valid.shape
    size = batch.agent_size
    length, width = size[..., 0].unsqueeze(1).expand(b, t, a), size[..., 1].unsqueeze(1).expand(b, t, a)
    centres, radius = agent_discs(pos, yaw, length, width)                        # [B,T,A,D,2], [B,T,A]
    pl_valid = batch.map_valid.any(-1)
    capacity = batch.map_valid.shape[1]
    lane_mask = any_class(batch.map_type, VEHICLE_LANE_TYPES) & pl_valid
    edge_mask = any_class(batch.map_type, ROAD_EDGE_TYPES) & pl_valid
    lanes = PolylineSet.select(batch.map_pos, batch.map_dir, batch.map_valid, lane_mask, capacity=capacity)
    edges = PolylineSet.select(batch.map_pos, batch.map_dir, batch.map_valid, edge_mask, capacity=capacity)
    d_edge = _nearest_segment_distance(centres, pos, edges, k)                    # [B, T, A, D]
    d_lane = _nearest_segment_distance(pos.unsqueeze(-2), pos, lanes, k).squeeze(-1)
    edge_term = torch.relu(1.0 - d_edge / radius.clamp(min=_EPS).unsqueeze(-1)).mean(-1)
    lane_term = torch.relu(d_lane - LANE_MARGIN) * lane_mask.any(-1).view(b, 1, 1)
    vehicle = batch.agent_type[..., AgentType.VEHICLE].bool().unsqueeze(1)
    return (edge_term + lane_term) * (valid & vehicle)


def _nearest_segment_distance(points: Tensor, anchor: Tensor, polylines: PolylineSet, k: int) -> Tensor:
    """[B, T, A, D] distance of points [B, T, A, D, 2] to the nearest segment of the ``k`` polylines
    nearest to ``anchor`` [B, T, A, 2] (``_FAR`` without any); differentiable in ``points``."""
    b, t, a, d, _ = points.shape
    k = min(k, polylines.capacity)
    with torch.no_grad():
        chunks = [torch.topk(polylines.lower_bound_sq(chunk.reshape(b, -1, 2)), k, dim=-1, largest=False)[1]
                  for chunk in anchor.detach().split(SELECTION_CHUNK, dim=1)]
        idx = torch.cat([c.view(b, -1, a, k) for c in chunks], dim=1).view(b, t * a, k)   # [B, T*A, k]
    rows = torch.arange(b, device=idx.device).view(-1, 1, 1)
    start = polylines.start[rows, idx].reshape(b, t, a, 1, -1, 2)                        # [B,T,A,1,kN,2]
    vec = polylines.vec[rows, idx].reshape(b, t, a, 1, -1, 2)
    seg_valid = polylines.valid[rows, idx].reshape(b, t, a, 1, -1)
    dist = point_segment_distance(points, start, vec)                                   # [B,T,A,D,kN]
    return torch.where(seg_valid, dist, _FAR).amin(-1)
