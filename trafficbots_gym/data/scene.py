"""The typed in-memory scene: exactly the arrays of one group of a TrafficBots H5 file.

A scene lives in a scene-centric frame (x, y in metres, headings in radians counter-clockwise
from +x; the frame is the SDC pose at step 0, plus a random shift/rotation for training files).
Arrays are numpy, per scene (no batch dimension), time before entities (``[T, A, ...]``) as in the
reference format. ``T`` is 91 for full views and 11 for the ``history/`` views.

Split contents (reference packer):

* training:   ``agent``, ``map``, ``tl_lane``, ``tl_stop``
* validation: training + ``agent_no_sim`` + every ``history/*`` view
* testing:    ``map`` + ``history/*`` views only
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from trafficbots_gym.data import constants as C


class SceneValidationError(ValueError):
    """A scene array has a wrong shape, dtype, non-finite valid entry or out-of-range enum."""

    def __init__(self, scene: str, key: str, message: str, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}scene {scene!r}, key {key!r}: {message}")
        self.scene, self.key, self.source = scene, key, source


# Shape of each field: ints are fixed sizes, "T" is the time axis of the view.
_Shape = tuple[Any, ...]


def _spec(dtype: type, shape: _Shape, doc: str, optional: bool = False) -> Any:
    return field(default=None, metadata={"dtype": np.dtype(dtype), "shape": shape, "doc": doc,
                                         "optional": optional})


class _Arrays:
    """Base of the array groups: schema-driven validation and conversion."""

    N: ClassVar[int] = 0  # entity count used in shapes as "N"

    @classmethod
    def field_specs(cls) -> list[dataclasses.Field]:
        return list(fields(cls))  # type: ignore[arg-type]

    def expected_shape(self, f: dataclasses.Field, n_step: int | None) -> tuple[int, ...]:
        out = []
        for s in f.metadata["shape"]:
            out.append(n_step if s == "T" else s)
        return tuple(out)

    def n_step(self) -> int | None:
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata["shape"] and f.metadata["shape"][0] == "T":
                value = getattr(self, f.name)
                if value is not None:
                    return int(value.shape[0])
        return None

    def validate(self, scene: str, prefix: str, source: str | None = None) -> None:
        n_step = self.n_step()
        for f in fields(self):  # type: ignore[arg-type]
            key = f"{prefix}/{f.name}"
            value = getattr(self, f.name)
            if value is None:
                if f.metadata["optional"]:
                    continue
                raise SceneValidationError(scene, key, "missing", source)
            if not isinstance(value, np.ndarray):
                raise SceneValidationError(scene, key, f"expected numpy array, got {type(value).__name__}", source)
            if value.dtype != f.metadata["dtype"]:
                raise SceneValidationError(
                    scene, key, f"dtype {value.dtype}, expected {f.metadata['dtype']}", source)
            shape = self.expected_shape(f, n_step)
            if value.shape != shape:
                raise SceneValidationError(scene, key, f"shape {value.shape}, expected {shape}", source)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/{f.name}": getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                if getattr(self, f.name) is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Any:
        kwargs = {f.name: arrays.get(f"{prefix}/{f.name}") for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**kwargs)

    @classmethod
    def keys(cls, prefix: str, include_optional: bool = True) -> list[str]:
        return [f"{prefix}/{f.name}" for f in fields(cls)  # type: ignore[arg-type]
                if include_optional or not f.metadata["optional"]]


@dataclass
class AgentTracks(_Arrays):
    """The 64 simulated agents (``agent/*`` or ``history/agent/*``); SDC at index 0.

    Gaps between the first and last valid step are linearly interpolated by the packer, so each
    agent's valid steps are contiguous. Invalid entries are zero.
    """

    valid: np.ndarray = _spec(bool, ("T", C.N_AGENT), "agent observed at this step")
    pos: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 2), "box centre x, y (m)")
    z: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 1), "box centre z (m), untransformed")
    vel: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 2), "velocity vx, vy (m/s)")
    spd: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 1), "signed speed along the heading (m/s)")
    acc: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 1), "finite-difference acceleration (m/s^2)")
    yaw_bbox: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 1), "box heading (rad), unwrapped")
    yaw_rate: np.ndarray = _spec(np.float32, ("T", C.N_AGENT, 1), "finite-difference yaw rate (rad/s)")
    object_id: np.ndarray = _spec(np.int64, (C.N_AGENT,), "source track id, -1 for padding")
    type: np.ndarray = _spec(bool, (C.N_AGENT, C.N_AGENT_TYPE), "one-hot AgentType")
    role: np.ndarray = _spec(bool, (C.N_AGENT, C.N_AGENT_ROLE), "multi-hot AgentRole")
    size: np.ndarray = _spec(np.float32, (C.N_AGENT, 3), "mean length, width, height (m)")
    cmd: np.ndarray | None = _spec(bool, (C.N_AGENT, C.N_AGENT_CMD), "one-hot AgentCmd (full view only)", True)
    goal: np.ndarray | None = _spec(np.float32, (C.N_AGENT, 4), "last valid x, y, yaw, spd (full view only)", True)
    dest: np.ndarray | None = _spec(np.int64, (C.N_AGENT,), "destination polyline index (full view only)", True)

    def validate(self, scene: str, prefix: str, source: str | None = None) -> None:
        super().validate(scene, prefix, source)
        _check_finite(scene, prefix, self.valid, self, ("pos", "z", "vel", "spd", "acc", "yaw_bbox", "yaw_rate"), source)
        _check_onehot_at_most_one(scene, f"{prefix}/type", self.type, source)
        if self.dest is not None:
            _check_range(scene, f"{prefix}/dest", self.dest, 0, C.N_PL - 1, source)
        if self.cmd is not None:
            _check_onehot_at_most_one(scene, f"{prefix}/cmd", self.cmd, source)
        if self.goal is not None and not np.isfinite(self.goal).all():
            raise SceneValidationError(scene, f"{prefix}/goal", "non-finite values", source)
        if not np.isfinite(self.size).all() or (self.size < 0).any():
            raise SceneValidationError(scene, f"{prefix}/size", "negative or non-finite sizes", source)


@dataclass
class NoSimAgents(_Arrays):
    """Up to 256 further agents that are not simulated (validation / testing only); raw values."""

    valid: np.ndarray = _spec(bool, ("T", C.N_AGENT_NO_SIM), "agent observed at this step")
    pos: np.ndarray = _spec(np.float32, ("T", C.N_AGENT_NO_SIM, 2), "box centre x, y (m)")
    z: np.ndarray = _spec(np.float32, ("T", C.N_AGENT_NO_SIM, 1), "box centre z (m)")
    vel: np.ndarray = _spec(np.float32, ("T", C.N_AGENT_NO_SIM, 2), "velocity (m/s)")
    spd: np.ndarray = _spec(np.float32, ("T", C.N_AGENT_NO_SIM, 1), "signed speed (m/s)")
    yaw_bbox: np.ndarray = _spec(np.float32, ("T", C.N_AGENT_NO_SIM, 1), "box heading (rad)")
    object_id: np.ndarray = _spec(np.int64, (C.N_AGENT_NO_SIM,), "source track id, -1 for padding")
    type: np.ndarray = _spec(bool, (C.N_AGENT_NO_SIM, C.N_AGENT_TYPE), "one-hot AgentType")
    size: np.ndarray = _spec(np.float32, (C.N_AGENT_NO_SIM, 3), "mean length, width, height (m)")

    def validate(self, scene: str, prefix: str, source: str | None = None) -> None:
        super().validate(scene, prefix, source)
        _check_finite(scene, prefix, self.valid, self, ("pos", "z", "vel", "spd", "yaw_bbox"), source)
        _check_onehot_at_most_one(scene, f"{prefix}/type", self.type, source)


@dataclass
class MapPolylines(_Arrays):
    """1024 polyline chunks of up to 20 nodes; each node is a start point and the vector to the next."""

    valid: np.ndarray = _spec(bool, (C.N_PL, C.N_PL_NODE), "node validity")
    type: np.ndarray = _spec(bool, (C.N_PL, C.N_PL_TYPE), "one-hot MapType (all-false if invalid)")
    pos: np.ndarray = _spec(np.float32, (C.N_PL, C.N_PL_NODE, 2), "node x, y (m)")
    dir: np.ndarray = _spec(np.float32, (C.N_PL, C.N_PL_NODE, 2), "vector to the next point (m, ~1 m long)")
    id: np.ndarray = _spec(np.int64, (C.N_PL,), "source map-feature id")
    boundary: np.ndarray = _spec(np.float32, (4,), "xmin, xmax, ymin, ymax of valid nodes (m)")

    def validate(self, scene: str, prefix: str, source: str | None = None) -> None:
        super().validate(scene, prefix, source)
        node_valid = self.valid[..., None]
        for name in ("pos", "dir"):
            if not np.isfinite(np.where(node_valid, getattr(self, name), 0.0)).all():
                raise SceneValidationError(scene, f"{prefix}/{name}", "non-finite values at valid nodes", source)
        _check_onehot_at_most_one(scene, f"{prefix}/type", self.type, source)
        if (self.type.any(-1) & ~self.valid.any(-1)).any():
            raise SceneValidationError(scene, f"{prefix}/type", "type set on a polyline without valid nodes", source)
        if not np.isfinite(self.boundary).all():
            raise SceneValidationError(scene, f"{prefix}/boundary", "non-finite values", source)

    @property
    def type_index(self) -> np.ndarray:
        """[1024] MapType of each polyline, -1 where invalid."""
        return np.where(self.type.any(-1), self.type.argmax(-1), -1)


@dataclass
class TrafficLightLanes(_Arrays):
    """Per step, one entry per (traffic light x chunk of its controlled lane); for drawing."""

    valid: np.ndarray = _spec(bool, ("T", C.N_TL_LANE), "entry valid")
    state: np.ndarray = _spec(bool, ("T", C.N_TL_LANE, C.N_TL_STATE), "one-hot TLState")
    idx: np.ndarray = _spec(np.int64, ("T", C.N_TL_LANE), "controlled polyline index, -1 invalid")

    def validate(self, scene: str, prefix: str, source: str | None = None) -> None:
        super().validate(scene, prefix, source)
        _check_onehot_at_most_one(scene, f"{prefix}/state", self.state, source)
        _check_range(scene, f"{prefix}/idx", self.idx, -1, C.N_PL - 1, source)


@dataclass
class TrafficLightStops(_Arrays):
    """Per step, one entry per traffic light at its stop point; this is what the model reads."""

    valid: np.ndarray = _spec(bool, ("T", C.N_TL_STOP), "light valid")
    state: np.ndarray = _spec(bool, ("T", C.N_TL_STOP, C.N_TL_STATE), "one-hot TLState")
    pos: np.ndarray = _spec(np.float32, ("T", C.N_TL_STOP, 2), "stop point x, y (m)")
    dir: np.ndarray = _spec(np.float32, ("T", C.N_TL_STOP, 2), "controlled lane direction (unnormalised)")

    def validate(self, scene: str, prefix: str, source: str | None = None) -> None:
        super().validate(scene, prefix, source)
        _check_onehot_at_most_one(scene, f"{prefix}/state", self.state, source)
        _check_finite(scene, prefix, self.valid, self, ("pos", "dir"), source)


def _check_finite(scene: str, prefix: str, valid: np.ndarray, group: Any, names: tuple[str, ...],
                  source: str | None) -> None:
    for name in names:
        value = getattr(group, name)
        mask = valid.reshape(valid.shape + (1,) * (value.ndim - valid.ndim))
        if not np.isfinite(np.where(mask, value, 0.0)).all():
            raise SceneValidationError(scene, f"{prefix}/{name}", "non-finite values at valid entries", source)


def _check_onehot_at_most_one(scene: str, key: str, onehot: np.ndarray, source: str | None) -> None:
    if (onehot.sum(-1) > 1).any():
        raise SceneValidationError(scene, key, "more than one class set in a one-hot row", source)


def _check_range(scene: str, key: str, value: np.ndarray, lo: int, hi: int, source: str | None) -> None:
    if value.size and (value.min() < lo or value.max() > hi):
        raise SceneValidationError(scene, key, f"values outside [{lo}, {hi}] (min {value.min()}, max {value.max()})",
                                   source)


# (attribute name, H5 prefix, array group class, time steps) for every optional view of a scene.
VIEWS: tuple[tuple[str, str, type[_Arrays], int], ...] = (
    ("agent", "agent", AgentTracks, C.N_STEP),
    ("agent_no_sim", "agent_no_sim", NoSimAgents, C.N_STEP),
    ("tl_lane", "tl_lane", TrafficLightLanes, C.N_STEP),
    ("tl_stop", "tl_stop", TrafficLightStops, C.N_STEP),
    ("history_agent", "history/agent", AgentTracks, C.N_STEP_HISTORY),
    ("history_agent_no_sim", "history/agent_no_sim", NoSimAgents, C.N_STEP_HISTORY),
    ("history_tl_lane", "history/tl_lane", TrafficLightLanes, C.N_STEP_HISTORY),
    ("history_tl_stop", "history/tl_stop", TrafficLightStops, C.N_STEP_HISTORY),
)

SPLIT_VIEWS: dict[str, tuple[str, ...]] = {
    "training": ("agent", "tl_lane", "tl_stop"),
    "validation": tuple(v[0] for v in VIEWS),
    "testing": ("history_agent", "history_agent_no_sim", "history_tl_lane", "history_tl_stop"),
}
"""Views (besides ``map``) that each split stores."""


@dataclass
class Scene:
    """One scenario in the TrafficBots format. See the module docstring for frames and splits."""

    scenario_id: str
    map: MapPolylines
    scenario_center: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))
    """World position of the scene origin (m)."""
    scenario_yaw: float = 0.0
    """World heading of the scene x axis (rad)."""
    with_map: bool = True
    agent: AgentTracks | None = None
    agent_no_sim: NoSimAgents | None = None
    tl_lane: TrafficLightLanes | None = None
    tl_stop: TrafficLightStops | None = None
    history_agent: AgentTracks | None = None
    history_agent_no_sim: NoSimAgents | None = None
    history_tl_lane: TrafficLightLanes | None = None
    history_tl_stop: TrafficLightStops | None = None

    @property
    def split(self) -> str:
        """The split whose keys this scene holds: training, validation or testing."""
        if self.agent is None:
            return "testing"
        return "validation" if self.history_agent is not None else "training"

    @property
    def sim_agents(self) -> AgentTracks:
        """The richest agent view: full 91 steps when present, else the 11-step history."""
        agents = self.agent if self.agent is not None else self.history_agent
        if agents is None:
            raise SceneValidationError(self.scenario_id, "agent", "scene holds neither agent/ nor history/agent/")
        return agents

    @property
    def sim_tl_stop(self) -> TrafficLightStops:
        """Traffic-light stop points of the richest view (91 steps when present, else history)."""
        tl = self.tl_stop if self.tl_stop is not None else self.history_tl_stop
        if tl is None:
            raise SceneValidationError(self.scenario_id, "tl_stop", "scene holds neither tl_stop/ nor history/tl_stop/")
        return tl

    def validate(self, source: str | None = None) -> "Scene":
        """Check shapes, dtypes, finiteness of valid entries and enum ranges; return self."""
        sid = self.scenario_id
        if not isinstance(sid, str) or not sid:
            raise SceneValidationError(str(sid), "scenario_id", "must be a non-empty string", source)
        center = np.asarray(self.scenario_center)
        if center.shape != (2,) or not np.isfinite(center).all():
            raise SceneValidationError(sid, "scenario_center", f"expected 2 finite values, got {center!r}", source)
        if not np.isfinite(self.scenario_yaw):
            raise SceneValidationError(sid, "scenario_yaw", f"non-finite value {self.scenario_yaw!r}", source)
        self.map.validate(sid, "map", source)
        present = [name for name, *_ in VIEWS if getattr(self, name) is not None]
        expected = SPLIT_VIEWS[self.split]
        for name in expected:
            if name not in present and not (self.split == "validation" and name.endswith("no_sim")):
                prefix = next(v[1] for v in VIEWS if v[0] == name)
                raise SceneValidationError(sid, prefix, f"missing for a {self.split} scene", source)
        for name, prefix, _, n_step in VIEWS:
            group = getattr(self, name)
            if group is None:
                continue
            group.validate(sid, prefix, source)
            if group.n_step() != n_step:
                raise SceneValidationError(sid, prefix, f"{group.n_step()} steps, expected {n_step}", source)
        if self.agent is not None and self.split == "training":
            for opt in ("cmd", "goal", "dest"):
                if getattr(self.agent, opt) is None:
                    raise SceneValidationError(sid, f"agent/{opt}", "missing in a full agent view", source)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{h5_key: array}`` mapping, the exact H5 datasets of this scene."""
        out = self.map.to_arrays("map")
        for name, prefix, _, _ in VIEWS:
            group = getattr(self, name)
            if group is not None:
                out.update(group.to_arrays(prefix))
        return out

    def attrs(self) -> dict[str, Any]:
        """The H5 group attributes of this scene."""
        return {"scenario_id": self.scenario_id,
                "scenario_center": np.asarray(self.scenario_center, np.float32),
                "scenario_yaw": np.float32(self.scenario_yaw),
                "with_map": bool(self.with_map)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "Scene":
        """Build from H5 datasets and group attributes (inverse of ``to_arrays``/``attrs``)."""
        kwargs: dict[str, Any] = {}
        for name, prefix, group_cls, _ in VIEWS:
            if f"{prefix}/valid" in arrays:
                kwargs[name] = group_cls.from_arrays(arrays, prefix)
        sid = attrs.get("scenario_id", "")
        if isinstance(sid, bytes):
            sid = sid.decode()
        return cls(scenario_id=str(sid), map=MapPolylines.from_arrays(arrays, "map"),
                   scenario_center=np.asarray(attrs.get("scenario_center", np.zeros(2)), np.float32),
                   scenario_yaw=float(attrs.get("scenario_yaw", 0.0)),
                   with_map=bool(attrs.get("with_map", True)), **kwargs)


def all_keys() -> list[str]:
    """Every H5 dataset key a scene group may hold."""
    keys = MapPolylines.keys("map")
    for _, prefix, group_cls, _ in VIEWS:
        keys += group_cls.keys(prefix)
    return keys
