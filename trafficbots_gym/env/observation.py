"""Ego-centric, fixed-size, normalised observations, computed in torch for a batch of envs.

Frame: origin at the ego's centre, x axis along the ego heading, y to its left. Every feature is
scaled to [-1, 1] (scales below, ranges in docs/env.md) and clipped. Entities (agents, map points,
traffic lights) are the nearest ones within ``obs_range`` metres, nearest first; empty slots are zeros
with ``valid = 0``. Groups (``obs_mode="dict"`` keys, in the order of the flat vector):

* ``ego`` [10]: ``EGO_FEATURES``
* ``agents`` [K, 12]: ``AGENT_FEATURES`` of the K nearest other agents
* ``map`` [M, 16]: ``MAP_FEATURES`` of the M nearest polyline nodes (every ``map_point_stride``-th node)
* ``traffic_lights`` [N, 10]: ``TL_FEATURES`` of the N nearest TL stop points (state of the current step,
  the last logged state past the log)
* ``goal`` [5]: ``GOAL_FEATURES`` (logged goal = last valid logged ego state)
* ``route`` [R, 3]: ``ROUTE_FEATURES`` of waypoints every ``route_spacing`` m ahead along the logged ego path
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from gymnasium import spaces

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import MapType, TLState
from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.route import Route, RoutePosition
from trafficbots_gym.simulation.buffers import assign
from trafficbots_gym.simulation.dynamics import ACTION_LIMITS
from trafficbots_gym.simulation.state import AgentState

SPEED_SCALE = 30.0
"""m/s: speeds and relative velocities are divided by this."""
ACC_SCALE = float(ACTION_LIMITS[0, 0])
"""m/s^2 (vehicle limit)."""
YAW_RATE_SCALE = float(ACTION_LIMITS[0, 1])
"""rad/s (vehicle limit)."""
LENGTH_SCALE = 10.0
WIDTH_SCALE = 5.0
LATERAL_SCALE = 10.0
"""m: lateral offset from the logged route."""
GOAL_DISTANCE_SCALE = 200.0
"""m: goal distance."""

EGO_FEATURES = ("speed", "acc", "yaw_rate", "length", "width", "time_left", "route_completion",
                "lateral_offset", "heading_error_cos", "heading_error_sin")
AGENT_FEATURES = ("x", "y", "heading_cos", "heading_sin", "vx", "vy", "length", "width",
                  "vehicle", "pedestrian", "cyclist", "valid")
MAP_FEATURES = ("x", "y", "dir_cos", "dir_sin", *(t.name.lower() for t in MapType), "valid")
TL_FEATURES = ("x", "y", "dir_cos", "dir_sin", *(s.name.lower() for s in TLState), "valid")
GOAL_FEATURES = ("x", "y", "heading_cos", "heading_sin", "distance")
ROUTE_FEATURES = ("x", "y", "valid")


@dataclass
class EgoView:
    """What the observation needs to know about each row's ego and episode at this step."""

    index: torch.Tensor      # [B] long: ego agent index
    step: torch.Tensor       # [B] long: absolute step of the state
    elapsed: torch.Tensor    # [B] long: controlled steps taken this episode
    route: RoutePosition     # the ego's projection on its logged route
    rows: torch.Tensor | None = None   # [B] long 0..B-1 (made when not given)
    mask: torch.Tensor | None = None   # [B, A] bool one-hot of the ego slot (made when not given)


@dataclass
class MapPoints:
    """Candidate map points of each row: pos [B, X, 2], valid [B, X] and ``features`` [B, X, 15]: pos, unit
    direction and type one-hot side by side (one gather per step)."""

    pos: torch.Tensor
    valid: torch.Tensor
    features: torch.Tensor

    @staticmethod
    def from_batch(batch: SceneBatch, stride: int) -> "MapPoints":
        b = batch.batch_size
        pos = batch.map_pos[:, :, ::stride].reshape(b, -1, 2)
        direction = _unit(batch.map_dir[:, :, ::stride].reshape(b, -1, 2))
        n_node = batch.map_pos[:, :, ::stride].shape[2]
        kind = batch.map_type.unsqueeze(2).expand(-1, -1, n_node, -1).reshape(b, pos.shape[1], -1).float()
        valid = batch.map_valid[:, :, ::stride].reshape(b, -1)
        return MapPoints(pos=pos, valid=valid, features=torch.cat([pos, direction, kind], dim=-1))

    def replace_rows(self, rows: torch.Tensor, other: "MapPoints") -> None:
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name)


