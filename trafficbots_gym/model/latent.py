"""The personality latent (CVAE): prior (history) and posterior (whole log) heads.

The map- and traffic-light cross-attention in front of both heads is shared with the policy and lives in
:class:`~trafficbots_gym.model.traffic_bots.TrafficBots`; a head receives the already map/TL-aware agent
tokens of the down-sampled steps and applies agent interaction, a GRU over time, max-pooling over valid
steps and a diagonal Gaussian with a learned global log-std.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.distributions import DiagGaussian
from trafficbots_gym.model.layers import MLP, TransformerBlock, gru_sequence, interact, make_gru, max_valid


class LatentHead(nn.Module):
    """Agent tokens over time [B, T', A, D] -> per-agent Gaussian over the latent [B, A, latent_dim]."""

    def __init__(self, cfg: TrafficBotsConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.interaction = TransformerBlock(cfg.interaction_layers, d, cfg.n_head, cfg.d_feedforward, cfg.dropout)
        self.gru = make_gru(d, cfg.gru_layers, cfg.dropout)
        self.mean = MLP([d, d, cfg.latent_dim], end_activation=False)
        self.log_std = nn.Parameter(torch.full((cfg.latent_dim,), float(cfg.latent_log_std_init)))

    def forward(self, tokens: Tensor, valid: Tensor) -> DiagGaussian:
        """``tokens`` [B, T', A, D] (map/TL-aware), ``valid`` [B, T', A]."""
        n_batch, n_step = valid.shape[:2]
        x = interact(self.interaction, tokens.flatten(0, 1), valid.flatten(0, 1)).unflatten(0, (n_batch, n_step))
        x = gru_sequence(self.gru, x, valid)
        feature = max_valid(x, valid)
        agent_valid = valid.any(1)
        return DiagGaussian(self.mean(feature, agent_valid), self.log_std, agent_valid)
