"""Warm start of the closed loop on the logged history (steps 1..10 with teacher forcing), with the
recurrence of its leading steps computed in one batch.

While every agent that the closed loop holds is also valid in the log, the warm start's agent states are
exactly the logged ones (teacher forcing replaces them), so the policy's recurrent input of those steps
-- agent tokens attending to map, lights and each other -- does not depend on earlier actions and can be
computed for all of them in one batched call; only the GRU runs step by step. :func:`log_exact_steps`
finds how many leading transitions qualify, :func:`recurrent_prefix` computes their GRU states, and
:func:`warm_start` replays the transitions with those states (the heads, action draws, dynamics, teacher
forcing and navigator run exactly as in :func:`~trafficbots_gym.model.closed_loop.transition`), then
continues step by step. Rows are independent in every batched operation, so the result equals the
step-by-step warm start.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.agent_rows import AgentRows
from trafficbots_gym.model.closed_loop import (EpisodeContext, LoopState, initial_loop_state, log_kinematics,
                                               teacher_forcing_mask, transition)
from trafficbots_gym.model.distributions import DiagGaussian
from trafficbots_gym.model.layers import KeyValue, gru_step, interact
from trafficbots_gym.model.rollout import TEACHER_FORCING, autocast
from trafficbots_gym.model.traffic_bots import AgentKinematics, MapContext, TrafficBots


def log_exact_steps(valid: Tensor, n_hist: int) -> Tensor:
    """[B] long: the number k of leading warm-start transitions (1..k) whose input states (steps 0..k-1) are
    all logged, i.e. no agent of the scene has left the log by then (``valid`` [B, T, A] logged validity)."""
    inputs = valid[:, :n_hist - 1].int()                        # inputs of transitions 1..n_hist-1
    seen = inputs.cummax(dim=1).values
    exact = (seen == inputs).all(-1)                             # [B, n_hist-1]
    return exact.int().cumprod(dim=1).sum(dim=1).long()


def recurrent_prefix(model: TrafficBots, batch: SceneBatch, map_ctx: MapContext, tl_kv: list[KeyValue],
                     tl_valid: Tensor, n_step: int, *, compact: bool = False) -> Tensor:
    """GRU states [B, n_hist-1, layers, A, D] after each of the first ``n_step`` warm-start transitions,
    computed from the logged states of steps 0..n_step-1 (zero beyond ``n_step``).

    ``tl_kv`` / ``tl_valid``: the per-step traffic-light keys/values [B, T, H, S, d] / validity [B, T, S]
    of the episode context (transition t sees the lights of step t-1). ``compact``: compute the rows of
    the agents valid at one of those steps only (:class:`~trafficbots_gym.model.agent_rows.AgentRows`).
    """
    n_hist = model.cfg.n_step_history
    kin = log_kinematics(batch)
    kin = AgentKinematics(*(getattr(kin, f.name)[:, :n_step] for f in fields(kin)))
    n_scene, n_agent = batch.batch_size, kin.valid.shape[-1]
    rows = AgentRows.of(kin.valid.any(1)) if compact and n_step > 0 else None
    step_kv = [(k[:, :n_step], v[:, :n_step]) for k, v in tl_kv]
    if rows is None:
        x = model.policy_features(model.encode_agents(kin, batch.agent_size, batch.agent_type), kin.valid, map_ctx,
                                  step_kv, tl_valid[:, :n_step])
        valid = kin.valid
    else:
        valid = rows.pick(kin.valid, agent_dim=2)
        picked = AgentKinematics(*(rows.pick(getattr(kin, f.name), agent_dim=2) for f in fields(kin)))
        tokens = model.encode_agents(picked, rows.pick(batch.agent_size), rows.pick(batch.agent_type))
        x = model.policy_context(tokens, valid, map_ctx, step_kv, tl_valid[:, :n_step])       # [B, n, R, D]
        x_all = rows.scatter(x.transpose(1, 2), n_agent).transpose(1, 2)                    # [B, n, A, D]
        read = rows.read.unsqueeze(1).expand(-1, n_step, -1)
        x = interact(model.interaction, x_all.flatten(0, 1), kin.valid.flatten(0, 1), read.flatten(0, 1),
                     valid.flatten(0, 1)).view(x.shape)
    hidden = model.initial_hidden(n_scene, valid.shape[-1], batch.agent_pos)
    states = []
    for t in range(n_step):
        _, hidden = gru_step(model.temporal, x[:, t], valid[:, t], hidden)
        states.append(hidden)
    n_layer, dim = hidden.shape[0], hidden.shape[-1]
    out = hidden.new_zeros(n_scene, n_hist - 1, n_layer, n_agent, dim)
    if states:
        per_row = torch.stack(states).view(n_step, n_layer, n_scene, -1, dim).permute(2, 3, 0, 1, 4)  # [B, R, n, L, D]
        out[:, :n_step] = (per_row if rows is None else rows.scatter(per_row, n_agent)).permute(0, 2, 3, 1, 4)
    return out


class RecordedRecurrence:
    """Stands in for the model in ``closed_loop.transition`` during a warm-start step whose GRU state was
    computed ahead (:func:`recurrent_prefix`): the policy call only runs the heads on that state."""

    def __init__(self, model: TrafficBots, hidden: Tensor) -> None:
        self.model, self.cfg, self.hidden = model, model.cfg, hidden

    def encode_agents(self, *args: Any) -> None:
        """Agent tokens are not needed: the recurrent state is known."""
        return None

    def policy(self, tokens: None, valid: Tensor, agent_type: Tensor, map_ctx: MapContext, tl_kv: list[KeyValue],
               tl_valid: Tensor, goal_feature: Tensor, goal_valid: Tensor, latent: Tensor,
               hidden: Tensor) -> tuple[DiagGaussian, Tensor]:
        """The heads of ``TrafficBots.policy`` on the recorded GRU state (its last layer is the GRU output)."""
        out = self.hidden[-1].view(valid.shape + (-1,))
        head_inputs = self.model.embed_head_inputs(goal_feature, latent)
        return self.model.policy_head(out, valid, agent_type, goal_valid, head_inputs), self.hidden


def warm_start(model: TrafficBots, ctx: EpisodeContext, batch: SceneBatch, goal_valid: Tensor, *,
               prefix: Tensor | None, prefix_steps: int, deterministic_action: bool,
               generator: torch.Generator | None, autocast_dtype: torch.dtype | None) -> LoopState:
    """Transitions 1..10 of the log with teacher forcing (as in training); the loop state after step 10.

    ``prefix`` [B, n_hist-1, layers, A, D]: GRU states of the first ``prefix_steps`` transitions (every row
    log-exact that far, see :func:`log_exact_steps`), or None to compute every step.
    """
    tf_mask = teacher_forcing_mask(batch.agent_valid, *TEACHER_FORCING["training"])
    state = initial_loop_state(model, batch, goal_valid)
    device = batch.agent_pos.device
    for t in range(1, model.cfg.n_step_history):
        step_model: Any = model
        if prefix is not None and t <= prefix_steps:
            recorded = prefix[:, t - 1]                                  # [B, layers, A, D]
            step_model = RecordedRecurrence(model, recorded.transpose(0, 1).flatten(1, 2))
        with autocast(device, autocast_dtype):
            state = transition(step_model, ctx, state, t, batch, tf_mask, deterministic=deterministic_action,
                               generator=generator).state
    return state
