"""Driving guards: shields on top of any driver (the learned background, an RL ego). The driver chooses its
(acceleration, yaw rate); a guard corrects one of them.

**Collision guard** (longitudinal): an acceleration cap that keeps an agent from driving into what is
ahead of it; it lowers the acceleration (and, unless ``allow_reverse``, raises one that would make the agent
reverse), never touches the steering.

For agent i, an *obstacle* is another valid agent j whose box, at one of the look-ahead times
tau in ``GuardParams.lookahead`` (j moved at constant velocity, i not moved), lies in i's corridor ahead:
laterally within i's half width + j's lateral extent + ``lateral_margin`` of i's path, with a positive
bumper-to-bumper gap along it. The path is i's heading line, or, given the yaw rate i is about to drive, the
arc of curvature yaw rate / speed (at most ``max_curvature``). For tau > 0 the obstacle counts only if i, at
its current speed, would close that gap by tau + ``timing_tolerance`` (j is then about where i is going to
be), and (``ignore_followers``) only if j is not now behind i's centre: a faster agent that overtakes i is
not i's obstacle.
Each obstacle gives the IDM interaction cap (the free-road term left out, so the guard never asks for speed):

    cap = a * (1 - (s* / gap)^2),   s* = s0 + v T + v (v - v_lead) / (2 sqrt(a b))

with a = the agent type's acceleration limit, v_lead = j's speed along i's heading. The guarded
acceleration is ``min(driver's, cap)``, bounded below by the type's braking limit and by ``-v / dt``
(the guard brakes to a standstill, it never reverses an agent). Unless ``allow_reverse``, it also raises an
acceleration that would take the speed below zero (the SUMO logs never reverse; the learned policy does).

**Lane keeping** (lateral, vehicles): the nearest vehicle-lane segment whose direction is within
``heading_tolerance`` of the vehicle's heading gives its lateral offset e from that lane. Beyond
``pull_start`` m the yaw rate is blended towards pure pursuit of the lane's point ``max(min_lookahead,
v * lookahead_time)`` ahead (the segment's line extended), fully at ``pull_full`` m: the driver steers
freely within its lane and through lane changes, and is pulled back before it leaves the road.

**Edge hold** (lateral, vehicles and cyclists): an agent heading towards the nearest road edge whose box comes
within ``start`` m of it, or would reach it within ``lead_time`` s at its speed towards it (the box's extent
towards the edge counts its corners: a box angled onto the edge reaches it with its front corner first), has its
yaw rate turned towards the edge's direction (parallel to it, reached in about ``turn_time`` s; the driver's own
yaw rate is kept where it turns away at least as much).
It never pushes an agent away from the edge, so it does not move agents into the next lane: it only stops
their drift onto the edge. Cyclists, which ride beside the lanes and which lane keeping does not steer, are
held too.

**Side check** (for lane keeping and the edge hold): a side of an agent is *occupied* when another agent's
box is closer than ``SideCheckParams.clearance`` to its side, alongside it or reaching its flank within
``horizon`` s (ahead within the agent's travel, or behind and catching up). Given the occupied sides, the two
lateral guards never turn an agent more towards one than its driver does: a correction that would steer into
a neighbour is dropped, and the agent drifts (towards the lane's edge, or over the road edge) instead.

**Stall restart** (longitudinal, vehicles and cyclists): a learned agent slower than ``pace_fraction`` of
its logged driver's speed at the same step, while that driver moves (above ``go_speed``), gets the
acceleration floor ``accel``, unless a red or yellow stop point lies ahead of it within ``light_distance``. It runs
before the collision guard, which still caps the floor: an agent restarts only where its corridor is free.
It targets the learned policy's known stall (a vehicle that stops does not start again, model card).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trafficbots_gym.data.constants import DT, AgentType, TLState
from trafficbots_gym.simulation.dynamics import action_limits, pure_pursuit_yaw_rate, wrap_angle
from trafficbots_gym.simulation.metrics import LANE_CANDIDATES, MapGeometry
from trafficbots_gym.simulation.state import AgentState


EDGE_HOLD_CANDIDATES = 4
"""Road-edge polylines examined exactly per agent by the edge hold (the nearest edge segment was the same as
with the metrics' 8 for all of 178,320 agent-states of five 100-scene sets, positions jittered by 2 m)."""


@dataclass(frozen=True)
class GuardParams:
    """Constants of the collision guard (module docstring)."""

    time_headway: float = 0.5          # T (s): shorter than a driver model's, the guard is a last resort
    min_gap: float = 1.0               # s0 (m): standstill gap kept to an obstacle
    comfort_decel: float = 2.0         # b (m/s^2)
    lateral_margin: float = 0.2        # m added to the corridor's half width
    lookahead: tuple[float, ...] = (0.0, 1.0)  # s: constant-velocity predictions of the others
    timing_tolerance: float = 0.5      # s: a predicted obstacle counts if reached by its time + this
    allow_reverse: bool = False        # False: the guard also stops an agent from driving backwards
    ignore_followers: bool = True      # predictions of agents now behind the agent's centre do not count
    max_curvature: float = 0.2         # 1/m: the sharpest arc the corridor bends along (radius 5 m)

    def __post_init__(self) -> None:
        if (self.time_headway < 0 or self.min_gap <= 0 or self.comfort_decel <= 0 or self.lateral_margin < 0
                or self.timing_tolerance < 0 or self.max_curvature < 0):
            raise ValueError(f"GuardParams need time_headway >= 0, min_gap > 0, comfort_decel > 0, "
                             f"lateral_margin >= 0, timing_tolerance >= 0 and max_curvature >= 0, got {self}")
        if not self.lookahead or any(t < 0 for t in self.lookahead):
            raise ValueError(f"GuardParams.lookahead must be non-empty times >= 0 s, got {self.lookahead}")


def obstacle_gaps(state: AgentState, size: torch.Tensor, params: GuardParams,
                  agents: torch.Tensor | None = None,
                  yaw_rate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gap (m, inf if none) to, and speed along the heading of, the nearest obstacle of each agent.

    ``state`` [B, A], ``size`` [B, A, >=2] (length, width); ``agents`` [B, E] long: only these agents are
    examined (default: all); ``yaw_rate`` [B, E] (rad/s): the corridor bends along the arc this yaw rate
    drives at the agent's speed (default: straight ahead). Returns ([B, E], [B, E]).
    """
    n = state.valid.shape[-1]
    rows = torch.arange(state.valid.shape[0], device=state.valid.device).unsqueeze(-1)
    if agents is None:
        agents = torch.arange(n, device=state.valid.device).expand(state.valid.shape[0], n)
    pos_i, yaw_i, spd_i = state.pos[rows, agents], state.yaw[rows, agents], state.spd[rows, agents]
    half_l, half_w = 0.5 * size[rows, agents, 0], 0.5 * size[rows, agents, 1]
    ci, si = torch.cos(yaw_i).unsqueeze(-1), torch.sin(yaw_i).unsqueeze(-1)       # [B, E, 1]
    rel_yaw = state.yaw.unsqueeze(1) - yaw_i.unsqueeze(-1)                         # [B, E, A]
    lj, wj = 0.5 * size[..., 0].unsqueeze(1), 0.5 * size[..., 1].unsqueeze(1)
    curvature = (torch.zeros_like(spd_i) if yaw_rate is None
                 else (yaw_rate / spd_i.abs().clamp(min=1.0)).clamp(-params.max_curvature, params.max_curvature))
    curvature = curvature.unsqueeze(-1)                                            # [B, E, 1]
    heading_j = torch.stack([torch.cos(state.yaw), torch.sin(state.yaw)], -1) * state.spd.unsqueeze(-1)
    others = state.valid.unsqueeze(1) & (agents.unsqueeze(-1) != torch.arange(n, device=agents.device))
    reach = spd_i.clamp(min=0.0).unsqueeze(-1)
    d_now = state.pos.unsqueeze(1) - pos_i.unsqueeze(2)
    ahead_now = d_now[..., 0] * ci + d_now[..., 1] * si > 0                        # j's centre ahead of i's
    best = torch.full_like(rel_yaw, float("inf"))
    for tau in params.lookahead:
        d = (state.pos + tau * heading_j).unsqueeze(1) - pos_i.unsqueeze(2)       # [B, E, A, 2]
        rel_x = d[..., 0] * ci + d[..., 1] * si
        # offset from, and heading relative to, the arc of the agent's path (a straight line without a yaw rate)
        arc = curvature * rel_x.clamp(min=0.0)
        rel_y = -d[..., 0] * si + d[..., 1] * ci - 0.5 * arc * rel_x.clamp(min=0.0)
        tangent_yaw = rel_yaw - arc
        c, s = torch.cos(tangent_yaw).abs(), torch.sin(tangent_yaw).abs()
        gap = rel_x - half_l.unsqueeze(-1) - (lj * c + wj * s)
        in_corridor = (rel_y.abs() < half_w.unsqueeze(-1) + lj * s + wj * c + params.lateral_margin) & (rel_x > 0)
        if tau > 0:   # j predicted into the corridor: only if i reaches it by then, and not j coming from behind i
            in_corridor = in_corridor & (gap <= reach * (tau + params.timing_tolerance) + params.min_gap)
            if params.ignore_followers:
                in_corridor = in_corridor & ahead_now
        best = torch.minimum(best, gap.clamp(min=0.0).masked_fill(~(in_corridor & others), float("inf")))
    gap, j = best.min(-1)
    lead_speed = torch.gather(state.spd.unsqueeze(1) * torch.cos(rel_yaw), -1, j.unsqueeze(-1)).squeeze(-1)
    return gap, lead_speed


def acceleration_cap(state: AgentState, size: torch.Tensor, agent_type: torch.Tensor, params: GuardParams,
                     agents: torch.Tensor | None = None, yaw_rate: torch.Tensor | None = None) -> torch.Tensor:
    """[B, E] the highest acceleration (m/s^2) the guard allows each agent (+inf with no obstacle); ``yaw_rate``
    [B, E] bends the corridor (``obstacle_gaps``)."""
    speed, limit = _speed_and_limit(state, agent_type, agents)
    gap, lead_speed = obstacle_gaps(state, size, params, agents, yaw_rate)
    v = speed.clamp(min=0.0)
    s_star = params.min_gap + (v * params.time_headway
                               + v * (v - lead_speed) / (2.0 * (limit * params.comfort_decel).sqrt())).clamp(min=0.0)
    cap = limit * (1.0 - (s_star / gap.clamp(min=1e-3)) ** 2)
    cap = torch.maximum(cap, torch.maximum(-limit, -v / DT))
    return torch.where(torch.isinf(gap), torch.full_like(cap, float("inf")), cap)


def guard_acceleration(acc: torch.Tensor, state: AgentState, size: torch.Tensor, agent_type: torch.Tensor,
                       params: GuardParams, agents: torch.Tensor | None = None,
                       yaw_rate: torch.Tensor | None = None) -> torch.Tensor:
    """The driver's acceleration ``acc`` [B, E] lowered to the guard's cap where it exceeds it (the corridor
    bent by the yaw rate [B, E] the agent is about to drive, if given); unless ``params.allow_reverse``, raised
    where it would make the speed negative (to a standstill, within the type's acceleration limit)."""
    cap = acceleration_cap(state, size, agent_type, params, agents, yaw_rate)
    guarded = torch.minimum(acc, cap.to(acc.dtype))
    if params.allow_reverse:
        return guarded
    speed, limit = _speed_and_limit(state, agent_type, agents)
    return torch.maximum(guarded, torch.minimum(-speed / DT, limit).to(acc.dtype))


def _speed_and_limit(state: AgentState, agent_type: torch.Tensor,
                     agents: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed and acceleration limit [B, E] of the agents ``agents`` [B, E] (default: all)."""
    if agents is None:
        speed, types = state.spd, agent_type
    else:
        rows = torch.arange(state.valid.shape[0], device=state.valid.device).unsqueeze(-1)
        speed, types = state.spd[rows, agents], agent_type[rows, agents]
    return speed, action_limits(types)[..., 0].to(speed.dtype)


@dataclass(frozen=True)
class SideCheckParams:
    """Constants of the side check that keeps the lateral guards from steering into a neighbour."""

    clearance: float = 0.5             # m between the boxes' sides under which a side counts as occupied
    horizon: float = 1.0               # s: agents that reach the agent's flank within this time count

    def __post_init__(self) -> None:
        if self.clearance < 0 or self.horizon < 0:
            raise ValueError(f"SideCheckParams need clearance >= 0 and horizon >= 0, got {self}")


def occupied_sides(state: AgentState, size: torch.Tensor, params: SideCheckParams) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, A], [B, A]) bool: another valid agent's box lies beside the agent, on its left / right, closer than
    ``params.clearance`` m sideways, alongside it or reaching its flank within ``params.horizon`` s (ahead of it
    within the agent's travel, or behind it and catching up)."""
    n = state.valid.shape[-1]
    c_i, s_i = torch.cos(state.yaw).unsqueeze(-1), torch.sin(state.yaw).unsqueeze(-1)       # [B, A, 1]
    d = state.pos.unsqueeze(1) - state.pos.unsqueeze(2)                                     # [B, A(i), A(j), 2]
    rel_x = d[..., 0] * c_i + d[..., 1] * s_i
    rel_y = -d[..., 0] * s_i + d[..., 1] * c_i
    rel_yaw = state.yaw.unsqueeze(1) - state.yaw.unsqueeze(-1)
    c, s = torch.cos(rel_yaw), torch.sin(rel_yaw)
    lj, wj = 0.5 * size[..., 0].unsqueeze(1), 0.5 * size[..., 1].unsqueeze(1)
    along_j, across_j = lj * c.abs() + wj * s.abs(), lj * s.abs() + wj * c.abs()
    half_l, half_w = 0.5 * size[..., 0].unsqueeze(-1), 0.5 * size[..., 1].unsqueeze(-1)
    speed = state.spd.clamp(min=0.0).unsqueeze(-1)
    closing = (state.spd.unsqueeze(1) * c - speed).clamp(min=0.0)                          # j gaining on i
    front = half_l + speed * params.horizon
    rear = -half_l - closing * params.horizon
    beside = (rel_x - along_j < front) & (rel_x + along_j > rear)
    near = rel_y.abs() - across_j - half_w < params.clearance
    others = state.valid.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=state.valid.device)
    occupied = beside & near & others
    return (occupied & (rel_y > 0)).any(-1), (occupied & (rel_y < 0)).any(-1)


def _spare_sides(guarded: torch.Tensor, driver: torch.Tensor,
                 sides: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The guard's yaw rate, except where it turns more towards an occupied side (left: > 0) than the driver's:
    there the driver's is kept."""
    if sides is None:
        return guarded
    left, right = sides
    into = (left & (guarded > driver)) | (right & (guarded < driver))
    return torch.where(into, driver, guarded)


@dataclass(frozen=True)
class LaneKeepingParams:
    """Constants of lane keeping (module docstring)."""

    pull_start: float = 0.3            # m of lateral offset from the lane where the pull starts ...
    pull_full: float = 1.0             # ... and where it takes over the yaw rate fully
    heading_tolerance: float = 0.8     # rad: lanes this close to the heading count (about 45 deg)
    lookahead_time: float = 1.0        # s of travel to the pursuit point ...
    min_lookahead: float = 5.0         # ... but at least this far (m)

    def __post_init__(self) -> None:
        if not 0 <= self.pull_start < self.pull_full or self.heading_tolerance <= 0 or self.min_lookahead <= 0 \
                or self.lookahead_time < 0:
            raise ValueError(f"LaneKeepingParams need 0 <= pull_start < pull_full, heading_tolerance > 0, "
                             f"lookahead_time >= 0 and min_lookahead > 0, got {self}")


def lane_offset(state: AgentState, geom: MapGeometry, params: LaneKeepingParams) -> tuple[torch.Tensor, torch.Tensor,
                                                                                           torch.Tensor]:
    """Per agent [B, A]: the lateral distance (m, inf without an aligned lane) to the nearest lane segment
    aligned with its heading, that segment's closest point [B, A, 2] and unit direction [B, A, 2]."""
    start, vec, valid = geom.lanes.grid_candidates(state.pos, LANE_CANDIDATES)     # [B, A, S, 2]
    heading = torch.stack([torch.cos(state.yaw), torch.sin(state.yaw)], -1).unsqueeze(-2)
    length = vec.norm(dim=-1).clamp(min=1e-6)
    direction = vec / length.unsqueeze(-1)
    aligned = valid & ((direction * heading).sum(-1) > math.cos(params.heading_tolerance))
    return _nearest_segment(state.pos, start, direction, length, aligned)


def _nearest_segment(points: torch.Tensor, start: torch.Tensor, direction: torch.Tensor, length: torch.Tensor,
                     usable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of the ``usable`` segments [B, A, S] (start, unit direction [B, A, S, 2], length [B, A, S]), the one
    nearest to each point [B, A, 2]: its distance [B, A] (inf if none), closest point and direction [B, A, 2]."""
    rel = points.unsqueeze(-2) - start
    t = ((rel * direction).sum(-1)).clamp(min=0.0).minimum(length)
    closest = start + t.unsqueeze(-1) * direction
    dist = (points.unsqueeze(-2) - closest).norm(dim=-1).masked_fill(~usable, float("inf"))
    best, j = dist.min(-1)
    pick = j[..., None, None].expand(*j.shape, 1, 2)
    return best, closest.gather(-2, pick).squeeze(-2), direction.gather(-2, pick).squeeze(-2)


def _vehicles_and_cyclists(agent_type: torch.Tensor) -> torch.Tensor:
    """[B, A] bool: the agents that the stall restart and the edge hold act on."""
    return agent_type[..., AgentType.VEHICLE].bool() | agent_type[..., AgentType.CYCLIST].bool()


def keep_lane(yaw_rate: torch.Tensor, state: AgentState, agent_type: torch.Tensor, geom: MapGeometry,
              params: LaneKeepingParams, sides: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The driver's yaw rate [B, A], blended towards the lane of each vehicle that drifted off it (other
    agent types and vehicles without an aligned lane keep theirs); never more towards a side that ``sides``
    (``occupied_sides``) marks occupied than the driver turns."""
    offset, point, direction = lane_offset(state, geom, params)
    speed = state.spd
    ahead = torch.clamp(speed.abs() * params.lookahead_time, min=params.min_lookahead)
    target = point + ahead.unsqueeze(-1) * direction
    pull = pure_pursuit_yaw_rate(state.pos, state.yaw, speed, target)
    weight = ((offset - params.pull_start) / (params.pull_full - params.pull_start)).clamp(0.0, 1.0)
    weight = torch.where(torch.isfinite(offset) & agent_type[..., AgentType.VEHICLE].bool(), weight,
                         torch.zeros_like(weight))
    limit = action_limits(agent_type)[..., 1].to(yaw_rate.dtype)
    pull = torch.maximum(torch.minimum(pull.to(yaw_rate.dtype), limit), -limit)
    return _spare_sides(yaw_rate + weight.to(yaw_rate.dtype) * (pull - yaw_rate), yaw_rate, sides)


@dataclass(frozen=True)
class RestartParams:
    """Constants of the stall restart (module docstring)."""

    pace_fraction: float = 0.5         # an agent slower than this fraction of its logged driver's speed ...
    go_speed: float = 1.0              # ... while that driver, faster than this (m/s) at the same step, moves
    accel: float = 1.0                 # m/s^2: the acceleration floor (within the type's limit)
    light_distance: float = 10.0       # m: a red/yellow stop point this close ahead keeps the agent standing ...
    light_lateral: float = 2.5         # ... if within this distance of its heading line

    def __post_init__(self) -> None:
        if not 0 < self.pace_fraction <= 1 or self.go_speed < 0 or self.accel <= 0 or self.light_distance < 0 \
                or self.light_lateral < 0:
            raise ValueError(f"RestartParams need 0 < pace_fraction <= 1, go_speed >= 0, accel > 0, "
                             f"light_distance >= 0 and light_lateral >= 0, got {self}")


def red_light_ahead(state: AgentState, size: torch.Tensor, tl_valid: torch.Tensor, tl_state: torch.Tensor,
                    tl_pos: torch.Tensor, tl_dir: torch.Tensor, distance: float, lateral: float) -> torch.Tensor:
    """[B, A] bool: a STOP/CAUTION stop point ([B, S] valid and state, [B, S, 2] position and direction) lies
    ahead of the agent's front bumper within ``distance`` m, within ``lateral`` m of its heading line, and
    faces the agent's way."""
    stop = tl_valid & (tl_state[..., TLState.STOP] | tl_state[..., TLState.CAUTION]).bool()    # [B, S]
    c, s = torch.cos(state.yaw).unsqueeze(-1), torch.sin(state.yaw).unsqueeze(-1)             # [B, A, 1]
    d = tl_pos.unsqueeze(1) - state.pos.unsqueeze(2)                                           # [B, A, S, 2]
    along = d[..., 0] * c + d[..., 1] * s - 0.5 * size[..., 0].unsqueeze(-1)
    across = -d[..., 0] * s + d[..., 1] * c
    direction = tl_dir / tl_dir.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    facing = direction[..., 0].unsqueeze(1) * c + direction[..., 1].unsqueeze(1) * s > 0.5
    return (stop.unsqueeze(1) & facing & (along > -0.5) & (along < distance) & (across.abs() < lateral)).any(-1)


def restart_stalled(acc: torch.Tensor, state: AgentState, log_spd: torch.Tensor, log_valid: torch.Tensor,
                    agent_type: torch.Tensor, red_ahead: torch.Tensor, params: RestartParams) -> torch.Tensor:
    """The driver's acceleration ``acc`` [B, A] raised to ``params.accel`` (within the type's limit) for every
    vehicle and cyclist slower than ``params.pace_fraction`` of its logged driver at this step (``log_spd``,
    ``log_valid`` [B, A]) while that driver moves, with no red light ahead (``red_ahead`` [B, A])."""
    log_speed = log_spd.abs()
    stalled = (state.valid & _vehicles_and_cyclists(agent_type) & log_valid & ~red_ahead & (log_speed > params.go_speed)
               & (state.spd < params.pace_fraction * log_speed))
    floor = torch.minimum(action_limits(agent_type)[..., 0].to(acc.dtype),
                          torch.full_like(acc, params.accel))
    return torch.where(stalled, torch.maximum(acc, floor), acc)


@dataclass(frozen=True)
class EdgeHoldParams:
    """Constants of the edge hold (module docstring)."""

    start: float = 1.0                 # m between the box and the road edge where the hold starts ...
    lead_time: float = 0.5             # ... or farther: the box reaches the edge within this time (s)
    turn_time: float = 0.5             # s to turn parallel to the edge (the yaw rate asked for is error / this)

    def __post_init__(self) -> None:
        if self.start <= 0 or self.turn_time <= 0 or self.lead_time < 0:
            raise ValueError(f"EdgeHoldParams need start > 0, lead_time >= 0 and turn_time > 0, got {self}")


def nearest_edge(state: AgentState, geom: MapGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per agent [B, A]: the distance (m, inf without a road edge) from its centre to the nearest road-edge
    segment, that segment's unit direction [B, A, 2] and the unit normal from the edge to the agent [B, A, 2]."""
    start, vec, valid = geom.edges.grid_candidates(state.pos, EDGE_HOLD_CANDIDATES)  # [B, A, S, 2]
    length = vec.norm(dim=-1).clamp(min=1e-6)
    dist, near, direction = _nearest_segment(state.pos, start, vec / length.unsqueeze(-1), length, valid)
    normal = state.pos - near
    return dist, direction, normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def hold_edge(yaw_rate: torch.Tensor, state: AgentState, size: torch.Tensor, agent_type: torch.Tensor,
              geom: MapGeometry, params: EdgeHoldParams,
              sides: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The driver's yaw rate [B, A], turned towards the direction of the nearest road edge for each vehicle
    and cyclist that heads towards it and whose box is within ``params.start`` m of it, or would reach it within
    ``params.lead_time`` s at its speed towards it (the box's extent towards the edge from its heading, the
    distance from its centre); below 1 m/s the turn asked for shrinks with the speed (no turning on the spot);
    never towards a side that ``sides`` (``occupied_sides``) marks occupied."""
    dist, direction, normal = nearest_edge(state, geom)
    heading = torch.stack([torch.cos(state.yaw), torch.sin(state.yaw)], -1)
    approach = -(heading * normal).sum(-1)                                           # cos of the angle onto it
    towards = approach > 0
    along = torch.where((heading * direction).sum(-1, keepdim=True) >= 0, direction, -direction)
    error = wrap_angle(torch.atan2(along[..., 1], along[..., 0]) - state.yaw)        # > 0: turn left to hold
    limit = action_limits(agent_type)[..., 1].to(yaw_rate.dtype)
    need = (error / params.turn_time * state.spd.abs().clamp(max=1.0)).to(yaw_rate.dtype)
    need = torch.maximum(torch.minimum(need, limit), -limit)
    held = torch.where(error >= 0, torch.maximum(yaw_rate, need), torch.minimum(yaw_rate, need))
    extent = 0.5 * size[..., 0] * approach.abs() + 0.5 * size[..., 1] * (1.0 - approach * approach).clamp(min=0.0).sqrt()
    reach = torch.clamp(params.lead_time * state.spd * approach, min=params.start)
    close = (dist - extent) < reach
    held = torch.where(_vehicles_and_cyclists(agent_type) & state.valid & towards & close, held, yaw_rate)
    return _spare_sides(held, yaw_rate, sides)


EGO_GUARD = GuardParams(ignore_followers=False)
"""The collision guard of ``ego_guard=True``: the straight corridor (the ego's yaw rate is not passed) that also
brakes for agents predicted to overtake, as the shipped guarded ego policy was trained under (under the
background's curved, follower-blind corridor it reached 0.07 fewer goals)."""


BACKGROUND_GUARDS: dict[str, type] = {"guard": GuardParams, "lane_keeping": LaneKeepingParams,
                                      "restart": RestartParams, "edge_hold": EdgeHoldParams,
                                      "side_check": SideCheckParams}
"""The guards of the learned background by their ``BatchedSimulator`` keyword (``guard`` = the collision guard;
``side_check`` acts through lane keeping and the edge hold)."""


def background_guards(enabled: bool, without: Sequence[str] = ()) -> dict[str, GuardParams | LaneKeepingParams
                                                                            | RestartParams | EdgeHoldParams
                                                                            | SideCheckParams | None]:
    """The ``BatchedSimulator`` keywords of the guarded learned background (every guard of
    :data:`BACKGROUND_GUARDS` with its default constants, less those named in ``without``: for ablations), or of
    the raw one."""
    unknown = sorted(set(without) - set(BACKGROUND_GUARDS))
    if unknown:
        raise ValueError(f"unknown guard(s) {unknown}; valid names: {', '.join(BACKGROUND_GUARDS)}")
    return {name: params() if enabled and name not in without else None for name, params in BACKGROUND_GUARDS.items()}
