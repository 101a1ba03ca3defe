"""One closed-loop transition of all agents, shared by :func:`~trafficbots_gym.model.rollout.rollout` and
:class:`~trafficbots_gym.model.policy.TrafficBotsPolicy`.

An episode is encoded once (:func:`encode_episode`: map, traffic lights, agent tokens). A
transition from step t-1 to t then: encodes the agents' state, runs the policy with the traffic lights of
step ``min(t-1, last usable)``, squashes the action with ``tanh`` and the per-type limits, integrates the
midpoint unicycle, applies teacher forcing / spawning, checks the map boundary (kill) and the destination
(navigator). All functions are batched over scenes and agents with static shapes and no host syncs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.distributions import DiagGaussian
from trafficbots_gym.model.layers import KeyValue
from trafficbots_gym.model.navigation import DestinationGeometry, outside_map
from trafficbots_gym.model.traffic_bots import AgentKinematics, MapContext, TrafficBots
from trafficbots_gym.simulation.dynamics import unicycle_step
from trafficbots_gym.simulation.state import AgentState


@dataclass
class SceneEncoding:
    """Everything the closed loop needs from the network that does not change during an episode."""

    map: MapContext
    tl_tokens: Tensor        # [B, T, S, D] every logged step
    tl_valid: Tensor         # [B, T, S]
    history_tokens: Tensor   # [B, H, A, D] agent tokens of the history steps
    history_valid: Tensor    # [B, H, A]
    full_tokens: Tensor | None  # [B, T, A, D] agent tokens of the whole log (posterior input)


@dataclass
class EpisodeContext:
    """Per-episode constants of the closed loop (rows = scenes)."""

    map: MapContext
    tl_kv: list[KeyValue]    # agent-to-TL keys/values per layer, each [B, T, H, S, d], every logged step
    tl_valid: Tensor         # [B, T, S]
    tl_last: Tensor          # [B] long, last traffic-light step the policy may see
    agent_type: Tensor       # [B, A, 3] bool
    agent_size: Tensor       # [B, A, 3]
    action_limits: Tensor    # [B, A, 2] (acc m/s^2, yaw rate rad/s)
    latent: Tensor           # [B, A, Z]
    goal_feature: Tensor     # [B, A, D]
    dest: DestinationGeometry
    boundary: Tensor         # [B, 4]


@dataclass
class LoopState:
    """Evolving closed-loop state. ``agents`` holds x, y, yaw, speed and the kinematic *policy inputs*
    (vel, acc, yaw rate): in reference-compatible mode those only change at initialisation / overrides."""

    agents: AgentState
    killed: Tensor           # [B, A] bool
    goal_valid: Tensor       # [B, A] bool
    dest_reached: Tensor     # [B, A] bool, cumulative
    outside_map: Tensor      # [B, A] bool, cumulative
    hidden: Tensor           # [layers, B*A, D]


@dataclass
class PolicyOutput:
    """Result of one policy call."""

    dist: DiagGaussian       # unbounded action distribution [B, A, 2]
    action: Tensor           # executed unbounded action [B, A, 2]
    physical: Tensor         # (acc, yaw rate) [B, A, 2], zero for invalid agents
    logp: Tensor             # [B, A], zero for invalid agents
    hidden: Tensor


def log_kinematics(batch: SceneBatch) -> AgentKinematics:
    """The logged kinematics of every step ``[B, T, A]`` of ``batch``."""
    return AgentKinematics(batch.agent_valid, batch.agent_pos, batch.agent_yaw, batch.agent_spd, batch.agent_vel,
                           batch.agent_acc, batch.agent_yaw_rate)


def encode_episode(model: TrafficBots, batch: SceneBatch, history: SceneBatch | None = None, *,
                   full_log: bool = True) -> SceneEncoding:
    """Encode map, traffic lights and agent tokens of ``batch`` once.

    ``history`` (the scenes' ``history/`` view, as the reference uses at evaluation) defaults to the first
    ``n_step_history`` steps of ``batch``. Agent tokens of the whole log are only built when the batch has
    more steps than the history and ``full_log`` is set (they feed the posterior latent).
    """
    n_hist = model.cfg.n_step_history
    map_ctx = model.encode_map(batch.map_valid, batch.map_type, batch.map_pos, batch.map_dir)
    tl_tokens = model.encode_traffic_lights(batch.tl_valid, batch.tl_state, batch.tl_pos, batch.tl_dir)
    full_tokens = None
    if full_log and batch.num_steps > n_hist:
        full_tokens = model.encode_agents(log_kinematics(batch), batch.agent_size, batch.agent_type)
    if history is None:
        history_valid = batch.agent_valid[:, :n_hist]
        history_tokens = (full_tokens[:, :n_hist] if full_tokens is not None else
                          model.encode_agents(_slice_steps(log_kinematics(batch), n_hist), batch.agent_size,
                                              batch.agent_type))
    else:
        history_valid = history.agent_valid[:, :n_hist]
        hist = _slice_steps(log_kinematics(history), n_hist)
        history_tokens = model.encode_agents(hist, history.agent_size, history.agent_type)
    return SceneEncoding(map_ctx, tl_tokens, batch.tl_valid, history_tokens, history_valid, full_tokens)


def history_tl(enc: SceneEncoding, history: SceneBatch | None, model: TrafficBots) -> tuple[Tensor, Tensor]:
    """Traffic-light tokens / validity of the history steps."""
    n_hist = model.cfg.n_step_history
    if history is None:
        return enc.tl_tokens[:, :n_hist], enc.tl_valid[:, :n_hist]
    tokens = model.encode_traffic_lights(history.tl_valid[:, :n_hist], history.tl_state[:, :n_hist],
                                         history.tl_pos[:, :n_hist], history.tl_dir[:, :n_hist])
    return tokens, history.tl_valid[:, :n_hist]


def _slice_steps(kin: AgentKinematics, n: int) -> AgentKinematics:
    return AgentKinematics(*(getattr(kin, f.name)[:, :n] for f in fields(kin)))


def action_limits(cfg_limits: list[list[float]], agent_type: Tensor, like: Tensor) -> Tensor:
    """[B, A, 2] physical limits per agent type (vehicle limits for agents without a type)."""
    limits = _limit_table(tuple(tuple(float(v) for v in row) for row in cfg_limits), like.dtype, like.device)
    onehot = agent_type.to(like.dtype)
    typed = onehot @ limits
    return torch.where(agent_type.any(-1, keepdim=True), typed, limits[0])


@functools.lru_cache(maxsize=32)
def _limit_table(limits: tuple[tuple[float, ...], ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The limits as a device tensor, made once: a host-to-device copy may not run inside a CUDA graph."""
    with torch.inference_mode(False):
        return torch.tensor(limits, dtype=dtype, device=device)


def teacher_forcing_mask(valid: Tensor, step_spawn: int, step_warm_start: int) -> Tensor:
    """[B, T, A] bool: steps at which an agent is replaced by its logged state.

    Step 0 for agents valid at step 0; steps 1..``step_spawn`` where an agent appears (invalid -> valid);
    steps 0..``step_warm_start`` for every valid agent.
    """
    mask = torch.zeros_like(valid)
    mask[:, 0] = valid[:, 0]
    spawn = ~valid[:, :-1] & valid[:, 1:]
    spawn[:, step_spawn:].fill_(False)
    mask[:, 1:] |= spawn
    mask[:, :step_warm_start + 1] |= valid[:, :step_warm_start + 1]
    return mask


def tl_index(step: Tensor, tl_last: Tensor) -> Tensor:
    """Traffic-light step seen by the policy when moving to ``step``: ``min(step-1, tl_last)``."""
    return torch.minimum(step - 1, tl_last).clamp_min(0)


def _gather_step(x: Tensor, idx: Tensor) -> Tensor:
    """``x`` [B, T, ...] at per-row step ``idx`` [B] -> [B, ...]."""
    shape = (x.shape[0], 1) + x.shape[2:]
    return torch.gather(x, 1, idx.view(-1, *([1] * (x.dim() - 1))).expand(shape)).squeeze(1)


def policy_step(model: TrafficBots, ctx: EpisodeContext, agents: AgentState, step: Tensor, goal_valid: Tensor,
                hidden: Tensor, *, deterministic: bool | Tensor, generator: torch.Generator | None = None,
                use_checkpoint: bool = False) -> PolicyOutput:
    """Policy action for moving every agent from ``agents`` (state at ``step``-1) to ``step`` [B]."""
    idx = tl_index(step, ctx.tl_last)
    tl_kv = [(_gather_step(k, idx), _gather_step(v, idx)) for k, v in ctx.tl_kv]
    tl_valid = _gather_step(ctx.tl_valid, idx)
    kin = AgentKinematics(agents.valid, agents.pos.detach(), agents.yaw.detach(), agents.spd.detach(),
                          agents.vel.detach(), agents.acc.detach(), agents.yaw_rate.detach())

    def network(hid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens = model.encode_agents(kin, ctx.agent_size, ctx.agent_type)
        dist, new_hidden = model.policy(tokens, agents.valid, ctx.agent_type, ctx.map, tl_kv, tl_valid,
                                        ctx.goal_feature, goal_valid, ctx.latent, hid)
        return dist.mean, dist.log_std, new_hidden

    if use_checkpoint and torch.is_grad_enabled():
        mean, log_std, hidden = checkpoint(network, hidden, use_reentrant=False)
    else:
        mean, log_std, hidden = network(hidden)
    dist = DiagGaussian(mean.float(), log_std.float(), agents.valid)
    action = dist.sample(deterministic, generator)
    invalid = ~agents.valid
    logp = dist.log_prob(action.detach()).masked_fill(invalid, 0.0)
    physical = (torch.tanh(action) * ctx.action_limits).masked_fill(invalid.unsqueeze(-1), 0.0)
    return PolicyOutput(dist, action, physical, logp, hidden)


def integrate(agents: AgentState, physical: Tensor, *, update_inputs: bool) -> AgentState:
    """Midpoint-unicycle step with physical actions [B, A, 2]; invalid agents are zero.

    With ``update_inputs`` the kinematic policy inputs (vel, acc, yaw rate) follow the simulated motion;
    without, they keep their previous values (reference behaviour).
    """
    acc, yaw_rate = physical[..., 0], physical[..., 1]
    pos, yaw, spd, vel = unicycle_step(agents.pos, agents.yaw, agents.spd, acc, yaw_rate)
    valid = agents.valid
    zero = ~valid
    out = AgentState(valid=valid, pos=pos.masked_fill(zero.unsqueeze(-1), 0.0), yaw=yaw.masked_fill(zero, 0.0),
                     spd=spd.masked_fill(zero, 0.0), vel=agents.vel, acc=agents.acc, yaw_rate=agents.yaw_rate)
    if update_inputs:
        out.vel = vel.masked_fill(zero.unsqueeze(-1), 0.0)
        out.acc = acc.masked_fill(zero, 0.0)
        out.yaw_rate = yaw_rate.masked_fill(zero, 0.0)
    return out


def override(agents: AgentState, killed: Tensor, mask: Tensor, logged: AgentState) -> AgentState:
    """Teacher forcing / spawning: agents in ``mask`` (and not killed) take their ``logged`` state."""
    mask = mask & ~killed
    out = agents.where(mask, logged)
    out.valid = agents.valid | mask
    return out


def navigate(ctx: EpisodeContext, agents: AgentState, goal_valid: Tensor, dest_reached: Tensor,
             outside: Tensor, killed: Tensor, logged_valid: Tensor | None) -> tuple[AgentState, Tensor, Tensor, Tensor, Tensor]:
    """Rule checks after a transition: kill agents that left the map (unless their log is valid at this
    step), record destinations reached and disable reached destinations.

    Returns (agents, goal_valid, dest_reached, outside_map, killed), flags cumulative.
    """
    off_map = outside_map(agents.valid, agents.pos.detach(), ctx.boundary)
    outside = outside | off_map
    dest_reached = dest_reached | ctx.dest.reached(agents.valid, agents.pos.detach(), agents.yaw.detach())
    kill = off_map if logged_valid is None else off_map & ~logged_valid
    killed = killed | kill
    agents = AgentState(valid=agents.valid & ~kill, pos=agents.pos, yaw=agents.yaw, spd=agents.spd,
                        vel=agents.vel, acc=agents.acc, yaw_rate=agents.yaw_rate)
    goal_valid = goal_valid & agents.valid & ~dest_reached
    return agents, goal_valid, dest_reached, outside, killed


def episode_context(model: TrafficBots, batch: SceneBatch, enc: SceneEncoding, agent_type: Tensor,
                    agent_size: Tensor, latent: Tensor, dest: Tensor, tl_last_step: int) -> EpisodeContext:
    """Per-episode constants of the closed loop for ``batch`` with destinations ``dest`` [B, A]."""
    n_batch = batch.batch_size
    return EpisodeContext(
        map=enc.map, tl_kv=model.project_tl_kv(enc.tl_tokens), tl_valid=enc.tl_valid,
        tl_last=torch.full((n_batch,), min(tl_last_step, batch.num_steps - 1), device=batch.device),
        agent_type=agent_type, agent_size=agent_size,
        action_limits=action_limits(model.cfg.action_limits, agent_type, batch.agent_pos),
        latent=latent, goal_feature=model.goal_feature(enc.map, dest),
        dest=DestinationGeometry.gather(dest, batch.map_valid, batch.map_type, batch.map_pos, batch.map_dir),
        boundary=batch.map_boundary)


def initial_loop_state(model: TrafficBots, batch: SceneBatch, goal_valid: Tensor) -> LoopState:
    """Closed-loop state at step 0: the logged state, fresh flags and a zero GRU state."""
    logged = AgentState.from_log(batch, 0)
    zeros = torch.zeros_like(logged.valid)
    return LoopState(agents=logged, killed=zeros, goal_valid=goal_valid.clone(), dest_reached=zeros.clone(),
                     outside_map=zeros.clone(),
                     hidden=model.initial_hidden(batch.batch_size, logged.valid.shape[1], batch.agent_pos))


@dataclass
class Transition:
    """What happened in one transition t-1 -> t."""

    policy: PolicyOutput
    pred: AgentState       # policy prediction for step t, before any override
    override: Tensor       # [B, A] teacher-forcing / spawn mask applied at t
    state: LoopState       # state after step t


def transition(model: TrafficBots, ctx: EpisodeContext, state: LoopState, step: int, batch: SceneBatch,
               tf_mask: Tensor, *, deterministic: bool | Tensor, generator: torch.Generator | None = None,
               use_checkpoint: bool = False) -> Transition:
    """Policy, dynamics, teacher forcing / spawn from the log of ``batch`` and rule checks for ``step``.

    Beyond the end of the log there is no override and no kill protection.
    """
    n_batch = batch.batch_size
    out = policy_step(model, ctx, state.agents, torch.full((n_batch,), step, device=batch.device),
                      state.goal_valid, state.hidden, deterministic=deterministic, generator=generator,
                      use_checkpoint=use_checkpoint)
    pred = integrate(state.agents, out.physical, update_inputs=not model.cfg.reference_compat)
    in_log = step < batch.num_steps
    mask = tf_mask[:, step] if in_log else torch.zeros_like(pred.valid)
    agents = override(pred, state.killed, mask, AgentState.from_log(batch, step)) if in_log else pred
    agents, goal_valid, reached, outside, killed = navigate(
        ctx, agents, state.goal_valid, state.dest_reached, state.outside_map, state.killed,
        batch.agent_valid[:, step] if in_log else None)
    return Transition(out, pred, mask, LoopState(agents, killed, goal_valid, reached, outside, out.hidden))
