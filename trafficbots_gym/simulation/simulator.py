"""``BatchedSimulator``: B scenes stepped together on one device, one ego per scene, everything ``[B, A]``.

Per step (from step t-1 to t, t = 11, 12, ...):

1. the ego moves with its physical action (acc, yaw rate), clipped to its type's limits, through the
   midpoint unicycle (the same dynamics as every simulated agent); with no ego action (``None``) the
   ego slot moves like the other agents instead;
2. the background model moves its reactive agents (:mod:`trafficbots_gym.simulation.background`);
   the other non-ego agents take their logged state of step t (and vanish once their log ends,
   in particular for t > 90);
3. reactive agents that first appear in the log at step t are spawned at their logged state;
   reactive agents outside the map rectangle while not in the log are removed (reference ``kill``);
4. collisions, off-road, red-light crossings (lights of step min(t, 90)), map exits and the ego's
   progress along its logged path, distance to its goal and destination flag are computed on device.

``step`` makes no host synchronisation and has no Python loop over scenes or agents. Every per-episode
tensor lives in a buffer that is allocated at the first reset and then overwritten in place by resets
(new rows copied in) and steps (new state copied in), so a CUDA graph of ``step`` stays valid; buffers
are only reallocated when a reset changes the batch size or needs more polyline slots for the metrics.
"""
from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import DT, STEP_CURRENT
from trafficbots_gym.simulation import metrics
from trafficbots_gym.simulation.background import BACKGROUNDS, make_background, reactive_mask
from trafficbots_gym.simulation.buffers import assign, copy_rows_
from trafficbots_gym.simulation.dynamics import action_limits, unicycle_step
from trafficbots_gym.simulation.guard import (EdgeHoldParams, GuardParams, LaneKeepingParams, RestartParams,
                                              SideCheckParams, guard_acceleration)
from trafficbots_gym.simulation.idm import IDMParams
from trafficbots_gym.simulation.metrics import DestinationNodes, LoggedPath, MapGeometry, PathSegments
from trafficbots_gym.simulation.state import AgentState

if TYPE_CHECKING:
    from trafficbots_gym.model.policy import TrafficBotsPolicy

_D = TypeVar("_D")
GEOMETRY_CAPACITY_STEP = 64
"""Polyline slots of the metric geometry grow in multiples of this, so that resets rarely reallocate."""


@dataclass
class StepOutput:
    """Everything the simulator reports after one step (all tensors on the simulator's device)."""

    state: AgentState               # state of every agent at ``step``
    step: torch.Tensor              # [B] long, the step just entered
    collided: torch.Tensor | None   # [B, A] bool (None: the simulator computes the ego's flags only)
    offroad: torch.Tensor | None    # [B, A] bool (vehicles; None as above)
    red_light: torch.Tensor | None  # [B, A] bool (vehicles crossing a STOP stop point; None as above)
    outside_map: torch.Tensor       # [B, A] bool
    ego_collided: torch.Tensor      # [B] bool
    ego_offroad: torch.Tensor       # [B] bool
    ego_red_light: torch.Tensor     # [B] bool
    ego_outside_map: torch.Tensor   # [B] bool
    ego_progress: torch.Tensor      # [B] m along the ego's logged path (from step 10)
    ego_path_length: torch.Tensor   # [B] m, length of the ego's logged path from step 10
    ego_dist_to_goal: torch.Tensor  # [B] m to the ego's goal (its last logged position)
    ego_dest_reached: torch.Tensor  # [B] bool (false where the destination is unknown)
    ego_log_distance: torch.Tensor  # [B] m from the ego to its logged position at ``step`` (0 if no log)
    ego_log_valid: torch.Tensor     # [B] bool, the ego's log exists at ``step``
    ego_time_to_collision: torch.Tensor  # [B] s to the box the ego follows (capped at 5 s; WOSAC's rule)


