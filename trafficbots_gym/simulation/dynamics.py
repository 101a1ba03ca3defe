"""Agent dynamics: the midpoint (semi-implicit) unicycle of TrafficBots, batched over ``[B, A]``.

State s = (x, y, yaw, v); action = (acceleration m/s^2, yaw rate rad/s) in physical units.
A normalised action a in [-1, 1]^2 maps to physical units by the per-type limits below; the policy's
unbounded Gaussian output u maps through ``a = tanh(u)``. Yaw is never wrapped here.

Also the pure-pursuit steering law shared by the route-following ego controllers (the ``route`` action
mode of the env and the ``idm`` benchmark controller).
"""
from __future__ import annotations

import functools
import math

import torch

from trafficbots_gym.data.constants import DT

ACTION_LIMITS = torch.tensor([[5.0, 1.5],   # vehicle: max |acc| (m/s^2), max |yaw rate| (rad/s)
                              [7.0, 7.0],   # pedestrian
                              [6.0, 3.0]])  # cyclist
"""[3, 2] per AgentType limits of (acceleration, yaw rate), as the reference configuration."""


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles to [-pi, pi)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


@functools.lru_cache(maxsize=None)
def _limits_on(device: torch.device) -> torch.Tensor:
    """``ACTION_LIMITS`` on ``device``, copied once (no host-to-device copy inside a step)."""
    return ACTION_LIMITS.to(device)


def action_limits(agent_type: torch.Tensor) -> torch.Tensor:
    """[..., 2] limits for one-hot ``agent_type`` [..., 3] (vehicle limits for agents with no type)."""
    limits = _limits_on(agent_type.device)
    onehot = agent_type.to(limits.dtype)
    per_agent = onehot @ limits
    none = ~agent_type.bool().any(-1, keepdim=True)
    return torch.where(none, limits[0], per_agent)


def scale_action(normalized: torch.Tensor, agent_type: torch.Tensor) -> torch.Tensor:
    """Normalised action in [-1, 1] -> physical (acc, yaw rate) for each agent's type."""
    return normalized * action_limits(agent_type).to(normalized.dtype)


def unicycle_step(pos: torch.Tensor, yaw: torch.Tensor, spd: torch.Tensor, acc: torch.Tensor,
                  yaw_rate: torch.Tensor, dt: float = DT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One midpoint-unicycle step; returns (pos [...,2], yaw, spd, vel [...,2] = displacement / dt)."""
    spd_mid = spd + 0.5 * dt * acc
    yaw_mid = yaw + 0.5 * dt * yaw_rate
    disp = torch.stack([torch.cos(yaw_mid), torch.sin(yaw_mid)], dim=-1) * (dt * spd_mid).unsqueeze(-1)
    return pos + disp, yaw + dt * yaw_rate, spd + dt * acc, disp / dt


PURSUIT_LOOKAHEAD_TIME: float = 1.0
"""s: pure pursuit aims at the path point this far ahead at the current speed ..."""
PURSUIT_MIN_LOOKAHEAD: float = 4.0
"""... but at least this far (m) along the path."""


def pursuit_lookahead(speed: torch.Tensor, lookahead_time: float = PURSUIT_LOOKAHEAD_TIME,
                      min_lookahead: float = PURSUIT_MIN_LOOKAHEAD) -> torch.Tensor:
    """Arc length (m) ahead on the path of the pure-pursuit target: ``max(min_lookahead, |speed| * lookahead_time)``."""
    return torch.clamp(speed.abs() * lookahead_time, min=min_lookahead)


def pure_pursuit_yaw_rate(pos: torch.Tensor, yaw: torch.Tensor, speed: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
    """Yaw rate [...] that keeps the unicycle (``pos`` [..., 2], ``yaw``, ``speed``) on the circular arc
    tangent to its heading through ``target`` [..., 2]: ``speed * 2 sin(alpha) / distance``, alpha = the
    target's bearing relative to the heading. Zero at zero speed; reversing moves back along the same arc."""
    d = target - pos
    alpha = wrap_angle(torch.atan2(d[..., 1], d[..., 0]) - yaw)
    return speed * 2.0 * torch.sin(alpha) / d.norm(dim=-1).clamp(min=1e-3)
