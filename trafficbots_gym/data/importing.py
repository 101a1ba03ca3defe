"""Conversion helpers shared by the dataset importers (ScenarioNet pickles, GPUDrive JSON).

Pure functions from source values to :mod:`trafficbots_gym.data.raw` conventions: heading
wrapping, polyline resampling to the ~1 m node spacing of the packer, traffic-light state names
to :class:`TLState`, per-lane light series to :class:`RawTrafficLights`, lane-graph and stop-sign
reconstruction from geometry (for sources without a lane graph), the per-scenario record of
what an importer had to skip, and the per-file conversion loop of a one-scenario-per-file source.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trafficbots_gym.data.constants import MapType, TLState
from trafficbots_gym.data.errors import RecordError, ScenarioParseError
from trafficbots_gym.data.raw import RawPolyline, RawScenario, RawTrafficLights

log = logging.getLogger(__name__)

EXIT_MAX_GAP_M: float = 0.5
"""Geometric lane graph: largest gap between a lane's end and its successor's start (m)."""
EXIT_MAX_ANGLE_RAD: float = np.pi / 4
"""Geometric lane graph: largest heading change across the joint (rad)."""
STOP_SIGN_RADIUS_M: float = 8.0
"""Geometric stop-sign links: farthest a controlled lane's start may be from the sign (m)."""
STOP_SIGN_GROUP_M: float = 0.5
"""Geometric stop-sign links: lanes starting at most this much farther than the nearest one also count."""

_TL_STATE_BY_NAME: dict[str, TLState] = {
    "unknown": TLState.UNKNOWN,
    "arrow_stop": TLState.STOP, "stop": TLState.STOP,
    "arrow_caution": TLState.CAUTION, "caution": TLState.CAUTION,
    "arrow_go": TLState.GO, "go": TLState.GO,
    "flashing_stop": TLState.FLASHING, "flashing_caution": TLState.FLASHING,
    # MetaDrive's simplified four-colour names.
    "traffic_light_unknown": TLState.UNKNOWN, "traffic_light_red": TLState.STOP,
    "traffic_light_yellow": TLState.CAUTION, "traffic_light_green": TLState.GO,
}


@dataclass
class ImportReport:
    """What an importer left out of one scenario (types it cannot represent), with counts."""

    skipped_tracks: Counter[str] = field(default_factory=Counter)
    """Track type name -> number of tracks dropped (e.g. OTHER)."""
    skipped_features: Counter[str] = field(default_factory=Counter)
    """Map feature type name -> number of features dropped (e.g. unknown road lines)."""

    def __bool__(self) -> bool:
        return bool(self.skipped_tracks or self.skipped_features)

    def __str__(self) -> str:
        parts = []
        if self.skipped_tracks:
            parts.append("skipped tracks " + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_tracks.items())))
        if self.skipped_features:
            parts.append("skipped map features "
                         + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_features.items())))
        return "; ".join(parts) if parts else "nothing skipped"


def log_report(path: str, scenario_id: str, report: ImportReport) -> None:
    """Log what was skipped from one scenario (a warning; silent when nothing was skipped)."""
    if report:
        log.warning("%s, scenario %s: %s", path, scenario_id, report)


def iter_files(files: Iterable[str | os.PathLike],
               convert: Callable[[str], tuple[RawScenario, ImportReport]]) -> Iterator[RawScenario | RecordError]:
    """Convert one scenario per file with ``convert(path)`` and yield it (logging what was skipped),
    or a ``RecordError`` naming the file when it cannot be read or converted: a ``ScenarioParseError``
    as raised, and any structure error the importer's checks missed as a "malformed scenario"."""
    for file in map(str, files):
        try:
            raw, report = convert(file)
        except ScenarioParseError as e:
            yield RecordError(e)
            continue
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # malformed beyond the checks
            yield RecordError(ScenarioParseError(file, None, None, f"malformed scenario ({type(e).__name__}: {e})"))
            continue
        log_report(file, raw.scenario_id, report)
        yield raw


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Wrap radians to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def tl_state_from_name(name: str) -> TLState:
    """TLState of a WOMD lane-state name in any of its spellings (``LANE_STATE_STOP``, ``stop``,
    ``TRAFFIC_LIGHT_RED``); raises ``KeyError`` naming the value if it is not one of them."""
    key = name.strip().lower()
    key = key[len("lane_state_"):] if key.startswith("lane_state_") else key
    if key not in _TL_STATE_BY_NAME:
        raise KeyError(f"unknown traffic-light state {name!r}")
    return _TL_STATE_BY_NAME[key]


