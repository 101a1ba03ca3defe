"""Background-agent models of the batched simulator, selected by name.

* ``"log_replay"``: non-reactive; every non-ego agent follows the log and vanishes when its log ends.
* ``"constant_velocity"``: every non-ego agent keeps the speed and heading of its last logged state
  (step 10, or its spawn step).
* ``"idm"``: longitudinal IDM along each agent's logged path (:mod:`trafficbots_gym.simulation.idm`).
* ``"trafficbots"``: the learned TrafficBots policy drives every non-ego agent (optionally under the
  collision guard of :mod:`trafficbots_gym.simulation.guard`, which caps its accelerations).
* ``"mixed"``: agents within ``mixed_radius`` m of the ego at reset are TrafficBots-driven; the rest
  (including agents that appear later) replay the log.

A model moves the agents of its *reactive mask*; the simulator replays the log for the others.
Every model implements ``reset(batch, ego_index, *, env_ids, generator, scene_keys)`` and
``propose(state, step) -> AgentState`` (the state at ``step`` of every agent from the state at
``step - 1``; invalid agents stay invalid). ``scene_keys`` (one per started scene, see
``TrafficBotsPolicy.reset``) lets a model reuse what it computed for a scene before.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.simulation.guard import (EdgeHoldParams, GuardParams, LaneKeepingParams, RestartParams,
                                              SideCheckParams, occupied_sides,
                                              guard_acceleration, hold_edge, keep_lane, red_light_ahead,
                                              restart_stalled)
from trafficbots_gym.simulation.idm import IDMBackground, IDMParams
from trafficbots_gym.simulation.metrics import MapGeometry
from trafficbots_gym.simulation.state import AgentState

if TYPE_CHECKING:
    from trafficbots_gym.model.policy import TrafficBotsPolicy

BACKGROUNDS: tuple[str, ...] = ("log_replay", "constant_velocity", "idm", "trafficbots", "mixed")
"""Valid background names."""
LEARNED_BACKGROUNDS: tuple[str, ...] = ("trafficbots", "mixed")
GUARD_SUFFIX = "+guard"
"""Appended to a learned background's name (``"trafficbots+guard"``) in the benchmark CLIs: the same model
under the collision guard."""
BACKGROUND_SPECS: tuple[str, ...] = BACKGROUNDS + tuple(name + GUARD_SUFFIX for name in LEARNED_BACKGROUNDS)
"""Background names the benchmark CLIs accept."""


def split_guard(spec: str) -> tuple[str, bool]:
    """``"trafficbots+guard"`` -> ``("trafficbots", True)``; a plain name -> ``(name, False)``."""
    if spec not in BACKGROUND_SPECS:
        raise ValueError(f"unknown background {spec!r}; valid choices: {', '.join(BACKGROUND_SPECS)}")
    if spec.endswith(GUARD_SUFFIX):
        return spec[:-len(GUARD_SUFFIX)], True
    return spec, False


def env_background_keys(spec: str) -> dict[str, object]:
    """The env keys of a background spec: ``"trafficbots+guard"`` -> ``background="trafficbots",
    background_guard=True``; a plain name -> that background with ``background_guard=False`` (the raw model)."""
    name, guarded = split_guard(spec)
    return {"background": name, "background_guard": guarded}


class Background(Protocol):
    """What the simulator needs from a background model."""

    def reset(self, batch: SceneBatch, ego_index: torch.Tensor, *, env_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None,
              scene_keys: Sequence[Hashable | None] | None = None) -> None: ...

    def propose(self, state: AgentState, step: torch.Tensor) -> AgentState: ...


class LogReplay:
    """No reactive agents: the simulator replays the log for every non-ego agent."""

    name = "log_replay"

    def reset(self, batch: SceneBatch, ego_index: torch.Tensor, *, env_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None,
              scene_keys: Sequence[Hashable | None] | None = None) -> None:
        """Nothing to cache."""

    def propose(self, state: AgentState, step: torch.Tensor) -> AgentState:
        """Unused by the simulator (no agent is reactive); returns ``state``."""
        return state


class ConstantVelocity:
    """Every agent keeps its current speed and heading (zero acceleration and yaw rate)."""

    name = "constant_velocity"

    def reset(self, batch: SceneBatch, ego_index: torch.Tensor, *, env_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None,
              scene_keys: Sequence[Hashable | None] | None = None) -> None:
        """Nothing to cache: the initial state is the logged step-10 (or spawn) state."""

    def propose(self, state: AgentState, step: torch.Tensor) -> AgentState:
        zeros = torch.zeros_like(state.spd)
        return state.step(zeros, zeros)


class LearnedBackground:
    """The TrafficBots policy: encodes the scenes at reset (warm start on logged steps 0..10), then
    integrates its physical (acc, yaw rate) actions with the unicycle dynamics every step; with ``restart``
    stalled agents whose logged driver moves get an acceleration floor, with ``guard`` the accelerations are
    then capped by the collision guard (along the arc of the final yaw rate), with ``lane_keeping`` the yaw rates
    of vehicles that drift off their lane are pulled back, with ``edge_hold`` vehicles and cyclists heading onto
    a close road edge are turned along it, with ``side_check`` neither of the two steers an agent towards a
    neighbour beside it (the map of the scenes comes from ``geometry()``)."""

    name = "trafficbots"

    def __init__(self, policy: "TrafficBotsPolicy", *, latent: str = "prior", destination: str = "sample",
                 deterministic_action: bool = True, deterministic_latent: bool = False,
                 guard: GuardParams | None = None, lane_keeping: LaneKeepingParams | None = None,
                 restart: RestartParams | None = None, edge_hold: EdgeHoldParams | None = None,
                 side_check: SideCheckParams | None = None,
                 geometry: Callable[[], MapGeometry] | None = None) -> None:
        if (lane_keeping is not None or edge_hold is not None) and geometry is None:
            raise ValueError("lane_keeping and edge_hold need the scenes' map geometry (geometry=None given)")
        self.policy = policy
        self.guard, self.lane_keeping, self.restart, self.edge_hold = guard, lane_keeping, restart, edge_hold
        self.side_check = side_check
        self._geometry = geometry
        self._batch: SceneBatch | None = None
        self.latent, self.destination = latent, destination
        self.deterministic_action, self.deterministic_latent = deterministic_action, deterministic_latent

    def reset(self, batch: SceneBatch, ego_index: torch.Tensor, *, env_ids: torch.Tensor | None = None,
              generator: torch.Generator | None = None,
              scene_keys: Sequence[Hashable | None] | None = None) -> None:
        """(Re-)encode ``batch`` (only its rows ``env_ids``, when given; encodings of scenes with a cached
        ``scene_keys`` entry are reused) and warm-start on steps 0..10. The simulator only ever holds the ego
        and agents of the log from step 10 on, so only those are active for the policy."""
        self._batch = batch
        scenes = batch if env_ids is None else batch.index(env_ids)
        egos = ego_index if env_ids is None else ego_index[env_ids]
        n_agent = scenes.agent_valid.shape[-1]
        active = (scenes.agent_valid[:, STEP_CURRENT:].any(1)
                  | (torch.arange(n_agent, device=egos.device) == egos.unsqueeze(-1)))
        self.policy.reset(scenes, env_ids=env_ids, generator=generator, latent=self.latent,  # type: ignore[arg-type]
                          destination=self.destination, deterministic_action=self.deterministic_action,  # type: ignore[arg-type]
                          deterministic_latent=self.deterministic_latent, cache_keys=scene_keys, active=active)

    def propose(self, state: AgentState, step: torch.Tensor) -> AgentState:
        action = self.policy.act(state, step)
        acc, yaw_rate = action[..., 0], action[..., 1]
        batch = self._batch
        if self.lane_keeping is not None or self.edge_hold is not None:
            assert batch is not None and self._geometry is not None
            geometry = self._geometry()
            sides = None if self.side_check is None else occupied_sides(state, batch.agent_size, self.side_check)
            if self.lane_keeping is not None:
                yaw_rate = keep_lane(yaw_rate, state, batch.agent_type, geometry, self.lane_keeping, sides)
            if self.edge_hold is not None:
                yaw_rate = hold_edge(yaw_rate, state, batch.agent_size, batch.agent_type, geometry, self.edge_hold,
                                     sides)
        if self.restart is not None:
            assert batch is not None
            acc = self._restart(acc, state, step, batch, self.restart)
        if self.guard is not None:
            assert batch is not None
            acc = guard_acceleration(acc, state, batch.agent_size, batch.agent_type, self.guard, yaw_rate=yaw_rate)
        return state.step(acc, yaw_rate)

    @staticmethod
    def _restart(acc: torch.Tensor, state: AgentState, step: torch.Tensor, batch: SceneBatch,
                 params: RestartParams) -> torch.Tensor:
        """``restart_stalled`` against the log of ``step`` [B] (no restart past the log's end) and the lights
        of the current step."""
        rows = torch.arange(batch.batch_size, device=acc.device)
        in_log = (step < batch.num_steps).unsqueeze(-1)
        t = step.clamp(max=batch.num_steps - 1)
        now = (step - 1).clamp(0, batch.num_steps - 1)
        red = red_light_ahead(state, batch.agent_size, batch.tl_valid[rows, now], batch.tl_state[rows, now],
                              batch.tl_pos[rows, now], batch.tl_dir[rows, now], params.light_distance,
                              params.light_lateral)
        return restart_stalled(acc, state, batch.agent_spd[rows, t], batch.agent_valid[rows, t] & in_log,
                               batch.agent_type, red, params)


def make_background(name: str, policy: "TrafficBotsPolicy | None" = None, *, idm_params: IDMParams | None = None,
                    latent: str = "prior", destination: str = "sample", deterministic_action: bool = True,
                    deterministic_latent: bool = False, guard: GuardParams | None = None,
                    lane_keeping: LaneKeepingParams | None = None, restart: RestartParams | None = None,
                    edge_hold: EdgeHoldParams | None = None, side_check: SideCheckParams | None = None,
                    geometry: Callable[[], MapGeometry] | None = None) -> Background:
    """The background model called ``name`` (one of :data:`BACKGROUNDS`); ``latent``, ``destination`` and
    the ``deterministic_*`` flags configure the policy's reset (see ``TrafficBotsPolicy.reset``); ``guard``,
    ``lane_keeping``, ``restart``, ``edge_hold`` and ``side_check`` correct the learned policy's actions (ignored
    by the scripted models; lane keeping and the edge hold read the map from ``geometry()``)."""
    if name not in BACKGROUNDS:
        raise ValueError(f"unknown background {name!r}; valid choices: {', '.join(BACKGROUNDS)}")
    if name in LEARNED_BACKGROUNDS:
        if policy is None:
            raise ValueError(f"background {name!r} needs a TrafficBotsPolicy (policy=None given)")
        return LearnedBackground(policy, latent=latent, destination=destination,
                                 deterministic_action=deterministic_action, deterministic_latent=deterministic_latent,
                                 guard=guard, lane_keeping=lane_keeping, restart=restart,
                                 edge_hold=edge_hold, side_check=side_check, geometry=geometry)
    if name == "idm":
        return IDMBackground(idm_params)
    return ConstantVelocity() if name == "constant_velocity" else LogReplay()


def reactive_mask(name: str, batch: SceneBatch, ego_index: torch.Tensor, mixed_radius: float) -> torch.Tensor:
    """[B, A] agents moved by the background model ``name`` (the others replay the log; the ego is never in)."""
    n_agent = batch.agent_valid.shape[-1]
    rows = torch.arange(ego_index.shape[0], device=ego_index.device)
    not_ego = torch.arange(n_agent, device=ego_index.device).unsqueeze(0) != ego_index.unsqueeze(-1)
    if name == "log_replay":
        return torch.zeros_like(not_ego)
    if name == "mixed":
        pos = batch.agent_pos[:, STEP_CURRENT]
        dist = (pos - pos[rows, ego_index].unsqueeze(1)).norm(dim=-1)
        return not_ego & batch.agent_valid[:, STEP_CURRENT] & (dist <= mixed_radius)
    return not_ego
