"""Ego action spaces and their mapping to the physical (acceleration, yaw rate) of the unicycle.

* ``continuous``: ``Box(-1, 1, (2,))`` = normalised (acceleration, yaw rate); out-of-range values are
  clipped, NaN/inf raise ``ValueError``.
* ``discrete``: ``Discrete(n_acc * n_yaw_rate)``; action k selects normalised acceleration
  ``linspace(-1, 1, n_acc)[k // n_yaw_rate]`` and yaw rate ``linspace(-1, 1, n_yaw_rate)[k % n_yaw_rate]``.
* ``route``: ``Box(-1, 1, (2,))`` = normalised (acceleration, target lateral offset from the ego's logged
  route); the offset is ``a[1] * route_offset_range`` m, positive = left of the route. A built-in pure
  pursuit steers: it aims at the route point ``max(4 m, 1 s * |speed|)`` of arc length ahead of the ego's
  projection on its route (that far behind it while reversing), shifted sideways by the target offset
  (beyond its ends the route runs on straight along its first / last heading), with yaw rate
  ``speed * 2 sin(alpha) / distance`` to that point (alpha = the point's bearing relative to the ego's
  heading), clipped to the type's yaw-rate limit. Clipping and checks as ``continuous``. With
  ``route_curve_accel`` > 0 the acceleration is also capped so that the speed stays below
  ``sqrt(route_curve_accel / curvature)`` of the route ahead (a curve-speed shield; 0 = off, the default).

Normalised accelerations (and yaw rates) are scaled by the limits of the ego's agent type (vehicle:
5 m/s^2, 1.5 rad/s), the same limits the learned agents use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

from trafficbots_gym.data.constants import DT
from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.route import Route, RoutePosition
from trafficbots_gym.simulation.dynamics import (action_limits, pure_pursuit_yaw_rate, pursuit_lookahead, scale_action,
                                                 wrap_angle)

CURVE_LOOKAHEAD_TIME = 3.0
"""s of travel at the current speed over which ``route_curve_accel`` looks for the route's sharpest curve ..."""
CURVE_LOOKAHEAD_MIN = 5.0
"""... plus this many metres (so a standing ego sees the curve it starts into) ..."""
CURVE_SAMPLES = 9
"""... sampled at this many evenly spaced route points."""


def action_space(config: EnvConfig) -> spaces.Space:
    """The single-env action space of ``config.action_mode``."""
    if config.action_mode == "discrete":
        return spaces.Discrete(config.n_acc * config.n_yaw_rate)
    return spaces.Box(-1.0, 1.0, (2,), np.float32)


def discrete_grid(n_acc: int, n_yaw_rate: int) -> torch.Tensor:
    """[n_acc * n_yaw_rate, 2] normalised (acc, yaw rate) of each discrete action, acceleration-major."""
    acc = torch.linspace(-1.0, 1.0, n_acc) if n_acc > 1 else torch.zeros(1)
    yaw = torch.linspace(-1.0, 1.0, n_yaw_rate) if n_yaw_rate > 1 else torch.zeros(1)
    return torch.cartesian_prod(acc, yaw)


