"""Intelligent Driver Model (IDM) background: longitudinal IDM along each agent's own logged path.

Each agent keeps an arc-length position ``s`` on its logged path (steps 10..90, then a straight
extension along the final logged heading) and a speed ``v >= 0``. Every step:

* leader = the nearest valid agent ahead on the path (the ego included) whose box reaches within the
  agent's half width + ``lateral_margin`` of the path; gap = bumper-to-bumper distance along the path;
* vehicles also treat a red or yellow stop point lying on their path as a standing leader, unless they
  are too close to stop at ``stop_decel`` (dilemma zone: they proceed);
* acceleration = IDM, clipped to the agent type's action limit and so that the speed stays in
  [0, max(v0, v)]; ``v0`` = the agent's largest logged speed from step 10 on (parked agents stay parked);
* position and heading are read off the path at the new ``s`` (lateral control = follow the path).
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import DT, STEP_CURRENT, AgentType, TLState
from trafficbots_gym.simulation.buffers import assign, copy_rows_
from trafficbots_gym.simulation.dynamics import action_limits
from trafficbots_gym.simulation.metrics import LoggedPath
from trafficbots_gym.simulation.state import AgentState


@dataclass(frozen=True)
class IDMParams:
    """IDM constants (Treiber et al. 2000 values for urban traffic)."""

    max_accel: float = 1.5        # a (m/s^2)
    comfort_decel: float = 2.0    # b (m/s^2)
    time_headway: float = 1.5     # T (s)
    min_gap: float = 2.0          # s0 (m)
    delta: float = 4.0            # free-road exponent
    lateral_margin: float = 0.5   # m added to the half widths when looking for a leader
    stop_decel: float = 3.0       # m/s^2: stop for a red light only if possible at this deceleration
    light_lateral: float = 1.5    # m: a stop point this close to the path lies on it
    path_extension: float = 500.0  # m of straight path after the log ends
    lookahead_points: int = 21    # the path ahead is resampled at these many points ...
    lookahead_spacing: float = 5.0  # ... this far apart (m): 100 m of lookahead


def idm_acceleration(speed: torch.Tensor, desired_speed: torch.Tensor, gap: torch.Tensor,
                     closing_speed: torch.Tensor, params: IDMParams) -> torch.Tensor:
    """IDM acceleration; ``gap`` = inf means a free road. All inputs broadcast together."""
    v0 = desired_speed.clamp(min=0.1)
    s_star = params.min_gap + (speed * params.time_headway
                               + speed * closing_speed / (2.0 * (params.max_accel * params.comfort_decel) ** 0.5)
                               ).clamp(min=0.0)
    interaction = torch.where(torch.isinf(gap), torch.zeros_like(gap), (s_star / gap.clamp(min=0.1)) ** 2)
    return params.max_accel * (1.0 - (speed / v0) ** params.delta - interaction)


def _leader(ahead_path: LoggedPath, state: AgentState, length: torch.Tensor, width: torch.Tensor,
            params: IDMParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Gap [B, A] (inf if none) to, and speed along the path of, each agent's leader.

    ``ahead_path``: each agent's path window starting at its own position (arc 0).
    """
    n = state.valid.shape[-1]
    others = state.pos.unsqueeze(1).expand(-1, n, -1, -1)            # [B, i, j, 2]
    ahead, dist, seg = ahead_path.project(others)
    path_yaw = torch.gather(ahead_path.yaw, -1, seg)                      # yaw of path i at j's projection
    rel_yaw = state.yaw.unsqueeze(1) - path_yaw
    c, sn = torch.cos(rel_yaw), torch.sin(rel_yaw)
    lj, wj = 0.5 * length.unsqueeze(1), 0.5 * width.unsqueeze(1)
    along_extent = lj * c.abs() + wj * sn.abs()
    across_extent = lj * sn.abs() + wj * c.abs()
    gap = ahead - 0.5 * length.unsqueeze(-1) - along_extent
    candidate = ((ahead > 0) & (dist < 0.5 * width.unsqueeze(-1) + across_extent + params.lateral_margin)
                 & state.valid.unsqueeze(1)
                 & ~torch.eye(n, dtype=torch.bool, device=ahead.device))
    gap = gap.masked_fill(~candidate, float("inf"))
    best, j = gap.min(-1)
    lead_speed = torch.gather(state.spd.unsqueeze(1) * c, -1, j.unsqueeze(-1)).squeeze(-1)
    return best, lead_speed


