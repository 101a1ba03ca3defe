"""Closed-loop rollouts of all agents over a logged scene: training and the two evaluation procedures.

``rollout(model, batch, procedure=...)`` runs the policy from step 1 to step 90 (state at step 0 from the
log), teacher-forcing the history and optionally spawning agents that appear later:

=================== ======================================= ================ ===================== ==========
procedure           latent                                  destination      teacher forcing       TL seen
=================== ======================================= ================ ===================== ==========
``training``        posterior sample (prior w.p. p_prior)   logged           steps 0..10           full log*
``reactive_replay`` posterior mean                          logged           0..10 + spawns <= 90  full log*
``joint_future``    prior mean                              predicted argmax 0..10                 history
=================== ======================================= ================ ===================== ==========

(*) in reference-compatible mode the policy always sees the traffic lights of ``min(t-1, 10)``.
Training rollouts are differentiable (actions are the Gaussian mean by default; gradients flow through
the dynamics, the GRU state, the latent ``rsample`` and the map / destination features; the policy's
state inputs are detached as in the reference).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import N_STEP
from trafficbots_gym.model.closed_loop import (encode_episode, episode_context, history_tl, initial_loop_state,
                                               teacher_forcing_mask, transition)
from trafficbots_gym.model.distributions import DiagGaussian, categorical_log_probs, categorical_sample
from trafficbots_gym.model.traffic_bots import TrafficBots

Procedure = Literal["training", "reactive_replay", "joint_future"]
PROCEDURES: tuple[str, ...] = ("training", "reactive_replay", "joint_future")
TEACHER_FORCING: dict[str, tuple[int, int]] = {   # (spawn agents up to step, warm start up to step)
    "training": (10, 10), "reactive_replay": (90, 10), "joint_future": (10, 10)}


@dataclass
class RolloutOutput:
    """Everything a loss or a metric needs from a rollout. Sequences are ``[B, T, A, ...]`` with index i
    holding the transition to absolute step ``steps[i]`` (1..90)."""

    steps: Tensor              # [T] long
    pred_pos: Tensor           # [B, T, A, 2] prediction for steps[i] before any override; 0 where invalid
    pred_yaw: Tensor           # [B, T, A] (never wrapped)
    pred_spd: Tensor           # [B, T, A]
    pred_valid: Tensor         # [B, T, A] agent simulated in this transition (valid at steps[i]-1)
    override: Tensor           # [B, T, A] teacher forcing / spawn applied at steps[i]
    action_mean: Tensor        # [B, T, A, 2] unbounded Gaussian mean (pre-tanh); 0 where invalid
    action_log_std: Tensor     # [B, T, A, 2] log-std of the agent's type; 0 where invalid
    action_logp: Tensor        # [B, T, A] log-prob of the executed action; 0 where invalid
    outside_map: Tensor        # [B, T, A] cumulative
    dest_reached: Tensor       # [B, T, A] cumulative
    latent_post: DiagGaussian | None  # [B, A, Z], valid = seen at a down-sampled logged step
    latent_prior: DiagGaussian        # [B, A, Z], valid = seen at a down-sampled history step
    latent_from_prior: Tensor  # [B] bool, the rollout used the prior latent for this scene
    latent_sample: Tensor      # [B, A, Z] sample used by the policy
    latent_logp: Tensor        # [B, A] its log-prob under the distribution it came from
    dest: Tensor               # [B, A] long destination polyline used by the policy and the navigator
    dest_valid: Tensor         # [B, A] agent seen in the history (destination given to the policy)
    dest_logits: Tensor        # [B, A, P] destination predictor logits (float32)


def rollout(model: TrafficBots, batch: SceneBatch, *, procedure: Procedure,
            generator: torch.Generator | None = None, deterministic_action: bool = True,
            history: SceneBatch | None = None, p_prior: float = 0.1, n_steps: int = N_STEP - 1,
            use_checkpoint: bool = False, autocast_dtype: torch.dtype | None = None,
            check_destinations: bool = True) -> RolloutOutput:
    """Roll out ``model`` on ``batch`` (full 91-step logs) with ``procedure``.

    ``generator`` drives every random draw (latent samples, prior/posterior choice, stochastic actions).
    ``history`` is the scenes' ``history/`` view for the history-based inputs (defaults to the first
    11 steps of ``batch``). ``use_checkpoint`` recomputes each step's network activations in the backward
    pass (activation checkpointing); ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the network under
    autocast while dynamics stay float32. ``check_destinations`` verifies that every scene has logged
    destinations (a host synchronisation; a caller that checked the batch already, or that captures the
    rollout in a CUDA graph, turns it off).
    """
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown procedure {procedure!r}; expected one of {PROCEDURES}")
    cfg = model.cfg
    n_hist = cfg.n_step_history
    needs_log = procedure != "joint_future"
    if needs_log and batch.num_steps <= n_hist:
        raise ValueError(f"procedure {procedure!r} needs the full log, the batch has {batch.num_steps} steps")
    if needs_log and check_destinations and not bool(batch.agent_dest_known.all()):
        raise ValueError(f"procedure {procedure!r} needs logged destinations (agent/dest) for every scene")
    device = batch.device
    with autocast(device, autocast_dtype):
        enc = encode_episode(model, batch, history)
        hist_tl_tokens, hist_tl_valid = history_tl(enc, history, model)
        prior = model.latent(enc.history_tokens, enc.history_valid, hist_tl_tokens, hist_tl_valid, enc.map,
                             posterior=False)
        post = None
        if enc.full_tokens is not None:
            post = model.latent(enc.full_tokens, batch.agent_valid, enc.tl_tokens, enc.tl_valid, enc.map,
                                posterior=True)
        agent_type = batch.agent_type if history is None else history.agent_type
        dest_logits = model.destination_logits(enc.history_tokens, enc.history_valid, agent_type, enc.map,
                                               batch.map_type)
    prior = _float(prior)
    post = _float(post) if post is not None else None
    dest_valid = enc.history_valid.any(1)

    n_batch = batch.batch_size
    if procedure == "training":
        assert post is not None
        use_prior = torch.rand(n_batch, generator=generator, device=device) < p_prior
        latent_mean = torch.where(use_prior[:, None, None], prior.mean, post.mean)
        latent_log_std = torch.where(use_prior[:, None, None], prior.log_std.expand_as(prior.mean),
                                     post.log_std.expand_as(post.mean))
        latent_dist = DiagGaussian(latent_mean, latent_log_std)
        latent_sample = latent_dist.rsample(generator)
        dest = batch.agent_dest
    elif procedure == "reactive_replay":
        assert post is not None
        use_prior = torch.zeros(n_batch, dtype=torch.bool, device=device)
        latent_dist, latent_sample, dest = post, post.mean, batch.agent_dest
    else:
        use_prior = torch.ones(n_batch, dtype=torch.bool, device=device)
        latent_dist, latent_sample = prior, prior.mean
        dest = dest_logits.argmax(-1)
    latent_logp = latent_dist.log_prob(latent_sample.detach())

    tl_last_step = n_hist - 1 if (cfg.reference_compat or procedure == "joint_future") else batch.num_steps - 1
    agent_size = batch.agent_size if history is None else history.agent_size
    ctx = episode_context(model, batch, enc, agent_type, agent_size, latent_sample, dest, tl_last_step)
    tf_mask = teacher_forcing_mask(batch.agent_valid, *TEACHER_FORCING[procedure])
    state = initial_loop_state(model, batch, dest_valid)
    rec: dict[str, list[Tensor]] = {k: [] for k in ("pos", "yaw", "spd", "valid", "override", "mean", "log_std",
                                                     "logp", "outside", "reached")}
    for t in range(1, n_steps + 1):
        with autocast(device, autocast_dtype):
            tr = transition(model, ctx, state, t, batch, tf_mask, deterministic=deterministic_action,
                            generator=generator, use_checkpoint=use_checkpoint)
        state = tr.state
        for key, value in (("pos", tr.pred.pos), ("yaw", tr.pred.yaw), ("spd", tr.pred.spd),
                           ("valid", tr.pred.valid), ("override", tr.override), ("mean", tr.policy.dist.mean),
                           ("log_std", tr.policy.dist.log_std), ("logp", tr.policy.logp),
                           ("outside", state.outside_map), ("reached", state.dest_reached)):
            rec[key].append(value)

    def stack(key: str) -> Tensor:
        return torch.stack(rec[key], dim=1)

    return RolloutOutput(
        steps=torch.arange(1, n_steps + 1, device=device), pred_pos=stack("pos"), pred_yaw=stack("yaw"),
        pred_spd=stack("spd"), pred_valid=stack("valid"), override=stack("override"), action_mean=stack("mean"),
        action_log_std=stack("log_std"), action_logp=stack("logp"), outside_map=stack("outside"),
        dest_reached=stack("reached"), latent_post=post, latent_prior=prior, latent_from_prior=use_prior,
        latent_sample=latent_sample, latent_logp=latent_logp, dest=dest, dest_valid=dest_valid,
        dest_logits=dest_logits)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _float(dist: DiagGaussian) -> DiagGaussian:
    return DiagGaussian(dist.mean.float(), dist.log_std.float(), dist.valid)


def sample_destinations(logits: Tensor, mode: Literal["sample", "argmax"],
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Destinations [B, A] from predictor ``logits`` [B, A, P] and their log-probs."""
    dest = logits.argmax(-1) if mode == "argmax" else categorical_sample(logits, generator)
    logp = torch.gather(categorical_log_probs(logits), -1, dest.unsqueeze(-1)).squeeze(-1)
    return dest, logp
