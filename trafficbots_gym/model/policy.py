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

On a CPU, reset takes exact shortcuts (``fast_reset``): only polylines with a valid node go through the
node encoder, destinations are scored only against candidate polylines, traffic-light keys/values are
projected once per distinct light state, and the warm start computes the recurrent input of its leading
steps in one batch (:mod:`~trafficbots_gym.model.warm_start`) on the rows of the agents present. For a
single scene reset with the ``active`` agents (what the simulator passes), ``act`` too runs the network
on those agents' rows only (``compact_step``, :mod:`~trafficbots_gym.model.agent_rows`), and (float32) with
the map keys trimmed to the attention kernel's blocks that hold valid polylines, no mask where every kept
key is valid, and no light attention at steps without a valid light (:mod:`~trafficbots_gym.model.step_keys`). Each shortcut
drops or batches independent rows of the plain computation, which on a CPU gives the same bits (tested),
and the per-step head inputs (destination and latent embeddings) are computed once per episode. With
``cache_keys`` the per-scene encodings are kept in an
:class:`~trafficbots_gym.model.encoding_cache.EncodingCache` (LRU, bounded in bytes, cleared when the
weights change), so a reset of a recently seen scene skips them.

The simulator owns the dynamics, overrides and kills; the policy keeps its GRU state, the navigator
(destination reached -> disabled) and, in reference-compatible mode, the stale kinematic inputs (latched
when an agent (re)appears).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import N_STEP
from trafficbots_gym.model.agent_rows import AgentRows
from trafficbots_gym.model.closed_loop import (EpisodeContext, LoopState, SceneEncoding, action_limits,
                                               history_tl, log_kinematics, tl_index)
from trafficbots_gym.model.distributions import DiagGaussian, categorical_sample
from trafficbots_gym.model.encoding_cache import MIB, EncodingCache
from trafficbots_gym.model.layers import KeyValue, gru_step, interact
from trafficbots_gym.model.navigation import DestinationGeometry
from trafficbots_gym.model.rollout import autocast
from trafficbots_gym.model.step_keys import StepKeys
from trafficbots_gym.model.traffic_bots import AgentKinematics, HeadInputs, MapContext, TrafficBots
from trafficbots_gym.model.warm_start import log_exact_steps, recurrent_prefix, warm_start
from trafficbots_gym.simulation.buffers import assign, clone_tree, copy_rows_, index_tree, same_layout
from trafficbots_gym.simulation.state import AgentState

LatentMode = Literal["prior", "posterior"]
DestinationMode = Literal["sample", "argmax", "logged"]
ENCODE_CHUNK = 32
"""Default number of scenes encoded together at reset (bounds the memory of map encoding and destination
scoring: about 0.3 GiB of activations per scene for the full-size model)."""
CACHE_MB = 64.0
"""Default budget of the per-scene encoding cache (MiB). An entry of the full-size model takes about 5 MiB
(map features and keys/values 3.5 MiB, warm-start GRU states 1 MiB, traffic-light keys/values 0.1 MiB per
distinct light state), so the default holds the dozen or so most recently reset scenes."""


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
    prefix_steps: Tensor | None  # [R] long: leading warm-start transitions with recorded GRU states
    prefix: Tensor | None        # [R, n_hist-1, layers, A, D] their GRU states (see warm_start.py)


@dataclass
class _CachedEncoding:
    """A cache entry: the encodings of one scene, with the traffic-light keys/values of its distinct light
    steps only (most scenes have one: no lights, or lights that never change) and each step's index."""

    encoded: _Encoded      # rows = 1; tl_kv holds the distinct steps [1, U, H, S, d]
    tl_index: Tensor       # [N_STEP] long: distinct step of each step

    @staticmethod
    def of(encoded: _Encoded, scene: SceneBatch) -> "_CachedEncoding":
        """Compress ``encoded`` (one scene, encoded from ``scene``): steps with the same light inputs have the
        same keys/values (they are a per-step function of those inputs)."""
        first, index = _distinct_light_steps(scene)
        tl_kv = [(k[:, first], v[:, first]) for k, v in encoded.tl_kv]
        return _CachedEncoding(dataclasses.replace(encoded, tl_kv=tl_kv), index)

    def expand(self) -> _Encoded:
        """The entry as encoded (every step's keys/values)."""
        tl_kv = [(k[:, self.tl_index], v[:, self.tl_index]) for k, v in self.encoded.tl_kv]
        return dataclasses.replace(self.encoded, tl_kv=tl_kv)


