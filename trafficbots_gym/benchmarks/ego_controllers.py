"""Ego controllers of the benchmark, batched over the rows of a ``TrafficBotsVecEnv``.

* ``expert``: replays the ego's logged trajectory through the unicycle: each step it aims at its logged
  position 0.5 s ahead (fewer steps near the log's end), with the constant acceleration that covers the
  distance in that time and the yaw rate that points its mean heading there (within 1 m it turns onto
  the logged heading instead); zero action where the log has ended. The half-second aim filters the
  centimetre noise of real logs (a one-step inverse needs +-20 m/s^2 to follow it) and tracks real
  WOMD tracks within a few centimetres.
* ``constant_velocity``: zero acceleration and yaw rate.
* ``idm``: follows the ego's logged route: longitudinal IDM behind the nearest agent on the route ahead
  (or a red/yellow stop point it can still stop for), desired speed = the ego's top logged speed, and
  pure-pursuit steering towards a route point one second ahead (at least 4 m).
* ``random``: uniform normalised actions from a seeded generator.
* ``ppo``: the shipped PPO ego policy with raw (acceleration, yaw rate) actions (``assets/policies/ppo_ego.zip``,
  trained for 7 minutes on one H100 80GB against the learned background): reaches more goals.
* ``ppo_route``: the shipped PPO ego policy of the ``route`` action mode (``assets/policies/ppo_route_ego.zip``,
  7.5 minutes on one H200): far fewer collisions and off-road events.
* ``ppo_route_ttc``: route action mode with a time-to-collision penalty, trained on 2,160 scenes
  (``assets/policies/ppo_route_ttc_ego.zip``, 6.5 minutes on one H200).
* ``ppo_route_guard``: route action mode under the ego collision guard (its archive stores ``ego_guard=True``,
  so the benchmark env guards it too), trained against the raw learned background
  (``assets/policies/ppo_route_guard_ego.zip``, 5.3 minutes on one H200): the most goals with the fewest
  collisions. The four are described in ``assets/policies/POLICY_CARD.md``.
* ``PATH.zip``: a trained Stable-Baselines3 policy (deterministic actions) on the env's observations, in
  an env with the settings stored in the archive (or inferred from the model's spaces).

A controller exposes ``env_overrides`` (the env keys it needs, e.g. the action mode), ``reset(env, seed)``
at the start of a batch of episodes and ``act(env, obs)`` returning the env actions of every row.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces

from trafficbots_gym.data.constants import DT, STEP_CURRENT, AgentType, TLState
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
from trafficbots_gym.simulation.dynamics import (PURSUIT_LOOKAHEAD_TIME, PURSUIT_MIN_LOOKAHEAD, action_limits,
                                                 pure_pursuit_yaw_rate, pursuit_lookahead, wrap_angle)
from trafficbots_gym.simulation.idm import IDMParams, idm_acceleration
from trafficbots_gym.simulation.metrics import LoggedPath, path_progress
from trafficbots_gym.simulation.state import AgentState

_POLICY_DIR = Path(__file__).resolve().parent.parent / "assets" / "policies"
SHIPPED_POLICIES: dict[str, Path] = {"ppo": _POLICY_DIR / "ppo_ego.zip", "ppo_route": _POLICY_DIR / "ppo_route_ego.zip",
                                     "ppo_route_ttc": _POLICY_DIR / "ppo_route_ttc_ego.zip",
                                     "ppo_route_guard": _POLICY_DIR / "ppo_route_guard_ego.zip"}
"""The shipped Stable-Baselines3 ego policies by controller name."""
BUILTIN_CONTROLLERS: tuple[str, ...] = ("expert", "constant_velocity", "idm", "random", *SHIPPED_POLICIES)
"""Controller names; any path ending in ``.zip`` is a Stable-Baselines3 policy."""
EXPERT_LOOKAHEAD = 5
"""Steps ahead (0.5 s) on the log that the expert aims at."""


class EgoController(Protocol):
    """What the benchmark needs from a controller."""

    name: str
    env_overrides: dict[str, Any]

    def reset(self, env: TrafficBotsVecEnv, seed: int) -> None: ...

    def act(self, env: TrafficBotsVecEnv, obs: Any) -> torch.Tensor | np.ndarray: ...


def normalise(physical: torch.Tensor, agent_type: torch.Tensor) -> torch.Tensor:
    """Physical (acc, yaw rate) [B, 2] -> the env's normalised continuous action in [-1, 1]."""
    return (physical / action_limits(agent_type).to(physical.dtype)).clamp(-1.0, 1.0)


