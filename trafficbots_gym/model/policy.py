"""``TrafficBotsPolicy``: the learned traffic policy as the simulator sees it.

``reset`` encodes the scenes once (map features and the agent-to-map keys/values of every layer, traffic
light tokens of every logged step, destination features), draws latents and destinations from a
``torch.Generator`` and warm-starts the GRU on the logged steps 0..10 exactly as in training (policy step,
then teacher forcing with the log). Encoding runs over chunks of at most ``encode_chunk`` scenes, so its
memory is bounded whatever the batch size; the per-episode tensors are written straight into buffers that
later resets overwrite in place. ``act(state, step)`` then returns, for every agent of every scene in
one batched call, the physical action (acceleration m/s^2, yaw rate rad/s) that moves it from ``state``
(step-1) to ``step``. ``act`` has static shapes and no host synchronisation, so it can be captured in a
CUDA graph or compiled.

The simulator owns the dynamics, overrides and kills; the policy keeps its GRU state, the navigator
(destination reached -> disabled) and, in reference-compatible mode, the stale kinematic inputs (latched
when an agent (re)appears).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import N_STEP
from trafficbots_gym.model.closed_loop import (EpisodeContext, LoopState, action_limits, encode_episode,
                                               history_tl, initial_loop_state, policy_step, teacher_forcing_mask,
                                               transition)
from trafficbots_gym.model.distributions import DiagGaussian, categorical_sample
from trafficbots_gym.model.layers import KeyValue
from trafficbots_gym.model.navigation import DestinationGeometry
from trafficbots_gym.model.rollout import TEACHER_FORCING, autocast
from trafficbots_gym.model.traffic_bots import MapContext, TrafficBots
from trafficbots_gym.simulation.buffers import assign, copy_rows_, index_tree, same_layout
from trafficbots_gym.simulation.state import AgentState

LatentMode = Literal["prior", "posterior"]
DestinationMode = Literal["sample", "argmax", "logged"]
ENCODE_CHUNK = 32
"""Default number of scenes encoded together at reset (bounds the memory of map encoding and destination
scoring: about 0.3 GiB of activations per scene for the full-size model)."""


@dataclass
class _Encoded:
    """Per-episode encodings of R new scenes, assembled chunk by chunk (rows = the new scenes)."""

    map: MapContext
    tl_kv: list[KeyValue]
    tl_valid: Tensor        # [R, T, S]
    goal_valid: Tensor      # [R, A]: agents with a valid history step
    latent_mean: Tensor     # [R, A, Z]
    latent_log_std: Tensor  # [R, A, Z]
    logits: Tensor | None   # [R, A, P] destination logits (None for logged destinations)


class TrafficBotsPolicy:
    """Batched closed-loop TrafficBots policy for B scenes x A agents (see the module docstring)."""

    def __init__(self, model: TrafficBots, *, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None, encode_chunk: int = ENCODE_CHUNK) -> None:
        if encode_chunk < 1:
            raise ValueError(f"encode_chunk must be >= 1, got {encode_chunk}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = autocast_dtype
        self.encode_chunk = encode_chunk
        self.generator: torch.Generator | None = None
        self._ctx: EpisodeContext | None = None
        self._loop: LoopState | None = None
        self._warm: AgentState | None = None
        self._deterministic: Tensor | None = None   # [B, A] bool
        self._dest: Tensor | None = None           # [B, A] long
        self._inputs: AgentState | None = None     # latched kinematic inputs (reference-compatible mode)
        self._all_deterministic = True

    # ------------------------------------------------------------------------------------------ public
    @property
    def batch_size(self) -> int:
        """Number of scenes (rows); fixed after the first full reset."""
        self._require_reset()
        return int(self._dest.shape[0])

    @property
    def warm_start_state(self) -> AgentState:
        """State of every agent at step 10 after the warm start (the logged state for agents valid in the
        log at step 10; agents whose log ended earlier keep their simulated state)."""
        self._require_reset()
        return self._warm.clone()

    @property
    def destinations(self) -> Tensor:
        """[B, A] destination polyline of every agent."""
        self._require_reset()
        return self._dest.clone()

    @property
    def goal_valid(self) -> Tensor:
        """[B, A] agents that still pursue their destination."""
        self._require_reset()
        return self._loop.goal_valid.clone()

    @property
    def dest_reached(self) -> Tensor:
        """[B, A] agents that reached their destination (cumulative)."""
        self._require_reset()
        return self._loop.dest_reached.clone()

    @torch.no_grad()
    def reset(self, batch: SceneBatch, *, env_ids: Tensor | None = None, generator: torch.Generator | None = None,
              latent: LatentMode = "prior", destination: DestinationMode = "sample",
              deterministic_action: bool = True, deterministic_latent: bool = False) -> None:
        """Start episodes for the scenes of ``batch`` (at least the 11 history steps).

        Without ``env_ids`` this (re)defines the batch size. With ``env_ids`` [len(batch)] only those rows
        are replaced. ``latent``: draw the personality from the prior (history) or the posterior (needs the
        full log); ``deterministic_latent`` takes its mean. ``destination``: sample or argmax of the
        destination predictor, or the logged ``agent/dest``. ``generator`` drives all random draws of this
        reset and of later stochastic actions.
        """
        if latent not in ("prior", "posterior"):
            raise ValueError(f"latent must be 'prior' or 'posterior', got {latent!r}")
        if destination not in ("sample", "argmax", "logged"):
            raise ValueError(f"destination must be 'sample', 'argmax' or 'logged', got {destination!r}")
        model, cfg = self.model, self.model.cfg
        n_hist = cfg.n_step_history
        if batch.num_steps < n_hist:
            raise ValueError(f"reset needs at least {n_hist} logged steps, the batch has {batch.num_steps}")
        if latent == "posterior" and batch.num_steps <= n_hist:
            raise ValueError("latent='posterior' needs the full log; the batch only has the history")
        if destination == "logged" and not bool(batch.agent_dest_known.all()):
            raise ValueError("destination='logged' needs logged destinations (agent/dest) for every scene")
        if env_ids is not None:
            self._require_reset()
            env_ids = torch.as_tensor(env_ids, dtype=torch.long, device=self.device)
            if env_ids.shape != (batch.batch_size,):
                raise ValueError(f"env_ids has shape {tuple(env_ids.shape)}, the batch holds {batch.batch_size} scenes")
            if batch.agent_valid.shape[-1] != self._dest.shape[1]:
                raise ValueError(f"batch has {batch.agent_valid.shape[-1]} agents, the policy {self._dest.shape[1]}")
        if generator is not None:
            self.generator = generator
        batch = batch.to(self.device)
        n_scene = batch.batch_size
        in_place = env_ids is None and self._ctx is not None and self._dest.shape[0] == n_scene
        enc = self._encode(batch, latent, destination, self._ctx if in_place else None)
        dist = DiagGaussian(enc.latent_mean, enc.latent_log_std)
        latent_sample = dist.sample(deterministic_latent, self.generator)
        if destination == "logged":
            dest = batch.agent_dest
        else:
            assert enc.logits is not None
            dest = enc.logits.argmax(-1) if destination == "argmax" else categorical_sample(enc.logits, self.generator)
        tl_last = n_hist - 1 if cfg.reference_compat else batch.num_steps - 1
        limits_like = batch.agent_pos
        with autocast(self.device, self.autocast_dtype):
            goal_feature = model.goal_feature(enc.map, dest)
        ctx = EpisodeContext(
            map=enc.map, tl_kv=enc.tl_kv, tl_valid=enc.tl_valid,
            tl_last=torch.full((n_scene,), min(tl_last, batch.num_steps - 1), device=self.device),
            agent_type=batch.agent_type.clone(), agent_size=batch.agent_size.clone(),
            action_limits=action_limits(cfg.action_limits, batch.agent_type, limits_like), latent=latent_sample,
            goal_feature=goal_feature,
            dest=DestinationGeometry.gather(dest, batch.map_valid, batch.map_type, batch.map_pos, batch.map_dir),
            boundary=batch.map_boundary.clone())
        loop, warm = self._warm_start(ctx, batch, enc.goal_valid, deterministic_action)
        deterministic = torch.full_like(loop.goal_valid, deterministic_action)
        if env_ids is None:   # into the existing buffers when the layout allows (CUDA graphs stay valid)
            self._ctx = assign(self._ctx, ctx) if same_layout(self._ctx, ctx) else ctx   # ctx owns its tensors
            self._loop = assign(self._loop, loop)
            self._warm, self._inputs = assign(self._warm, warm), assign(self._inputs, warm)
            self._dest, self._deterministic = assign(self._dest, dest), assign(self._deterministic, deterministic)
        else:   # in place, so that tensors captured by a CUDA graph stay valid
            _scatter_(self._ctx, env_ids, ctx)
            _scatter_(self._loop, env_ids, loop)
            _scatter_(self._warm, env_ids, warm)
            _scatter_(self._inputs, env_ids, warm)
            self._dest[env_ids] = dest
            self._deterministic[env_ids] = deterministic
        self._all_deterministic = bool(self._deterministic.all())

    def _encode(self, batch: SceneBatch, latent: LatentMode, destination: DestinationMode,
                target: EpisodeContext | None) -> _Encoded:
        """Encode ``batch`` in chunks of ``encode_chunk`` scenes. Map and traffic-light tensors go straight
        into ``target``'s buffers when given (a full reset in place), else into new ones."""
        model, n_hist = self.model, self.model.cfg.n_step_history
        n_scene = batch.batch_size
        out: _Encoded | None = None
        for start in range(0, n_scene, self.encode_chunk):
            rows = slice(start, min(start + self.encode_chunk, n_scene))
            sub = index_tree(batch, rows)
            with autocast(self.device, self.autocast_dtype):
                enc = encode_episode(model, sub, full_log=latent == "posterior")
                if latent == "posterior":
                    dist = model.latent(enc.full_tokens, sub.agent_valid, enc.tl_tokens, enc.tl_valid, enc.map,
                                        posterior=True)
                else:
                    tl_tokens, tl_valid = history_tl(enc, None, model)
                    dist = model.latent(enc.history_tokens, enc.history_valid, tl_tokens, tl_valid, enc.map,
                                        posterior=False)
                logits = None if destination == "logged" else model.destination_logits(
                    enc.history_tokens, enc.history_valid, sub.agent_type, enc.map, sub.map_type)
                tl_kv = model.project_tl_kv(_pad_steps(enc.tl_tokens, N_STEP))
            part = _Encoded(map=enc.map, tl_kv=tl_kv, tl_valid=_pad_steps(enc.tl_valid, N_STEP),
                            goal_valid=enc.history_valid.any(1), latent_mean=dist.mean.float(),
                            latent_log_std=dist.log_std.float().expand_as(dist.mean), logits=logits)
            if out is None:
                out = _allocate_rows(part, n_scene, target)
            _write_chunk(out, rows, part)
        assert out is not None
        return out

    @torch.no_grad()
    def act(self, state: AgentState, step: Tensor) -> Tensor:
        """Physical actions [B, A, 2] (acc, yaw rate) moving every agent from ``state`` (at step-1) to ``step`` [B].

        Agents invalid in ``state`` get zero action and a zero GRU state. Updates the GRU state and the
        navigator; the traffic lights seen are those of ``min(step-1, last logged)``
        (reference-compatible mode: ``min(step-1, 10)``).
        """
        self._require_reset()
        ctx, loop = self._ctx, self._loop
        state = AgentState(**{f.name: getattr(state, f.name).to(self.device) for f in fields(AgentState)})
        step = step.to(self.device)
        reached = loop.dest_reached | ctx.dest.reached(state.valid, state.pos, state.yaw)
        goal_valid = loop.goal_valid & state.valid & ~reached
        inputs = state
        if self.model.cfg.reference_compat:
            appeared = (state.valid & ~self._inputs.valid).unsqueeze(-1)
            latched = self._inputs
            latched.vel.copy_(torch.where(appeared, state.vel, latched.vel))
            latched.acc.copy_(torch.where(appeared[..., 0], state.acc, latched.acc))
            latched.yaw_rate.copy_(torch.where(appeared[..., 0], state.yaw_rate, latched.yaw_rate))
            latched.valid.copy_(state.valid)
            inputs = AgentState(state.valid, state.pos, state.yaw, state.spd, latched.vel, latched.acc,
                                latched.yaw_rate)
        with _step_autocast(self.device, self.autocast_dtype):
            out = policy_step(self.model, ctx, inputs, step, goal_valid, loop.hidden,
                              deterministic=True if self._all_deterministic else self._deterministic,
                              generator=self.generator)
        loop.dest_reached.copy_(reached)
        loop.goal_valid.copy_(goal_valid)
        loop.hidden.copy_(out.hidden)
        return out.physical

    # ---------------------------------------------------------------------------------------- internals
    def _require_reset(self) -> None:
        if self._ctx is None:
            raise RuntimeError("TrafficBotsPolicy.reset(batch) must be called before using the policy")

    def _warm_start(self, ctx: EpisodeContext, batch: SceneBatch, goal_valid: Tensor,
                    deterministic_action: bool) -> tuple[LoopState, AgentState]:
        """Steps 1..10 of the log with teacher forcing (as in training); returns the loop state and the
        agents' state at step 10."""
        tf_mask = teacher_forcing_mask(batch.agent_valid, *TEACHER_FORCING["training"])
        state = initial_loop_state(self.model, batch, goal_valid)
        for t in range(1, self.model.cfg.n_step_history):
            with autocast(self.device, self.autocast_dtype):
                state = transition(self.model, ctx, state, t, batch, tf_mask, deterministic=deterministic_action,
                                   generator=self.generator).state
        return state, state.agents.clone()