def _light_gap(path: LoggedPath, speed: torch.Tensor, length: torch.Tensor, tl_valid: torch.Tensor,
               tl_state: torch.Tensor, tl_pos: torch.Tensor, tl_dir: torch.Tensor, params: IDMParams) -> torch.Tensor:
    """[B, A] gap to the nearest red/yellow stop point on the path window ahead (arc 0 = the agent)
    that can still be stopped for (else inf)."""
    n = speed.shape[-1]
    stop = tl_valid & (tl_state[..., TLState.STOP] | tl_state[..., TLState.CAUTION]).bool()     # [B, S]
    points = tl_pos.unsqueeze(1).expand(-1, n, -1, -1)                                          # [B, A, S, 2]
    arc, dist, seg = path.project(points)
    path_yaw = torch.gather(path.yaw, -1, seg)
    d = tl_dir.unsqueeze(1)
    cos = (d[..., 0] * torch.cos(path_yaw) + d[..., 1] * torch.sin(path_yaw)) / d.norm(dim=-1).clamp(min=1e-6)
    gap = arc - 0.5 * length.unsqueeze(-1)
    braking = (speed * speed / (2.0 * params.stop_decel)).unsqueeze(-1)
    on_path = stop.unsqueeze(1) & (dist < params.light_lateral) & (cos > 0.5) & (gap > braking)
    return gap.masked_fill(~on_path, float("inf")).amin(-1)


class IDMBackground:
    """Background agents driven by IDM along their logged paths (see the module docstring)."""

    name = "idm"

    def __init__(self, params: IDMParams | None = None) -> None:
        self.params = params or IDMParams()
        self._batch: SceneBatch | None = None
        self._path: LoggedPath | None = None
        self._v0: torch.Tensor | None = None
        self._s: torch.Tensor | None = None
        self._tracked: torch.Tensor | None = None

    def reset(self, batch: SceneBatch, ego_index: torch.Tensor, *, env_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None, scene_keys: Sequence[Hashable | None] | None = None) -> None:
        """Cache the paths and desired speeds of ``batch`` (of its rows ``env_ids`` when given, the other
        rows are unchanged) and forget the agents of those rows. Buffers are overwritten in place."""
        self._batch = batch
        scenes = batch if env_ids is None else batch.index(env_ids)
        path = LoggedPath.from_batch(scenes, STEP_CURRENT, self.params.path_extension)
        future_valid = scenes.agent_valid[:, STEP_CURRENT:]
        v0 = (scenes.agent_spd[:, STEP_CURRENT:].abs() * future_valid).amax(1)
        if env_ids is None or self._s is None:
            self._path, self._v0 = assign(self._path, path), assign(self._v0, v0)
            self._s = assign(self._s, torch.zeros_like(v0))
            self._tracked = assign(self._tracked, torch.zeros_like(future_valid[:, 0]))
        else:
            copy_rows_(self._path, env_ids, path)
            self._v0[env_ids] = v0
            self._tracked[env_ids] = False

    def propose(self, state: AgentState, step: torch.Tensor) -> AgentState:
        """The state at ``step`` [B] of every agent, from ``state`` at ``step - 1``."""
        batch, path, params = self._batch, self._path, self.params
        assert batch is not None and path is not None and self._v0 is not None
        # agents seen for the first time (reset or spawn) start at the path point of their current step
        k = path.arc.shape[-1]
        idx = (step - 1 - STEP_CURRENT).clamp(0, k - 1).view(-1, 1).expand_as(self._s)
        start = torch.gather(path.arc, -1, idx.unsqueeze(-1)).squeeze(-1)
        fresh = state.valid & ~self._tracked
        s = torch.where(fresh, start, self._s)
        v = state.spd.clamp(min=0.0)
        length, width = batch.agent_size[..., 0], batch.agent_size[..., 1]
        ahead = path.window(s, params.lookahead_points, params.lookahead_spacing)
        gap, lead_speed = _leader(ahead, state, length, width, params)
        acc = idm_acceleration(v, self._v0, gap, v - lead_speed, params)
        rows = torch.arange(step.shape[0], device=step.device)
        t_light = (step - 1).clamp(0, batch.num_steps - 1)
        light_gap = _light_gap(ahead, v, length, batch.tl_valid[rows, t_light], batch.tl_state[rows, t_light],
                               batch.tl_pos[rows, t_light], batch.tl_dir[rows, t_light], params)
        light_acc = idm_acceleration(v, self._v0, light_gap, v, params)
        vehicle = batch.agent_type[..., AgentType.VEHICLE].bool()
        acc = torch.where(vehicle, torch.minimum(acc, light_acc), acc)
        limit = action_limits(batch.agent_type)[..., 0]
        acc = torch.minimum(acc, (torch.maximum(self._v0, v) - v) / DT)
        acc = torch.maximum(acc.clamp(-limit, limit), -v / DT)
        v_new = v + DT * acc
        s_new = s + DT * 0.5 * (v + v_new)
        pos, yaw = path.interpolate(s_new)
        self._s.copy_(torch.where(state.valid, s_new, s))
        self._tracked.copy_(state.valid)
        return AgentState(valid=state.valid, pos=pos, yaw=yaw, spd=v_new, vel=(pos - state.pos) / DT, acc=acc,
                          yaw_rate=(yaw - state.yaw) / DT).masked()

