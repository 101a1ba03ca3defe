"""Configuration of the TrafficBots Gymnasium environments: every key, its default and its check.

``EnvConfig.from_kwargs(config, **overrides)`` merges a highway-env style ``config`` dict with keyword
arguments; ``reward`` and ``termination`` are dicts that override the documented defaults of
``RewardConfig`` and ``TerminationConfig``. Unknown keys raise ``ValueError`` listing the valid keys.
docs/env.md documents every key.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

import torch

from trafficbots_gym.data.constants import N_STEP, SPLITS, STEP_CURRENT

BACKGROUNDS: tuple[str, ...] = ("trafficbots", "log_replay", "constant_velocity", "idm", "mixed")
"""Background-agent modes of the simulator."""
REACTIVE_BACKGROUNDS: tuple[str, ...] = ("trafficbots", "constant_velocity", "idm")
"""Modes that need no logged future, so the horizon may run past the end of the log."""
OBS_MODES: tuple[str, ...] = ("flat", "dict")
ACTION_MODES: tuple[str, ...] = ("continuous", "discrete", "route")
"""Ego action modes (docs/env.md, "Actions"; ``trafficbots_gym.env.actions``)."""
LOG_HORIZON: int = N_STEP - 1 - STEP_CURRENT
"""Controlled steps until the log ends (80: steps 11..90)."""

SceneSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]
EgoSpec = Union[str, int, Mapping[str, int]]

_T = TypeVar("_T")


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms (reward = sum of weight * term); see docs/env.md for the term units."""

    progress: float = 0.1
    """Per metre of progress along the logged ego route."""
    goal_reached: float = 1.0
    """Once, on the step the logged goal is first reached."""
    collision: float = -1.0
    """Per step while the ego's box overlaps another agent's box."""
    offroad: float = -1.0
    """Per step while the ego is off the drivable area."""
    red_light: float = -0.5
    """Per red-light crossing."""
    comfort_acc: float = -0.002
    """Per step, times the acceleration magnitude (m/s^2, longitudinal and lateral)."""
    comfort_jerk: float = -0.0005
    """Per step, times the longitudinal jerk magnitude (m/s^3)."""
    log_deviation: float = 0.0
    """Per step, times the distance to the logged ego position (m); 0 = off."""
    log_tracking: float = 0.0
    """Per step, times max(0, 1 - distance to the logged ego position / 5 m) where the log has the ego: a
    bounded bonus for staying near the log, which (unlike a ``log_deviation`` penalty) never makes ending
    the episode early pay; 0 = off."""
    time_to_collision: float = 0.0
    """Per step, times max(0, 1 - the ego's time to collision with the box it follows / 3 s): a shaping
    penalty (negative weight) for closing in on a leader before contact; 0 = off."""
    overspeed: float = 0.0
    """Per step, times the ego's speed above the top speed of its own log (m/s): a speed limit for a
    penalty (negative weight), since the scenes carry none; 0 = off."""
    ahead_of_log: float = 0.0
    """Per step, times how far the ego is ahead of its logged driver along the route (m; 0 when level or
    behind): with a negative weight, a penalty for outrunning the log into the gap the logged driver kept
    to its leader; 0 = off."""


@dataclass(frozen=True)
class TerminationConfig:
    """Which events end an episode (``terminated=True``)."""

    collision: bool = True
    offroad: bool = True
    goal_reached: bool = True
    red_light: bool = False
    outside_map: bool = True
    """Leaving the map rectangle (no map data beyond it)."""


NO_TERMINATION = TerminationConfig(**{f.name: False for f in dataclasses.fields(TerminationConfig)})
"""Every termination event off: episodes end at the horizon only (pass as ``termination=``)."""


