"""Cut 91-step scenarios (10 history steps + current + 80 future) out of a recorded SUMO run.

A window is a (self-driving car track, first step) pair: the SDC is a car valid over the whole
window that moves in it. :func:`cut_window` turns a window into a world-frame ``RawScenario``
(agents and map features near the SDC, TL link states) for ``pack_scenario``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from trafficbots_gym.data.constants import N_PL, N_PL_NODE, N_STEP, N_TL_STOP, STEP_CURRENT, AgentType
from trafficbots_gym.data.raw import RawPolyline, RawScenario, RawTracks, RawTrafficLights
from trafficbots_gym.synth.roadmap import RoadMap
from trafficbots_gym.synth.simulate import SimLog, TrackLog

SDC_MAX_LENGTH: float = 5.5
"""Only cars (not vans, trucks, buses) can be the self-driving car."""
SDC_MIN_TRAVEL: float = 2.0
"""The SDC moves at least this far (m) within its window."""
AGENT_RADIUS: float = 80.0
"""Road users are observed while this close (m) to the SDC's path (a sensor range), or closer
when the map is so dense that its 1024 polylines cover less."""
MAP_RADIUS: float = 120.0
"""Map points within this distance (m) of the SDC path are kept (polylines are cut to the span of
their points within it): about the reach of WOMD maps, whose nodes lie within 122 m of the SDC path
in the reference scenes."""
MAX_TRACKS_TO_PREDICT: int = 8
PREDICT_RADIUS: float = 30.0


def candidate_windows(tracks: TrackLog, n_step: int, stride: int = 10) -> np.ndarray:
    """[W, 2] (track, first step) of every window whose SDC is a car valid throughout and moving.

    First steps are taken every ``stride`` steps along each track; the pairs are distinct windows.
    """
    offsets = tracks.offsets
    rows = []
    for i in np.nonzero((tracks.type == AgentType.VEHICLE) & (tracks.size[:, 0] <= SDC_MAX_LENGTH)
                        & (tracks.length >= N_STEP))[0]:
        starts = np.arange(0, tracks.length[i] - N_STEP + 1, stride)
        starts = starts[tracks.start[i] + starts + N_STEP <= n_step]
        if len(starts) == 0:
            continue
        xy = tracks.xy[offsets[i]:offsets[i + 1]]
        travel = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=-1))])
        moving = travel[starts + N_STEP - 1] - travel[starts] >= SDC_MIN_TRAVEL
        rows.append(np.stack([np.full(moving.sum(), i), tracks.start[i] + starts[moving]], axis=-1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def dense_tracks(tracks: TrackLog, t0: int, n_step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray, np.ndarray]:
    """(track indices, valid [N, T], xy [N, T, 2], yaw [N, T], speed [N, T]) of the tracks seen in the window."""
    idx = np.nonzero((tracks.start < t0 + n_step) & (tracks.start + tracks.length > t0))[0]
    offsets = tracks.offsets
    valid = np.zeros((len(idx), n_step), bool)
    xy = np.zeros((len(idx), n_step, 2))
    yaw = np.zeros((len(idx), n_step), np.float32)
    spd = np.zeros((len(idx), n_step), np.float32)
    for row, i in enumerate(idx):
        lo, hi = max(t0, tracks.start[i]), min(t0 + n_step, tracks.start[i] + tracks.length[i])
        src = slice(offsets[i] + lo - tracks.start[i], offsets[i] + hi - tracks.start[i])
        valid[row, lo - t0:hi - t0] = True
        xy[row, lo - t0:hi - t0] = tracks.xy[src]
        yaw[row, lo - t0:hi - t0] = tracks.yaw[src]
        spd[row, lo - t0:hi - t0] = tracks.speed[src]
    return idx, valid, xy, yaw, spd


def cut_window(log: SimLog, road_map: RoadMap, sdc_track: int, t0: int, scenario_id: str) -> RawScenario:
    """The world-frame scenario of steps ``t0 .. t0 + 90`` with ``sdc_track`` as self-driving car."""
    tracks = log.tracks
    idx, valid, xy, yaw, spd = dense_tracks(tracks, t0, N_STEP)
    sdc_row = int(np.nonzero(idx == sdc_track)[0][0])
    if not valid[sdc_row].all():
        raise ValueError(f"{scenario_id}: SDC track {sdc_track} is not valid over steps {t0}..{t0 + N_STEP - 1}")
    sdc_path = xy[sdc_row]
    polylines, mapped_radius = map_near(road_map, sdc_path)
    seen = _min_dist(xy.reshape(-1, 2), sdc_path).reshape(valid.shape) < min(AGENT_RADIUS, mapped_radius)
    valid = valid & seen
    valid[sdc_row] = True
    valid = drop_overlaps(valid, xy, yaw, tracks.size[idx], tracks.type[idx], sdc_row)
    keep = valid.any(1)
    idx, valid, xy, yaw, spd = idx[keep], valid[keep], xy[keep], yaw[keep], spd[keep]
    sdc_row = int(np.nonzero(idx == sdc_track)[0][0])
    n = len(idx)
    vel = spd[..., None] * np.stack([np.cos(yaw), np.sin(yaw)], axis=-1)
    raw_tracks = RawTracks(
        object_id=tracks.object_id[idx].astype(np.int64), type=tracks.type[idx].astype(np.int64), valid=valid,
        pos=np.concatenate([xy, np.zeros((n, N_STEP, 1))], axis=-1) * valid[..., None],
        size=np.broadcast_to(tracks.size[idx][:, None], (n, N_STEP, 3)).astype(np.float32) * valid[..., None],
        heading=(yaw * valid).astype(np.float32), vel=(vel * valid[..., None]).astype(np.float32))
    lane_set = {pl.feature_id for pl in polylines if pl.feature_id in road_map.lane_ids}
    return RawScenario(
        scenario_id=scenario_id, tracks=raw_tracks, sdc_index=sdc_row, polylines=polylines,
        traffic_lights=_traffic_lights(log, road_map, t0, lane_set, sdc_path[STEP_CURRENT]),
        lane_exits={fid: [x for x in road_map.lane_exits.get(fid, []) if x in lane_set] for fid in sorted(lane_set)},
        tracks_to_predict=_tracks_to_predict(valid, xy, sdc_row), current_index=STEP_CURRENT)


def boxes_overlap(xy: np.ndarray, yaw: np.ndarray, size: np.ndarray) -> np.ndarray:
    """[T, N, N] bool: the oriented boxes of road users i != j intersect at step t (separating axes).

    ``xy`` [N, T, 2] box centres, ``yaw`` [N, T], ``size`` [N, >=2] length and width.
    """
    pos = np.swapaxes(xy, 0, 1).astype(np.float32)                     # [T, N, 2]
    heading = np.stack([np.cos(yaw), np.sin(yaw)], -1).swapaxes(0, 1)  # [T, N, 2]
    half = (size[:, :2] / 2).astype(np.float32)                          # [N, 2]
    radius = np.linalg.norm(half, axis=-1)
    dx = pos[:, None, :, 0] - pos[:, :, None, 0]                         # [T, N, N]: centre j - centre i
    dy = pos[:, None, :, 1] - pos[:, :, None, 1]
    near = dx * dx + dy * dy < (radius[:, None] + radius[None]) ** 2
    near &= ~np.eye(len(half), dtype=bool)[None]
    if not near.any():
        return near
    t, i, j = np.nonzero(near)
    u_i, u_j = heading[t, i], heading[t, j]
    v_i, v_j = u_i[:, ::-1] * [-1, 1], u_j[:, ::-1] * [-1, 1]
    dd = np.stack([dx[t, i, j], dy[t, i, j]], -1)
    separated = np.zeros(len(t), bool)
    for axis in (u_i, v_i, u_j, v_j):
        extent_i = half[i, 0] * np.abs((u_i * axis).sum(-1)) + half[i, 1] * np.abs((v_i * axis).sum(-1))
        extent_j = half[j, 0] * np.abs((u_j * axis).sum(-1)) + half[j, 1] * np.abs((v_j * axis).sum(-1))
        separated |= np.abs((dd * axis).sum(-1)) > extent_i + extent_j
    out = np.zeros_like(near)
    out[t, i, j] = ~separated
    return out


def drop_overlaps(valid: np.ndarray, xy: np.ndarray, yaw: np.ndarray, size: np.ndarray, agent_type: np.ndarray,
                  keep_row: int) -> np.ndarray:
    """``valid`` with road users removed from the step where their box overlaps another one onwards.

    SUMO's junction model lets vehicles queued on merging or crossing internal lanes overlap;
    real logs never do. Pairs are resolved in order of their first overlapping step: the member
    with the higher row (never ``keep_row``, the SDC) loses that step and all later ones, so the
    packer's gap interpolation cannot bring the overlap back. Pedestrian pairs may touch (crowds).
    """
    valid = valid.copy()
    rows = np.flatnonzero(valid.any(1))          # users never valid cannot overlap: skip their [T, N, N] work
    sub = valid[rows]
    overlap = boxes_overlap(xy[rows], yaw[rows], size[rows]) & sub.T[:, :, None] & sub.T[:, None, :]
    ped = agent_type[rows] == AgentType.PEDESTRIAN
    overlap &= ~(ped[:, None] & ped[None])[None]
    overlap &= np.triu(np.ones(overlap.shape[1:], bool), 1)[None]
    t, i, j = np.nonzero(overlap)
    for k in np.argsort(t, kind="stable"):
        a, b = int(rows[i[k]]), int(rows[j[k]])
        if valid[a, t[k]] and valid[b, t[k]]:
            victim = a if b == keep_row else b
            valid[victim, t[k]:] = False
    return valid


def _min_dist(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance of each of [P, 2] points to the nearest of [Q, 2] path points, every fifth used (chunked)."""
    out = np.empty(len(points))
    anchors = path[None, ::5]
    for lo in range(0, len(points), 4096):
        d = points[lo:lo + 4096, None] - anchors
        out[lo:lo + 4096] = np.sqrt((d * d).sum(-1).min(1))
    return out


