"""Training losses of TrafficBots: closed-loop imitation, personality KL and destination NLL.

All terms follow the reference ``TrainingMetrics`` (spec §5.1):

* imitation per (agent, step): ``w_pos * (SmoothL1(dx) + SmoothL1(dy)) + w_yaw * (1 - cos dyaw) / 2
  + w_spd * SmoothL1(dv)`` (SmoothL1 with beta 1), averaged over agent-steps where the prediction is
  valid, the log is valid and the step is a future step (>= ``step_start``);
* KL(posterior || prior) summed over latent dimensions, clamped below at ``kl_free_nats``, averaged over
  agents valid in the posterior that have at least one valid prediction;
* destination NLL ``-log p(dest_gt)`` averaged over agents with a known destination and a valid prediction.

Two optional terms are ours (weights 0 = the reference loss): the collision and off-road penalties of
:mod:`trafficbots_gym.model.safety_losses`, averaged over the simulated future agent-steps. Also ours: the
imitation cost of *starters* (agents that stand at the current step and move later in the log) can be
weighted ``w_start`` times (1 = the reference loss), against a policy that learned that standing agents
stay standing.

Rollout tensors use the rollout layout ``[B, T_sim, A, ...]`` where index ``i`` is absolute step
``i + 1`` (step 0 is the logged initial state); log tensors come from a ``SceneBatch`` ``[B, T, A, ...]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.model.safety_losses import collision_penalty, offroad_penalty


class DiagGaussianLike(Protocol):
    """What the losses need from a latent distribution: per-agent diagonal Gaussian parameters."""

    mean: torch.Tensor     # [B, A, D]
    log_std: torch.Tensor  # [B, A, D] (or broadcastable to it)
    valid: torch.Tensor    # [B, A] bool


class RolloutLike(Protocol):
    """The fields of a ``RolloutOutput`` that the losses read."""

    pred_pos: torch.Tensor     # [B, T_sim, A, 2]
    pred_yaw: torch.Tensor     # [B, T_sim, A]
    pred_spd: torch.Tensor     # [B, T_sim, A]
    pred_valid: torch.Tensor   # [B, T_sim, A] bool
    latent_post: DiagGaussianLike | None
    latent_prior: DiagGaussianLike | None
    dest_logits: torch.Tensor | None  # [B, A, P]
    dest_valid: torch.Tensor | None   # [B, A] bool


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training loss; defaults are the reference values."""

    w_imitation: float = 1.0
    w_kl: float = 0.1
    w_dest: float = 1.0
    w_pos: float = 0.1
    w_yaw: float = 10.0
    w_spd: float = 0.1
    kl_free_nats: float = 0.01
    step_start: int = STEP_CURRENT + 1
    w_collision: float = 0.0
    """Soft box overlap with the nearest agents (``safety_losses.collision_penalty``); 0 = off."""
    collision_at_fault_only: bool = False
    """Count a contact only for the agents that have the other agent ahead (the follower of a rear-end)."""
    collision_margin: float = 0.0
    """m: the collision term starts this far before two boxes touch (0 = at contact)."""
    w_offroad: float = 0.0
    """Road-edge contact and lane distance of vehicles (``safety_losses.offroad_penalty``); 0 = off."""
    w_start: float = 1.0
    """Weight of the imitation cost of starters (see ``starters``) relative to the other agents; 1 = off."""

    def __post_init__(self) -> None:
        for name in ("w_imitation", "w_kl", "w_dest", "w_pos", "w_yaw", "w_spd", "w_collision", "w_offroad",
                     "collision_margin", "w_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.step_start < 1:
            raise ValueError(f"LossConfig.step_start must be >= 1, got {self.step_start}")


def masked_mean(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ``mask``; 0 (with gradient graph kept) when the mask is empty."""
    mask = mask.to(value.dtype)
    return (value * mask).sum() / mask.sum().clamp(min=1.0)


def imitation_per_step(pred_pos: torch.Tensor, pred_yaw: torch.Tensor, pred_spd: torch.Tensor,
                       gt_pos: torch.Tensor, gt_yaw: torch.Tensor, gt_spd: torch.Tensor,
                       w_pos: float = 0.1, w_yaw: float = 10.0, w_spd: float = 0.1) -> torch.Tensor:
    """Per-element imitation cost (the negated reference "differentiable reward"), shape of ``pred_yaw``."""
    pos = F.smooth_l1_loss(pred_pos, gt_pos, reduction="none", beta=1.0).sum(-1)
    yaw = 0.5 * (1.0 - torch.cos(pred_yaw - gt_yaw))
    spd = F.smooth_l1_loss(pred_spd, gt_spd, reduction="none", beta=1.0)
    return w_pos * pos + w_yaw * yaw + w_spd * spd


def future_mask(pred_valid: torch.Tensor, step_start: int) -> torch.Tensor:
    """[B, T_sim, A] simulated agent-steps from ``step_start`` on (with or without a logged state)."""
    steps = torch.arange(1, pred_valid.shape[1] + 1, device=pred_valid.device)
    return pred_valid & (steps >= step_start)[None, :, None]


def imitation_mask(pred_valid: torch.Tensor, gt_valid: torch.Tensor, step_start: int) -> torch.Tensor:
    """[B, T_sim, A] agent-steps scored by the imitation loss (rollout index i = absolute step i + 1)."""
    return future_mask(pred_valid, step_start) & gt_valid


STANDING_SPEED = 0.5
"""m/s: an agent slower than this stands."""
MOVING_SPEED = 1.0
"""m/s: an agent faster than this moves."""


def starters(batch: SceneBatch, step: int = STEP_CURRENT) -> torch.Tensor:
    """[B, A] bool: agents that stand at ``step`` and move at some later logged step."""
    standing = batch.agent_valid[:, step] & (batch.agent_spd[:, step].abs() < STANDING_SPEED)
    later = batch.agent_valid[:, step + 1:] & (batch.agent_spd[:, step + 1:].abs() > MOVING_SPEED)
    return standing & later.any(1)


def imitation_loss(out: RolloutLike, batch: SceneBatch, cfg: LossConfig = LossConfig()) -> torch.Tensor:
    """Mean imitation cost of the rollout against the log over valid future agent-steps (starters' cost
    weighted ``cfg.w_start`` times)."""
    n = out.pred_pos.shape[1]
    if batch.num_steps < n + 1:
        raise ValueError(f"rollout has {n} steps but the batch only {batch.num_steps} logged steps")
    cost = imitation_per_step(out.pred_pos, out.pred_yaw, out.pred_spd,
                              batch.agent_pos[:, 1:n + 1], batch.agent_yaw[:, 1:n + 1], batch.agent_spd[:, 1:n + 1],
                              cfg.w_pos, cfg.w_yaw, cfg.w_spd)
    mask = imitation_mask(out.pred_valid, batch.agent_valid[:, 1:n + 1], cfg.step_start)
    if cfg.w_start != 1.0:
        cost = cost * (1.0 + (cfg.w_start - 1.0) * starters(batch).to(cost.dtype)).unsqueeze(1)
    return masked_mean(cost, mask)


def kl_diag_gaussian(mean_q: torch.Tensor, log_std_q: torch.Tensor,
                     mean_p: torch.Tensor, log_std_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over the last dimension."""
    var_q, var_p = torch.exp(2 * log_std_q), torch.exp(2 * log_std_p)
    kl = log_std_p - log_std_q + (var_q + (mean_q - mean_p) ** 2) / (2 * var_p) - 0.5
    return kl.sum(-1)


def kl_loss(post: DiagGaussianLike, prior: DiagGaussianLike, agent_mask: torch.Tensor,
            free_nats: float = 0.01) -> torch.Tensor:
    """KL(post || prior) per agent, clamped below at ``free_nats``, averaged over ``post.valid & agent_mask``."""
    kl = kl_diag_gaussian(post.mean, torch.broadcast_to(post.log_std, post.mean.shape),
                          prior.mean, torch.broadcast_to(prior.log_std, prior.mean.shape))
    if free_nats > 0:
        kl = kl.clamp(min=free_nats)
    return masked_mean(kl, post.valid & agent_mask)


def dest_nll(logits: torch.Tensor, dest: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``-log p(dest)`` under the categorical of ``logits`` [B, A, P] over ``mask`` [B, A].

    Masked-out polylines carry ``-inf`` logits; an agent whose logged destination is such a polyline has an
    infinite NLL and is left out (the reference would return ``inf``).
    """
    logp = torch.log_softmax(logits, dim=-1).gather(-1, dest.long().unsqueeze(-1)).squeeze(-1)
    usable = mask & torch.isfinite(logp)
    return masked_mean(-torch.where(usable, logp, torch.zeros_like(logp)), usable)


def training_losses(out: RolloutLike, batch: SceneBatch, cfg: LossConfig = LossConfig()) -> dict[str, torch.Tensor]:
    """``loss`` (weighted total), ``imitation``, ``kl``, ``dest_nll``, ``collision`` and ``offroad`` as scalars.

    A term whose inputs the rollout did not produce (no latent, no destination head), or whose weight is 0
    (collision, off-road: not computed then), is 0.
    """
    predicted = out.pred_valid.any(1)  # [B, A]: at least one valid prediction
    imitation = imitation_loss(out, batch, cfg)
    zero = imitation.new_zeros(())
    kl = zero
    if out.latent_post is not None and out.latent_prior is not None:
        kl = kl_loss(out.latent_post, out.latent_prior, predicted, cfg.kl_free_nats)
    nll = zero
    if out.dest_logits is not None:
        dest_valid = out.dest_valid if out.dest_valid is not None else torch.ones_like(predicted)
        known = batch.agent_dest_known.to(predicted.device)[:, None]
        nll = dest_nll(out.dest_logits, batch.agent_dest, dest_valid & predicted & known)
    collision = offroad = zero
    if cfg.w_collision > 0 or cfg.w_offroad > 0:
        future = future_mask(out.pred_valid, cfg.step_start)
    if cfg.w_collision > 0:
        collision = masked_mean(collision_penalty(out.pred_pos, out.pred_yaw, future, batch.agent_size,
                                                  batch.agent_type, at_fault_only=cfg.collision_at_fault_only,
                                                  margin=cfg.collision_margin),
                                future)
    if cfg.w_offroad > 0:
        offroad = masked_mean(offroad_penalty(out.pred_pos, out.pred_yaw, future, batch), future)
    total = (cfg.w_imitation * imitation + cfg.w_kl * kl + cfg.w_dest * nll + cfg.w_collision * collision
             + cfg.w_offroad * offroad)
    return {"loss": total, "imitation": imitation, "kl": kl, "dest_nll": nll, "collision": collision,
            "offroad": offroad}