def resample_polyline(points: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Bring an open polyline [P, D] to about ``spacing`` metres between points.

    Dense lines keep every k-th point with k = round(spacing / median step), so WOMD's 0.5 m
    lines keep every second point exactly as the reference packer does; lines sparser than 1.5x
    ``spacing`` are linearly re-interpolated along their arc length (end point kept).
    """
    if len(points) < 3:
        return points.copy()
    steps = np.linalg.norm(np.diff(points[:, :2], axis=0), axis=-1)
    median = float(np.median(steps))
    if median <= 0.0:
        return points.copy()
    if median < 0.75 * spacing:
        return points[:: max(1, round(spacing / median))].copy()
    if median <= 1.5 * spacing:
        return points.copy()
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    samples = np.append(np.arange(0.0, arc[-1], spacing), arc[-1])
    return np.stack([np.interp(samples, arc, points[:, d]) for d in range(points.shape[1])], axis=-1)


def traffic_lights_from_lanes(n_step: int, lanes: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> RawTrafficLights:
    """Pivot per-lane light series to per-step arrays.

    ``lanes`` holds ``(lane_id, state [T] int, stop_point [T, 3])`` with state -1 at steps where the
    lane is not listed. Entry k of every step is lane k.
    """
    if not lanes:
        return RawTrafficLights.empty(n_step)
    state = np.stack([s for _, s, _ in lanes], axis=1).astype(np.int64)
    valid = state >= 0
    stop = np.stack([p for _, _, p in lanes], axis=1).astype(np.float64)
    lane_id = np.broadcast_to(np.array([i for i, _, _ in lanes], np.int64), state.shape).copy()
    return RawTrafficLights(valid=valid, lane_id=np.where(valid, lane_id, 0), state=np.where(valid, state, 0),
                            stop_point=np.where(valid[..., None], stop, 0.0))


def _end_heading(points: np.ndarray, at_start: bool) -> float:
    """Heading of the first (or last) non-degenerate segment of a polyline."""
    seg = np.diff(points[:, :2], axis=0)
    seg = seg[np.linalg.norm(seg, axis=-1) > 1e-6]
    if len(seg) == 0:
        return float("nan")
    v = seg[0] if at_start else seg[-1]
    return float(np.arctan2(v[1], v[0]))


def lane_exits_from_geometry(lanes: Mapping[int, np.ndarray], max_gap: float = EXIT_MAX_GAP_M,
                             max_angle: float = EXIT_MAX_ANGLE_RAD) -> dict[int, list[int]]:
    """Rebuild the lane graph of a map without one: lane A exits into lane B when B starts within
    ``max_gap`` of A's end point and the heading changes by at most ``max_angle`` across the joint.

    ``lanes`` maps lane id -> polyline [P, >=2] (full resolution is best). Every lane gets an entry.
    """
    ids = [i for i, p in lanes.items() if len(p) >= 2]
    exits: dict[int, list[int]] = {i: [] for i in lanes}
    if not ids:
        return exits
    starts = np.stack([lanes[i][0, :2] for i in ids])
    ends = np.stack([lanes[i][-1, :2] for i in ids])
    start_yaw = np.array([_end_heading(lanes[i], True) for i in ids])
    end_yaw = np.array([_end_heading(lanes[i], False) for i in ids])
    gap = np.linalg.norm(ends[:, None] - starts[None], axis=-1)
    turn = np.abs(wrap_angle(start_yaw[None] - end_yaw[:, None]))
    linked = (gap <= max_gap) & (turn <= max_angle)
    np.fill_diagonal(linked, False)
    for a, b in zip(*np.nonzero(linked)):
        exits[ids[a]].append(ids[b])
    return exits


def stop_sign_lanes_from_geometry(position: np.ndarray, lanes: Mapping[int, np.ndarray],
                                  radius: float = STOP_SIGN_RADIUS_M, group: float = STOP_SIGN_GROUP_M) -> list[int]:
    """Lanes a stop sign controls when the source does not say.

    WOMD signs stand beside the stop line, where the controlled lanes begin: take the lane start
    nearest to the sign (if within ``radius``) and every lane starting at most ``group`` metres
    farther from the sign (the lanes branching at the same stop line).
    """
    ids = [i for i, p in lanes.items() if len(p)]
    if not ids:
        return []
    dist = np.array([np.linalg.norm(lanes[i][0, :2] - position[:2]) for i in ids])
    if dist.min() > radius:
        return []
    return [i for i, d in zip(ids, dist) if d <= dist.min() + group]


def relabel_stop_sign_lanes(polylines: Sequence[RawPolyline], controlled: set[int]) -> None:
    """Re-label freeway / surface-street lanes listed by a stop sign as STOP_SIGN (bike lanes keep
    their class), as the reference packer does. Modifies ``polylines`` in place."""
    for pl in polylines:
        if pl.feature_id in controlled and pl.map_type in (MapType.FREEWAY, MapType.SURFACE_STREET):
            pl.map_type = int(MapType.STOP_SIGN)