def map_near(road_map: RoadMap, path: np.ndarray) -> tuple[list[RawPolyline], float]:
    """Polylines within MAP_RADIUS of the SDC path, cut to that band, farthest first; and the mapped radius.

    Open polylines keep the span from their first to their last point within MAP_RADIUS; polygons
    and traffic-light controlled lanes (whose start is the stop point) stay whole. The packer prunes
    an oversized map by walking polylines in order and dropping those far from the relevant agents
    until N_PL chunks remain; farthest-first order makes that crop a clean band along the SDC path
    instead of dropping whole feature classes. The mapped radius is the width of that band (distance
    at which the nearest polylines fill N_PL chunks), or MAP_RADIUS.
    """
    keep, dist, chunks = [], [], []
    whole = {int(f) for f in road_map.tl_links.lane_feature}
    lo, hi = path.min(0) - MAP_RADIUS, path.max(0) + MAP_RADIUS
    candidates = [pl for pl in road_map.polylines
                  if not ((pl.points[:, :2].max(0) < lo).any() or (pl.points[:, :2].min(0) > hi).any())]
    if not candidates:
        return [], MAP_RADIUS
    sizes = np.cumsum([len(pl.points) for pl in candidates])[:-1]
    dists = np.split(_min_dist(np.concatenate([pl.points[:, :2] for pl in candidates]), path), sizes)
    for pl, d_pts in zip(candidates, dists):
        near = np.flatnonzero(d_pts < MAP_RADIUS)
        if len(near) == 0:
            continue
        if not pl.is_polygon and pl.feature_id not in whole:
            pl = dataclasses.replace(pl, points=pl.points[near[0]:near[-1] + 1])
        keep.append(pl)
        dist.append(float(d_pts.min()))
        chunks.append(4 if pl.is_polygon else (len(pl.points) - 1) // N_PL_NODE + 1)
    order = np.argsort(dist, kind="stable")
    filled = np.cumsum(np.asarray(chunks)[order]) > N_PL
    radius = float(np.asarray(dist)[order][np.argmax(filled)]) if filled.any() else MAP_RADIUS
    return [keep[k] for k in order[::-1]], radius


def _traffic_lights(log: SimLog, road_map: RoadMap, t0: int, lane_set: set[int],
                    sdc_xy: np.ndarray) -> RawTrafficLights:
    """States of the (at most N_TL_STOP nearest) TL links whose lane is in the map, per step."""
    links = road_map.tl_links
    cols = np.array([k for k in range(len(links.lane_feature)) if int(links.lane_feature[k]) in lane_set], np.int64)
    if len(cols):
        dist = np.linalg.norm(links.stop_point[cols, :2] - sdc_xy, axis=-1)
        cols = cols[np.argsort(dist, kind="stable")[:N_TL_STOP]]
    k = len(cols)
    return RawTrafficLights(
        valid=np.ones((N_STEP, k), bool), lane_id=np.broadcast_to(links.lane_feature[cols], (N_STEP, k)).copy(),
        state=log.tl_state[t0:t0 + N_STEP, cols].astype(np.int64),
        stop_point=np.broadcast_to(links.stop_point[cols], (N_STEP, k, 3)).copy())


def _tracks_to_predict(valid: np.ndarray, xy: np.ndarray, sdc_row: int) -> list[int]:
    """Up to 8 nearest other road users valid throughout the window that move, within 30 m of the SDC."""
    full = valid.all(1)
    travel = np.linalg.norm(xy[:, -1] - xy[:, 0], axis=-1)
    dist = np.linalg.norm(xy[:, STEP_CURRENT] - xy[sdc_row, STEP_CURRENT], axis=-1)
    ok = full & (travel > 1.0) & (dist < PREDICT_RADIUS)
    ok[sdc_row] = False
    rows = np.nonzero(ok)[0]
    return [int(r) for r in rows[np.argsort(dist[rows], kind="stable")][:MAX_TRACKS_TO_PREDICT]]
