"""Import GPUDrive scene JSON (``Emerge-Lab/gpudrive`` ``process_waymo_files.py``) as :class:`RawScenario`.

A GPUDrive file holds one WOMD scenario: ``objects`` (per-step position / velocity / heading /
valid, one box size), ``roads`` (geometry, kind, ``map_element_id`` = WOMD tf.Example roadgraph
code), ``tl_states`` (per controlled lane: state names at ``time_index`` steps) and ``metadata``
(sdc_track_index, objects_of_interest as ids, tracks_to_predict as indices).

The format has no lane graph and no stop-sign -> lane links; both are rebuilt from geometry
(:func:`~trafficbots_gym.data.importing.lane_exits_from_geometry`,
:func:`~trafficbots_gym.data.importing.stop_sign_lanes_from_geometry`). docs/importers.md lists
what is lost. Structure errors name the file and the JSON path (``objects[3].position[12].x``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trafficbots_gym.data.constants import AgentType, MapType
from trafficbots_gym.data.errors import RecordError, ScenarioParseError
from trafficbots_gym.data.importing import (ImportReport, iter_files, lane_exits_from_geometry,
                                            relabel_stop_sign_lanes, resample_polyline, stop_sign_lanes_from_geometry,
                                            tl_state_from_name, traffic_lights_from_lanes, wrap_angle)
from trafficbots_gym.data.raw import RawPolyline, RawScenario, RawTracks, RawTrafficLights

CURRENT_INDEX: int = 10
"""GPUDrive drops ``current_time_index``; WOMD scenarios always use step 10."""

_AGENT_TYPES: dict[str, AgentType] = {
    "vehicle": AgentType.VEHICLE, "pedestrian": AgentType.PEDESTRIAN, "cyclist": AgentType.CYCLIST,
}
# Road kind -> {map_element_id: MapType}; None marks a code that is valid but not representable.
_ROAD_CODES: dict[str, dict[int, MapType | None]] = {
    "lane": {0: MapType.SURFACE_STREET, 1: MapType.FREEWAY, 2: MapType.SURFACE_STREET, 3: MapType.BIKE_LANE},
    "road_line": {5: None, 6: MapType.BROKEN, 9: MapType.BROKEN, 10: MapType.BROKEN,
                  7: MapType.SOLID_SINGLE, 11: MapType.SOLID_SINGLE,
                  8: MapType.DOUBLE, 12: MapType.DOUBLE, 13: MapType.DOUBLE},
    "road_edge": {14: MapType.ROAD_EDGE_BOUNDARY, 15: MapType.ROAD_EDGE_BOUNDARY, 16: MapType.ROAD_EDGE_MEDIAN},
    "stop_sign": {17: None},
    "crosswalk": {18: MapType.CROSSWALK},
    "speed_bump": {19: MapType.SPEED_BUMP},
    "driveway": {20: MapType.SPEED_BUMP, -1: MapType.SPEED_BUMP},
}
_POLYGON_KINDS = frozenset({"crosswalk", "speed_bump", "driveway"})
_DEGREE_HINT_RAD = 2 * np.pi + 0.01


class _Json:
    """Typed access to a parsed JSON document; every failure names the file and JSON path."""

    def __init__(self, path: str, sid: str | None = None) -> None:
        self.path, self.sid = path, sid

    def error(self, where: str | None, message: str) -> ScenarioParseError:
        return ScenarioParseError(self.path, self.sid, where, message)

    def get(self, obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, dict):
            raise self.error(where, f"expected an object, got {_name(obj)}")
        full = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.error(full, "missing")
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.error(full, f"expected {_kind_name(kind)}, got {_name(value)}")
        return value

    def number(self, obj: Any, key: str, where: str) -> float:
        return float(self.get(obj, key, (int, float), where))

    def points(self, items: Any, keys: tuple[str, ...], where: str, n: int | None = None) -> np.ndarray:
        """[N, len(keys)] float64 from a list of ``{x, y, z}`` objects."""
        if not isinstance(items, list):
            raise self.error(where, f"expected an array, got {_name(items)}")
        if n is not None and len(items) != n:
            raise self.error(where, f"{len(items)} entries, expected {n}")
        try:
            rows = [[p[k] for k in keys] for p in items]
            if all(type(v) in (int, float) for row in rows for v in row):
                return np.array(rows, dtype=np.float64).reshape(len(items), len(keys))
        except (TypeError, KeyError):
            pass
        for i, p in enumerate(items):  # slow path: find and name the first bad entry
            for k in keys:
                self.number(p, k, f"{where}[{i}]")
        raise AssertionError("unreachable")  # pragma: no cover

    def numbers(self, items: Any, where: str, n: int | None = None, kind: type = float) -> np.ndarray:
        if not isinstance(items, list):
            raise self.error(where, f"expected an array, got {_name(items)}")
        if n is not None and len(items) != n:
            raise self.error(where, f"{len(items)} entries, expected {n}")
        allowed = (bool,) if kind is bool else (int,) if kind is int else (int, float)
        for i, v in enumerate(items):
            if not isinstance(v, allowed) or (kind is not bool and isinstance(v, bool)):
                raise self.error(f"{where}[{i}]", f"expected {_kind_name(kind)}, got {_name(v)}")
        return np.array(items, dtype=kind if kind is not float else np.float64)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
             bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; unreadable, non-UTF-8, truncated or malformed files raise
    ``ScenarioParseError`` naming the file and where the parser stopped."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioParseError(path, None, None, f"cannot read file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ScenarioParseError(path, None, None, f"not UTF-8 text (byte {e.start})") from e
    def refuse_constant(name: str) -> float:
        raise ScenarioParseError(path, None, None, f"non-finite number {name} in JSON")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as e:
        hint = " (truncated file?)" if e.pos >= len(text.rstrip()) else ""
        raise ScenarioParseError(path, None, None,
                                 f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}{hint}") from e


def iter_scenarios(path: str | os.PathLike) -> Iterator[RawScenario | RecordError]:
    """Yield one ``RawScenario`` per GPUDrive JSON file under ``path`` (a file or a folder,
    searched recursively), or a ``RecordError`` for each file that cannot be converted."""
    root = Path(path)
    files = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    yield from iter_files(files, lambda file: convert_scenario(load_json(file), file))


def convert_scenario(doc: Any, path: str) -> tuple[RawScenario, ImportReport]:
    """Convert one parsed GPUDrive scene to a ``RawScenario`` (world frame, headings wrapped,
    lanes / lines / edges at ~1 m, lane graph and stop-sign lanes rebuilt from geometry)."""
    j = _Json(path)
    if not isinstance(doc, dict):
        raise j.error(None, f"expected a JSON object at the top level, got {_name(doc)}")
    j.sid = j.get(doc, "scenario_id", str, "")
    report = ImportReport()
    objects = j.get(doc, "objects", list, "")
    kept, tracks = _convert_objects(j, objects, report)
    polylines, lanes, stop_signs = _convert_roads(j, j.get(doc, "roads", list, ""), report)
    exits = lane_exits_from_geometry(lanes)
    lane_type = {pl.feature_id: pl.map_type for pl in polylines if pl.feature_id in lanes}
    vehicle_lanes = {i: p for i, p in lanes.items() if lane_type[i] in (MapType.FREEWAY, MapType.SURFACE_STREET)}
    controlled = {lane for sign in stop_signs for lane in stop_sign_lanes_from_geometry(sign, vehicle_lanes)}
    relabel_stop_sign_lanes(polylines, controlled)
    lights = _convert_lights(j, doc.get("tl_states") or {}, tracks.valid.shape[1])
    meta = j.get(doc, "metadata", dict, "")
    index = {src: i for i, src in enumerate(kept)}
    sdc = int(j.get(meta, "sdc_track_index", int, "metadata"))
    if sdc not in index:
        raise j.error("metadata.sdc_track_index",
                      f"{sdc} is not the index of a vehicle, pedestrian or cyclist among {len(objects)} objects")
    by_id = {int(tracks.object_id[i]): i for i in range(tracks.num_tracks)}
    if len(by_id) != tracks.num_tracks:
        raise j.error("objects", "object ids are not unique")
    if tracks.valid.shape[1] <= CURRENT_INDEX:
        raise j.error("objects[0].valid", f"{tracks.valid.shape[1]} steps, need more than {CURRENT_INDEX}")
    interest = j.numbers(meta.get("objects_of_interest", []), "metadata.objects_of_interest", kind=int)
    predict = j.get(meta, "tracks_to_predict", list, "metadata") if "tracks_to_predict" in meta else []
    predict_idx = [int(j.get(p, "track_index", int, f"metadata.tracks_to_predict[{k}]")) for k, p in enumerate(predict)]
    return RawScenario(
        scenario_id=j.sid, tracks=tracks, sdc_index=index[sdc], polylines=polylines, traffic_lights=lights,
        lane_exits=exits,
        objects_of_interest=[by_id[int(i)] for i in interest if int(i) in by_id],
        tracks_to_predict=[index[i] for i in predict_idx if i in index],
        current_index=CURRENT_INDEX,
    ), report


def _convert_objects(j: _Json, objects: list, report: ImportReport) -> tuple[list[int], RawTracks]:
    """Tracks of supported types and, for each, its index in ``objects``."""
    kept: list[int] = []
    rows = []
    n_step: int | None = None
    for k, obj in enumerate(objects):
        where = f"objects[{k}]"
        kind = j.get(obj, "type", str, where)
        if kind not in _AGENT_TYPES:
            report.skipped_tracks[kind] += 1
            continue
        valid = j.numbers(j.get(obj, "valid", list, where), f"{where}.valid", n_step, kind=bool)
        n_step = len(valid)
        pos = j.points(j.get(obj, "position", list, where), ("x", "y", "z"), f"{where}.position", n_step)
        vel = j.points(j.get(obj, "velocity", list, where), ("x", "y"), f"{where}.velocity", n_step)
        heading = j.numbers(j.get(obj, "heading", list, where), f"{where}.heading", n_step)
        if valid.any() and np.abs(heading[valid]).max() > _DEGREE_HINT_RAD:
            raise j.error(f"{where}.heading", f"value {np.abs(heading[valid]).max():.1f} is not in radians "
                          "(files of older GPUDrive converters store degrees; re-convert them)")
        size = [j.number(obj, name, where) for name in ("length", "width", "height")]
        m = valid[:, None]
        kept.append(k)
        rows.append((int(j.get(obj, "id", int, where)), int(_AGENT_TYPES[kind]), valid, np.where(m, pos, 0.0),
                     np.where(m, np.array(size), 0.0), np.where(valid, wrap_angle(heading), 0.0), np.where(m, vel, 0.0)))
    if not rows:
        raise j.error("objects", "no vehicle, pedestrian or cyclist object")
    ids, types, valid, pos, size, heading, vel = (np.stack(x) for x in zip(*rows))
    return kept, RawTracks(object_id=ids.astype(np.int64), type=types.astype(np.int64), valid=valid, pos=pos,
                           size=size.astype(np.float32), heading=heading.astype(np.float32),
                           vel=vel.astype(np.float32))


def _convert_roads(j: _Json, roads: list, report: ImportReport
                   ) -> tuple[list[RawPolyline], dict[int, np.ndarray], list[np.ndarray]]:
    """Polylines with MapType, full-resolution lane geometry by id, stop-sign positions."""
    polylines: list[RawPolyline] = []
    lanes: dict[int, np.ndarray] = {}
    stop_signs: list[np.ndarray] = []
    for k, road in enumerate(roads):
        where = f"roads[{k}]"
        kind = j.get(road, "type", str, where)
        if kind not in _ROAD_CODES:
            report.skipped_features[kind] += 1
            continue
        code = j.get(road, "map_element_id", int, where)
        if code not in _ROAD_CODES[kind]:
            raise j.error(f"{where}.map_element_id", f"code {code} does not fit a {kind!r} "
                          f"(expected one of {sorted(_ROAD_CODES[kind])})")
        fid = j.get(road, "id", int, where)
        pts = j.points(j.get(road, "geometry", list, where), ("x", "y", "z"), f"{where}.geometry")
        if kind == "stop_sign":
            if len(pts) == 0:
                raise j.error(f"{where}.geometry", "stop sign without a position")
            stop_signs.append(pts[0])
            continue
        map_type = _ROAD_CODES[kind][code]
        if map_type is None:
            report.skipped_features[f"{kind} {code}"] += 1
            continue
        if kind in _POLYGON_KINDS:
            if len(pts) < 3:
                report.skipped_features[f"{kind} (fewer than 3 vertices)"] += 1
                continue
            polylines.append(RawPolyline(fid, int(map_type), pts, is_polygon=True))
            continue
        if len(pts) == 0:
            report.skipped_features[f"{kind} (empty)"] += 1
            continue
        polylines.append(RawPolyline(fid, int(map_type), resample_polyline(pts)))
        if kind == "lane":
            lanes[fid] = pts
    return polylines, lanes, stop_signs


def _convert_lights(j: _Json, tl_states: Any, n_step: int) -> RawTrafficLights:
    if not isinstance(tl_states, dict):
        raise j.error("tl_states", f"expected an object, got {_name(tl_states)}")
    lanes = []
    for lane_key, light in tl_states.items():
        where = f"tl_states[{lane_key!r}]"
        if not lane_key.lstrip("-").isdigit():
            raise j.error(where, f"lane id {lane_key!r} is not an integer")
        steps = j.numbers(j.get(light, "time_index", list, where), f"{where}.time_index", kind=int)
        n = len(steps)
        names = j.get(light, "state", list, where)
        if len(names) != n:
            raise j.error(f"{where}.state", f"{len(names)} entries, expected {n} (one per time_index)")
        xyz = np.stack([j.numbers(j.get(light, c, list, where), f"{where}.{c}", n) for c in "xyz"], axis=-1)
        if n and (steps.min() < 0 or steps.max() >= n_step):
            raise j.error(f"{where}.time_index", f"values outside [0, {n_step - 1}]")
        state = np.full(n_step, -1, np.int64)
        stop = np.zeros((n_step, 3))
        for i, (t, name) in enumerate(zip(steps, names)):
            if not isinstance(name, str):
                raise j.error(f"{where}.state[{i}]", f"expected a string, got {_name(name)}")
            try:
                state[t] = int(tl_state_from_name(name))
            except KeyError as e:
                raise j.error(f"{where}.state[{i}]", str(e.args[0])) from e
            stop[t] = xyz[i]
        lanes.append((int(lane_key), state, stop))
    return traffic_lights_from_lanes(n_step, lanes)
