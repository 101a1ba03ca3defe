"""Ego action spaces and their mapping to the physical (acceleration, yaw rate) of the unicycle.

* ``continuous``: ``Box(-1, 1, (2,))`` = normalised (acceleration, yaw rate); out-of-range values are
  clipped, NaN/inf raise ``ValueError``.
* ``discrete``: ``Discrete(n_acc * n_yaw_rate)``; action k selects normalised acceleration
  ``linspace(-1, 1, n_acc)[k // n_yaw_rate]`` and yaw rate ``linspace(-1, 1, n_yaw_rate)[k % n_yaw_rate]``.

Normalised actions are scaled by the limits of the ego's agent type (vehicle: 5 m/s^2, 1.5 rad/s), the
same limits the learned agents use.
"""
from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.simulation.dynamics import scale_action


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


class ActionMapper:
    """Batched env actions -> physical ego actions [B, 2] on the simulation device."""

    def __init__(self, config: EnvConfig, device: torch.device) -> None:
        self.discrete = config.action_mode == "discrete"
        self.grid = discrete_grid(config.n_acc, config.n_yaw_rate).to(device)
        self.device = device

    def normalised(self, actions: np.ndarray | torch.Tensor, num_envs: int) -> torch.Tensor:
        """[B, 2] normalised actions in [-1, 1] from ``actions`` ([B, 2] continuous or [B] discrete)."""
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

    def physical(self, normalised: torch.Tensor, ego_type: torch.Tensor) -> torch.Tensor:
        """[B, 2] (m/s^2, rad/s) for the ego agent types ``ego_type`` [B, 3] one-hot."""
        return scale_action(normalised, ego_type)