def tracking_action(pos: torch.Tensor, yaw: torch.Tensor, spd: torch.Tensor, target_pos: torch.Tensor,
                    target_yaw: torch.Tensor, horizon: torch.Tensor | float,
                    steer_distance: float = 1.0) -> torch.Tensor:
    """[..., 2] (acc, yaw rate) that take the unicycle (pos, yaw, spd) to ``target_pos`` in ``horizon`` s.

    Constant yaw rate that points the mean heading over the horizon at the target (or, with the target
    within ``steer_distance`` m, turns onto ``target_yaw``); constant acceleration that covers the
    distance along the first step's midpoint heading. For ``horizon = DT`` and a near target this is the
    exact inverse of one midpoint-unicycle step.
    """
    horizon = torch.as_tensor(horizon, dtype=pos.dtype, device=pos.device)
    d = target_pos - pos
    bearing = torch.atan2(d[..., 1], d[..., 0])
    far = d.norm(dim=-1) > steer_distance
    yaw_rate = torch.where(far, 2.0 * wrap_angle(bearing - yaw), wrap_angle(target_yaw - yaw)) / horizon
    yaw_mid = yaw + 0.5 * DT * yaw_rate
    along = d[..., 0] * torch.cos(yaw_mid) + d[..., 1] * torch.sin(yaw_mid)
    acc = 2.0 * (along - spd * horizon) / (horizon * horizon)
    return torch.stack([acc, yaw_rate], dim=-1)


def _ego_state(env: TrafficBotsVecEnv) -> tuple[AgentState, torch.Tensor, torch.Tensor]:
    """(every agent's state, ego slots [B], row indices [B]) of the env's simulator."""
    sim = env.core.sim
    return sim.state, sim.ego_index, torch.arange(sim.ego_index.shape[0], device=sim.ego_index.device)


class ExpertController:
    """Tracks the ego's logged trajectory (see the module docstring)."""

    name = "expert"
    env_overrides: dict[str, Any] = {"action_mode": "continuous"}

    def __init__(self, lookahead: int = EXPERT_LOOKAHEAD) -> None:
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1 step, got {lookahead}")
        self.lookahead = lookahead

    def reset(self, env: TrafficBotsVecEnv, seed: int) -> None:
        """Stateless."""

    def act(self, env: TrafficBotsVecEnv, obs: Any) -> torch.Tensor:
        sim = env.core.sim
        batch = sim.batch
        state, ego, rows = _ego_state(env)
        offsets = torch.arange(1, self.lookahead + 1, device=ego.device)
        steps = sim.step_index.unsqueeze(1) + offsets                                   # [B, L]
        in_log = steps < batch.num_steps
        steps = steps.clamp(max=batch.num_steps - 1)
        valid = batch.agent_valid[rows.unsqueeze(1), steps, ego.unsqueeze(1)] & in_log
        ahead = torch.where(valid, offsets, 0).amax(-1)                                 # [B] 0 = no log ahead
        target = sim.step_index + ahead.clamp(min=1)
        target = target.clamp(max=batch.num_steps - 1)
        physical = tracking_action(state.pos[rows, ego], state.yaw[rows, ego], state.spd[rows, ego],
                                   batch.agent_pos[rows, target, ego], batch.agent_yaw[rows, target, ego],
                                   ahead.clamp(min=1).to(state.pos.dtype) * DT)
        physical = torch.where((ahead > 0).unsqueeze(-1), physical, torch.zeros_like(physical))
        return normalise(physical, batch.agent_type[rows, ego])


class ConstantVelocityController:
    """Zero acceleration and yaw rate: the ego keeps its step-10 speed and heading."""

    name = "constant_velocity"
    env_overrides: dict[str, Any] = {"action_mode": "continuous"}

    def reset(self, env: TrafficBotsVecEnv, seed: int) -> None:
        """Stateless."""

    def act(self, env: TrafficBotsVecEnv, obs: Any) -> torch.Tensor:
        return torch.zeros(env.num_envs, 2, device=env.core.device)


class RandomController:
    """Uniform normalised actions in [-1, 1]^2 from a generator seeded at every ``reset``."""

    name = "random"
    env_overrides: dict[str, Any] = {"action_mode": "continuous"}

    def __init__(self) -> None:
        self.generator = torch.Generator()

    def reset(self, env: TrafficBotsVecEnv, seed: int) -> None:
        self.generator.manual_seed(seed)

    def act(self, env: TrafficBotsVecEnv, obs: Any) -> torch.Tensor:
        return (2.0 * torch.rand(env.num_envs, 2, generator=self.generator) - 1.0).to(env.core.device)


@dataclass(frozen=True)
class RouteIDMParams:
    """Constants of the IDM route follower."""

    idm: IDMParams = field(default_factory=IDMParams)
    lookahead_time: float = PURSUIT_LOOKAHEAD_TIME  # s: pure-pursuit target this far ahead at the current speed ...
    min_lookahead: float = PURSUIT_MIN_LOOKAHEAD    # ... but at least this far (m)
    route_extension: float = 100.0  # m of straight route after the logged path ends


