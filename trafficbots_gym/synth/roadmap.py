"""Convert a SUMO network into WOMD-like map features (``RawPolyline``), lane graph and TL links.

* Lanes: every car lane (normal and junction-internal) becomes a FREEWAY (speed > 25 m/s),
  SURFACE_STREET or STOP_SIGN lane (approaches whose links carry a stop / all-way-stop right of
  way); bike-only lanes become BIKE_LANE. Internal lanes give vehicles lanes through junctions.
* Road lines between lanes of an edge: BROKEN between car lanes, SOLID_SINGLE next to a bike lane.
* The left boundary of the leftmost lane: DOUBLE centre line where the opposite direction is
  adjacent, ROAD_EDGE_MEDIAN where it runs at a distance, ROAD_EDGE_BOUNDARY on one-way streets.
  The right boundary of the rightmost drivable lane is a ROAD_EDGE_BOUNDARY (the curb, inside the
  sidewalk), joined around junction corners by rounded curbs.
* Pedestrian crossings become CROSSWALK polygons.
* ``lane_exits`` follows SUMO connections (through internal lanes). Traffic-light links map to the
  internal lane they control, with the stop point at its start (as WOMD lane states do).

All polylines are resampled at ~1 m, in SUMO network coordinates (m, z = 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trafficbots_gym.data.constants import MapType
from trafficbots_gym.data.raw import RawPolyline
from trafficbots_gym.synth.geometry import offset, polyline_length, resample, rounded_corner
from trafficbots_gym.synth.netxml import LANE_BIKE, LANE_VEHICLE, NetEdge, NetLane, SumoNet

FREEWAY_MIN_SPEED: float = 25.0
"""Lanes faster than this (m/s) are FREEWAY lanes."""
CENTRE_LINE_GAP: float = 0.6
"""Opposite-direction boundaries closer than this (m) share one centre line."""
MEDIAN_MAX_GAP: float = 15.0
"""Opposite-direction boundaries up to this far apart (m) are separated by a median."""
MAX_CORNER_ANGLE: float = np.deg2rad(250.0)
"""No curb joins two roads more than this angle apart (counter-clockwise): dead ends stay open."""
MAX_SAME_ROAD_ANGLE: float = np.deg2rad(30.0)
"""A lone incoming and a lone outgoing edge this parallel at a junction are one two-way road."""
_STOP_STATES = frozenset("sw")
_DRIVABLE = (LANE_VEHICLE, LANE_BIKE)


@dataclass
class TlLinks:
    """Traffic-light-controlled links: which SUMO signal drives which map lane."""

    tl_ids: list[str]
    tl: np.ndarray
    """[K] int index into ``tl_ids``."""
    link_index: np.ndarray
    """[K] int position of the link in the signal's state string."""
    lane_feature: np.ndarray
    """[K] int64 feature id of the controlled (junction-internal) lane."""
    stop_point: np.ndarray
    """[K, 3] float64 stop point: start of the controlled lane."""


@dataclass
class RoadMap:
    polylines: list[RawPolyline]
    """Features in order, ``feature_id`` = position."""
    lane_exits: dict[int, list[int]]
    """Lane feature id -> ids of the lanes it leads into."""
    tl_links: TlLinks
    lane_ids: frozenset[int] = field(default_factory=frozenset)
    """Feature ids of the lane polylines (car and bike lanes)."""


def build_road_map(net: SumoNet) -> RoadMap:
    """All map features, the lane graph and the TL links of ``net`` (deterministic order)."""
    polylines: list[RawPolyline] = []

    def add(map_type: int, points: np.ndarray, polygon: bool = False) -> int:
        pts = points if polygon else resample(points, 1.0)
        if len(pts) < 2 or (not polygon and polyline_length(pts) < 0.5):
            return -1
        fid = len(polylines)
        polylines.append(RawPolyline(fid, int(map_type), np.concatenate([pts, np.zeros((len(pts), 1))], -1),
                                     is_polygon=polygon))
        return fid

    stop_lanes = {c.from_lane for c in net.connections if c.state in _STOP_STATES}
    lane_feature: dict[str, int] = {}
    for lane_id in sorted(net.lanes):
        lane = net.lanes[lane_id]
        if lane.users not in _DRIVABLE or lane.function not in ("normal", "internal"):
            continue
        fid = add(_lane_type(lane, lane_id in stop_lanes), lane.shape)
        if fid >= 0:
            lane_feature[lane_id] = fid
    for edge in _sorted_edges(net, "normal"):
        for map_type, points in _edge_lines(edge):
            add(map_type, points)
    left = _classify_left_boundaries(net)
    drivable = [net.lanes[k] for k in sorted(net.lanes)
                if net.lanes[k].users in _DRIVABLE and net.lanes[k].function in ("normal", "internal")]
    for map_type, points in _left_boundary_lines(left) + _corner_curbs(net, left, drivable):
        add(map_type, points)
    for edge in _sorted_edges(net, "crossing"):
        for lane in edge.lanes:
            add(MapType.CROSSWALK, _crosswalk_polygon(lane), polygon=True)
    return RoadMap(polylines, _lane_exits(net, lane_feature), _tl_links(net, lane_feature),
                   frozenset(lane_feature.values()))


