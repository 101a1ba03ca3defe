"""Per-type Gaussian action head: unbounded (acc, yaw-rate) means and learned global log-stds."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from trafficbots_gym.data.constants import N_AGENT_TYPE
from trafficbots_gym.model.distributions import DiagGaussian
from trafficbots_gym.model.layers import MLP

ACTION_DIM = 2


class ActionHead(nn.Module):
    """One mean MLP and one learned log-std vector per agent type (vehicle, pedestrian, cyclist).

    Agents that are invalid or have no type get mean 0 and log-std 0 (std 1).
    """

    def __init__(self, hidden_dim: int, log_std_init: float) -> None:
        super().__init__()
        self.mean = nn.ModuleList(MLP([hidden_dim, hidden_dim, ACTION_DIM], end_activation=False)
                                  for _ in range(N_AGENT_TYPE))
        self.log_std = nn.ParameterList(nn.Parameter(torch.full((ACTION_DIM,), float(log_std_init)))
                                        for _ in range(N_AGENT_TYPE))

    def forward(self, x: Tensor, valid: Tensor, agent_type: Tensor) -> DiagGaussian:
        """``x`` [B, A, D], ``valid`` [B, A], ``agent_type`` [B, A, 3] bool -> action distribution [B, A, 2]."""
        mask = (agent_type & valid.unsqueeze(-1)).unsqueeze(-1)        # [B, A, 3, 1]
        means = torch.stack([mlp(x) for mlp in self.mean], dim=-2)     # [B, A, 3, 2]
        log_stds = torch.stack(list(self.log_std), dim=0)              # [3, 2]
        mean = (means * mask).sum(-2)
        log_std = (log_stds.to(mean.dtype) * mask).sum(-2)
        return DiagGaussian(mean, log_std, valid)
