"""Sizes and enumerations of the TrafficBots H5 scene format (WOMD at 10 Hz).

Every producer (WOMD packer, importers, SUMO generator) and every consumer (model, simulator,
renderer) takes its sizes and class indices from here.
"""
from __future__ import annotations

from enum import IntEnum

DT: float = 0.1
"""Time between two steps (s); WOMD is logged at 10 Hz."""
N_STEP: int = 91
"""Steps of a full scene: 11 history steps (0..10) + 80 future steps (11..90)."""
STEP_CURRENT: int = 10
"""Index of the last observed ("current") step."""
N_STEP_HISTORY: int = STEP_CURRENT + 1

N_AGENT: int = 64
"""Simulated agents stored per scene; the self-driving car (SDC) is always index 0."""
N_AGENT_NO_SIM: int = 256
"""Non-simulated agents stored per scene (validation / testing splits only)."""
N_PL: int = 1024
"""Map polylines stored per scene."""
N_PL_NODE: int = 20
"""Nodes per polyline chunk (about 1 m apart)."""
N_TL_LANE: int = 100
"""Traffic-light (light x controlled polyline) entries per step."""
N_TL_STOP: int = 40
"""Traffic-light stop points per step (what the model consumes)."""


class MapType(IntEnum):
    """Map polyline class: the column of the 11-wide one-hot ``map/type``."""

    FREEWAY = 0
    SURFACE_STREET = 1
    STOP_SIGN = 2
    BIKE_LANE = 3
    ROAD_EDGE_BOUNDARY = 4
    ROAD_EDGE_MEDIAN = 5
    BROKEN = 6
    SOLID_SINGLE = 7
    DOUBLE = 8
    SPEED_BUMP = 9
    CROSSWALK = 10


class TLState(IntEnum):
    """Traffic-light state: the column of the 5-wide one-hot ``tl_*/state``."""

    UNKNOWN = 0
    STOP = 1
    CAUTION = 2
    GO = 3
    FLASHING = 4


class AgentType(IntEnum):
    """Agent type: the column of the 3-wide one-hot ``agent/type``."""

    VEHICLE = 0
    PEDESTRIAN = 1
    CYCLIST = 2


class AgentRole(IntEnum):
    """Agent role: the column of the 3-wide multi-hot ``agent/role``."""

    SDC = 0
    INTEREST = 1
    PREDICT = 2


class AgentCmd(IntEnum):
    """Trajectory class of ``agent/cmd`` (Waymo's trajectory-type classifier)."""

    STATIONARY = 0
    STRAIGHT = 1
    STRAIGHT_LEFT = 2
    STRAIGHT_RIGHT = 3
    LEFT_U_TURN = 4
    LEFT_TURN = 5
    RIGHT_U_TURN = 6
    RIGHT_TURN = 7


N_PL_TYPE: int = len(MapType)
N_TL_STATE: int = len(TLState)
N_AGENT_TYPE: int = len(AgentType)
N_AGENT_ROLE: int = len(AgentRole)
N_AGENT_CMD: int = len(AgentCmd)

VEHICLE_LANE_TYPES: tuple[int, ...] = (MapType.FREEWAY, MapType.SURFACE_STREET, MapType.STOP_SIGN)
"""Polyline classes a vehicle drives along."""
ROAD_EDGE_TYPES: tuple[int, ...] = (MapType.ROAD_EDGE_BOUNDARY, MapType.ROAD_EDGE_MEDIAN)
ROAD_LINE_TYPES: tuple[int, ...] = (MapType.BROKEN, MapType.SOLID_SINGLE, MapType.DOUBLE)
POLYGON_TYPES: tuple[int, ...] = (MapType.SPEED_BUMP, MapType.CROSSWALK)

SPLITS: tuple[str, ...] = ("training", "validation", "testing")