class TrafficBotsPolicy:
    """Batched closed-loop TrafficBots policy for B scenes x A agents (see the module docstring)."""

    def __init__(self, model: TrafficBots, *, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None, encode_chunk: int = ENCODE_CHUNK,
                 cache_mb: float = CACHE_MB, fast_reset: bool | None = None,
                 compact_step: bool | None = None) -> None:
        """``cache_mb``: budget of the per-scene encoding cache (0 = off; used by resets with ``cache_keys``);
        ``fast_reset``: the exact reset shortcuts of the module docstring; ``compact_step``: for a single
        scene reset with ``active`` agents, ``act`` runs the network on those agents' rows only, and on a
        CPU with the trimmed attention keys of :class:`~trafficbots_gym.model.step_keys.StepKeys` (same
        result). None = on for a CPU device."""
        if encode_chunk < 1:
            raise ValueError(f"encode_chunk must be >= 1, got {encode_chunk}")
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = autocast_dtype
        self.encode_chunk = encode_chunk
        self.fast_reset = self.device.type == "cpu" if fast_reset is None else bool(fast_reset)
        self.compact_step = self.device.type == "cpu" if compact_step is None else bool(compact_step)
        self.cache = EncodingCache(int(cache_mb * MIB))
        self.generator: torch.Generator | None = None
        self._ctx: EpisodeContext | None = None
        self._loop: LoopState | None = None
        self._warm: AgentState | None = None
        self._deterministic: Tensor | None = None   # [B, A] bool
        self._dest: Tensor | None = None           # [B, A] long
        self._inputs: AgentState | None = None     # latched kinematic inputs (reference-compatible mode)
        self._heads: HeadInputs | None = None      # embedded destinations / latents of the policy head
        self._rows: Tensor | None = None           # [B] 0..B-1
        self._active: AgentRows | None = None      # agents act computes (None: all)
        self._keys: StepKeys | None = None          # trimmed attention keys of a single scene on a CPU
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

    def sharing_network(self) -> "TrafficBotsPolicy":
        """A policy with episodes of its own that shares this one's network and encoding cache (no second
        copy of the weights, and encodings made by either serve both)."""
        twin = TrafficBotsPolicy(self.model, device=self.device, autocast_dtype=self.autocast_dtype,
                                 encode_chunk=self.encode_chunk, cache_mb=0, fast_reset=self.fast_reset,
                                 compact_step=self.compact_step)
        twin.cache = self.cache
        return twin

    @torch.no_grad()
    def reset(self, batch: SceneBatch, *, env_ids: Tensor | None = None, generator: torch.Generator | None = None,
              latent: LatentMode = "prior", destination: DestinationMode = "sample",
              deterministic_action: bool = True, deterministic_latent: bool = False,
              cache_keys: Sequence[Hashable | None] | None = None, active: Tensor | None = None) -> None:
        """Start episodes for the scenes of ``batch`` (at least the 11 history steps).

        Without ``env_ids`` this (re)defines the batch size. With ``env_ids`` [len(batch)] only those rows
        are replaced. ``latent``: draw the personality from the prior (history) or the posterior (needs the
        full log); ``deterministic_latent`` takes its mean. ``destination``: sample or argmax of the
        destination predictor, or the logged ``agent/dest``. ``generator`` drives all random draws of this
        reset and of later stochastic actions. ``cache_keys`` (one per scene of ``batch``, None = do not
        cache) name the scenes' contents: encodings are reused from / stored in the encoding cache under
        them, so a key must always denote the same scene data. ``active`` [len(batch), A] bool: the agents
        that may be valid in the states passed to ``act`` until the next reset (every other agent must stay
        invalid); with ``compact_step`` and one scene, ``act`` then computes only their rows.
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
        if cache_keys is not None and len(cache_keys) != n_scene:
            raise ValueError(f"cache_keys has {len(cache_keys)} entries for {n_scene} scenes")
        if active is not None and tuple(active.shape) != tuple(batch.agent_valid.shape[::2]):
            raise ValueError(f"active has shape {tuple(active.shape)}, expected {tuple(batch.agent_valid.shape[::2])}")
        enc = self._encode(batch, latent, destination, self._ctx if in_place else None, cache_keys)
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
        with autocast(self.device, self.autocast_dtype):
            heads = model.embed_head_inputs(goal_feature, latent_sample)
        prefix_steps = 0 if enc.prefix_steps is None else int(enc.prefix_steps.min())
        loop = warm_start(model, ctx, batch, enc.goal_valid, prefix=enc.prefix, prefix_steps=prefix_steps,
                          deterministic_action=deterministic_action, generator=self.generator,
                          autocast_dtype=self.autocast_dtype)
        warm = loop.agents.clone()
        deterministic = torch.full_like(loop.goal_valid, deterministic_action)
        if env_ids is None:   # into the existing buffers when the layout allows (CUDA graphs stay valid)
            self._ctx = assign(self._ctx, ctx) if same_layout(self._ctx, ctx) else ctx   # ctx owns its tensors
            self._loop = assign(self._loop, loop)
            self._warm, self._inputs = assign(self._warm, warm), assign(self._inputs, warm)
            self._dest, self._deterministic = assign(self._dest, dest), assign(self._deterministic, deterministic)
            self._heads = assign(self._heads, heads)
            self._rows = assign(self._rows, torch.arange(n_scene, device=self.device))
        else:   # in place, so that tensors captured by a CUDA graph stay valid
            _scatter_(self._ctx, env_ids, ctx)
            _scatter_(self._loop, env_ids, loop)
            _scatter_(self._warm, env_ids, warm)
            _scatter_(self._inputs, env_ids, warm)
            _scatter_(self._heads, env_ids, heads)
            self._dest[env_ids] = dest
            self._deterministic[env_ids] = deterministic
        self._all_deterministic = bool(self._deterministic.all())
        single = self.compact_step and n_scene == 1 and self._dest.shape[0] == 1
        self._active = AgentRows.of(active.to(self.device)) if single and active is not None else None
        trim = single and self.device.type == "cpu" and self.autocast_dtype is None
        self._keys = StepKeys.of(self._ctx) if trim else None

    def _encode(self, batch: SceneBatch, latent: LatentMode, destination: DestinationMode,
                target: EpisodeContext | None, cache_keys: Sequence[Hashable | None] | None) -> _Encoded:
        """Encodings of every scene of ``batch``: cached ones from the cache, the others encoded in chunks of
        ``encode_chunk`` scenes (and cached under their key). Map and traffic-light tensors go straight into
        ``target``'s buffers when given (a full reset in place), else into new ones."""
        n_scene = batch.batch_size
        variant = (latent, destination == "logged", batch.num_steps)
        keys = [None if k is None else (k, variant) for k in (cache_keys or [None] * n_scene)]
        if any(k is not None for k in keys):
            self.cache.bind(self.model)
        out: _Encoded | None = None

        def write(rows: slice | Tensor, part: _Encoded) -> None:
            nonlocal out
            if out is None:
                out = _allocate_rows(part, n_scene, target)
            _write_chunk(out, rows, part)

        missing = []
        for row, key in enumerate(keys):
            entry = None if key is None else self.cache.get(key)
            if entry is None:
                missing.append(row)
            else:
                write(slice(row, row + 1), entry.expand())
        for start in range(0, len(missing), self.encode_chunk):
            rows = missing[start:start + self.encode_chunk]
            index = (slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] == len(rows) - 1
                     else torch.tensor(rows, device=self.device))
            part = self._encode_scenes(index_tree(batch, index), latent, destination)
            for i, row in enumerate(rows):
                if keys[row] is not None:
                    one = part if len(rows) == 1 else clone_tree(index_tree(part, slice(i, i + 1)))
                    self.cache.put(keys[row], _CachedEncoding.of(one, index_tree(batch, slice(row, row + 1))))
            write(index, part)
        assert out is not None
        return out

    def _encode_scenes(self, batch: SceneBatch, latent: LatentMode, destination: DestinationMode) -> _Encoded:
        """Encode the scenes of ``batch`` (one chunk) and, with ``fast_reset``, the warm start's recurrent
        prefix."""
        model, n_hist = self.model, self.model.cfg.n_step_history
        sparse = self.fast_reset
        with autocast(self.device, self.autocast_dtype):
            enc = _scene_encoding(model, batch, full_log=latent == "posterior", sparse=sparse)
            if latent == "posterior":
                dist = model.latent(enc.full_tokens, batch.agent_valid, enc.tl_tokens, enc.tl_valid, enc.map,
                                    posterior=True)
            else:
                tl_tokens, tl_valid = history_tl(enc, None, model)
                dist = model.latent(enc.history_tokens, enc.history_valid, tl_tokens, tl_valid, enc.map,
                                    posterior=False)
            logits = None if destination == "logged" else model.destination_logits(
                enc.history_tokens, enc.history_valid, batch.agent_type, enc.map, batch.map_type, sparse=sparse)
            tl_tokens = _pad_steps(enc.tl_tokens, N_STEP)
            if sparse:   # project the distinct light steps only
                first, index = _distinct_light_steps(batch)
                tl_kv = [(k[0][index].view(tl_tokens.shape[:2] + k.shape[2:]),
                          v[0][index].view(tl_tokens.shape[:2] + v.shape[2:]))
                         for k, v in model.project_tl_kv(tl_tokens.flatten(0, 1)[first].unsqueeze(0))]
            else:
                tl_kv = model.project_tl_kv(tl_tokens)
            tl_valid = _pad_steps(enc.tl_valid, N_STEP)
            prefix_steps = prefix = None
            if self.fast_reset:
                prefix_steps = log_exact_steps(batch.agent_valid, n_hist)
                prefix = recurrent_prefix(model, batch, enc.map, tl_kv, tl_valid, int(prefix_steps.max()),
                                          compact=True)
        return _Encoded(map=enc.map, tl_kv=tl_kv, tl_valid=tl_valid, goal_valid=enc.history_valid.any(1),
                        latent_mean=dist.mean.float(), latent_log_std=dist.log_std.float().expand_as(dist.mean),
                        logits=logits, prefix_steps=prefix_steps, prefix=prefix)

    @torch.no_grad()
    def act(self, state: AgentState, step: Tensor) -> Tensor:
        """Physical actions [B, A, 2] (acc, yaw rate) moving every agent from ``state`` (at step-1) to ``step`` [B].

        Agents invalid in ``state`` get zero action and a zero GRU state. Updates the GRU state and the
        navigator; the traffic lights seen are those of ``min(step-1, last logged)``
        (reference-compatible mode: ``min(step-1, 10)``).
        """
        self._require_reset()
        ctx, loop = self._ctx, self._loop
        if state.pos.device != self.device:
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
            physical, hidden = self._policy_step(inputs, step, goal_valid)
        loop.dest_reached.copy_(reached)
        loop.goal_valid.copy_(goal_valid)
        loop.hidden.copy_(hidden)
        return physical

    # ---------------------------------------------------------------------------------------- internals
    def _policy_step(self, agents: AgentState, step: Tensor, goal_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Physical actions [B, A, 2] and the new GRU state: ``closed_loop.policy_step`` with the head inputs
        embedded at reset and without the log-probability the simulator does not need."""
        ctx, valid = self._ctx, agents.valid
        if self._active is None:
            mean, log_std, hidden = self._network(agents, step, goal_valid)
        else:
            mean, log_std, hidden = self._network_rows(agents, step, goal_valid, self._active)
        dist = DiagGaussian(mean.float(), log_std.float(), valid)
        action = dist.sample(True if self._all_deterministic else self._deterministic, self.generator)
        return (torch.tanh(action) * ctx.action_limits).masked_fill(~valid.unsqueeze(-1), 0.0), hidden

    def _context(self, tokens: Tensor, valid: Tensor, step: Tensor) -> Tensor:
        """Agent tokens [B, Q, D] (validity [B, Q]) after the map and traffic-light attention of the move to
        ``step`` [B] (``TrafficBots.policy_context``; with the single scene's trimmed keys when prepared)."""
        ctx = self._ctx
        if self._keys is not None:
            return self._keys.context(self.model, tokens, valid, int(step[0]))
        idx = tl_index(step, ctx.tl_last)
        tl_kv = [(k[self._rows, idx].unsqueeze(1), v[self._rows, idx].unsqueeze(1)) for k, v in ctx.tl_kv]
        tl_valid = ctx.tl_valid[self._rows, idx].unsqueeze(1)
        return self.model.policy_context(tokens.unsqueeze(1), valid.unsqueeze(1), ctx.map, tl_kv, tl_valid).squeeze(1)

    def _network(self, agents: AgentState, step: Tensor, goal_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Action mean / log-std [B, A, 2] and the new GRU state of every agent."""
        model, ctx, valid = self.model, self._ctx, agents.valid
        kin = AgentKinematics(valid, agents.pos, agents.yaw, agents.spd, agents.vel, agents.acc, agents.yaw_rate)
        tokens = model.encode_agents(kin, ctx.agent_size, ctx.agent_type)
        x = interact(model.interaction, self._context(tokens, valid, step), valid)
        x, hidden = gru_step(model.temporal, x, valid, self._loop.hidden)
        dist = model.policy_head(x, valid, ctx.agent_type, goal_valid, self._heads)
        return dist.mean, dist.log_std, hidden

    def _network_rows(self, agents: AgentState, step: Tensor, goal_valid: Tensor,
                      active: "AgentRows") -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_network` computed on the ``active`` agents' rows only (every other agent is invalid, so its
        mean, log-std and GRU state are zero); the agent interaction still sees every agent."""
        model, ctx = self.model, self._ctx
        pick, n_agent = active.pick, agents.valid.shape[1]
        valid = pick(agents.valid)
        kin = AgentKinematics(valid, pick(agents.pos), pick(agents.yaw), pick(agents.spd), pick(agents.vel),
                              pick(agents.acc), pick(agents.yaw_rate))
        tokens = model.encode_agents(kin, pick(ctx.agent_size), pick(ctx.agent_type))
        x = self._context(tokens, valid, step)
        x = interact(model.interaction, active.scatter(x, n_agent), agents.valid, active.read, valid)
        n_layer, _, dim = self._loop.hidden.shape
        hidden = pick(self._loop.hidden.view(n_layer, -1, n_agent, dim).permute(1, 2, 0, 3))   # [B, R, L, D]
        hidden = hidden.permute(2, 0, 1, 3).flatten(1, 2)
        x, hidden = gru_step(model.temporal, x, valid, hidden)
        heads = HeadInputs(pick(self._heads.goal), pick(self._heads.latent))
        dist = model.policy_head(x, valid, pick(ctx.agent_type), pick(goal_valid), heads)
        hidden = active.scatter(hidden.view(n_layer, *active.read.shape, dim).permute(1, 2, 0, 3), n_agent)
        return (active.scatter(dist.mean, n_agent), active.scatter(dist.log_std, n_agent),
                hidden.permute(2, 0, 1, 3).flatten(1, 2))

    def _require_reset(self) -> None:
        if self._ctx is None:
            raise RuntimeError("TrafficBotsPolicy.reset(batch) must be called before using the policy")


def _scene_encoding(model: TrafficBots, batch: SceneBatch, *, full_log: bool, sparse: bool) -> SceneEncoding:
    """Map, traffic-light and logged agent tokens of ``batch`` (``closed_loop.encode_episode`` with the
    history taken from ``batch``); ``sparse``: the exact inference shortcut of ``TrafficBots.encode_map``."""
    n_hist = model.cfg.n_step_history
    n_tokens = batch.num_steps if full_log and batch.num_steps > n_hist else n_hist
    kin = log_kinematics(batch)
    tokens = model.encode_agents(AgentKinematics(*(getattr(kin, f.name)[:, :n_tokens] for f in fields(kin))),
                                 batch.agent_size, batch.agent_type)
    return SceneEncoding(
        map=model.encode_map(batch.map_valid, batch.map_type, batch.map_pos, batch.map_dir, sparse=sparse),
        tl_tokens=model.encode_traffic_lights(batch.tl_valid, batch.tl_state, batch.tl_pos, batch.tl_dir),
        tl_valid=batch.tl_valid, history_tokens=tokens[:, :n_hist], history_valid=batch.agent_valid[:, :n_hist],
        full_tokens=tokens if n_tokens > n_hist else None)


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
                    logits=empty(part.logits), prefix_steps=empty(part.prefix_steps), prefix=empty(part.prefix))


def _write_chunk(out: _Encoded, rows: slice | Tensor, part: _Encoded) -> None:
    """Copy the chunk ``part`` into rows ``rows`` of ``out``."""
    for f in fields(_Encoded):
        copy_rows_(getattr(out, f.name), rows, getattr(part, f.name))


def _distinct_light_steps(batch: SceneBatch) -> tuple[Tensor, Tensor]:
    """Steps of ``batch`` padded to ``N_STEP`` (flattened, [B * N_STEP]) grouped by their traffic-light inputs:
    the first step of each group [U] and the group of every step [B * N_STEP]."""
    lights = torch.cat([batch.tl_valid.unsqueeze(-1), batch.tl_state, batch.tl_pos, batch.tl_dir], dim=-1)
    lights = _pad_steps(lights.to(batch.tl_pos.dtype), N_STEP).flatten(2).flatten(0, 1)
    _, index = torch.unique(lights, dim=0, return_inverse=True)
    steps = torch.arange(len(index), device=index.device)
    first = torch.full((int(index.max()) + 1,), len(index), dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, index, steps, "amin"), index


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
    elif isinstance(old, (EpisodeContext, MapContext, DestinationGeometry, AgentState, HeadInputs)):
        for f in fields(old):
            _scatter_(getattr(old, f.name), rows, getattr(new, f.name))
    else:
        raise TypeError(f"cannot scatter {type(old).__name__}")