class BatchedSimulator:
    """Closed-loop simulation of B scenes with one externally controlled ego per scene.

    ``background``: one of :data:`~trafficbots_gym.simulation.background.BACKGROUNDS`;
    ``policy``: a :class:`~trafficbots_gym.model.policy.TrafficBotsPolicy`, needed for "trafficbots"
    and "mixed"; ``mixed_radius``: m around the ego at reset within which "mixed" agents are reactive;
    ``idm_params``: IDM constants; ``latent``, ``destination``, ``deterministic_action`` and
    ``deterministic_latent``: how the policy draws its latents, destinations and actions at reset;
    ``agent_metrics``: compute collision / off-road / red-light flags for every agent (else only the ego's,
    with the same values, and the per-agent fields of :class:`StepOutput` are None); ``guard``: the collision
    guard (:mod:`~trafficbots_gym.simulation.guard`) capping the learned background's accelerations;
    ``lane_keeping``: the guard module's lane keeping on the learned background's yaw rates; ``restart``: its
    stall restart on their accelerations; ``edge_hold``: its edge hold on their yaw rates; ``side_check``: its
    side check, which keeps lane keeping and the edge hold from steering into a neighbour; ``ego_guard``: the
    collision guard on the ego's action.
    """

    def __init__(self, *, background: str, policy: "TrafficBotsPolicy | None" = None,
                 device: torch.device | str = "cpu", mixed_radius: float = 30.0,
                 idm_params: IDMParams | None = None, latent: str = "prior", destination: str = "sample",
                 deterministic_action: bool = True, deterministic_latent: bool = False,
                 agent_metrics: bool = True, guard: GuardParams | None = None,
                 ego_guard: GuardParams | None = None, lane_keeping: LaneKeepingParams | None = None,
                 restart: RestartParams | None = None, edge_hold: EdgeHoldParams | None = None,
                 side_check: SideCheckParams | None = None) -> None:
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; valid choices: {', '.join(BACKGROUNDS)}")
        if mixed_radius <= 0:
            raise ValueError(f"mixed_radius must be positive, got {mixed_radius}")
        self.background_name = background
        self.device = torch.device(device)
        self.mixed_radius = float(mixed_radius)
        self.agent_metrics = agent_metrics
        self.ego_guard = ego_guard
        self._background = make_background(background, policy, idm_params=idm_params, latent=latent,
                                           destination=destination, deterministic_action=deterministic_action,
                                           deterministic_latent=deterministic_latent, guard=guard,
                                           lane_keeping=lane_keeping, restart=restart,
                                           edge_hold=edge_hold, side_check=side_check,
                                           geometry=functools.partial(getattr, self, "geometry"))  # picklable
        self._batch: SceneBatch | None = None
        self._state: AgentState | None = None
        self._step: torch.Tensor | None = None
        self._ego: torch.Tensor | None = None
        self._reactive: torch.Tensor | None = None
        self._geometry: MapGeometry | None = None
        self._ego_path: LoggedPath | None = None
        self._ego_segments: PathSegments | None = None      # of the ego path (constant per episode)
        self._ego_dest: DestinationNodes | None = None      # the ego's destination polyline
        self._ego_mask: torch.Tensor | None = None
        self._ego_limits: torch.Tensor | None = None       # [B, 2] the ego's action limits
        self._rows: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------------

    @property
    def batch(self) -> SceneBatch:
        """The current scenes."""
        return _require(self._batch)

    @property
    def state(self) -> AgentState:
        """The current state of every agent."""
        return _require(self._state)

    @property
    def step_index(self) -> torch.Tensor:
        """[B] long, the current step of each scene (10 right after reset)."""
        return _require(self._step)

    @property
    def ego_index(self) -> torch.Tensor:
        """[B] long, the ego's agent slot in each scene."""
        return _require(self._ego)

    @property
    def reactive(self) -> torch.Tensor:
        """[B, A] bool, agents moved by the background model (the other non-ego agents replay the log)."""
        return _require(self._reactive)

    @property
    def policy(self) -> Any:
        """The learned background's ``TrafficBotsPolicy`` (None for scripted backgrounds)."""
        return getattr(self._background, "policy", None)

    @property
    def guard(self) -> GuardParams | None:
        """The collision guard of the learned background (None: unguarded or a scripted background)."""
        return getattr(self._background, "guard", None)

    @property
    def lane_keeping(self) -> LaneKeepingParams | None:
        """The lane keeping of the learned background (None: off or a scripted background)."""
        return getattr(self._background, "lane_keeping", None)

    @property
    def restart(self) -> RestartParams | None:
        """The stall restart of the learned background (None: off or a scripted background)."""
        return getattr(self._background, "restart", None)

    @property
    def edge_hold(self) -> EdgeHoldParams | None:
        """The edge hold of the learned background (None: off or a scripted background)."""
        return getattr(self._background, "edge_hold", None)

    @property
    def side_check(self) -> SideCheckParams | None:
        """The side check of the learned background's lateral guards (None: off or a scripted background)."""
        return getattr(self._background, "side_check", None)

    @property
    def geometry(self) -> MapGeometry:
        """Static per-scene map geometry used by the metrics."""
        return _require(self._geometry)

    @property
    def row_index(self) -> torch.Tensor:
        """[B] long, 0..B-1 (a persistent buffer for per-row gathers)."""
        return _require(self._rows)

    @property
    def ego_mask(self) -> torch.Tensor:
        """[B, A] bool one-hot of the ego slot."""
        return _require(self._ego_mask)

    # ------------------------------------------------------------------------------------------------
    # reset / step
    # ------------------------------------------------------------------------------------------------

    def reset(self, batch: SceneBatch, ego_index: torch.Tensor, *, env_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None, scene_keys: Sequence[Hashable | None] | None = None) -> None:
        """Start the scenes of ``batch`` at step 10 with ego slots ``ego_index``.

        Without ``env_ids`` the whole simulator is replaced. With ``env_ids`` [R] only those rows are
        replaced and the other rows continue untouched; ``batch`` then holds either the R new scenes
        (row i goes to ``env_ids[i]``, ``ego_index`` [R]) or a full batch of B scenes whose rows
        ``env_ids`` are taken (``ego_index`` [B] or [R]). ``scene_keys``: one per started scene (B, or R
        in ``env_ids`` order) naming its data, so that the background model can reuse earlier encodings
        of the same scene (see ``TrafficBotsPolicy.reset``).
        """
        batch = batch.to(self.device)
        ego_index = torch.as_tensor(ego_index, dtype=torch.long, device=self.device).reshape(-1)
        if env_ids is None:
            self._check_new_rows(batch, ego_index)
            if self._batch is not None and self._batch.batch_size != batch.batch_size:
                self._geometry = None       # a new batch size: every buffer is reallocated below
            self._batch = assign(self._batch, batch)
            self._ego = assign(self._ego, ego_index)
            self._rows = assign(self._rows, torch.arange(batch.batch_size, device=self.device))
            rows: torch.Tensor | slice = slice(None)
        else:
            env_ids = torch.as_tensor(env_ids, dtype=torch.long, device=self.device).reshape(-1)
            batch, ego_index = self._new_rows(batch, ego_index, env_ids)
            self._check_new_rows(batch, ego_index)
            copy_rows_(self._batch, env_ids, batch)
            self.ego_index[env_ids] = ego_index
            rows = env_ids
        self._write_rows(rows, batch, ego_index)
        self._background.reset(self.batch, self.ego_index, env_ids=env_ids, generator=generator,
                               scene_keys=scene_keys)

    def _write_rows(self, rows: torch.Tensor | slice, batch: SceneBatch, ego_index: torch.Tensor) -> None:
        """Store the derived per-scene tensors of the new scenes ``batch`` in rows ``rows`` of the buffers."""
        n_agent = batch.agent_valid.shape[-1]
        ego_mask = torch.arange(n_agent, device=self.device).unsqueeze(0) == ego_index.unsqueeze(-1)
        ego_path = LoggedPath.from_batch(batch).select_agent(ego_index)
        scenes = torch.arange(batch.batch_size, device=self.device)
        ego_dest = batch.agent_dest[scenes, ego_index].unsqueeze(1)
        new = {"_ego_mask": ego_mask, "_ego_limits": action_limits(batch.agent_type[scenes, ego_index]),
               "_ego_path": ego_path, "_ego_segments": ego_path.segments(),
               "_ego_dest": DestinationNodes.of(ego_dest, batch.map_pos, batch.map_dir, batch.map_valid,
                                                batch.map_type),
               "_state": AgentState.from_log(batch, STEP_CURRENT).masked(),
               "_step": torch.full((batch.batch_size,), STEP_CURRENT, dtype=torch.long, device=self.device),
               "_reactive": reactive_mask(self.background_name, batch, ego_index, self.mixed_radius)}
        for name, value in new.items():
            if isinstance(rows, slice):
                setattr(self, name, assign(getattr(self, name), value))
            else:
                copy_rows_(getattr(self, name), rows, value)
        self._write_geometry(rows, MapGeometry.from_batch(batch))

    def pad_geometry(self, lanes: int, edges: int) -> None:
        """Grow the metric geometry buffers to at least ``lanes`` lane and ``edges`` road-edge polyline slots
        (a reallocation when they grow; the extra slots are invalid, so no metric changes)."""
        old = self.geometry
        if lanes > old.lanes.capacity or edges > old.edges.capacity:
            self._geometry = old.pad_to(max(lanes, old.lanes.capacity), max(edges, old.edges.capacity))

    def _write_geometry(self, rows: torch.Tensor | slice, new: MapGeometry) -> None:
        """Copy ``new`` into the geometry buffers; they grow (reallocate) only when ``new`` needs more slots."""
        old = self._geometry
        lanes, edges = new.lanes.capacity, new.edges.capacity
        if old is None:
            self._geometry = assign(None, new.pad_to(_round_up(lanes), _round_up(edges)))
            return
        if lanes > old.lanes.capacity or edges > old.edges.capacity:
            old = self._geometry = old.pad_to(_round_up(max(lanes, old.lanes.capacity)),
                                              _round_up(max(edges, old.edges.capacity)))
        copy_rows_(old, rows, new.pad_to(old.lanes.capacity, old.edges.capacity))

    def step(self, ego_action: torch.Tensor | None) -> StepOutput:
        """Advance every scene by one step with the ego's physical action [B, 2] (acc m/s^2, yaw rate rad/s).

        ``ego_action=None``: no external ego this step; the ego slot moves like every other agent (by the
        background model, or along its log under "log_replay"), as in a WOSAC rollout where every agent
        is simulated.
        """
        batch, prev = self.batch, self.state
        t = self.step_index + 1
        log_next = self.log_state(t)
        rows = _require(self._rows)
        log_prev_valid = (batch.agent_valid[rows, (t - 1).clamp(max=batch.num_steps - 1)]
                          & (t - 1 < batch.num_steps).unsqueeze(-1))
        moved = self._background.propose(prev, t)
        spawn = self.reactive & log_next.valid & ~log_prev_valid
        gone = self.reactive & ~log_next.valid & metrics.outside_map(moved, batch.map_boundary)
        nxt = moved.where(~self.reactive | spawn, log_next)
        nxt = AgentState(**{**_as_dict(nxt), "valid": nxt.valid & ~gone}).masked()
        if ego_action is None:
            nxt = nxt.where(self.ego_mask, log_next if self.background_name == "log_replay" else moved)
        else:
            self._move_ego(nxt, prev, ego_action)
        out = self._report(prev, nxt, t, log_next)
        self._state = assign(self._state, nxt)
        self._step = assign(self._step, t)
        return out

    # ------------------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------------------

    def log_state(self, step: torch.Tensor | int) -> AgentState:
        """The logged state of every agent at ``step`` (int or [B] long); invalid beyond the log's end."""
        batch = self.batch
        steps = torch.as_tensor(step, dtype=torch.long, device=self.device).expand(batch.batch_size)
        in_log = (steps >= 0) & (steps < batch.num_steps)
        t = steps.clamp(0, batch.num_steps - 1)
        rows = _require(self._rows)
        state = AgentState(valid=batch.agent_valid[rows, t] & in_log.unsqueeze(-1), pos=batch.agent_pos[rows, t],
                           yaw=batch.agent_yaw[rows, t], spd=batch.agent_spd[rows, t], vel=batch.agent_vel[rows, t],
                           acc=batch.agent_acc[rows, t], yaw_rate=batch.agent_yaw_rate[rows, t])
        return state.masked()

    def traffic_lights(self, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(valid [B, S], state [B, S, 5], pos, dir [B, S, 2]) of ``step`` [B]; the last logged step holds after."""
        batch = self.batch
        t = step.clamp(0, batch.num_steps - 1)
        rows = _require(self._rows)
        return batch.tl_valid[rows, t], batch.tl_state[rows, t], batch.tl_pos[rows, t], batch.tl_dir[rows, t]

    def _move_ego(self, state: AgentState, prev: AgentState, ego_action: torch.Tensor) -> None:
        """Write the ego slot of the new ``state`` (tensors of this step, not buffers): the ego of ``prev``
        moved by its physical action [B, 2] clipped to its type's limits (and capped by the ego guard)."""
        rows, e = _require(self._rows), self.ego_index
        action = ego_action.to(self.device, prev.pos.dtype).reshape(rows.shape[0], 2)
        limit = _require(self._ego_limits).to(action.dtype)
        action = torch.maximum(torch.minimum(action, limit), -limit)
        if self.ego_guard is not None:
            batch = self.batch
            acc = guard_acceleration(action[:, :1], prev, batch.agent_size, batch.agent_type, self.ego_guard,
                                     agents=e.unsqueeze(1))
            action = torch.cat([acc, action[:, 1:]], dim=1)
        pos, yaw, spd, vel = unicycle_step(prev.pos[rows, e], prev.yaw[rows, e], prev.spd[rows, e],
                                           action[:, 0], action[:, 1], DT)
        slot = (rows, e)
        state.valid.masked_fill_(self.ego_mask, True)
        state.pos[slot], state.yaw[slot], state.spd[slot], state.vel[slot] = pos, yaw, spd, vel
        state.acc[slot], state.yaw_rate[slot] = action[:, 0], action[:, 1]

    def _report(self, prev: AgentState, state: AgentState, t: torch.Tensor, log: AgentState) -> StepOutput:
        batch, geom = self.batch, self.geometry
        rows = _require(self._rows)
        e = self.ego_index
        tl_valid, tl_state, tl_pos, tl_dir = self.traffic_lights(t)
        agents = None if self.agent_metrics else e.unsqueeze(1)
        collided = metrics.collisions(state, batch.agent_size, batch.agent_type, agents=agents)
        off = metrics.offroad(state, batch.agent_size, batch.agent_type, geom, agents=agents)
        red = metrics.red_light_violation(prev, state, tl_valid, tl_state, tl_pos, batch.agent_type, tl_dir=tl_dir,
                                          agents=agents)
        out = metrics.outside_map(state, batch.map_boundary)
        if agents is None:
            ego_flags = collided[rows, e], off[rows, e], red[rows, e]
        else:
            ego_flags = collided[:, 0], off[:, 0], red[:, 0]
            collided = off = red = None
        ego_pos = state.pos[rows, e]
        ego_path = _require(self._ego_path)
        progress = metrics.path_progress(ego_pos.unsqueeze(1), ego_path, _require(self._ego_segments)).squeeze(1)
        ego_state = _select_agent(state, e)
        dest_ok = _require(self._ego_dest).reached(ego_state).squeeze(1) & batch.agent_dest_known
        log_valid = log.valid[rows, e]
        log_dist = torch.where(log_valid, (ego_pos - log.pos[rows, e]).norm(dim=-1), torch.zeros_like(progress))
        ego_size = batch.agent_size[rows, e].unsqueeze(1)
        ttc = metrics.time_to_collision(ego_state.pos, ego_state.yaw, ego_size, ego_state.spd, state.pos, state.yaw,
                                        batch.agent_size, state.spd, state.valid).squeeze(1)
        return StepOutput(state=state, step=t, collided=collided, offroad=off, red_light=red, outside_map=out,
                          ego_collided=ego_flags[0], ego_offroad=ego_flags[1], ego_red_light=ego_flags[2],
                          ego_outside_map=out[rows, e], ego_progress=progress,
                          ego_path_length=ego_path.length.squeeze(1),
                          ego_dist_to_goal=(ego_pos - batch.agent_goal[rows, e, :2]).norm(dim=-1),
                          ego_dest_reached=dest_ok, ego_log_distance=log_dist, ego_log_valid=log_valid,
                          ego_time_to_collision=ttc)

    def _new_rows(self, batch: SceneBatch, ego_index: torch.Tensor,
                  env_ids: torch.Tensor) -> tuple[SceneBatch, torch.Tensor]:
        """The sub-batch and ego slots of the rows ``env_ids`` (see :meth:`reset`)."""
        current = self.batch
        if batch.num_steps != current.num_steps:
            raise ValueError(f"new scenes have {batch.num_steps} steps, the running ones {current.num_steps}")
        r = env_ids.shape[0]
        if batch.batch_size != r:
            if batch.batch_size != current.batch_size:
                raise ValueError(f"reset with {r} env_ids needs {r} or {current.batch_size} scenes, "
                                 f"got {batch.batch_size}")
            batch = batch.index(env_ids)
            if ego_index.shape[0] == current.batch_size:
                ego_index = ego_index[env_ids]
        if ego_index.shape[0] != r:
            raise ValueError(f"ego_index has {ego_index.shape[0]} entries for {r} reset rows")
        return batch, ego_index

    @staticmethod
    def _check_new_rows(batch: SceneBatch, ego_index: torch.Tensor) -> None:
        """Reset-time checks (host sync allowed here): shapes, ego slots in range and valid at step 10."""
        if ego_index.shape[0] != batch.batch_size:
            raise ValueError(f"ego_index has {ego_index.shape[0]} entries for {batch.batch_size} scenes")
        n_agent = batch.agent_valid.shape[-1]
        if batch.num_steps <= STEP_CURRENT:
            raise ValueError(f"scenes need more than {STEP_CURRENT} steps, got {batch.num_steps}")
        bad = (ego_index < 0) | (ego_index >= n_agent)
        if bool(bad.any()):
            raise ValueError(f"ego_index {ego_index[bad].tolist()} outside [0, {n_agent})")
        rows = torch.arange(batch.batch_size, device=ego_index.device)
        invalid = ~batch.agent_valid[rows, STEP_CURRENT, ego_index]
        if bool(invalid.any()):
            raise ValueError(f"ego agents of scene rows {rows[invalid].tolist()} (slots "
                             f"{ego_index[invalid].tolist()}) are not valid at step {STEP_CURRENT}")


def replace_rows(old: _D, rows: torch.Tensor, new: _D) -> _D:
    """A copy of dataclass-of-tensors ``old`` whose batch rows ``rows`` come from ``new`` (out of place;
    the simulator itself writes its buffers in place with ``buffers.copy_rows_``)."""
    return type(old)(**{f.name: getattr(old, f.name).index_copy(0, rows, getattr(new, f.name))
                        for f in fields(old)})  # type: ignore[arg-type]


def _round_up(capacity: int) -> int:
    return -(-max(capacity, 1) // GEOMETRY_CAPACITY_STEP) * GEOMETRY_CAPACITY_STEP


def _select_agent(state: AgentState, agent: torch.Tensor) -> AgentState:
    """One agent per scene as a [B, 1] state."""
    rows = torch.arange(agent.shape[0], device=agent.device)
    return AgentState(**{k: v[rows, agent].unsqueeze(1) for k, v in _as_dict(state).items()})


def _as_dict(state: AgentState) -> dict[str, torch.Tensor]:
    return {f.name: getattr(state, f.name) for f in fields(state)}


def _require(value: _D | None) -> _D:
    if value is None:
        raise RuntimeError("BatchedSimulator.reset must be called first")
    return value
