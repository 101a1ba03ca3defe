"""Import MetaDrive / ScenarioNet "ScenarioDescription" pickles as :class:`RawScenario`.

A ScenarioNet scenario is a plain ``dict`` pickled with numpy arrays (``tracks``,
``map_features``, ``dynamic_map_states``, ``metadata``; see docs/importers.md). Pickles can run
arbitrary code, so they are loaded with :class:`RestrictedUnpickler`, which resolves only numpy
array reconstruction and builtin containers; any other global is refused with an error naming it.

``iter_scenarios(path)`` accepts one ``.pkl`` file or a folder of them (searched recursively) and
yields a ``RawScenario`` per scenario or a :class:`RecordError` per file that cannot be converted.
ScenarioNet's dataset index files (``dataset_summary.pkl``, ``dataset_mapping.pkl``) are not
scenarios: inside a folder they are skipped silently, named directly they yield a RecordError
that says so.
"""
from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trafficbots_gym.data.constants import DT, AgentType, MapType
from trafficbots_gym.data.errors import RecordError, ScenarioParseError
from trafficbots_gym.data.importing import (ImportReport, iter_files, relabel_stop_sign_lanes, resample_polyline,
                                            tl_state_from_name, traffic_lights_from_lanes, wrap_angle)
from trafficbots_gym.data.raw import RawPolyline, RawScenario, RawTracks, RawTrafficLights

INDEX_FILES: frozenset[str] = frozenset({"dataset_summary.pkl", "dataset_mapping.pkl"})
"""ScenarioNet dataset index files: folder metadata, not scenarios."""

_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    # numpy array / dtype / scalar reconstruction (numpy 1.x and 2.x module paths).
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # Raw array bytes in protocol <= 2 pickles.
    ("_codecs", "encode"),
    # Builtin containers.
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "list"), ("builtins", "dict"),
    ("builtins", "tuple"), ("collections", "OrderedDict"),
})