class IDMController:
    """Longitudinal IDM plus pure-pursuit steering along the ego's logged route (batched)."""

    name = "idm"
    env_overrides: dict[str, Any] = {"action_mode": "continuous"}

    def __init__(self, params: RouteIDMParams | None = None) -> None:
        self.params = params or RouteIDMParams()
        self._route: LoggedPath | None = None
        self._v0: torch.Tensor | None = None

    def reset(self, env: TrafficBotsVecEnv, seed: int) -> None:
        """Cache every row's route (its logged path from step 10) and desired speed."""
        sim = env.core.sim
        batch, ego = sim.batch, sim.ego_index
        rows = torch.arange(ego.shape[0], device=ego.device)
        self._route = LoggedPath.from_batch(batch, STEP_CURRENT, self.params.route_extension).select_agent(ego)
        future_spd = batch.agent_spd[rows, STEP_CURRENT:, ego].abs() * batch.agent_valid[rows, STEP_CURRENT:, ego]
        self._v0 = future_spd.amax(-1)

    def act(self, env: TrafficBotsVecEnv, obs: Any) -> torch.Tensor:
        if self._route is None or self._v0 is None:
            raise RuntimeError("IDMController.reset must be called before act")
        sim, p = env.core.sim, self.params
        state, ego, rows = _ego_state(env)
        pos, yaw, v = state.pos[rows, ego], state.yaw[rows, ego], state.spd[rows, ego].clamp(min=0.0)
        size, ego_type = sim.batch.agent_size, sim.batch.agent_type[rows, ego]
        s = path_progress(pos.unsqueeze(1), self._route)                          # [B, 1]
        ahead = self._route.window(s, p.idm.lookahead_points, p.idm.lookahead_spacing)
        gap, lead_speed = route_leader(ahead, state, ego, size, p.idm.lateral_margin)
        acc = idm_acceleration(v, self._v0, gap, v - lead_speed, p.idm)
        tl_valid, tl_state, tl_pos, tl_dir = sim.traffic_lights(sim.step_index)
        light = stop_point_gap(ahead, v, size[rows, ego, 0], tl_valid, tl_state, tl_pos, tl_dir, p.idm)
        light_acc = idm_acceleration(v, self._v0, light, v, p.idm)
        acc = torch.where(ego_type[:, AgentType.VEHICLE].bool(), torch.minimum(acc, light_acc), acc)
        acc = torch.minimum(acc, (torch.maximum(self._v0, v) - v) / DT)            # no overshoot of v0
        acc = torch.maximum(acc, -v / DT)                                          # no reversing
        lookahead = pursuit_lookahead(v, p.lookahead_time, p.min_lookahead)
        target, _ = self._route.interpolate(s + lookahead.unsqueeze(1))
        yaw_rate = pure_pursuit_yaw_rate(pos, yaw, v, target.squeeze(1))
        return normalise(torch.stack([acc, yaw_rate], -1), ego_type)