def _sorted_edges(net: SumoNet, function: str) -> list[NetEdge]:
    return [net.edges[k] for k in sorted(net.edges) if net.edges[k].function == function]


def _lane_type(lane: NetLane, stop: bool) -> int:
    if lane.users == LANE_BIKE:
        return MapType.BIKE_LANE
    if stop:
        return MapType.STOP_SIGN
    return MapType.FREEWAY if lane.speed > FREEWAY_MIN_SPEED else MapType.SURFACE_STREET


def _drivable(edge: NetEdge) -> list[NetLane]:
    return [lane for lane in edge.lanes if lane.users in _DRIVABLE]


def _right_curb(edge: NetEdge) -> np.ndarray:
    lane = _drivable(edge)[0]
    return offset(lane.shape, -lane.width / 2)


def _left_boundary(edge: NetEdge) -> np.ndarray:
    lane = _drivable(edge)[-1]
    return offset(lane.shape, lane.width / 2)


def _edge_lines(edge: NetEdge) -> list[tuple[int, np.ndarray]]:
    """Lines between the drivable lanes of one edge, and its right curb."""
    lanes = _drivable(edge)
    if not lanes:
        return []
    out: list[tuple[int, np.ndarray]] = [(MapType.ROAD_EDGE_BOUNDARY, _right_curb(edge))]
    for right, left in zip(lanes[:-1], lanes[1:]):
        kind = MapType.BROKEN if right.users == left.users == LANE_VEHICLE else MapType.SOLID_SINGLE
        out.append((kind, offset(right.shape, right.width / 2)))
    return out


def _classify_left_boundaries(net: SumoNet) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Classify the left boundary of every edge, point by point, against opposite-direction boundaries.

    Returns edge id -> (points [P, 2], MapType label [P], emit [P]). Points next to an anti-parallel
    boundary are DOUBLE (emitted once, by the edge with the smaller id), points facing a distant
    anti-parallel boundary ROAD_EDGE_MEDIAN, the rest ROAD_EDGE_BOUNDARY.
    """
    edges = [e for e in _sorted_edges(net, "normal") if _drivable(e)]
    bounds = [resample(_left_boundary(e), 1.0) for e in edges]
    dirs = [_unit_dirs(b) for b in bounds]
    boxes = np.array([[b[:, 0].min(), b[:, 0].max(), b[:, 1].min(), b[:, 1].max()] for b in bounds]).reshape(-1, 4)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for i, (pts, d) in enumerate(zip(bounds, dirs)):
        owner = np.ones(len(pts), bool)
        g = MEDIAN_MAX_GAP
        near = np.nonzero((boxes[:, 0] < boxes[i, 1] + g) & (boxes[:, 1] > boxes[i, 0] - g)
                          & (boxes[:, 2] < boxes[i, 3] + g) & (boxes[:, 3] > boxes[i, 2] - g))[0]
        best = np.full(len(pts), np.inf)
        for j in near:
            if j == i:
                continue
            dist = np.linalg.norm(pts[:, None] - bounds[j][None], axis=-1)
            k = dist.argmin(1)
            dmin = dist[np.arange(len(pts)), k]
            anti = np.sum(d * dirs[j][k], axis=-1) < -0.8
            # Only boundaries on the left side (where the opposite carriageway lies).
            rel = bounds[j][k] - pts
            left_side = d[:, 0] * rel[:, 1] - d[:, 1] * rel[:, 0] > -CENTRE_LINE_GAP
            better = anti & left_side & (dmin < best)
            best = np.where(better, dmin, best)
            owner = np.where(better & (dmin < CENTRE_LINE_GAP), edges[i].id < edges[j].id, owner)
        label = np.full(len(pts), int(MapType.ROAD_EDGE_BOUNDARY))
        label[best < MEDIAN_MAX_GAP] = MapType.ROAD_EDGE_MEDIAN
        label[best < CENTRE_LINE_GAP] = MapType.DOUBLE
        out[edges[i].id] = (pts, label, owner | (label != MapType.DOUBLE))
    return out


def _left_boundary_lines(left: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
                         ) -> list[tuple[int, np.ndarray]]:
    out: list[tuple[int, np.ndarray]] = []
    for edge_id in sorted(left):
        pts, label, emit = left[edge_id]
        for start, stop in _runs(label, emit):
            out.append((int(label[start]), pts[start:stop + 1]))
    return out


def _unit_dirs(points: np.ndarray) -> np.ndarray:
    d = np.diff(points, axis=0)
    d = np.concatenate([d, d[-1:]], axis=0)
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)


def _runs(label: np.ndarray, emit: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of maximal runs of equal ``label`` where ``emit`` holds."""
    runs, start = [], None
    for k in range(len(label) + 1):
        same = k < len(label) and emit[k] and start is not None and label[k] == label[start]
        if start is not None and not same:
            runs.append((start, k - 1))
            start = None
        if start is None and k < len(label) and emit[k]:
            start = k
    return [r for r in runs if r[1] > r[0]]


