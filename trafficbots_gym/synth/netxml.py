"""Typed view of a SUMO ``.net.xml``: edges, lanes (with shapes and users) and connections."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trafficbots_gym.data.errors import ScenarioParseError

# SUMO vehicle classes ("all" expands to these) used to classify a lane by its permissions.
_ALL_CLASSES = frozenset(
    "private emergency authority army vip pedestrian passenger hov taxi bus coach delivery truck trailer "
    "motorcycle moped bicycle evehicle tram rail_urban rail rail_electric rail_fast ship container cable_car "
    "subway aircraft wheelchair scooter drone custom1 custom2".split())

LANE_VEHICLE, LANE_BIKE, LANE_SIDEWALK, LANE_OTHER = "vehicle", "bike", "sidewalk", "other"


@dataclass
class NetLane:
    """One SUMO lane: ``index`` 0 is the rightmost lane of its edge."""

    id: str
    edge: str
    index: int
    function: str
    """``normal``, ``internal``, ``crossing`` or ``walkingarea``."""
    shape: np.ndarray
    """[P, 2] centreline (m, net coordinates)."""
    width: float
    speed: float
    users: str
    """``vehicle`` (cars allowed), ``bike``, ``sidewalk`` or ``other``."""


@dataclass
class NetEdge:
    id: str
    function: str
    from_node: str
    to_node: str
    lanes: list[NetLane] = field(default_factory=list)


@dataclass
class NetConnection:
    """A link from one lane to another, through the internal lane ``via`` when present."""

    from_lane: str
    to_lane: str
    via: str | None
    tl: str | None
    link_index: int
    state: str
    """Right-of-way code of the link: ``M``/``m`` major/minor, ``s`` stop, ``w`` all-way stop, ..."""


@dataclass
class SumoNet:
    edges: dict[str, NetEdge]
    lanes: dict[str, NetLane]
    connections: list[NetConnection]


def lane_users(allow: str | None, disallow: str | None) -> str:
    """Classify lane permissions into ``vehicle`` / ``bike`` / ``sidewalk`` / ``other``."""
    if allow is not None:
        allowed = _ALL_CLASSES if allow.strip() == "all" else frozenset(allow.split())
    else:
        allowed = _ALL_CLASSES - frozenset((disallow or "").split())
    if "passenger" in allowed:
        return LANE_VEHICLE
    if "bicycle" in allowed:
        return LANE_BIKE
    if "pedestrian" in allowed:
        return LANE_SIDEWALK
    return LANE_OTHER


def parse_shape(text: str | None) -> np.ndarray:
    """SUMO ``"x,y[,z] x,y[,z] ..."`` -> [P, 2] float64."""
    if not text:
        return np.zeros((0, 2))
    return np.array([[float(v) for v in p.split(",")[:2]] for p in text.split()], dtype=np.float64)


def parse_net(path: str | Path) -> SumoNet:
    """Read a SUMO network file; raise ``ScenarioParseError`` naming the file and element on bad input."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise ScenarioParseError(str(path), None, None, f"not a readable SUMO network ({e})") from e
    edges: dict[str, NetEdge] = {}
    lanes: dict[str, NetLane] = {}
    for e in root.iter("edge"):
        edge = NetEdge(e.get("id", ""), e.get("function", "normal"), e.get("from", ""), e.get("to", ""))
        for ln in e.iter("lane"):
            lane = NetLane(
                id=ln.get("id", ""), edge=edge.id, index=int(ln.get("index", 0)), function=edge.function,
                shape=parse_shape(ln.get("shape")), width=float(ln.get("width", 3.2)),
                speed=float(ln.get("speed", 13.89)), users=lane_users(ln.get("allow"), ln.get("disallow")))
            if len(lane.shape) < 2:
                raise ScenarioParseError(str(path), lane.id, "shape", "lane with fewer than 2 shape points")
            edge.lanes.append(lane)
            lanes[lane.id] = lane
        edge.lanes.sort(key=lambda lane: lane.index)
        edges[edge.id] = edge
    connections = []
    for c in root.iter("connection"):
        try:
            connections.append(NetConnection(
                from_lane=f"{c.get('from')}_{c.get('fromLane')}", to_lane=f"{c.get('to')}_{c.get('toLane')}",
                via=c.get("via"), tl=c.get("tl"), link_index=int(c.get("linkIndex", -1)), state=c.get("state", "")))
        except ValueError as e:
            raise ScenarioParseError(str(path), c.get("from"), "connection", str(e)) from e
    return SumoNet(edges, lanes, connections)