@dataclass(frozen=True)
class EnvConfig:
    """Every setting of ``TrafficBots-v0``; docs/env.md describes each key."""

    scenes: SceneSpec = None
    """H5 file, folder of shards, or a list of them; None = the embedded default scenes of ``split``."""
    split: str = "validation"
    """Split of the embedded default scenes (used when ``scenes`` is None)."""
    background: str = "trafficbots"
    checkpoint: str | os.PathLike | None = None
    """TrafficBots checkpoint for the learned background; None = the shipped one."""
    ego: EgoSpec = "sdc"
    """"sdc", an agent index, or ``{"track_id": n}`` (the logged object id)."""
    device: str = "auto"
    """Torch device of the simulation; "auto" picks CUDA when available."""
    obs_mode: str = "flat"
    action_mode: str = "continuous"
    horizon: int = LOG_HORIZON
    """Controlled steps per episode before truncation."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    termination: TerminationConfig = field(default_factory=TerminationConfig)
    goal_radius: float = 2.0
    """The goal counts as reached within this distance (m) of the logged goal position."""
    num_agents_obs: int = 16
    num_map_points: int = 128
    map_point_stride: int = 2
    """Only every n-th polyline node is a candidate map point (nodes are about 1 m apart)."""
    num_tl_obs: int = 8
    num_route_points: int = 10
    route_spacing: float = 5.0
    """Arc length (m) between route waypoints in the observation."""
    obs_range: float = 50.0
    """Relative positions are divided by this (m) and clipped to [-1, 1]."""
    n_acc: int = 5
    """Discrete action grid: number of accelerations."""
    n_yaw_rate: int = 7
    """Discrete action grid: number of yaw rates."""
    route_offset_range: float = 2.0
    """"route" actions: the target lateral offset from the logged route (m) of ``a[1] = +-1``."""
    route_curve_accel: float = 0.0
    """"route" actions: if > 0, a lateral acceleration limit (m/s^2): the ego's acceleration is capped so that
    its speed stays below sqrt(limit / curvature) of the logged route over the next 3 s (+ 5 m); 0 = off."""
    mixed_radius: float = 30.0
    """"mixed" background: agents within this distance (m) of the ego are learned, the rest replay."""
    background_guard: bool = True
    """Put the learned background under the collision guard, lane keeping, the stall restart, the edge hold and
    the side check (``simulation.guard``): the policy still drives, but brakes for what is in its path ahead,
    is steered back onto its lane, starts again when it stands (or crawls) while its logged driver moves, and
    is turned along a road edge it is about to touch, never by these corrections into a neighbour beside it."""
    ego_guard: bool = False
    """Cap the ego's acceleration with the same guard (a safety shield around the ego's controller)."""
    seed: int | None = None
    """Seed used by the first ``reset()`` when it gets none."""
    validate_scenes: bool = True
    """Check every scene read (shapes, finiteness, enum ranges)."""
    prefetch: bool = True
    """Read the next scenes on a background thread while the current episodes run."""
    encoding_cache_mb: float = 64.0
    """Budget (MiB) of the learned background's per-scene encoding cache; 0 = off."""
    scene_cache_mb: float = 128.0
    """Budget (MiB) of scenes kept in memory once read (LRU; about 0.6 MiB per full-size scene), so that
    resets of a scene seen before skip the H5 read and checks; 0 = off."""
    reset_pool: int = 0
    """Spare episodes started ahead of time in one batched reset; a vector env's autoreset copies one into
    each finished row instead of resetting it (0 = off). Pays off on a GPU with early termination."""
    agent_metrics: bool = False
    """Also compute collision / off-road / red-light flags of every background agent each step (for
    benchmarks of the background itself); the ego's are always computed."""
    render_width: int = 800
    render_height: int = 800
    render_px_per_m: float = 5.0
    render_camera: str = "ego"

    def __post_init__(self) -> None:
        _check_choice("background", self.background, BACKGROUNDS)
        _check_choice("obs_mode", self.obs_mode, OBS_MODES)
        _check_choice("action_mode", self.action_mode, ACTION_MODES)
        _check_choice("split", self.split, SPLITS)
        _check_choice("render_camera", self.render_camera, ("ego", "scene"))
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {self.horizon!r}")
        if self.horizon > LOG_HORIZON and self.background not in REACTIVE_BACKGROUNDS:
            raise ValueError(f"horizon {self.horizon} runs past the log end ({LOG_HORIZON} steps); background "
                             f"{self.background!r} replays the log, use one of {list(REACTIVE_BACKGROUNDS)}")
        for name in ("num_agents_obs", "num_map_points", "map_point_stride", "num_tl_obs", "num_route_points",
                     "n_acc", "n_yaw_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("background_guard", "ego_guard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.reset_pool, bool) or not isinstance(self.reset_pool, int) or self.reset_pool < 0:
            raise ValueError(f"reset_pool must be an int >= 0, got {self.reset_pool!r}")
        for name in ("encoding_cache_mb", "scene_cache_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("goal_radius", "route_spacing", "obs_range", "mixed_radius", "render_px_per_m"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        offset = self.route_offset_range
        if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not 0 < offset < math.inf:
            raise ValueError(f"route_offset_range must be a finite number of metres > 0, got {offset!r}")
        curve = self.route_curve_accel
        if isinstance(curve, bool) or not isinstance(curve, numbers.Real) or not 0 <= curve < math.inf:
            raise ValueError(f"route_curve_accel must be a finite number of m/s^2 >= 0, got {curve!r}")
        ego_spec(self.ego)

    @staticmethod
    def keys() -> list[str]:
        """Every valid configuration key."""
        return [f.name for f in dataclasses.fields(EnvConfig)]

    @staticmethod
    def from_kwargs(config: Mapping[str, Any] | "EnvConfig" | None = None, **overrides: Any) -> "EnvConfig":
        """Merge a ``config`` dict (or ``EnvConfig``) with keyword overrides; a key given twice is an error."""
        base: dict[str, Any] = {}
        if isinstance(config, EnvConfig):
            base = {f.name: getattr(config, f.name) for f in dataclasses.fields(EnvConfig)}
        elif config is not None:
            _check_keys("environment config", config, EnvConfig.keys())
            base = dict(config)
            twice = sorted(set(base) & set(overrides))
            if twice:
                raise ValueError(f"keys given both in config and as keywords: {twice}")
        _check_keys("environment config", overrides, EnvConfig.keys())
        merged = {**base, **overrides}
        merged["reward"] = _sub_config(RewardConfig, merged.get("reward"), "reward")
        merged["termination"] = _sub_config(TerminationConfig, merged.get("termination"), "termination")
        return EnvConfig(**merged)


def ego_spec(ego: EgoSpec) -> tuple[str, int]:
    """Normalise ``ego`` to ("sdc", 0), ("index", i) or ("track_id", n); raise ValueError otherwise."""
    if isinstance(ego, str):
        if ego != "sdc":
            raise ValueError(f"ego must be 'sdc', an agent index or {{'track_id': n}}, got {ego!r}")
        return "sdc", 0
    if isinstance(ego, bool):
        raise ValueError(f"ego must be 'sdc', an agent index or {{'track_id': n}}, got {ego!r}")
    if isinstance(ego, int):
        if ego < 0:
            raise ValueError(f"ego agent index must be >= 0, got {ego}")
        return "index", ego
    if isinstance(ego, Mapping):
        if set(ego) != {"track_id"} or not isinstance(ego["track_id"], int):
            raise ValueError(f"ego dict must be {{'track_id': <int>}}, got {dict(ego)!r}")
        return "track_id", int(ego["track_id"])
    raise ValueError(f"ego must be 'sdc', an agent index or {{'track_id': n}}, got {ego!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sub_config(cls: type[_T], value: Any, what: str) -> _T:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict of overrides, got {type(value).__name__}")
    _check_keys(what, value, [f.name for f in dataclasses.fields(cls)])  # type: ignore[arg-type]
    return cls(**value)


def _check_keys(what: str, given: Mapping[str, Any], valid: list[str]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid keys: {valid}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
