"""``RawScenario``: the common, world-frame input of the packer, filled by every producer.

Producers (WOMD Scenario protos, ScenarioNet pickles, GPUDrive JSON, the SUMO generator) convert
their source to a ``RawScenario``; ``trafficbots_gym.data.packing.pack_scenario`` turns it into a
:class:`~trafficbots_gym.data.scene.Scene` with the reference packing semantics (agent selection,
polyline chunking, destinations, scene frame, split keys). Nothing here is specific to one source.

Conventions: world frame (metres, radians CCW from +x), ``T`` steps at 10 Hz with step
``current_index`` the last observed one (WOMD: T = 91, current 10). Headings may be unwrapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawTracks:
    """All tracks of a scenario as dense [N, T] arrays; invalid entries are zero."""

    object_id: np.ndarray
    """[N] int64 unique track id."""
    type: np.ndarray
    """[N] int64 AgentType (0 vehicle, 1 pedestrian, 2 cyclist); producers drop or map other types."""
    valid: np.ndarray
    """[N, T] bool."""
    pos: np.ndarray
    """[N, T, 3] float64 box centre x, y, z (m)."""
    size: np.ndarray
    """[N, T, 3] float32 length, width, height (m)."""
    heading: np.ndarray
    """[N, T] float32 box heading (rad), possibly unwrapped."""
    vel: np.ndarray
    """[N, T, 2] float32 velocity vx, vy (m/s)."""

    @property
    def num_tracks(self) -> int:
        return int(self.object_id.shape[0])


@dataclass
class RawPolyline:
    """One map feature: an open polyline (lane, road line, road edge) or a closed polygon."""

    feature_id: int
    map_type: int
    """MapType class (0..10) already decided by the producer (incl. STOP_SIGN relabelling)."""
    points: np.ndarray
    """[P, 3] float64 x, y, z (m). Polylines at ~1 m spacing; polygons as their vertex ring."""
    is_polygon: bool = False
    """Crosswalk / speed bump / driveway polygon: the packer turns it into 4 polylines."""


@dataclass
class RawTrafficLights:
    """Per-step traffic-light lane states, padded to K entries per step."""

    valid: np.ndarray
    """[T, K] bool."""
    lane_id: np.ndarray
    """[T, K] int64 feature id of the controlled lane."""
    state: np.ndarray
    """[T, K] int64 TLState (0..4), mapped by the producer."""
    stop_point: np.ndarray
    """[T, K, 3] float64 stop point x, y, z (m)."""

    @classmethod
    def empty(cls, n_step: int) -> "RawTrafficLights":
        return cls(np.zeros((n_step, 0), bool), np.zeros((n_step, 0), np.int64),
                   np.zeros((n_step, 0), np.int64), np.zeros((n_step, 0, 3)))


@dataclass
class RawScenario:
    """A whole scenario in the world frame, before agent selection and map reduction."""

    scenario_id: str
    tracks: RawTracks
    sdc_index: int
    """Index into ``tracks`` of the self-driving car (becomes agent 0)."""
    polylines: list[RawPolyline]
    traffic_lights: RawTrafficLights
    lane_exits: dict[int, list[int]] = field(default_factory=dict)
    """Lane graph: lane feature id -> ids of the lanes it exits into (for destinations)."""
    objects_of_interest: list[int] = field(default_factory=list)
    """Track *indices* of objects of interest."""
    tracks_to_predict: list[int] = field(default_factory=list)
    """Track *indices* of tracks to predict."""
    current_index: int = 10

    @property
    def num_steps(self) -> int:
        return int(self.tracks.valid.shape[1])
