"""``EpisodeBatch``: the episodes of B envs run in one ``BatchedSimulator`` -- the shared engine of the
single env (B = 1), the vector env and the SB3 adapter, so all three give identical trajectories.

It owns scene choice and loading (per-row ``np_random``, prefetch of each row's next random scene),
ego choice, action mapping, observations, reward terms, termination/truncation, per-step metrics and
the episode summary. Everything stays in torch on the simulation device; conversion to numpy happens at
the env boundary.

On a CUDA device the step (policy, dynamics, metrics, reward, episode statistics) and the observation
are each replayed from a CUDA graph (:class:`~trafficbots_gym.simulation.graphed.StepGraph`): all
per-episode tensors live in buffers that resets overwrite in place, and the step reads its actions from
a static input buffer. ``cuda_graphs=False`` (or a CPU device, or stochastic policy actions) runs the
same code eagerly.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from trafficbots_gym.data.batch import SceneBatch, collate_arrays
from trafficbots_gym.data.constants import DT, STEP_CURRENT, AgentRole
from trafficbots_gym.env.actions import ActionMapper, EgoOnRoute
from trafficbots_gym.env.config import EnvConfig, ego_spec, resolve_device
from trafficbots_gym.env.observation import EgoView, ObservationBuilder
from trafficbots_gym.env.reward import StepEvents, terminated, total_reward, weighted_terms
from trafficbots_gym.env.route import Route, RoutePosition
from trafficbots_gym.env.scenes import SceneArrays, SceneLoader, SceneSource
from trafficbots_gym.env.spare_pool import transfer_rows
from trafficbots_gym.simulation.background import LEARNED_BACKGROUNDS
from trafficbots_gym.simulation.buffers import assign, copy_rows_
from trafficbots_gym.simulation.graphed import StepGraph
from trafficbots_gym.simulation.guard import EGO_GUARD, background_guards
from trafficbots_gym.simulation.simulator import BatchedSimulator, StepOutput

STEP_INFO_KEYS: tuple[str, ...] = ("step", "speed", "acc", "yaw_rate", "jerk", "progress", "route_completion",
                                   "lateral_offset", "dist_to_goal", "log_deviation", "collided", "offroad",
                                   "red_light", "outside_map", "goal_reached", "dest_reached", "time_to_collision",
                                   "ahead_of_log")
"""Per-step metric keys of ``info`` (docs/env.md gives units)."""
RESET_OPTIONS: tuple[str, ...] = ("scene_index", "scenario_id", "ego")
"""Keys of ``reset(options=...)`` (the vector env adds ``reset_mask``)."""
EPISODE_KEYS: tuple[str, ...] = ("r", "l", "t", "goal_reached", "collided", "offroad", "red_light_violations",
                                 "progress", "route_completion", "ade", "max_jerk", "max_overspeed")
"""Keys of ``info["episode"]`` at the end of an episode (r, l, t as SB3 / Gymnasium episode statistics)."""


@dataclass
class EpisodeStats:
    """Per-row accumulators of the running episodes, [B] each."""

    elapsed: torch.Tensor        # long: controlled steps taken
    route_s: torch.Tensor        # m along the route
    prev_acc: torch.Tensor       # m/s^2, ego acceleration of the previous step
    goal_active: torch.Tensor    # bool: the ego started farther than goal_radius from its goal
    goal_reached: torch.Tensor   # bool, ever
    collided: torch.Tensor       # bool, ever
    offroad: torch.Tensor        # bool, ever
    red_lights: torch.Tensor     # long, crossings
    log_dev_sum: torch.Tensor    # m
    log_dev_count: torch.Tensor  # long
    max_jerk: torch.Tensor       # m/s^3
    max_overspeed: torch.Tensor  # m/s above the ego's top logged speed
    ret: torch.Tensor            # episode return
    top_log_speed: torch.Tensor  # m/s: the ego's top logged speed (the ``overspeed`` reference)

    @staticmethod
    def start(prev_acc: torch.Tensor, goal_active: torch.Tensor, top_log_speed: torch.Tensor) -> "EpisodeStats":
        zeros_f, zeros_l = torch.zeros_like(prev_acc), torch.zeros_like(prev_acc, dtype=torch.long)
        zeros_b = torch.zeros_like(prev_acc, dtype=torch.bool)
        return EpisodeStats(elapsed=zeros_l, route_s=zeros_f.clone(), prev_acc=prev_acc.clone(),
                            goal_active=goal_active.clone(), goal_reached=zeros_b, collided=zeros_b.clone(), offroad=zeros_b.clone(),
                            red_lights=zeros_l.clone(), log_dev_sum=zeros_f.clone(), log_dev_count=zeros_l.clone(),
                            max_jerk=zeros_f.clone(), max_overspeed=zeros_f.clone(), ret=zeros_f.clone(),
                            top_log_speed=top_log_speed.clone())

    def replace_rows(self, rows: torch.Tensor, other: "EpisodeStats") -> None:
        copy_rows_(self, rows, other)


@dataclass
class StepResult:
    """One step of every row (tensors [B] on the simulation device)."""

    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    info: dict[str, torch.Tensor]      # STEP_INFO_KEYS
    rewards: dict[str, torch.Tensor]   # weighted reward terms
    episode: dict[str, torch.Tensor]   # EPISODE_KEYS (meaningful where terminated | truncated)


POLICY_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
"""Precision of the learned policy: "bf16" runs its network under bfloat16 autocast (the GRU state,
actions and dynamics stay float32)."""


def make_policy(config: EnvConfig, device: torch.device, precision: str = "fp32") -> Any:
    """The TrafficBots policy of a learned background (None for the other backgrounds)."""
    if precision not in POLICY_PRECISIONS:
        raise ValueError(f"policy_precision must be one of {list(POLICY_PRECISIONS)}, got {precision!r}")
    if config.background not in LEARNED_BACKGROUNDS:
        return None
    from trafficbots_gym.model.checkpoint import load_model
    from trafficbots_gym.model.policy import TrafficBotsPolicy
    return TrafficBotsPolicy(load_model(config.checkpoint), device=device, autocast_dtype=POLICY_PRECISIONS[precision],
                             cache_mb=config.encoding_cache_mb)


def resolve_ego(arrays: SceneArrays, ego: Any, scenario_id: str) -> int:
    """The agent slot of ``ego`` ("sdc", index or {"track_id": n}) in one scene; it must be valid at step 10."""
    kind, value = ego_spec(ego)
    valid_now = arrays["agent_valid"][STEP_CURRENT]
    if kind == "sdc":
        sdc = np.flatnonzero(arrays["agent_role"][:, AgentRole.SDC])
        if len(sdc) == 0:
            raise ValueError(f"scene {scenario_id!r} marks no SDC; pass ego=<agent index> or ego={{'track_id': n}}")
        index = int(sdc[0])
    elif kind == "track_id":
        match = np.flatnonzero(arrays["agent_object_id"] == value)
        if len(match) == 0:
            ids = arrays["agent_object_id"][valid_now].tolist()
            raise ValueError(f"scene {scenario_id!r} has no agent with track id {value}; "
                             f"track ids valid at step {STEP_CURRENT}: {ids}")
        index = int(match[0])
    else:
        index = value
        if index >= len(valid_now):
            raise ValueError(f"ego index {index} out of range: scene {scenario_id!r} has {len(valid_now)} agent slots")
    if not valid_now[index]:
        raise ValueError(f"ego {ego!r} (agent {index}) of scene {scenario_id!r} is not valid at step {STEP_CURRENT}; "
                         f"agents valid then: {np.flatnonzero(valid_now).tolist()}")
    return index


class EpisodeBatch:
    """B concurrent episodes in one ``BatchedSimulator`` (see the module docstring).

    ``cuda_graphs``: replay step and observation from CUDA graphs (None = on for CUDA devices);
    ``policy_precision``: "fp32" or "bf16" (autocast) for the learned background's network.
    """

    walk_skip = ("source", "loader", "rngs", "scene_index", "scenario_ids", "_row_info", "started", "_next_random",
                 "_pool")
    """Host-side attributes that hold no step tensors (not searched when checking the CUDA graphs' buffers)."""

    def __init__(self, config: EnvConfig, num_envs: int, *, cuda_graphs: bool | None = None,
                 policy_precision: str = "fp32", policy: Any = None, source: SceneSource | None = None) -> None:
        """``policy``: the learned background's ``TrafficBotsPolicy`` (default: made from ``config``);
        ``source``: the scenes, shared with (and closed by) their owner (default: opened from ``config``)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.config = config
        self.num_envs = num_envs
        self.device = resolve_device(config.device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, the simulation runs on {self.device}")
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        self._owns_source = source is None
        self.source = source if source is not None else SceneSource(
            config.scenes, split=config.split, validate=config.validate_scenes, cache_mb=config.scene_cache_mb)
        self.loader = SceneLoader(self.source, background=config.prefetch)
        self.sim = BatchedSimulator(background=config.background,
                                    policy=policy if policy is not None else make_policy(config, self.device,
                                                                                          policy_precision),
                                    device=self.device, mixed_radius=config.mixed_radius,
                                    agent_metrics=config.agent_metrics,
                                    ego_guard=EGO_GUARD if config.ego_guard else None,
                                    **background_guards(config.background_guard))
        self.observer = ObservationBuilder(config)
        self.actions = ActionMapper(config, self.device)
        self.rngs: list[np.random.Generator | None] = [None] * num_envs
        self.generator = torch.Generator(device=self.device)
        self.scene_index = np.zeros(num_envs, np.int64)
        self.scenario_ids = [""] * num_envs
        self._row_info: dict[str, np.ndarray] = {}
        self.started = np.zeros(num_envs)                     # wall time of each episode start
        self._next_random: list[int | None] = [None] * num_envs
        self._route: Route | None = None
        self._where: RoutePosition | None = None
        self._stats: EpisodeStats | None = None
        self._ego_type: torch.Tensor | None = None
        self._action_in = torch.zeros(num_envs, 2, device=self.device)   # static input of the step graph
        self._policy_precision = policy_precision
        self._pool: EpisodeBatch | None = None          # spare episodes (config.reset_pool), made on first use
        self._pool_ready: list[int] = []
        self._step_graph = StepGraph(self._advance_from_buffer, self, name="env step", key=self._graph_key)
        self._observe_graph = StepGraph(self._build_observation, self, name="observation", key=self._graph_key)

    # -------------------------------------------------------------------------------------------- seeding
    def seed_row(self, row: int, rng: np.random.Generator, *, seed_torch: bool) -> None:
        """Give row ``row`` its random generator (drops its pre-drawn scene); ``seed_torch`` reseeds the
        simulation's torch generator from it (one draw)."""
        self.rngs[row] = rng
        if self._next_random[row] is not None:
            self.loader.discard(self._next_random[row])
        self._next_random[row] = None
        if seed_torch:
            self.generator.manual_seed(int(rng.integers(2**63 - 1)))

    # --------------------------------------------------------------------------------------------- resets
    def reset(self, rows: Sequence[int] | None = None, options: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        """Start new episodes in ``rows`` (all rows when None; the first reset must cover all rows)."""
        all_rows = rows is None or (len(rows) == self.num_envs and list(rows) == list(range(self.num_envs)))
        rows = list(range(self.num_envs)) if rows is None else list(rows)
        if not all_rows and self._stats is None:
            raise RuntimeError("the first reset must start every row")
        options = list(options) if options is not None else [None] * len(rows)
        for o in options:
            unknown = sorted(set(o or {}) - set(RESET_OPTIONS))
            if unknown:
                raise ValueError(f"unknown reset options {unknown}; valid options: {list(RESET_OPTIONS)}")
        if not all_rows and self.config.reset_pool and not any(options) and self._reset_from_pool(rows):
            return
        chosen = [self._choose(r, o) for r, o in zip(rows, options)]
        indices = [i for i, _ in chosen]
        arrays = self._load([(i, prefetched) for i, prefetched in chosen])
        egos = [resolve_ego(a, (o or {}).get("ego", self.config.ego), self.source.scenario_id(i))
                for a, o, i in zip(arrays, options, indices)]
        batch = collate_arrays(arrays).to(self.device)
        ego = torch.tensor(egos, dtype=torch.long, device=self.device)
        env_ids = None if all_rows else torch.tensor(rows, dtype=torch.long, device=self.device)
        self.sim.reset(batch, ego, env_ids=env_ids, generator=self.generator,
                       scene_keys=[self.source.scene_key(i) for i in indices])
        self._start_rows(batch, ego, env_ids)
        self._step_graph.check()
        self._observe_graph.check()
        for r, i in zip(rows, indices):
            self.scene_index[r], self.scenario_ids[r] = i, self.source.scenario_id(i)
            self.started[r] = time.perf_counter()
            self._prefetch_next(r)
        self._update_row_info()

    def _update_row_info(self) -> None:
        ego_all = self.sim.ego_index
        track = self.sim.batch.agent_object_id[torch.arange(self.num_envs, device=self.device), ego_all]
        self._row_info = {"scene_index": self.scene_index.copy(),
                          "scenario_id": np.array(self.scenario_ids, dtype=object),
                          "ego_index": ego_all.cpu().numpy(), "ego_track_id": track.cpu().numpy()}

    def _reset_from_pool(self, rows: list[int]) -> bool:
        """Start ``rows`` with spare episodes (refilling the pool in one batched reset when it runs short);
        False when the pool cannot serve them and the rows must be reset directly."""
        size = self.config.reset_pool + (self.config.reset_pool == self.num_envs)  # sizes must differ
        if len(rows) > size:
            return False
        if self._pool is None:
            config = replace(self.config, reset_pool=0, prefetch=False)  # pool rows are reseeded per refill
            twin = self.sim.policy.sharing_network() if self.sim.policy is not None else None
            self._pool = EpisodeBatch(config, size, cuda_graphs=False, policy_precision=self._policy_precision,
                                      policy=twin, source=self.source)
        pool = self._pool
        if len(self._pool_ready) < len(rows):
            seeds = self._rng(rows[0]).integers(2**63 - 1, size=size + 1)
            for i in range(size):
                pool.seed_row(i, np.random.default_rng(int(seeds[i])), seed_torch=False)
            pool.generator.manual_seed(int(seeds[-1]))
            pool.reset()
            self._pool_ready = list(range(size))
        spares = self._pool_ready[:len(rows)]
        for sim, other in ((self.sim, pool.sim), (pool.sim, self.sim)):   # same metric-geometry slots
            sim.pad_geometry(other.geometry.lanes.capacity, other.geometry.edges.capacity)
        if not transfer_rows(self, rows, self.num_envs, pool, spares, size):
            return False
        del self._pool_ready[:len(rows)]
        for r, spare in zip(rows, spares):
            self.scene_index[r], self.scenario_ids[r] = pool.scene_index[spare], pool.scenario_ids[spare]
            self.started[r] = time.perf_counter()
        self._step_graph.check()
        self._observe_graph.check()
        self._update_row_info()
        return True

    def _choose(self, row: int, options: Mapping[str, Any] | None) -> tuple[int, bool]:
        """The scene of ``row``'s next episode and whether it is being prefetched."""
        rng = self._rng(row)
        if options and ("scene_index" in options or "scenario_id" in options):
            return self.source.choose(rng, options), False
        pending, self._next_random[row] = self._next_random[row], None
        if pending is not None:
            return pending, True
        return self.source.choose(rng), False

    def _load(self, chosen: list[tuple[int, bool]]) -> list[SceneArrays]:
        """The arrays of the chosen scenes: prefetched ones from their prefetch, the others read once per
        distinct scene (rows that share a scene share its read-only arrays)."""
        read: dict[int, SceneArrays] = {}
        out = []
        for index, prefetched in chosen:
            if prefetched:
                out.append(self.loader.load(index))
            else:
                if index not in read:
                    read[index] = self.loader.load(index)
                out.append(read[index])
        return out

    def _prefetch_next(self, row: int) -> None:
        """Draw ``row``'s next random scene and start reading it; a pending one that a reset with an explicit
        scene left unused is dropped (the draw sequence is the same either way)."""
        if self.config.prefetch:
            if self._next_random[row] is not None:
                self.loader.discard(self._next_random[row])
            index = self.source.choose(self._rng(row))
            self._next_random[row] = index
            self.loader.prefetch(index)

    def _rng(self, row: int) -> np.random.Generator:
        rng = self.rngs[row]
        if rng is None:
            raise RuntimeError(f"row {row} has no random generator: seed_row must run before reset")
        return rng

    def _start_rows(self, batch: SceneBatch, ego: torch.Tensor, env_ids: torch.Tensor | None) -> None:
        rows = torch.arange(batch.batch_size, device=self.device)
        route = Route.from_log(batch, ego)
        where = route.locate(batch.agent_pos[rows, STEP_CURRENT, ego])
        start = batch.agent_pos[rows, STEP_CURRENT, ego]
        goal_active = (start - batch.agent_goal[rows, ego, :2]).norm(dim=-1) > self.config.goal_radius
        logged_speed = torch.where(batch.agent_valid[rows, :, ego], batch.agent_spd[rows, :, ego].abs(), 0.0)
        stats = EpisodeStats.start(batch.agent_acc[rows, STEP_CURRENT, ego], goal_active, logged_speed.amax(-1))
        ego_type = batch.agent_type[rows, ego]
        self.observer.set_scenes(batch, env_ids)
        if env_ids is None or self._route is None or self._where is None or self._stats is None:
            self._route, self._where = assign(self._route, route), assign(self._where, where)
            self._stats, self._ego_type = assign(self._stats, stats), assign(self._ego_type, ego_type)
            return
        assert self._ego_type is not None
        self._route.replace_rows(env_ids, route)
        copy_rows_(self._where, env_ids, where)
        self._stats.replace_rows(env_ids, stats)
        self._ego_type[env_ids] = ego_type

    # ---------------------------------------------------------------------------------------------- steps
    def step(self, actions: np.ndarray | torch.Tensor) -> StepResult:
        """Advance every row with the env actions ([B, 2] continuous / route or [B] discrete); new tensors."""
        self._require_started()
        normalised = self.actions.normalised(actions, self.num_envs)
        if self._use_graphs():
            self._action_in.copy_(normalised)
            result = _copy_result(self._step_graph())
        else:
            result = self._advance(normalised)
        wall = torch.as_tensor(time.perf_counter() - self.started, dtype=torch.float32, device=self.device)
        episode = {k: wall if k == "t" else result.episode[k] for k in EPISODE_KEYS}
        return StepResult(reward=result.reward, terminated=result.terminated, truncated=result.truncated,
                          info=result.info, rewards=result.rewards, episode=episode)

    @property
    def graphs_active(self) -> bool:
        """The step is currently replayed from a captured CUDA graph."""
        return self._step_graph.active

    def _use_graphs(self) -> bool:
        return self.cuda_graphs and self._step_graph.disabled_reason is None and self._graph_key()

    def _graph_key(self) -> bool:
        """Python-level state the captured step depends on: graphs need deterministic policy actions
        (stochastic actions draw from a torch.Generator, which is replayed eagerly)."""
        policy = getattr(self.sim._background, "policy", None)
        return policy is None or bool(policy._all_deterministic)

    def _advance_from_buffer(self) -> StepResult:
        return self._advance(self._action_in)

    def _advance(self, normalised: torch.Tensor) -> StepResult:
        """The step proper from normalised actions [B, 2]: no host synchronisation, buffers written in place
        (captured in the step graph). ``episode["t"]`` is added by :meth:`step`."""
        stats, route = self._require_started()
        assert self._where is not None
        physical = self.actions.physical(normalised, self._ego_type,
                                         self._ego_on_route(route) if self.actions.route_relative else None)
        out = self.sim.step(physical)
        rows = self.sim.row_index
        ego = self.sim.ego_index
        state = out.state
        acc, spd, yaw_rate = state.acc[rows, ego], state.spd[rows, ego], state.yaw_rate[rows, ego]
        jerk = (acc - stats.prev_acc).abs() / DT
        reached = (out.ego_dist_to_goal < self.config.goal_radius) & stats.goal_active
        events = StepEvents(progress=out.ego_progress - stats.route_s, goal_reached=reached & ~stats.goal_reached,
                            collided=out.ego_collided, offroad=out.ego_offroad, red_light=out.ego_red_light,
                            outside_map=out.ego_outside_map, acc_magnitude=torch.hypot(acc, spd * yaw_rate),
                            jerk=jerk, log_deviation=out.ego_log_distance, log_valid=out.ego_log_valid,
                            time_to_collision=out.ego_time_to_collision,
                            overspeed=(spd - stats.top_log_speed).clamp(min=0.0),
                            ahead_of_log=(out.ego_progress - route.logged_arc(out.step)).clamp(min=0.0))
        rewards = weighted_terms(events, self.config.reward)
        reward = total_reward(rewards)
        self._accumulate(stats, out, events, acc, reward)
        where = assign(self._where, route.locate(state.pos[rows, ego], out.ego_progress))
        done_terminated = terminated(events, stats.goal_reached, self.config.termination)
        truncated = stats.elapsed >= self.config.horizon
        info = {"step": out.step, "speed": spd, "acc": acc, "yaw_rate": yaw_rate, "jerk": jerk,
                "progress": out.ego_progress, "route_completion": self._completion(out.ego_progress),
                "lateral_offset": where.lateral.clone(), "dist_to_goal": out.ego_dist_to_goal,
                "log_deviation": out.ego_log_distance, "collided": out.ego_collided, "offroad": out.ego_offroad,
                "red_light": out.ego_red_light, "outside_map": out.ego_outside_map,
                "goal_reached": stats.goal_reached.clone(), "dest_reached": out.ego_dest_reached,
                "time_to_collision": out.ego_time_to_collision, "ahead_of_log": events.ahead_of_log}
        return StepResult(reward=reward, terminated=done_terminated, truncated=truncated, info=info,
                          rewards=rewards, episode=self._episode(stats))

    def _ego_on_route(self, route: Route) -> EgoOnRoute:
        """The ego's current state (before the step) and route, for route-relative actions."""
        assert self._where is not None
        state, rows, ego = self.sim.state, self.sim.row_index, self.sim.ego_index
        return EgoOnRoute(pos=state.pos[rows, ego], yaw=state.yaw[rows, ego], spd=state.spd[rows, ego],
                          route=route, where=self._where)

    def _accumulate(self, stats: EpisodeStats, out: StepOutput, events: StepEvents, acc: torch.Tensor,
                    reward: torch.Tensor) -> None:
        stats.elapsed += 1
        stats.route_s.copy_(out.ego_progress)
        stats.prev_acc.copy_(acc)
        stats.goal_reached |= events.goal_reached
        stats.collided |= events.collided
        stats.offroad |= events.offroad
        stats.red_lights += events.red_light.long()
        stats.log_dev_sum += torch.where(out.ego_log_valid, out.ego_log_distance, torch.zeros_like(acc))
        stats.log_dev_count += out.ego_log_valid.long()
        torch.maximum(stats.max_jerk, events.jerk, out=stats.max_jerk)
        torch.maximum(stats.max_overspeed, events.overspeed, out=stats.max_overspeed)
        stats.ret += reward

    def _completion(self, s: torch.Tensor) -> torch.Tensor:
        _, route = self._require_started()
        return s / route.length.clamp_min(1.0)

    def _episode(self, stats: EpisodeStats) -> dict[str, torch.Tensor]:
        """Episode summary of every row, without the wall time "t" (added by :meth:`step`)."""
        return {"r": stats.ret.clone(), "l": stats.elapsed.clone(),
                "goal_reached": stats.goal_reached.clone(), "collided": stats.collided.clone(),
                "offroad": stats.offroad.clone(), "red_light_violations": stats.red_lights.clone(),
                "progress": stats.route_s.clone(), "route_completion": self._completion(stats.route_s),
                "ade": stats.log_dev_sum / stats.log_dev_count.clamp_min(1), "max_jerk": stats.max_jerk.clone(),
                "max_overspeed": stats.max_overspeed.clone()}

    # -------------------------------------------------------------------------------------- observations
    def observe(self) -> dict[str, torch.Tensor]:
        """The observation groups [B, ...] of every row's current state (new tensors)."""
        self._require_started()
        if self._use_graphs():
            return {k: v.clone() for k, v in self._observe_graph().items()}
        return self._build_observation()

    def _build_observation(self) -> dict[str, torch.Tensor]:
        stats, route = self._require_started()
        assert self._where is not None
        view = EgoView(index=self.sim.ego_index, step=self.sim.step_index, elapsed=stats.elapsed, route=self._where,
                       rows=self.sim.row_index, mask=self.sim.ego_mask)
        return self.observer.build(self.sim.batch, self.sim.state, view, route)

    def format_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | torch.Tensor:
        """``obs`` in the configured mode: the dict, or the flat [B, D] tensor."""
        return obs if self.config.obs_mode == "dict" else self.observer.flatten(obs)

    def row_info(self) -> dict[str, np.ndarray]:
        """Host-side identification of every row: scene index, scenario id, ego slot and track id (copies)."""
        return {k: v.copy() for k, v in self._row_info.items()}

    def _require_started(self) -> tuple[EpisodeStats, Route]:
        if self._stats is None or self._route is None:
            raise RuntimeError("reset() must be called before step()")
        return self._stats, self._route

    def close(self) -> None:
        if self._owns_source:
            self.loader.close()
        else:
            self.loader.cancel()
        if self._pool is not None:
            self._pool.close()


def _copy_result(result: StepResult) -> StepResult:
    """A copy of a step result whose tensors are [B] static graph buffers: one stacking kernel per dtype,
    the copies are views of the stacks."""
    groups = {"": {"reward": result.reward, "terminated": result.terminated, "truncated": result.truncated},
              "info": result.info, "rewards": result.rewards, "episode": result.episode}
    by_dtype: dict[torch.dtype, list[tuple[str, str]]] = {}
    for group, values in groups.items():
        for key, value in values.items():
            by_dtype.setdefault(value.dtype, []).append((group, key))
    rows: dict[tuple[str, str], torch.Tensor] = {}
    for entries in by_dtype.values():
        rows.update(zip(entries, torch.stack([groups[g][k] for g, k in entries]).unbind(0)))
    copies = {group: {key: rows[group, key] for key in values} for group, values in groups.items()}
    top = copies[""]
    return StepResult(reward=top["reward"], terminated=top["terminated"], truncated=top["truncated"],
                      info=copies["info"], rewards=copies["rewards"], episode=copies["episode"])


def tensors_to_numpy(values: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Copy a dict of [B] tensors to numpy (bool, int64 or float32 arrays): CPU tensors one by one (no transfer
    to make), device tensors with one transfer."""
    if not values:
        return {}
    if all(v.device.type == "cpu" for v in values.values()):
        return {key: _host_dtype((v.float() if v.is_floating_point() else v).numpy(), v.dtype)
                for key, v in values.items()}
    stacked = torch.stack([v.to(torch.float64) for v in values.values()]).cpu().numpy()
    return {key: _host_dtype(row, v.dtype) for row, (key, v) in zip(stacked, values.items())}


def _host_dtype(array: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """A copy of ``array`` as bool, int64 or float32, after the tensor dtype it came from."""
    if dtype == torch.bool:
        return array.astype(bool)
    if not dtype.is_floating_point:
        return array.astype(np.int64)
    return array.astype(np.float32)