class ObservationBuilder:
    """Builds the observation of every row from the simulator state; one instance per (vector) env."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.shapes: dict[str, tuple[int, ...]] = {
            "ego": (len(EGO_FEATURES),),
            "agents": (config.num_agents_obs, len(AGENT_FEATURES)),
            "map": (config.num_map_points, len(MAP_FEATURES)),
            "traffic_lights": (config.num_tl_obs, len(TL_FEATURES)),
            "goal": (len(GOAL_FEATURES),),
            "route": (config.num_route_points, len(ROUTE_FEATURES)),
        }
        self.map_points: MapPoints | None = None

    @property
    def flat_size(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes.values()))

    def space(self) -> spaces.Space:
        """The single-env observation space of ``config.obs_mode``."""
        if self.config.obs_mode == "dict":
            return spaces.Dict({k: spaces.Box(-1.0, 1.0, s, np.float32) for k, s in self.shapes.items()})
        return spaces.Box(-1.0, 1.0, (self.flat_size,), np.float32)

    def set_scenes(self, batch: SceneBatch, rows: torch.Tensor | None = None) -> None:
        """Cache the map points of new scenes: all rows, or the rows ``rows`` (``batch`` holds only those)."""
        points = MapPoints.from_batch(batch, self.config.map_point_stride)
        if rows is None or self.map_points is None:
            self.map_points = assign(self.map_points, points)   # in place when the shapes allow
        else:
            self.map_points.replace_rows(rows, points)

    def build(self, batch: SceneBatch, state: AgentState, ego: EgoView, route: Route) -> dict[str, torch.Tensor]:
        """The observation groups [B, ...] (float32, in [-1, 1]) of every row."""
        if self.map_points is None:
            raise RuntimeError("ObservationBuilder.set_scenes must run before build")
        rows = torch.arange(state.valid.shape[0], device=state.valid.device) if ego.rows is None else ego.rows
        frame = EgoFrame.of(state.pos[rows, ego.index], state.yaw[rows, ego.index])
        obs = {
            "ego": self._ego(batch, state, ego, route, rows, frame),
            "agents": self._agents(batch, state, ego, rows, frame),
            "map": self._map(frame),
            "traffic_lights": self._traffic_lights(batch, ego.step, rows, frame),
            "goal": self._goal(batch, ego.index, rows, frame),
            "route": self._route(route, ego.route.s, frame),
        }
        return {k: v.clamp(-1.0, 1.0).float() for k, v in obs.items()}

    def flatten(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, flat_size]: the groups flattened and concatenated in ``shapes`` order."""
        return torch.cat([obs[k].flatten(1) for k in self.shapes], dim=1)

    def _ego(self, batch: SceneBatch, state: AgentState, ego: EgoView, route: Route, rows: torch.Tensor,
             frame: "EgoFrame") -> torch.Tensor:
        i = ego.index
        size = batch.agent_size[rows, i]
        completion = ego.route.s / route.length.clamp_min(1.0)
        heading_error = frame.yaw - ego.route.yaw
        time_left = 1.0 - ego.elapsed.float() / self.config.horizon
        return torch.stack([state.spd[rows, i] / SPEED_SCALE, state.acc[rows, i] / ACC_SCALE,
                            state.yaw_rate[rows, i] / YAW_RATE_SCALE, size[:, 0] / LENGTH_SCALE,
                            size[:, 1] / WIDTH_SCALE, time_left, completion, ego.route.lateral / LATERAL_SCALE,
                            torch.cos(heading_error), torch.sin(heading_error)], dim=-1)

    def _agents(self, batch: SceneBatch, state: AgentState, ego: EgoView, rows: torch.Tensor,
                frame: "EgoFrame") -> torch.Tensor:
        if ego.mask is None:
            slots = torch.arange(state.valid.shape[1], device=ego.index.device)
            others = state.valid & (slots.unsqueeze(0) != ego.index.unsqueeze(1))
        else:
            others = state.valid & ~ego.mask
        idx, valid = nearest(state.pos, frame.origin, others, self.config.num_agents_obs, self.config.obs_range)
        ego_vel = state.vel[rows, ego.index].unsqueeze(1)
        rel_yaw = gather(state.yaw.unsqueeze(-1), idx).squeeze(-1) - frame.yaw.unsqueeze(1)
        size = gather(batch.agent_size, idx)
        feats = torch.cat([frame.to_frame(gather(state.pos, idx)) / self.config.obs_range,
                           torch.cos(rel_yaw).unsqueeze(-1), torch.sin(rel_yaw).unsqueeze(-1),
                           frame.rotate(gather(state.vel, idx) - ego_vel) / SPEED_SCALE,
                           size[..., :1] / LENGTH_SCALE, size[..., 1:2] / WIDTH_SCALE,
                           gather(batch.agent_type, idx).float()], dim=-1)
        return _with_valid(feats, valid)

    def _map(self, frame: "EgoFrame") -> torch.Tensor:
        points = self.map_points
        assert points is not None
        idx, valid = nearest(points.pos, frame.origin, points.valid, self.config.num_map_points,
                             self.config.obs_range)
        near = gather(points.features, idx)                                  # pos, dir, type
        feats = torch.cat([frame.to_frame(near[..., :2]) / self.config.obs_range, frame.rotate(near[..., 2:4]),
                           near[..., 4:]], dim=-1)
        return _with_valid(feats, valid)

    def _traffic_lights(self, batch: SceneBatch, step: torch.Tensor, rows: torch.Tensor,
                        frame: "EgoFrame") -> torch.Tensor:
        t = step.clamp(max=batch.num_steps - 1)
        tl_pos = batch.tl_pos[rows, t]
        idx, valid = nearest(tl_pos, frame.origin, batch.tl_valid[rows, t], self.config.num_tl_obs,
                             self.config.obs_range)
        feats = torch.cat([frame.to_frame(gather(tl_pos, idx)) / self.config.obs_range,
                           frame.rotate(_unit(gather(batch.tl_dir[rows, t], idx))),
                           gather(batch.tl_state[rows, t], idx).float()], dim=-1)
        return _with_valid(feats, valid)

    def _goal(self, batch: SceneBatch, ego_index: torch.Tensor, rows: torch.Tensor, frame: "EgoFrame") -> torch.Tensor:
        goal = batch.agent_goal[rows, ego_index]                              # [B, 4]
        rel = frame.to_frame(goal[:, None, :2])[:, 0]
        dist = rel.norm(dim=-1, keepdim=True)
        direction = rel / self.config.obs_range
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1.0)  # keep the bearing
        heading = goal[:, 2] - frame.yaw
        return torch.cat([direction, torch.cos(heading).unsqueeze(-1), torch.sin(heading).unsqueeze(-1),
                          dist / GOAL_DISTANCE_SCALE], dim=-1)

    def _route(self, route: Route, s: torch.Tensor, frame: "EgoFrame") -> torch.Tensor:
        points, valid = route.waypoints(s, self.config.num_route_points, self.config.route_spacing)
        rel = frame.to_frame(points) / self.config.obs_range
        return torch.cat([rel, torch.ones_like(rel[..., :1])], dim=-1) * valid.unsqueeze(-1)