_LANE_TYPES: dict[str, MapType] = {
    "LANE_FREEWAY": MapType.FREEWAY, "LANE_SURFACE_STREET": MapType.SURFACE_STREET,
    "LANE_SURFACE_UNSTRUCTURE": MapType.SURFACE_STREET, "LANE_UNKNOWN": MapType.SURFACE_STREET,
    "LANE_BIKE_LANE": MapType.BIKE_LANE,
}
_LINE_TYPES: dict[str, MapType] = {
    "ROAD_LINE_BROKEN_SINGLE_WHITE": MapType.BROKEN, "ROAD_LINE_BROKEN_SINGLE_YELLOW": MapType.BROKEN,
    "ROAD_LINE_BROKEN_DOUBLE_YELLOW": MapType.BROKEN,
    "ROAD_LINE_SOLID_SINGLE_WHITE": MapType.SOLID_SINGLE, "ROAD_LINE_SOLID_SINGLE_YELLOW": MapType.SOLID_SINGLE,
    "ROAD_LINE_SOLID_DOUBLE_WHITE": MapType.DOUBLE, "ROAD_LINE_SOLID_DOUBLE_YELLOW": MapType.DOUBLE,
    "ROAD_LINE_PASSING_DOUBLE_YELLOW": MapType.DOUBLE,
    # An edge of unknown kind still bounds the drivable area: treated as a boundary.
    "ROAD_EDGE_BOUNDARY": MapType.ROAD_EDGE_BOUNDARY, "UNKNOWN": MapType.ROAD_EDGE_BOUNDARY,
    "ROAD_EDGE_MEDIAN": MapType.ROAD_EDGE_MEDIAN,
}
_POLYGON_TYPES: dict[str, MapType] = {
    "CROSSWALK": MapType.CROSSWALK, "SPEED_BUMP": MapType.SPEED_BUMP, "DRIVEWAY": MapType.SPEED_BUMP,
}
_AGENT_TYPES: dict[str, AgentType] = {
    "VEHICLE": AgentType.VEHICLE, "PEDESTRIAN": AgentType.PEDESTRIAN, "CYCLIST": AgentType.CYCLIST,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction and builtin containers."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ScenarioParseError(self.path, None, None,
                                     f"refusing to load forbidden pickle global '{module}.{name}' "
                                     "(only numpy arrays and builtin containers are allowed)")
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler`; truncated or corrupt data raises
    ``ScenarioParseError`` naming the file."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path).load()
    except ScenarioParseError:
        raise
    except OSError as e:
        raise ScenarioParseError(path, None, None, f"cannot read file ({e.strerror or e})") from e
    except EOFError as e:
        raise ScenarioParseError(path, None, None, "truncated pickle (unexpected end of file)") from e
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise ScenarioParseError(path, None, None, "truncated pickle (unexpected end of file)") from e
        raise ScenarioParseError(path, None, None, f"corrupt pickle ({e})") from e
    except Exception as e:  # the restricted unpickler runs no foreign code: any failure is bad data
        raise ScenarioParseError(path, None, None, f"corrupt pickle ({type(e).__name__}: {e})") from e


def is_index_file(data: Any) -> bool:
    """True for ScenarioNet's dataset_summary / dataset_mapping dicts (file name -> metadata / folder)."""
    return (isinstance(data, dict) and "map_features" not in data and "tracks" not in data
            and all(isinstance(k, str) and k.endswith(".pkl") for k in data))


def iter_scenarios(path: str | os.PathLike) -> Iterator[RawScenario | RecordError]:
    """Yield one ``RawScenario`` per ScenarioNet pickle under ``path`` (a file or a folder), or a
    ``RecordError`` for each file that cannot be converted."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.pkl") if p.name not in INDEX_FILES)
    else:
        files = [root]
    yield from iter_files(files, _load_and_convert)


def _load_and_convert(path: str) -> tuple[RawScenario, ImportReport]:
    """Load one pickle and convert it; a dataset index file is refused with an error that says so."""
    data = load_pickle(path)
    if is_index_file(data):
        raise ScenarioParseError(path, None, None, "a ScenarioNet dataset index (file name -> metadata), not a "
                                 "scenario; skipped")
    return convert_scenario(data, path)


def convert_scenario(data: Any, path: str) -> tuple[RawScenario, ImportReport]:
    """Convert one loaded ScenarioDescription dict to a ``RawScenario`` (world frame, headings
    wrapped, lanes / lines / edges at ~1 m spacing) and report what had to be skipped."""
    if not isinstance(data, dict):
        raise ScenarioParseError(path, None, None, f"expected a ScenarioDescription dict, got {type(data).__name__}")
    metadata = _get(data, "metadata", dict, path, None)
    sid = str(data.get("id", metadata.get("scenario_id", "")))
    if not sid:
        raise ScenarioParseError(path, None, "id", "scenario id missing")
    _check_time_step(metadata, path, sid)
    report = ImportReport()
    track_ids, tracks = _convert_tracks(_get(data, "tracks", dict, path, sid), path, sid, report)
    index = {tid: i for i, tid in enumerate(track_ids)}
    features = _get(data, "map_features", dict, path, sid)
    feature_ids = _id_table(features)
    polylines, lane_exits, stop_lanes = _convert_map(features, feature_ids, path, sid, report)
    relabel_stop_sign_lanes(polylines, stop_lanes)
    lights = _convert_lights(data.get("dynamic_map_states") or {}, feature_ids, tracks.valid.shape[1], path, sid)
    sdc_key = str(metadata.get("sdc_id", ""))
    if sdc_key not in index:
        sdc_pos = metadata.get("sdc_track_index")
        all_ids = [str(k) for k in data["tracks"]]
        sdc_key = all_ids[sdc_pos] if isinstance(sdc_pos, int) and 0 <= sdc_pos < len(all_ids) else sdc_key
    if sdc_key not in index:
        raise ScenarioParseError(path, sid, "metadata.sdc_id",
                                 f"SDC track {sdc_key!r} is missing or not a vehicle/pedestrian/cyclist")
    current = metadata.get("current_time_index", 10)
    if not isinstance(current, int) or not 0 <= current < tracks.valid.shape[1]:
        raise ScenarioParseError(path, sid, "metadata.current_time_index",
                                 f"value {current!r} is not a step index in [0, {tracks.valid.shape[1]})")
    return RawScenario(
        scenario_id=sid, tracks=tracks, sdc_index=index[sdc_key], polylines=polylines,
        traffic_lights=lights, lane_exits=lane_exits,
        objects_of_interest=[index[str(k)] for k in metadata.get("objects_of_interest") or [] if str(k) in index],
        tracks_to_predict=[index[k] for k in _predict_ids(metadata, path, sid) if k in index],
        current_index=current,
    ), report


def _predict_ids(metadata: Mapping, path: str, sid: str) -> list[str]:
    """Track ids of ``tracks_to_predict``: a dict keyed by id, or a list of ``{track_id: ...}``."""
    predict = metadata.get("tracks_to_predict") or {}
    if isinstance(predict, Mapping):
        return [str(k) for k in predict]
    if isinstance(predict, (list, tuple)) and all(isinstance(p, Mapping) and "track_id" in p for p in predict):
        return [str(p["track_id"]) for p in predict]
    raise ScenarioParseError(path, sid, "metadata.tracks_to_predict",
                             "expected a dict keyed by track id or a list of {'track_id': ...}")


def _id_table(entries: Mapping) -> dict[str, int]:
    """Source id -> integer id: the id itself when every id is an integer, else its position."""
    keys = [str(k) for k in entries]
    if all(k.lstrip("-").isdigit() for k in keys):
        return {k: int(k) for k in keys}
    return {k: i for i, k in enumerate(keys)}


def _get(container: Mapping, key: str, kind: type, path: str, sid: str | None, where: str = "") -> Any:
    value = container.get(key) if isinstance(container, Mapping) else None
    if not isinstance(value, kind):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise ScenarioParseError(path, sid, f"{where}{key}", f"expected a {kind.__name__}, got {got}")
    return value


def _array(value: Any, shape_tail: tuple[int, ...], path: str, sid: str, where: str, n: int | None = None) -> np.ndarray:
    """Numeric array with a given trailing shape (and leading length ``n`` if given)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ScenarioParseError(path, sid, where, f"not a numeric array ({e})") from e
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail or (n is not None and arr.shape[0] != n):
        want = (n if n is not None else "N",) + shape_tail
        raise ScenarioParseError(path, sid, where, f"shape {arr.shape}, expected {want}")
    return arr


def _check_time_step(metadata: Mapping, path: str, sid: str) -> None:
    ts = metadata.get("ts")
    if ts is None or len(ts) < 2:
        return
    try:
        dt = float(np.median(np.diff(np.asarray(ts, np.float64))))
    except (TypeError, ValueError) as e:
        raise ScenarioParseError(path, sid, "metadata.ts", f"not a numeric array ({e})") from e
    if abs(dt - DT) > 0.01:
        raise ScenarioParseError(path, sid, "metadata.ts", f"time step {dt:.3f} s, expected {DT} s (10 Hz)")


def _convert_tracks(tracks: Mapping, path: str, sid: str, report: ImportReport) -> tuple[list[str], RawTracks]:
    """Tracks of supported types in source order; ids as strings for the metadata look-ups."""
    keys, types, states = [], [], []
    ids = _id_table(tracks)
    n_step: int | None = None
    for key, track in tracks.items():
        where = f"tracks[{key!r}]"
        if not isinstance(track, Mapping):
            raise ScenarioParseError(path, sid, where, f"expected a dict, got {type(track).__name__}")
        kind = str(track.get("type"))
        if kind not in _AGENT_TYPES:
            report.skipped_tracks[kind] += 1
            continue
        state = _get(track, "state", dict, path, sid, f"{where}.")
        valid = np.asarray(state.get("valid"), dtype=bool)
        if valid.ndim != 1:
            raise ScenarioParseError(path, sid, f"{where}.state.valid", f"shape {valid.shape}, expected (T,)")
        n_step = len(valid) if n_step is None else n_step
        if len(valid) != n_step:
            raise ScenarioParseError(path, sid, f"{where}.state.valid", f"{len(valid)} steps, other tracks have {n_step}")
        pos = _points(state.get("position"), path, sid, f"{where}.state.position", n_step)
        size = np.stack([np.broadcast_to(_scalar_series(state, name, n_step, path, sid, where), (n_step,))
                         for name in ("length", "width", "height")], axis=-1)
        heading = _array(state.get("heading"), (), path, sid, f"{where}.state.heading", n_step)
        vel = _array(state.get("velocity"), (2,), path, sid, f"{where}.state.velocity", n_step)
        m = valid[:, None]
        keys.append(str(key))
        types.append(int(_AGENT_TYPES[kind]))
        for name, value in (("position", pos), ("heading", heading), ("velocity", vel), ("size", size)):
            if not np.isfinite(value[valid]).all():
                raise ScenarioParseError(path, sid, f"{where}.state.{name}", "non-finite values at valid steps")
        states.append((ids[str(key)], valid, np.where(m, pos, 0.0), np.where(m, size, 0.0),
                       np.where(valid, wrap_angle(heading), 0.0), np.where(m, vel, 0.0)))
    if not states:
        raise ScenarioParseError(path, sid, "tracks", "no vehicle, pedestrian or cyclist track")
    object_id, valid, pos, size, heading, vel = (np.stack(x) for x in zip(*states))
    return keys, RawTracks(object_id=object_id.astype(np.int64), type=np.array(types, np.int64), valid=valid,
                           pos=pos, size=size.astype(np.float32), heading=heading.astype(np.float32),
                           vel=vel.astype(np.float32))


def _scalar_series(state: Mapping, name: str, n_step: int, path: str, sid: str, where: str) -> np.ndarray:
    value = np.asarray(state.get(name), dtype=np.float64) if state.get(name) is not None else None
    if value is None or value.ndim > 1 or (value.ndim == 1 and len(value) != n_step):
        shape = None if value is None else value.shape
        raise ScenarioParseError(path, sid, f"{where}.state.{name}", f"shape {shape}, expected ({n_step},) or scalar")
    return value


def _convert_map(features: Mapping, ids: dict[str, int], path: str, sid: str,
                 report: ImportReport) -> tuple[list[RawPolyline], dict[int, list[int]], set[int]]:
    """Polylines with MapType, the lane graph (lane id -> exit lane ids) and stop-sign lane ids.

    References to features absent from the map (exits, stop-sign lanes) are dropped.
    """
    polylines: list[RawPolyline] = []
    exits: dict[int, list[int]] = {}
    stop_lanes: set[int] = set()
    for key, feat in features.items():
        where = f"map_features[{key!r}]"
        if not isinstance(feat, Mapping):
            raise ScenarioParseError(path, sid, where, f"expected a dict, got {type(feat).__name__}")
        kind = str(feat.get("type"))
        fid = ids[str(key)]
        if kind == "STOP_SIGN":
            stop_lanes.update(ids[str(k)] for k in feat.get("lane") or [] if str(k) in ids)
        elif kind in _LANE_TYPES or kind in _LINE_TYPES:
            pts = _finite_points(feat.get("polyline"), path, sid, f"{where}.polyline")
            if len(pts) == 0:
                report.skipped_features[f"{kind} (empty)"] += 1
                continue
            map_type = _LANE_TYPES.get(kind, _LINE_TYPES.get(kind))
            polylines.append(RawPolyline(fid, int(map_type), resample_polyline(pts)))
            if kind in _LANE_TYPES:
                exits[fid] = [ids[str(k)] for k in feat.get("exit_lanes") or [] if str(k) in ids]
        elif kind in _POLYGON_TYPES:
            pts = _finite_points(feat.get("polygon"), path, sid, f"{where}.polygon")
            if len(pts) < 3:
                report.skipped_features[f"{kind} (fewer than 3 vertices)"] += 1
                continue
            polylines.append(RawPolyline(fid, int(_POLYGON_TYPES[kind]), pts, is_polygon=True))
        else:
            report.skipped_features[kind] += 1
    return polylines, exits, stop_lanes


def _points(value: Any, path: str, sid: str, where: str, n: int | None = None) -> np.ndarray:
    """[N, 3] float64 points from an [N, 3] or [N, 2] array (z = 0 when absent)."""
    if np.ndim(value) == 2 and np.shape(value)[1] == 2:
        xy = _array(value, (2,), path, sid, where, n)
        return np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
    return _array(value, (3,), path, sid, where, n)


def _finite_points(value: Any, path: str, sid: str, where: str) -> np.ndarray:
    """Map geometry: like :func:`_points`, and every coordinate must be finite."""
    pts = _points(value, path, sid, where)
    if not np.isfinite(pts).all():
        raise ScenarioParseError(path, sid, where, "non-finite coordinates")
    return pts


def _convert_lights(states: Mapping, ids: dict[str, int], n_step: int, path: str, sid: str) -> RawTrafficLights:
    """One light entry per controlled lane; a lane missing from the map gets an id no polyline has
    (the packer then drops the light, as it does for lanes cut from the map)."""
    lanes = []
    unknown = min(ids.values(), default=0) - 1
    for key, light in states.items():
        where = f"dynamic_map_states[{key!r}]"
        if not isinstance(light, Mapping):
            raise ScenarioParseError(path, sid, where, f"expected a dict, got {type(light).__name__}")
        series = light.get("state", {}).get("object_state") if isinstance(light.get("state"), Mapping) else None
        if not isinstance(series, (list, tuple)) or len(series) != n_step:
            got = len(series) if isinstance(series, (list, tuple)) else type(series).__name__
            raise ScenarioParseError(path, sid, f"{where}.state.object_state", f"expected {n_step} entries, got {got}")
        try:
            state = np.array([-1 if s is None else int(tl_state_from_name(str(s))) for s in series], np.int64)
        except KeyError as e:
            raise ScenarioParseError(path, sid, f"{where}.state.object_state", str(e.args[0])) from e
        stop = np.asarray(light.get("stop_point"), dtype=np.float64).reshape(-1)
        if stop.shape not in ((2,), (3,)):
            raise ScenarioParseError(path, sid, f"{where}.stop_point", f"shape {stop.shape}, expected (3,)")
        stop = np.broadcast_to(np.pad(stop, (0, 3 - len(stop))), (n_step, 3))
        lane = str(light.get("lane", key))
        lanes.append((ids.get(lane, unknown - len(lanes)), state, stop))
    return traffic_lights_from_lanes(n_step, lanes)