def _corner_curbs(net: SumoNet, left: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                  lanes: list[NetLane]) -> list[tuple[int, np.ndarray]]:
    """Rounded curbs joining the curbs of consecutive roads around every junction of >= 2 roads.

    Curbs that would run through a drivable lane (odd junction geometry) are left out.
    """
    lane_pts = [resample(lane.shape, 1.0) for lane in lanes]
    pts = np.concatenate(lane_pts) if lane_pts else np.zeros((0, 2))
    half_width = np.concatenate([np.full(len(p), lane.width / 2) for p, lane in zip(lane_pts, lanes)]) \
        if lane_pts else np.zeros(0)
    out: list[tuple[int, np.ndarray]] = []
    for node, roads in sorted(_junction_roads(net).items()):
        if len(roads) < 2:
            continue  # dead ends stay open, like the border of a logged map
        sides = sorted((_arm_sides(incoming, outgoing, left) for incoming, outgoing in roads),
                       key=lambda side: side[0])
        for (a0, _, ccw, u0), (a1, cw, _, u1) in zip(sides, sides[1:] + sides[:1]):
            if ccw is None or cw is None or (a1 - a0) % (2 * np.pi) >= MAX_CORNER_ANGLE:
                continue
            curb = rounded_corner(ccw, u0, cw, u1)
            if not _enters_lanes(resample(curb, 1.0), pts, half_width):
                out.append((MapType.ROAD_EDGE_BOUNDARY, curb))
    return out


def _junction_roads(net: SumoNet) -> dict[str, list[tuple[NetEdge | None, NetEdge | None]]]:
    """Per junction, its roads as (incoming edge, outgoing edge) pairs (None for a missing direction).

    Edges to / from the same neighbour form one road; a lone incoming and a lone outgoing edge that
    leave the junction in nearly the same direction (a street split by a turn-lane node) too.
    """
    by_neighbour: dict[str, dict[str, dict[str, NetEdge]]] = {}
    for edge in _sorted_edges(net, "normal"):
        if _drivable(edge):
            by_neighbour.setdefault(edge.from_node, {}).setdefault(edge.to_node, {})["out"] = edge
            by_neighbour.setdefault(edge.to_node, {}).setdefault(edge.from_node, {})["in"] = edge
    out: dict[str, list[tuple[NetEdge | None, NetEdge | None]]] = {}
    for node, arms in by_neighbour.items():
        roads = [(arms[k].get("in"), arms[k].get("out")) for k in sorted(arms)]
        lone_in = [r[0] for r in roads if r[1] is None and r[0] is not None]
        lone_out = [r[1] for r in roads if r[0] is None and r[1] is not None]
        for e_in in lone_in:
            u_in = _outward(e_in, at_end=True)
            match = next((e for e in lone_out
                          if np.dot(u_in, _outward(e, at_end=False)) > np.cos(MAX_SAME_ROAD_ANGLE)), None)
            if match is not None:
                lone_out.remove(match)
                roads.remove((e_in, None))
                roads.remove((None, match))
                roads.append((e_in, match))
        out[node] = roads
    return out