def _step_autocast(device: torch.device, dtype: torch.dtype | None):  # noqa: ANN202 - context manager
    """Autocast for ``act`` without the weight-cast cache (required inside CUDA graph capture)."""
    if dtype is None:
        return autocast(device, None)
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def _allocate_rows(part: _Encoded, n_scene: int, target: EpisodeContext | None) -> _Encoded:
    """Buffers of ``n_scene`` rows shaped like the chunk ``part``; map / TL buffers from ``target`` when
    their layout matches (a full reset writing into the running episode's buffers)."""
    def empty(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.new_empty((n_scene,) + tuple(t.shape[1:]))

    def rows_of(tree):  # noqa: ANN001, ANN202
        return index_tree(tree, slice(0, part.map.valid.shape[0]))

    reuse = (target is not None and same_layout(rows_of(target.map), part.map)
             and same_layout(rows_of(target.tl_kv), part.tl_kv)
             and same_layout(rows_of(target.tl_valid), part.tl_valid))
    if reuse:
        map_ctx, tl_kv, tl_valid = target.map, target.tl_kv, target.tl_valid
    else:
        map_ctx = MapContext(empty(part.map.feature), empty(part.map.valid),
                             [(empty(k), empty(v)) for k, v in part.map.kv])
        tl_kv, tl_valid = [(empty(k), empty(v)) for k, v in part.tl_kv], empty(part.tl_valid)
    return _Encoded(map=map_ctx, tl_kv=tl_kv, tl_valid=tl_valid, goal_valid=empty(part.goal_valid),
                    latent_mean=empty(part.latent_mean), latent_log_std=empty(part.latent_log_std),
                    logits=empty(part.logits))


def _write_chunk(out: _Encoded, rows: slice, part: _Encoded) -> None:
    """Copy the chunk ``part`` into rows ``rows`` of ``out``."""
    for f in fields(_Encoded):
        copy_rows_(getattr(out, f.name), rows, getattr(part, f.name))


def _pad_steps(x: Tensor, n_step: int) -> Tensor:
    """Repeat the last step of ``x`` [B, T, ...] up to ``n_step`` steps (static shape for every scene)."""
    if x.shape[1] >= n_step:
        return x
    return torch.cat([x, x[:, -1:].expand(-1, n_step - x.shape[1], *x.shape[2:])], dim=1)


def _scatter_(old, rows: Tensor, new) -> None:  # noqa: ANN001 - dataclasses / lists of tensors
    """Write ``new``'s rows into ``old`` at ``rows`` in place. The GRU state [L, B*A, D] is per scene."""
    if isinstance(old, Tensor):
        old[rows] = new.to(old.dtype)
    elif isinstance(old, (list, tuple)):
        for o, n in zip(old, new, strict=True):
            _scatter_(o, rows, n)
    elif isinstance(old, LoopState):
        for f in fields(old):
            if f.name != "hidden":
                _scatter_(getattr(old, f.name), rows, getattr(new, f.name))
        n_layer, _, dim = old.hidden.shape
        n_agent = old.goal_valid.shape[1]
        old.hidden.view(n_layer, -1, n_agent, dim)[:, rows] = new.hidden.view(n_layer, -1, n_agent, dim)
    elif isinstance(old, (EpisodeContext, MapContext, DestinationGeometry, AgentState)):
        for f in fields(old):
            _scatter_(getattr(old, f.name), rows, getattr(new, f.name))
    else:
        raise TypeError(f"cannot scatter {type(old).__name__}")
