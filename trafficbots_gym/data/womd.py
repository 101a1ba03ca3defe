"""WOMD ``Scenario`` protos (TFRecord files) to :class:`~trafficbots_gym.data.raw.RawScenario`.

Reads the records with :mod:`trafficbots_gym.data.tfrecord`, parses them with the protoc-free
classes of :mod:`trafficbots_gym.data.womd_proto` and converts them with the reference packer's
source conventions (trafficbots_spec.md §1.2-1.3):

* lanes, road lines and road edges keep every second point (~0.5 m -> ~1 m spacing);
* lane types FREEWAY -> 0, SURFACE_STREET / UNDEFINED -> 1, BIKE_LANE -> 3; freeway and surface
  lanes listed by a stop sign become STOP_SIGN (2); road edges BOUNDARY / MEDIAN -> 4 / 5; road
  lines broken -> 6, solid single -> 7, double -> 8; speed bumps and driveways -> 9 and crosswalks
  -> 10 (polygons, turned into polylines by the packer);
* signal states (9 WOMD values) -> 5 :class:`TLState` classes;
* tracks of type OTHER / UNSET, road lines and edges of type UNKNOWN are skipped and counted in a
  logged warning; out-of-range enum values make the record fail with a ``ScenarioParseError``.

Headings are passed on unwrapped as stored (the packer wraps them).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from trafficbots_gym.data.constants import MapType, TLState
from trafficbots_gym.data.errors import RecordError, ScenarioParseError
from trafficbots_gym.data.importing import ImportReport
from trafficbots_gym.data.raw import RawPolyline, RawScenario, RawTracks, RawTrafficLights
from trafficbots_gym.data.tfrecord import TFRecordError, iter_records
from trafficbots_gym.data.womd_proto import Scenario, ScenarioColumns

log = logging.getLogger(__name__)

# WOMD enum value -> our class; values absent from a map but present in the *_SKIP sets are skipped.
TRACK_TYPES: dict[int, int] = {1: 0, 2: 1, 3: 2}
"""ObjectType VEHICLE / PEDESTRIAN / CYCLIST -> AgentType."""
TRACK_TYPES_SKIP: dict[int, str] = {0: "TYPE_UNSET", 4: "TYPE_OTHER"}
LANE_TYPES: dict[int, int] = {0: MapType.SURFACE_STREET, 1: MapType.FREEWAY, 2: MapType.SURFACE_STREET,
                              3: MapType.BIKE_LANE}
ROAD_LINE_TYPES: dict[int, int] = {1: MapType.BROKEN, 4: MapType.BROKEN, 5: MapType.BROKEN,
                                   2: MapType.SOLID_SINGLE, 6: MapType.SOLID_SINGLE,
                                   3: MapType.DOUBLE, 7: MapType.DOUBLE, 8: MapType.DOUBLE}
ROAD_EDGE_TYPES: dict[int, int] = {1: MapType.ROAD_EDGE_BOUNDARY, 2: MapType.ROAD_EDGE_MEDIAN}
POLYGON_TYPES: dict[str, int] = {"crosswalk": MapType.CROSSWALK, "speed_bump": MapType.SPEED_BUMP,
                                 "driveway": MapType.SPEED_BUMP}
TL_STATES: dict[int, int] = {0: TLState.UNKNOWN, 1: TLState.STOP, 4: TLState.STOP, 2: TLState.CAUTION,
                             5: TLState.CAUTION, 3: TLState.GO, 6: TLState.GO, 7: TLState.FLASHING,
                             8: TLState.FLASHING}
"""LaneState (ARROW_)STOP / CAUTION / GO, FLASHING_STOP / CAUTION -> TLState."""

_STATE_FIELDS = attrgetter("center_x", "center_y", "center_z", "length", "width", "height", "heading",
                           "velocity_x", "velocity_y", "valid")
_XYZ = attrgetter("x", "y", "z")


def iter_scenarios(path: str | os.PathLike) -> Iterator[RawScenario | RecordError]:
    """Every scenario of a WOMD TFRecord file, or a ``RecordError`` for each record that cannot be
    read, parsed or converted (the following records are still read when the framing allows)."""
    for index, item in enumerate(iter_records(path)):
        if isinstance(item, TFRecordError):
            yield RecordError(ScenarioParseError(path, item.record, None, f"byte offset {item.offset}: {item.message}"))
            continue
        try:
            yield scenario_from_bytes(item, path, index)
        except ScenarioParseError as e:
            yield RecordError(e)


class _MisalignedPoints(Exception):
    """A map point lacks x, y or z, so the columnar reading cannot pair the coordinates."""


def _xyz_of_columns(columns) -> np.ndarray:
    if not len(columns.x) == len(columns.y) == len(columns.z):
        raise _MisalignedPoints
    return np.array([columns.x, columns.y, columns.z], np.float64).T.reshape(-1, 3)


def _xyz_of_messages(points) -> np.ndarray:
    return np.asarray(list(map(_XYZ, points)), np.float64).reshape(-1, 3)


def scenario_from_bytes(data: bytes, path: str | os.PathLike = "<bytes>", record: int | None = None) -> RawScenario:
    """Parse one serialized ``Scenario`` and convert it; errors name ``path`` and ``record``.

    Map points are read column-wise (``ScenarioColumns``); a record with a point that lacks a
    coordinate is re-read point by point with the exact schema.
    """
    proto = ScenarioColumns()
    try:
        proto.ParseFromString(data)
    except DecodeError as e:
        raise ScenarioParseError(str(path), record, None, f"not a Scenario proto ({e})") from e
    try:
        return _convert(proto, _xyz_of_columns, str(path), record)
    except _MisalignedPoints:
        exact = Scenario()
        exact.ParseFromString(data)  # the same bytes just parsed, with the exact schema
        return _convert(exact, _xyz_of_messages, str(path), record)


def scenario_from_proto(proto: Scenario, path: str | os.PathLike = "<proto>",
                        record: int | None = None) -> RawScenario:
    """Convert a parsed ``Scenario`` message (exact schema) to a :class:`RawScenario` (world frame)."""
    return _convert(proto, _xyz_of_messages, str(path), record)


def _convert(proto, xyz: Callable[[object], np.ndarray], path: str, record: int | None) -> RawScenario:
    report = ImportReport()
    tracks, kept = _tracks(proto, path, record, report)
    n_step = tracks.valid.shape[1]
    new_index = {old: new for new, old in enumerate(kept)}
    sdc = int(proto.sdc_track_index)
    if sdc not in new_index:
        reason = "out of range" if not 0 <= sdc < len(proto.tracks) else "points to a skipped track"
        raise ScenarioParseError(path, record, "sdc_track_index", f"value {sdc} {reason} ({len(proto.tracks)} tracks)")
    predict = []
    for i, req in enumerate(proto.tracks_to_predict):
        if not 0 <= req.track_index < len(proto.tracks):
            raise ScenarioParseError(path, record, f"tracks_to_predict[{i}].track_index",
                                     f"value {req.track_index} out of range ({len(proto.tracks)} tracks)")
        if req.track_index in new_index:
            predict.append(new_index[req.track_index])
    index_of_id = {int(oid): i for i, oid in enumerate(tracks.object_id)}
    interest = [index_of_id[oid] for oid in proto.objects_of_interest if oid in index_of_id]
    polylines, lane_exits = _map(proto, xyz, path, record, report)
    current = int(proto.current_time_index) if proto.HasField("current_time_index") else 10
    if not 0 <= current < n_step:
        raise ScenarioParseError(path, record, "current_time_index", f"value {current} outside [0, {n_step})")
    if report:
        log.warning("%s, record %s, scenario %s: %s", path, record, proto.scenario_id, report)
    return RawScenario(scenario_id=proto.scenario_id or f"{Path(path).name}:{record}", tracks=tracks,
                       sdc_index=new_index[sdc], polylines=polylines,
                       traffic_lights=_traffic_lights(proto, n_step, path, record), lane_exits=lane_exits,
                       objects_of_interest=sorted(set(interest)), tracks_to_predict=sorted(set(predict)),
                       current_index=current)


def _tracks(proto: Scenario, path: str, record: int | None, report: ImportReport) -> tuple[RawTracks, list[int]]:
    if not proto.tracks:
        raise ScenarioParseError(path, record, "tracks", "scenario has no tracks")
    n_step = len(proto.tracks[0].states)
    if n_step == 0:
        raise ScenarioParseError(path, record, "tracks[0].states", "track has no states")
    kept, types, ids, states = [], [], [], []
    for i, track in enumerate(proto.tracks):
        if track.object_type in TRACK_TYPES_SKIP:
            report.skipped_tracks[TRACK_TYPES_SKIP[track.object_type]] += 1
            continue
        if track.object_type not in TRACK_TYPES:
            raise ScenarioParseError(path, record, f"tracks[{i}].object_type",
                                     f"unknown object type {track.object_type}")
        if len(track.states) != n_step:
            raise ScenarioParseError(path, record, f"tracks[{i}].states",
                                     f"{len(track.states)} states, expected {n_step} like tracks[0]")
        kept.append(i)
        types.append(TRACK_TYPES[track.object_type])
        ids.append(track.id)
        states.extend(map(_STATE_FIELDS, track.states))
    if not kept:
        raise ScenarioParseError(path, record, "tracks", "no vehicle, pedestrian or cyclist track")
    if len(set(ids)) != len(ids):
        raise ScenarioParseError(path, record, "tracks.id", "track ids are not unique")
    arr = np.asarray(states, np.float64).reshape(len(kept), n_step, 10)
    valid = arr[..., 9] > 0
    arr = np.where(valid[..., None], arr, 0.0)
    if not np.isfinite(arr).all():
        raise ScenarioParseError(path, record, "tracks.states", "non-finite values in valid states")
    tracks = RawTracks(object_id=np.asarray(ids, np.int64), type=np.asarray(types, np.int64), valid=valid,
                       pos=arr[..., 0:3].copy(), size=arr[..., 3:6].astype(np.float32),
                       heading=arr[..., 6].astype(np.float32), vel=arr[..., 7:9].astype(np.float32))
    return tracks, kept


def _finite(points: np.ndarray, path: str, record: int | None, field: str) -> np.ndarray:
    if not np.isfinite(points).all():
        raise ScenarioParseError(path, record, field, "non-finite point coordinates")
    return points


def _map(proto: Scenario, xyz: Callable[[object], np.ndarray], path: str, record: int | None,
         report: ImportReport) -> tuple[list[RawPolyline], dict[int, list[int]]]:
    polylines: list[RawPolyline] = []
    lane_exits: dict[int, list[int]] = {}
    stop_sign_lanes: set[int] = set()
    for i, mf in enumerate(proto.map_features):
        kind = mf.WhichOneof("feature_data")
        if kind is None:
            report.skipped_features["empty"] += 1
            continue
        feature = getattr(mf, kind)
        field = f"map_features[{i}].{kind}"
        if kind == "stop_sign":
            stop_sign_lanes.update(int(lane) for lane in feature.lane)
            continue
        if kind in POLYGON_TYPES:
            points = _finite(xyz(feature.polygon), path, record, f"{field}.polygon")
            if len(points):
                polylines.append(RawPolyline(int(mf.id), int(POLYGON_TYPES[kind]), points, is_polygon=True))
            continue
        if kind == "lane":
            table, skip = LANE_TYPES, None
            lane_exits[int(mf.id)] = [int(e) for e in feature.exit_lanes]
        elif kind == "road_line":
            table, skip = ROAD_LINE_TYPES, "road_line TYPE_UNKNOWN"
        else:
            table, skip = ROAD_EDGE_TYPES, "road_edge TYPE_UNKNOWN"
        if feature.type not in table:
            if feature.type == 0 and skip is not None:
                report.skipped_features[skip] += 1
                continue
            raise ScenarioParseError(path, record, f"{field}.type", f"unknown {kind} type {feature.type}")
        points = _finite(xyz(feature.polyline)[::2], path, record, f"{field}.polyline")
        if len(points):
            polylines.append(RawPolyline(int(mf.id), int(table[feature.type]), points))
    for pl in polylines:
        if pl.feature_id in stop_sign_lanes and pl.map_type in (MapType.FREEWAY, MapType.SURFACE_STREET):
            pl.map_type = int(MapType.STOP_SIGN)
    return polylines, lane_exits


def _traffic_lights(proto: Scenario, n_step: int, path: str, record: int | None) -> RawTrafficLights:
    steps = proto.dynamic_map_states
    if len(steps) == 0:
        return RawTrafficLights.empty(n_step)
    if len(steps) != n_step:
        raise ScenarioParseError(path, record, "dynamic_map_states", f"{len(steps)} steps, tracks have {n_step}")
    rows = [(t, k, lane.lane, lane.state, *_XYZ(lane.stop_point))
            for t, step in enumerate(steps) for k, lane in enumerate(step.lane_states)]
    width = max(len(s.lane_states) for s in steps)
    tl = RawTrafficLights(valid=np.zeros((n_step, width), bool), lane_id=np.zeros((n_step, width), np.int64),
                          state=np.zeros((n_step, width), np.int64), stop_point=np.zeros((n_step, width, 3)))
    if not rows:
        return tl
    t, k, lane_id, state = (np.array([r[i] for r in rows], np.int64) for i in range(4))
    known = np.isin(state, list(TL_STATES))
    if not known.all():
        i = int(np.argmin(known))
        raise ScenarioParseError(path, record, f"dynamic_map_states[{t[i]}].lane_states[{k[i]}].state",
                                 f"unknown signal state {state[i]}")
    stop = np.array([r[4:] for r in rows], np.float64)
    if not np.isfinite(stop).all():
        raise ScenarioParseError(path, record, "dynamic_map_states.lane_states.stop_point", "non-finite coordinates")
    lut = np.zeros(max(TL_STATES) + 1, np.int64)
    lut[list(TL_STATES)] = list(TL_STATES.values())
    tl.valid[t, k] = True
    tl.lane_id[t, k] = lane_id
    tl.state[t, k] = lut[state]
    tl.stop_point[t, k] = stop
    return tl