@dataclass
class EgoOnRoute:
    """What route-relative actions need of each row before the step: the ego's state and its route."""

    pos: torch.Tensor      # [B, 2] m
    yaw: torch.Tensor      # [B] rad
    spd: torch.Tensor      # [B] m/s (signed)
    route: Route
    where: RoutePosition   # the ego's projection on ``route``

    def steering_yaw_rate(self, offset: torch.Tensor) -> torch.Tensor:
        """[B] pure-pursuit yaw rate (rad/s, unclipped) along the route shifted ``offset`` [B] m to the left
        (aiming behind the ego while it reverses)."""
        lookahead = pursuit_lookahead(self.spd)
        ahead = torch.where(self.spd < 0, -lookahead, lookahead)
        target = self.route.point_ahead(self.pos, self.where.s, ahead, offset)
        return pure_pursuit_yaw_rate(self.pos, self.yaw, self.spd, target)

    def curve_speed_cap(self, lateral_accel: float) -> torch.Tensor:
        """[B] the acceleration (m/s^2) that brings the speed to ``sqrt(lateral_accel / kappa)`` in one step,
        kappa = the largest heading change per metre of the route over the next ``CURVE_LOOKAHEAD_TIME`` s of
        travel (+ ``CURVE_LOOKAHEAD_MIN`` m), sampled at ``CURVE_SAMPLES`` points."""
        speed = self.spd.clamp(min=0.0)
        span = speed * CURVE_LOOKAHEAD_TIME + CURVE_LOOKAHEAD_MIN
        s = self.where.s.unsqueeze(-1) + span.unsqueeze(-1) * torch.linspace(0.0, 1.0, CURVE_SAMPLES,
                                                                               device=speed.device)
        _, yaw = self.route.path.interpolate(s.unsqueeze(1))                   # [B, 1, CURVE_SAMPLES]
        step = (span / (CURVE_SAMPLES - 1)).unsqueeze(-1)
        kappa = (wrap_angle(yaw[:, 0, 1:] - yaw[:, 0, :-1]).abs() / step).amax(-1)
        return (torch.sqrt(lateral_accel / kappa.clamp(min=1e-4)) - speed) / DT


class ActionMapper:
    """Batched env actions -> physical ego actions [B, 2] on the simulation device (``route_relative``:
    :meth:`physical` needs the ego's state and route)."""

    def __init__(self, config: EnvConfig, device: torch.device) -> None:
        self.discrete = config.action_mode == "discrete"
        self.route_relative = config.action_mode == "route"
        self.route_offset_range = config.route_offset_range
        self.route_curve_accel = config.route_curve_accel
        self.grid = discrete_grid(config.n_acc, config.n_yaw_rate).to(device)
        self.device = device

    def normalised(self, actions: np.ndarray | torch.Tensor, num_envs: int) -> torch.Tensor:
        """[B, 2] normalised actions in [-1, 1] from ``actions`` ([B, 2] continuous / route or [B] discrete)."""
        a = torch.as_tensor(actions, device=self.device)
        if self.discrete:
            a = a.reshape(-1)
            if a.is_floating_point():
                if not torch.isfinite(a).all() or (a != a.round()).any():
                    raise ValueError(f"discrete actions must be integers, got {actions!r}")
                a = a.long()
            if a.shape != (num_envs,) or ((a < 0) | (a >= len(self.grid))).any():
                raise ValueError(f"expected {num_envs} discrete actions in [0, {len(self.grid)}), got {actions!r}")
            return self.grid[a]
        a = a.to(torch.float32)
        if a.shape != (num_envs, 2):
            raise ValueError(f"expected continuous actions of shape ({num_envs}, 2), got shape {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError(f"actions must be finite, got {actions!r}")
        return a.clamp(-1.0, 1.0)

    def physical(self, normalised: torch.Tensor, ego_type: torch.Tensor,
                 ego: EgoOnRoute | None = None) -> torch.Tensor:
        """[B, 2] (m/s^2, rad/s) for the ego agent types ``ego_type`` [B, 3] one-hot; route-relative actions
        also need ``ego``. Pure tensor ops (no host synchronisation)."""
        scaled = scale_action(normalised, ego_type)
        if not self.route_relative:
            return scaled
        if ego is None:
            raise ValueError("route actions need the ego's state and route (ego=EgoOnRoute(...))")
        max_acc, max_yaw_rate = action_limits(ego_type).to(normalised.dtype).unbind(-1)
        yaw_rate = ego.steering_yaw_rate(normalised[:, 1] * self.route_offset_range).to(normalised.dtype)
        yaw_rate = torch.maximum(torch.minimum(yaw_rate, max_yaw_rate), -max_yaw_rate)
        acc = scaled[:, 0]
        if self.route_curve_accel > 0:
            cap = ego.curve_speed_cap(self.route_curve_accel).to(acc.dtype)
            acc = torch.maximum(torch.minimum(acc, cap), -max_acc)
        return torch.stack([acc, yaw_rate], dim=-1)