def route_leader(route: LoggedPath, state: AgentState, ego: torch.Tensor, size: torch.Tensor,
                 lateral_margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bumper gap [B] (inf if none) to, and speed along the route [B] of, the nearest valid agent ahead
    on each ego's ``route`` window ([B, 1, Q], arc 0 at the ego) whose box reaches within the ego's half
    width + ``lateral_margin`` of it."""
    rows = torch.arange(ego.shape[0], device=ego.device)
    arc, dist, seg = route.project(state.pos.unsqueeze(1))                     # [B, 1, A]
    route_yaw = torch.gather(route.yaw, -1, seg)
    rel = state.yaw.unsqueeze(1) - route_yaw
    c, s = torch.cos(rel), torch.sin(rel)
    half_l, half_w = 0.5 * size[..., 0].unsqueeze(1), 0.5 * size[..., 1].unsqueeze(1)
    along = half_l * c.abs() + half_w * s.abs()
    across = half_l * s.abs() + half_w * c.abs()
    gap = arc - 0.5 * size[rows, ego, 0].view(-1, 1, 1) - along
    not_ego = torch.arange(state.valid.shape[1], device=ego.device).unsqueeze(0) != ego.unsqueeze(1)
    candidate = ((arc > 0) & (dist < 0.5 * size[rows, ego, 1].view(-1, 1, 1) + across + lateral_margin)
                 & (state.valid & not_ego).unsqueeze(1))
    gap = gap.masked_fill(~candidate, float("inf"))
    best, j = gap.min(-1)
    lead_speed = torch.gather(state.spd.unsqueeze(1) * c, -1, j.unsqueeze(-1)).squeeze(-1)
    return best.squeeze(1), lead_speed.squeeze(1)


def stop_point_gap(route: LoggedPath, speed: torch.Tensor, length: torch.Tensor, tl_valid: torch.Tensor,
                   tl_state: torch.Tensor, tl_pos: torch.Tensor, tl_dir: torch.Tensor,
                   params: IDMParams) -> torch.Tensor:
    """[B] gap to the nearest STOP/CAUTION stop point on the route window ahead ([B, 1, Q]) that faces
    the route and can still be stopped for at ``params.stop_decel`` (inf if none)."""
    stop = tl_valid & (tl_state[..., TLState.STOP] | tl_state[..., TLState.CAUTION]).bool()    # [B, S]
    arc, dist, seg = route.project(tl_pos.unsqueeze(1))                                        # [B, 1, S]
    route_yaw = torch.gather(route.yaw, -1, seg)
    d = tl_dir.unsqueeze(1)
    cos = (d[..., 0] * torch.cos(route_yaw) + d[..., 1] * torch.sin(route_yaw)) / d.norm(dim=-1).clamp(min=1e-6)
    gap = arc - 0.5 * length.view(-1, 1, 1)
    braking = (speed * speed / (2.0 * params.stop_decel)).view(-1, 1, 1)
    on_route = stop.unsqueeze(1) & (dist < params.light_lateral) & (cos > 0.5) & (gap > braking)
    return gap.masked_fill(~on_route, float("inf")).amin(-1).squeeze(1)


class SB3Controller:
    """A saved Stable-Baselines3 model (``.zip``) acting deterministically on the env observations.

    The algorithm is read from the saved policy class (SAC, TD3, DQN; the on-policy actor-critic policy
    loads through PPO, which also predicts for A2C models). The env is built with the settings stored in
    the archive (``trafficbots_env.json``, written by ``examples/train_ppo.py``: observation and action
    modes, ``route_offset_range``, observation sizes). Without them the observation and action modes are
    inferred from the model's spaces (a ``Box`` action space is taken as ``continuous``: ``route`` policies
    need the stored settings) and other observation settings must be the env defaults.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "auto", name: str | None = None) -> None:
        from trafficbots_gym.env.sb3 import POLICY_ENV_KEYS, read_policy_env_settings
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no Stable-Baselines3 model at {self.path}")
        self.name = name or self.path.name
        self.model = sb3_algorithm(self.path).load(self.path, device=str(device))
        obs_mode = "dict" if isinstance(self.model.observation_space, spaces.Dict) else "flat"
        action_mode = "discrete" if isinstance(self.model.action_space, spaces.Discrete) else "continuous"
        stored = read_policy_env_settings(self.path) or {}
        self.env_overrides: dict[str, Any] = {"obs_mode": obs_mode, "action_mode": action_mode,
                                              **{key: stored[key] for key in POLICY_ENV_KEYS if key in stored}}

    def reset(self, env: TrafficBotsVecEnv, seed: int) -> None:
        """Check that the env's spaces are the model's."""
        for what, ours, theirs in (("observation", env.single_observation_space, self.model.observation_space),
                                   ("action", env.single_action_space, self.model.action_space)):
            if ours != theirs:
                raise ValueError(f"{self.path}: the model's {what} space {theirs} differs from the env's {ours}; "
                                 "benchmark it with the env settings it was trained with")

    def act(self, env: TrafficBotsVecEnv, obs: Any) -> np.ndarray:
        host = ({k: v.cpu().numpy() for k, v in obs.items()} if isinstance(obs, dict)
                else obs.cpu().numpy() if isinstance(obs, torch.Tensor) else obs)
        actions, _ = self.model.predict(host, deterministic=True)
        return actions


def sb3_algorithm(path: Path) -> Any:
    """The Stable-Baselines3 algorithm class that loads the model saved at ``path``."""
    from stable_baselines3 import DQN, PPO, SAC, TD3
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        module = data["policy_class"]["__module__"]
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} is not a Stable-Baselines3 model archive (no readable 'data' / policy_class)") from e
    for key, algo in (("sac", SAC), ("td3", TD3), ("dqn", DQN)):
        if f"stable_baselines3.{key}." in module:
            return algo
    return PPO


def make_controller(spec: str, device: str | torch.device = "auto") -> EgoController:
    """The controller named ``spec`` (one of ``BUILTIN_CONTROLLERS``) or the SB3 model at path ``spec`` (.zip)."""
    builtins: dict[str, type] = {"expert": ExpertController, "constant_velocity": ConstantVelocityController,
                                 "idm": IDMController, "random": RandomController}
    if spec in builtins:
        return builtins[spec]()
    if spec in SHIPPED_POLICIES:
        return SB3Controller(SHIPPED_POLICIES[spec], device, name=spec)
    if spec.endswith(".zip"):
        return SB3Controller(spec, device)
    raise ValueError(f"unknown controller {spec!r}; valid: {', '.join(BUILTIN_CONTROLLERS)} or a path to an "
                     "SB3 model .zip")