def _outward(edge: NetEdge, at_end: bool) -> np.ndarray:
    """Unit direction pointing away from the junction at the start (outgoing) or end (incoming) of ``edge``."""
    shape = edge.lanes[0].shape
    u = shape[-2] - shape[-1] if at_end else shape[1] - shape[0]
    return u / max(float(np.linalg.norm(u)), 1e-9)


def _enters_lanes(curve: np.ndarray, lane_pts: np.ndarray, half_width: np.ndarray, margin: float = 0.4) -> bool:
    """Whether ``curve`` comes closer to a lane centreline than that lane's half width minus ``margin``."""
    lo, hi = curve.min(0) - 5.0, curve.max(0) + 5.0
    near = np.nonzero(((lane_pts >= lo) & (lane_pts <= hi)).all(1))[0]
    if len(near) == 0:
        return False
    d = np.linalg.norm(curve[:, None] - lane_pts[near][None], axis=-1)
    return bool((d < half_width[near][None] - margin).any())


def _arm_sides(incoming: NetEdge | None, outgoing: NetEdge | None,
               left: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
               ) -> tuple[float, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(angle, right-hand curb point, left-hand curb point, outward unit direction) of a road at a junction.

    Seen from the junction looking out along the road. The right curb of the outgoing edge is on
    the right-hand side, the right curb of the incoming edge on the left-hand side; a missing
    direction is replaced by the other edge's left boundary when that is a road edge, else None.
    """
    if outgoing is not None:
        u = _outward(outgoing, at_end=False)
    else:
        u = _outward(incoming, at_end=True)  # type: ignore[arg-type]

    def left_curb(edge: NetEdge, end: int) -> np.ndarray | None:
        pts, label, _ = left[edge.id]
        return pts[end] if label[end] == MapType.ROAD_EDGE_BOUNDARY else None

    right = _right_curb(outgoing)[0] if outgoing is not None else left_curb(incoming, -1)  # type: ignore[arg-type]
    lft = _right_curb(incoming)[-1] if incoming is not None else left_curb(outgoing, 0)  # type: ignore[arg-type]
    return float(np.arctan2(u[1], u[0])), right, lft, u


def _crosswalk_polygon(lane: NetLane) -> np.ndarray:
    """Rectangle ring around a crossing's centreline (long sides along the walking direction)."""
    p0, p1 = lane.shape[0], lane.shape[-1]
    d = (p1 - p0) / max(float(np.linalg.norm(p1 - p0)), 1e-9)
    n = np.array([-d[1], d[0]]) * lane.width / 2
    return np.stack([p0 - n, p1 - n, p1 + n, p0 + n])


def _lane_exits(net: SumoNet, lane_feature: dict[str, int]) -> dict[int, list[int]]:
    exits: dict[int, list[int]] = {}
    for c in net.connections:
        src, dst = c.from_lane, c.via or c.to_lane
        if src in lane_feature and dst in lane_feature:
            targets = exits.setdefault(lane_feature[src], [])
            if lane_feature[dst] not in targets:
                targets.append(lane_feature[dst])
    for fid in lane_feature.values():
        exits.setdefault(fid, [])
    return exits


def _tl_links(net: SumoNet, lane_feature: dict[str, int]) -> TlLinks:
    rows = sorted({(c.tl, c.link_index, c.via or c.to_lane) for c in net.connections
                   if c.tl and c.link_index >= 0 and (c.via or c.to_lane) in lane_feature})
    tl_ids = sorted({r[0] for r in rows})
    tl_pos = {t: i for i, t in enumerate(tl_ids)}
    lanes = [net.lanes[r[2]] for r in rows]
    return TlLinks(
        tl_ids=tl_ids, tl=np.array([tl_pos[r[0]] for r in rows], np.int64),
        link_index=np.array([r[1] for r in rows], np.int64),
        lane_feature=np.array([lane_feature[r[2]] for r in rows], np.int64),
        stop_point=np.array([[*lane.shape[0], 0.0] for lane in lanes], np.float64).reshape(-1, 3))