@dataclass
class EgoFrame:
    """Each row's ego frame: origin [B, 2], heading ``yaw`` [B] and the cosine / sine of ``-yaw`` [B, 1]."""

    origin: torch.Tensor
    yaw: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    rotation: torch.Tensor    # [B, 1, 2, 2]: rows (cos, -sin) and (sin, cos) of ``-yaw``

    @staticmethod
    def of(origin: torch.Tensor, yaw: torch.Tensor) -> "EgoFrame":
        cos, sin = torch.cos(-yaw).unsqueeze(1), torch.sin(-yaw).unsqueeze(1)
        rotation = torch.stack([cos, -sin, sin, cos], dim=-1).view(-1, 1, 2, 2)
        return EgoFrame(origin, yaw, cos, sin, rotation)

    def rotate(self, xy: torch.Tensor) -> torch.Tensor:
        """Vectors ``xy`` [B, X, 2] rotated into the frame (clockwise by ``yaw``): (cos x - sin y, sin x + cos y),
        each a sum of two products."""
        return (xy.unsqueeze(-2) * self.rotation).sum(-1)

    def to_frame(self, xy: torch.Tensor) -> torch.Tensor:
        """Points ``xy`` [B, X, 2] in the frame."""
        return self.rotate(xy - self.origin.unsqueeze(1))


def nearest(points: torch.Tensor, origin: torch.Tensor, mask: torch.Tensor, k: int,
            max_dist: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, k] of the k entries of ``points`` [B, X, 2] where ``mask`` nearest to ``origin`` [B, 2].

    Also returns their validity [B, k]: slots beyond the available entries or farther than ``max_dist``
    are invalid (index 0). Nearest first.
    """
    delta = points - origin.unsqueeze(1)
    dist_sq = (delta * delta).sum(-1)
    d = dist_sq.masked_fill(~(mask & (dist_sq <= max_dist * max_dist)), float("inf"))
    n = min(k, d.shape[1])
    values, idx = torch.topk(d, n, dim=1, largest=False, sorted=True)
    valid = torch.isfinite(values)
    if n < k:
        pad = k - n
        idx = torch.cat([idx, idx.new_zeros(idx.shape[0], pad)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(valid.shape[0], pad)], dim=1)
    return idx.masked_fill(~valid, 0), valid


def gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Entries ``idx`` [B, k] of ``values`` [B, X, F] -> [B, k, F]."""
    return values.gather(1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def _with_valid(feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Append the valid column to slot features [B, k, F]; invalid slots all zero."""
    keep = valid.unsqueeze(-1).to(feats.dtype)
    return torch.cat([feats * keep, keep], dim=-1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)
