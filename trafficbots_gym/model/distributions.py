"""Diagonal Gaussians (latent, action) and the categorical over destination polylines."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def standard_normal(shape: torch.Size | tuple[int, ...], like: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1) noise of ``shape`` on ``like``'s device and dtype, drawn from ``generator``."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


@dataclass
class DiagGaussian:
    """Independent Normal over the last dimension; ``valid`` [...] marks rows that carry information."""

    mean: Tensor      # [..., D]
    log_std: Tensor   # [..., D] or [D] (broadcast)
    valid: Tensor | None = None

    @property
    def std(self) -> Tensor:
        return self.log_std.exp().expand_as(self.mean)

    def rsample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample (differentiable w.r.t. mean and log_std)."""
        return self.mean + self.std * standard_normal(self.mean.shape, self.mean, generator)

    def sample(self, deterministic: bool | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The mean where ``deterministic`` (bool or [...] bool tensor), a reparameterised sample elsewhere."""
        if isinstance(deterministic, bool):
            return self.mean if deterministic else self.rsample(generator)
        return torch.where(deterministic.unsqueeze(-1), self.mean, self.rsample(generator))

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density summed over the last dimension -> [...]."""
        std = self.std
        return (-((x - self.mean) ** 2) / (2 * std * std) - std.log() - _LOG_SQRT_2PI).sum(-1)

    def kl(self, other: "DiagGaussian") -> Tensor:
        """KL(self || other) summed over the last dimension -> [...]."""
        ls_p, ls_q = self.log_std.expand_as(self.mean), other.log_std.expand_as(other.mean)
        var_ratio = torch.exp(2 * (ls_p - ls_q))
        t = ((self.mean - other.mean) * torch.exp(-ls_q)) ** 2
        return (0.5 * (var_ratio + t - 1) - (ls_p - ls_q)).sum(-1)

    def detach(self) -> "DiagGaussian":
        return DiagGaussian(self.mean.detach(), self.log_std.detach(), self.valid)


def categorical_log_probs(logits: Tensor) -> Tensor:
    """Normalised log-probabilities over the last dimension (``-inf`` logits stay impossible)."""
    return torch.log_softmax(logits.float(), dim=-1)


def categorical_sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of ``logits`` [..., K], drawn with the Gumbel-max trick from ``generator``."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))
    return torch.argmax(logits.float() + gumbel, dim=-1)
