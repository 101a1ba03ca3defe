"""``pack_scenario``: a world-frame :class:`RawScenario` to a scene-centric :class:`Scene`.

This is the one packing code path of the project: the WOMD reader, the ScenarioNet / GPUDrive
importers and the SUMO generator all produce a ``RawScenario`` and call :func:`pack_scenario`.
It follows the reference TrafficBots packer (trafficbots_spec.md §1.3) step by step:

1. polygons -> 4 polylines (two opposite sides, both directions, 1 m resampling); polylines cut
   into chunks of <= 20 nodes (``L // 20 + 1`` chunks for ``L`` segments), node = start point +
   unnormalised vector to the next point;
2. agents: wrapped heading, signed speed, mean size, goal (last valid state), trajectory class,
   SDC swapped to index 0;
3. scene frame = SDC pose at step 0 (+ U(+-rand_pos) per axis, + U(+-rand_yaw)); points are
   rotated and shifted, vectors rotated, headings offset by ``wrap(-yaw_ref)``;
4. map filter (bounding box / z range of the relevant agents' history, > 3 nodes, distance halving
   from 500 m down to 1024 polylines), then traffic lights of dropped lanes are removed;
5. agent selection to 64 (the reference's five heuristics; history-based for validation/testing);
6. repacking with gap interpolation (unwrapped yaw) and finite-difference acc / yaw rate,
   destinations by a random lane-graph walk, non-simulated agents, ``map/boundary``.

Deliberate differences from the reference, all for cases where it crashes or is order-dependent:
no scratch capacities (any number of chunks, tracks or lights per step); > 100 ``tl_lane`` entries
or > 40 lights per step are truncated with a warning; > 256 non-simulated agents keep the 256
nearest to the relevant agents with a warning; a destination without any road edge falls back to
the nearest map node; a lane without exits ends the destination walk; the parked-vehicle
heuristic measures each vehicle's own distance to the relevant agents (the reference reuses stale
positions); the trajectory class wraps the heading change; zero-length polygon sides are skipped
instead of producing NaNs; headings are wrapped to [-pi, pi) on input (WOMD stores some
unwrapped); world coordinates stay float64 until the final cast to float32. Every random draw uses
the ``rng`` argument, so packing is deterministic per seed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np

from trafficbots_gym.data import constants as C
from trafficbots_gym.data.raw import RawPolyline, RawScenario
from trafficbots_gym.data.scene import (AgentTracks, MapPolylines, NoSimAgents, Scene, TrafficLightLanes,
                                        TrafficLightStops)

log = logging.getLogger(__name__)

DEFAULT_RAND_POS: float = 50.0
"""Training default of the random scene-frame shift per axis (m)."""
DEFAULT_RAND_YAW: float = 3.14
"""Training default of the random scene-frame rotation (rad)."""
THRESH_MAP: float = 500.0
"""Map crop margin and first distance threshold of the polyline pruning (m)."""
THRESH_MAP_Z: float = 5.0
"""Minimum z margin of the map crop (m)."""
MIN_MAP_POLYLINES: int = 10
"""If the crop leaves fewer polylines, it is undone (WOMD scenes with a z offset)."""
MIN_POLYLINE_NODES: int = 4
"""Polylines with fewer valid nodes are dropped."""
THRESH_AGENT: float = 120.0
"""First distance threshold of the agent pruning (m)."""
STILL_TRAVEL_FULL, STILL_TRAVEL_HISTORY = 2.0, 0.5
"""Agents travelling less (m, summed signed speed x dt over the selection steps) count as still."""
STILL_FAR, PARKED_FAR = 20.0, 10.0
"""Still agents farther (m) from relevant agents and map nodes / parked vehicles farther from
relevant agents (and not on a vehicle lane) are dropped first."""
JITTER_YAW, JITTER_YAW_ALWAYS = 0.5, 1.5
"""Largest per-step heading change (rad) of a slow / of any agent before it counts as jittery."""
JITTER_SLOW_VEHICLE, JITTER_SLOW_OTHER = 6.0, 1.0
"""Travel (m) below which a vehicle / pedestrian or cyclist counts as slow for the jitter rule."""
DEST_HORIZON: float = 5.0
"""Seconds of constant-speed extrapolation of the goal for destination search."""
DEST_LANE_RADIUS: float = 3.0
"""Lane nodes this close to the goal (m) with agreeing heading are destination candidates."""
DEST_MAX_HOPS: int = 3
CMD_STATIONARY_SPEED, CMD_STATIONARY_DISPLACEMENT = 2.0, 5.0
"""Trajectory class thresholds (Waymo's motion_metrics_utils): m/s, m."""
CMD_STRAIGHT_LATERAL, CMD_UTURN_LONGITUDINAL, CMD_STRAIGHT_HEADING = 5.0, -5.0, np.pi / 6
"""m, m, rad."""


class PackingError(ValueError):
    """A raw scenario cannot be packed; names the scenario and the offending field."""

    def __init__(self, scenario_id: str, field: str, message: str) -> None:
        super().__init__(f"scenario {scenario_id!r}, {field}: {message}")
        self.scenario_id, self.field, self.message = scenario_id, field, message


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(angle, np.float64) + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def pack_scenario(raw: RawScenario, split: str, *, rng: np.random.Generator, rand_pos: float | None = None,
                  rand_yaw: float | None = None, dest_extend: bool = True) -> Scene:
    """Pack one scenario into the TrafficBots scene format of ``split``.

    Args:
        raw: world-frame scenario (91 steps with step 10 current; testing needs only steps 0..10).
        split: ``"training"`` (``agent``, ``map``, ``tl_*``; selection on all 91 steps),
            ``"validation"`` (training keys + ``agent_no_sim`` + ``history/*``; selection on the
            history) or ``"testing"`` (``map`` + ``history/*`` only).
        rng: source of every random draw (frame augmentation, destination walks).
        rand_pos: random frame shift per axis (m); ``None`` = 50 for training, off otherwise;
            values <= 0 switch it off.
        rand_yaw: random frame rotation (rad); ``None`` = 3.14 for training, off otherwise.
        dest_extend: extrapolate goals by 5 s at constant speed before the destination search
            (the reference's default; ``False`` = its ``--dest-no-pred``).

    Returns:
        A validated :class:`Scene`. Raises :class:`PackingError` for inputs that cannot be packed.
    """
    if split not in C.SPLITS:
        raise ValueError(f"split must be one of {C.SPLITS}, got {split!r}")
    _check_raw(raw, split)
    training = split == "training"
    rand_pos = (DEFAULT_RAND_POS if training else 0.0) if rand_pos is None else rand_pos
    rand_yaw = (DEFAULT_RAND_YAW if training else 0.0) if rand_yaw is None else rand_yaw

    agents = _agents_from_raw(raw)
    chunks = chunk_polylines(raw.polylines)
    lights = _Lights(raw.traffic_lights.valid.astype(bool), raw.traffic_lights.state.astype(np.int64),
                     raw.traffic_lights.lane_id.astype(np.int64), raw.traffic_lights.stop_point.astype(np.float64))
    center, yaw = _scene_frame(agents, rng, rand_pos, rand_yaw)
    agents.to_frame(center, yaw)
    chunks.to_frame(center, yaw)
    lights.to_frame(center, yaw)

    relevant = agents.role.any(1)
    hist = slice(0, C.N_STEP_HISTORY)
    ref_3d = agents.pos[relevant, hist][agents.valid[relevant, hist]]
    chunks.valid = filter_map(chunks, ref_3d)
    map_ = _reduce_map(chunks)
    with_map = bool(map_.valid.any())
    if not with_map and split != "testing":
        raise PackingError(raw.scenario_id, "polylines", "no map polyline near the relevant agents "
                                                         "(only testing scenes may be map-less)")
    lights.valid &= np.isin(lights.lane_id, map_.id[map_.valid.any(1)])

    sel_steps = slice(0, raw.num_steps) if training else hist
    if with_map:
        sim = _select_agents(agents, sel_steps, map_, training)
    else:
        sim = _select_first(agents, sel_steps)
    views: dict[str, AgentTracks | NoSimAgents | TrafficLightLanes | TrafficLightStops] = {}
    if split != "testing":
        full = slice(0, C.N_STEP)
        targets = _targets(agents, sim, map_, raw.lane_exits, rng, dest_extend)
        views["agent"] = _agent_view(agents, sim, full, targets)
        views["tl_lane"], views["tl_stop"] = _light_views(lights, full, map_, raw.scenario_id)
    if split != "training":
        no_sim = _no_sim_agents(agents, sim, sel_steps, raw.scenario_id)
        views["history_agent"] = _agent_view(agents, sim, hist)
        views["history_agent_no_sim"] = _no_sim_view(agents, no_sim, hist)
        views["history_tl_lane"], views["history_tl_stop"] = _light_views(lights, hist, map_, raw.scenario_id)
        if split == "validation":
            views["agent_no_sim"] = _no_sim_view(agents, no_sim, slice(0, C.N_STEP))
    map_.boundary = _boundary(map_, agents, hist)
    scene = Scene(scenario_id=raw.scenario_id, map=map_, scenario_center=center.astype(np.float32),
                  scenario_yaw=float(yaw), with_map=with_map, **views)  # type: ignore[arg-type]
    return scene.validate()


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


_AGENT_TYPES = [int(v) for v in C.AgentType]
_MAP_TYPES = frozenset(int(v) for v in C.MapType)
_TL_STATES = [int(v) for v in C.TLState]


def _check_raw(raw: RawScenario, split: str) -> None:
    sid, tr = raw.scenario_id, raw.tracks
    n, t = tr.valid.shape if tr.valid.ndim == 2 else (-1, -1)
    if n < 1:
        raise PackingError(sid, "tracks.valid", f"expected [N >= 1, T] bool, got shape {tr.valid.shape}")
    shapes = {"object_id": (n,), "type": (n,), "pos": (n, t, 3), "size": (n, t, 3), "heading": (n, t),
              "vel": (n, t, 2)}
    for name, shape in shapes.items():
        if getattr(tr, name).shape != shape:
            raise PackingError(sid, f"tracks.{name}", f"shape {getattr(tr, name).shape}, expected {shape}")
    if raw.current_index != C.STEP_CURRENT:
        raise PackingError(sid, "current_index", f"{raw.current_index}, expected {C.STEP_CURRENT}")
    if split == "testing" and t < C.N_STEP_HISTORY:
        raise PackingError(sid, "tracks", f"{t} steps, testing needs at least {C.N_STEP_HISTORY}")
    if split != "testing" and t != C.N_STEP:
        raise PackingError(sid, "tracks", f"{t} steps, {split} needs exactly {C.N_STEP}")
    bad_type = ~np.isin(tr.type, _AGENT_TYPES)
    if bad_type.any():
        i = int(np.flatnonzero(bad_type)[0])
        raise PackingError(sid, f"tracks.type[{i}]", f"unknown agent type {tr.type[i]} (expected 0, 1 or 2)")
    if not 0 <= raw.sdc_index < n:
        raise PackingError(sid, "sdc_index", f"{raw.sdc_index} out of range for {n} tracks")
    for name in ("objects_of_interest", "tracks_to_predict"):
        bad = [i for i in getattr(raw, name) if not 0 <= i < n]
        if bad:
            raise PackingError(sid, name, f"track indices {bad} out of range for {n} tracks")
    relevant = {raw.sdc_index, *raw.objects_of_interest, *raw.tracks_to_predict}
    if len(relevant) > C.N_AGENT:
        raise PackingError(sid, "tracks_to_predict", f"{len(relevant)} relevant agents (SDC, interest, predict), "
                                                     f"at most {C.N_AGENT} can be simulated")
    if not tr.valid[raw.sdc_index, :C.N_STEP_HISTORY].any():
        raise PackingError(sid, "sdc_index", "the SDC is not observed in the history steps")
    v = tr.valid
    for name in ("pos", "heading", "vel", "size"):
        value = getattr(tr, name)
        if not np.isfinite(value[v]).all():
            raise PackingError(sid, f"tracks.{name}", "non-finite values at valid steps")
    for i, pl in enumerate(raw.polylines):
        if pl.map_type not in _MAP_TYPES:
            raise PackingError(sid, f"polylines[{i}].map_type", f"unknown map type {pl.map_type}")
        if pl.points.ndim != 2 or pl.points.shape[1] != 3 or not np.isfinite(pl.points).all():
            raise PackingError(sid, f"polylines[{i}].points", f"expected finite [P, 3], got shape {pl.points.shape}")
    tl = raw.traffic_lights
    if tl.valid.shape[0] != t or tl.state.shape != tl.valid.shape or tl.lane_id.shape != tl.valid.shape \
            or tl.stop_point.shape != tl.valid.shape + (3,):
        raise PackingError(sid, "traffic_lights", f"shapes valid {tl.valid.shape}, state {tl.state.shape}, "
                                                  f"lane_id {tl.lane_id.shape}, stop_point {tl.stop_point.shape} "
                                                  f"do not match {t} steps")
    if tl.valid.any() and (not np.isin(tl.state[tl.valid], _TL_STATES).all()
                           or not np.isfinite(tl.stop_point[tl.valid]).all()):
        raise PackingError(sid, "traffic_lights", "unknown state or non-finite stop point at a valid entry")


# --------------------------------------------------------------------------------------------------
# Agents in [N, T] layout, SDC first
# --------------------------------------------------------------------------------------------------


@dataclass
class _Agents:
    """All tracks (SDC at index 0): per-step arrays [N, T, ...] (zero where invalid), attributes [N, ...]."""

    valid: np.ndarray
    pos: np.ndarray   # [N, T, 3] x, y, z
    vel: np.ndarray   # [N, T, 2]
    yaw: np.ndarray   # [N, T] wrapped to [-pi, pi) in the world frame, offset in the scene frame
    spd: np.ndarray   # [N, T] signed speed
    object_id: np.ndarray
    type: np.ndarray  # [N] AgentType
    role: np.ndarray  # [N, 3] bool
    size: np.ndarray  # [N, 3] mean length, width, height

    def to_frame(self, center: np.ndarray, yaw: float) -> None:
        """Move into the scene frame whose origin is ``center`` and x axis has heading ``yaw``."""
        v = self.valid
        self.pos[..., :2] = np.where(v[..., None], _rotate(self.pos[..., :2] - center, -yaw), 0.0)
        self.vel = np.where(v[..., None], _rotate(self.vel, -yaw), 0.0)
        self.yaw = np.where(v, self.yaw + wrap_angle(-yaw), 0.0)


def _agents_from_raw(raw: RawScenario) -> _Agents:
    """World-frame agents with wrapped headings, signed speed, mean size and roles; SDC swapped to 0."""
    tr = raw.tracks
    n = tr.num_tracks
    order = np.arange(n)
    order[[0, raw.sdc_index]] = order[[raw.sdc_index, 0]]
    valid = tr.valid[order].astype(bool)
    vmask = valid[..., None]
    pos = np.where(vmask, tr.pos[order].astype(np.float64), 0.0)
    vel = np.where(vmask, tr.vel[order].astype(np.float64), 0.0)
    yaw = np.where(valid, wrap_angle(tr.heading[order]), 0.0)
    along = np.cos(yaw) * vel[..., 0] + np.sin(yaw) * vel[..., 1]
    spd = np.linalg.norm(vel, axis=-1) * np.sign(along)
    count = valid.sum(1, keepdims=True)
    size = np.where(vmask, tr.size[order].astype(np.float64), 0.0).sum(1) / np.maximum(count, 1)
    role = np.zeros((n, C.N_AGENT_ROLE), bool)
    role[raw.sdc_index, C.AgentRole.SDC] = True
    role[list(raw.objects_of_interest), C.AgentRole.INTEREST] = True
    role[list(raw.tracks_to_predict), C.AgentRole.PREDICT] = True
    return _Agents(valid=valid, pos=pos, vel=vel, yaw=yaw, spd=spd, object_id=tr.object_id[order].astype(np.int64),
                   type=tr.type[order].astype(np.int64), role=role[order], size=size.astype(np.float32))


def _rotate(xy: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], axis=-1)


def _scene_frame(agents: _Agents, rng: np.random.Generator, rand_pos: float,
                 rand_yaw: float) -> tuple[np.ndarray, float]:
    """Reference pose: the SDC at step 0 (its first observed step if step 0 is missing), plus noise.

    Rounded to float32 so that the stored ``scenario_center`` / ``scenario_yaw`` reproduce the exact
    transform.
    """
    step = int(np.argmax(agents.valid[0]))
    center = agents.pos[0, step, :2].copy()
    yaw = float(agents.yaw[0, step])
    if rand_pos > 0:
        center += rng.uniform(-rand_pos, rand_pos, size=2)
    if rand_yaw > 0:
        yaw += float(rng.uniform(-rand_yaw, rand_yaw))
    return center.astype(np.float32).astype(np.float64), float(np.float32(yaw))


def _first_last(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first and last True along the last axis (0 and T-1 for all-False rows)."""
    first = valid.argmax(-1)
    last = valid.shape[-1] - 1 - valid[..., ::-1].argmax(-1)
    return first, last


def _endpoints(agents: _Agents, idx: np.ndarray, steps: slice) -> tuple[np.ndarray, np.ndarray]:
    """xy of the first and last valid step (within ``steps``) of agents ``idx``: two [n, 2]."""
    first, last = _first_last(agents.valid[idx, steps])
    pos = agents.pos[idx, steps, :2]
    rows = np.arange(len(idx))
    return pos[rows, first], pos[rows, last]


def _min_dist(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[n] distance from each of ``points`` [n, D] to its nearest ``ref`` [m, D] (inf if m == 0)."""
    if len(ref) == 0 or len(points) == 0:
        return np.full(len(points), np.inf)
    out = np.empty(len(points))
    block = max(1, 2_000_000 // len(ref))
    for i in range(0, len(points), block):
        d2 = ((points[i:i + block, None, :] - ref[None, :, :]) ** 2).sum(-1)
        out[i:i + block] = np.sqrt(d2.min(1))
    return out


def _drop_first(keep: np.ndarray, candidates: np.ndarray, n_keep: int) -> None:
    """Drop candidates in index order while more than ``n_keep`` entries are kept (in place)."""
    excess = int(keep.sum()) - n_keep
    if excess > 0:
        keep[np.flatnonzero(candidates & keep)[:excess]] = False


# --------------------------------------------------------------------------------------------------
# Map: polygons, chunks, filter, reduction
# --------------------------------------------------------------------------------------------------


@dataclass
class Chunks:
    """Polyline chunks before reduction: ``valid`` [P, 20], ``pos`` / ``dir`` [P, 20, 3], ``type`` / ``id`` [P]."""

    valid: np.ndarray
    pos: np.ndarray
    dir: np.ndarray
    type: np.ndarray
    id: np.ndarray

    def to_frame(self, center: np.ndarray, yaw: float) -> None:
        """Move valid nodes into the scene frame (points shifted and rotated, vectors rotated)."""
        v = self.valid[..., None]
        self.pos[..., :2] = np.where(v, _rotate(self.pos[..., :2] - center, -yaw), 0.0)
        self.dir[..., :2] = np.where(v, _rotate(self.dir[..., :2], -yaw), 0.0)


def polygon_to_polylines(polygon: np.ndarray) -> list[np.ndarray]:
    """The reference's 4 polylines of a polygon ring [P, 3].

    Four vertices at evenly spaced indices; the two opposite sides along the longer direction
    (0->1 and 2->3 if |p1 - p0| > |p2 - p1|, else 0->3 and 2->1), each resampled every metre plus
    its end point and emitted in both directions. Zero-length sides are skipped.
    """
    if len(polygon) == 0:
        return []
    quad = polygon[np.linspace(0, len(polygon), 4, endpoint=False, dtype=int)]
    if np.linalg.norm(quad[1, :2] - quad[0, :2]) > np.linalg.norm(quad[2, :2] - quad[1, :2]):
        sides = [(quad[0], quad[1]), (quad[2], quad[3])]
    else:
        sides = [(quad[0], quad[3]), (quad[2], quad[1])]
    out = []
    for start, end in sides:
        length = float(np.linalg.norm(end - start))
        if length < 1e-6:
            continue
        steps = np.arange(int(length) + 1, dtype=np.float64)[:, None]
        side = np.concatenate([start + (end - start) / length * steps, end[None]])
        out += [side, side[::-1].copy()]
    return out


def chunk_polylines(polylines: list[RawPolyline], n_node: int = C.N_PL_NODE) -> Chunks:
    """Cut every polyline into chunks of at most ``n_node`` nodes (polygons first become polylines).

    A polyline of ``L`` segments gives ``L // n_node + 1`` chunks with cuts at
    ``int(k * L / n_chunks)``; node ``j`` of a chunk holds point ``j`` and the vector to point
    ``j + 1``, so the last point of a polyline is reachable only as ``pos + dir`` of its last node.
    """
    points, types, ids = [], [], []
    for pl in polylines:
        parts = polygon_to_polylines(pl.points) if pl.is_polygon else [pl.points]
        for p in parts:
            if len(p) >= 2:
                points.append(np.asarray(p, np.float64))
                types.append(pl.map_type)
                ids.append(pl.feature_id)
    if not points:
        return Chunks(np.zeros((0, n_node), bool), np.zeros((0, n_node, 3)), np.zeros((0, n_node, 3)),
                      np.zeros(0, np.int64), np.zeros(0, np.int64))
    seg = np.array([len(p) - 1 for p in points])
    offset = np.concatenate([[0], np.cumsum(seg + 1)[:-1]])
    allp = np.concatenate(points)
    alld = np.diff(allp, axis=0, append=allp[-1:])
    n_chunk = seg // n_node + 1
    owner = np.repeat(np.arange(len(points)), n_chunk)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(n_chunk) - n_chunk, n_chunk)
    step = seg[owner] / n_chunk[owner]
    start = (k * step).astype(np.int64)
    end = np.where(k + 1 == n_chunk[owner], seg[owner], ((k + 1) * step).astype(np.int64))
    j = np.arange(n_node)
    valid = j[None] < (end - start)[:, None]
    node = np.where(valid, offset[owner, None] + start[:, None] + j[None], 0)
    return Chunks(valid=valid, pos=np.where(valid[..., None], allp[node], 0.0),
                  dir=np.where(valid[..., None], alld[node], 0.0),
                  type=np.asarray(types, np.int64)[owner], id=np.asarray(ids, np.int64)[owner])


def filter_map(chunks: Chunks, ref: np.ndarray, n_pl: int = C.N_PL) -> np.ndarray:
    """Node validity after the reference map filter; ``ref`` [R, 3] = relevant agents' history.

    Crop to the bounding box of ``ref`` grown by max(extent, 500 m) and its z range grown by
    max(extent, 5 m) (undone if < 10 polylines survive), drop polylines with <= 3 nodes, then,
    while more than ``n_pl`` remain, drop (in index order, stopping at exactly ``n_pl``) those
    whose first and last valid nodes are both >= d from every ``ref`` point, halving d from 500 m.
    """
    valid = chunks.valid.copy()
    if len(ref) == 0 or not valid.any():
        return valid
    lo, hi = ref.min(0), ref.max(0)
    margin = np.maximum(hi - lo, [THRESH_MAP, THRESH_MAP, THRESH_MAP_Z])
    p = chunks.pos
    crop = valid & ((p > lo - margin) & (p < hi + margin)).all(-1)
    if crop.any(1).sum() >= MIN_MAP_POLYLINES:
        valid = crop
    valid &= (valid.sum(1) >= MIN_POLYLINE_NODES)[:, None]
    keep = valid.any(1)
    if keep.sum() <= n_pl:
        return valid
    idx = np.flatnonzero(keep)
    first, last = _first_last(valid[idx])
    dist = np.minimum(_min_dist(p[idx, first], ref), _min_dist(p[idx, last], ref))
    near = np.full(len(valid), np.inf)
    near[idx] = dist
    thresh = THRESH_MAP
    while keep.sum() > n_pl:
        _drop_first(keep, near >= thresh, n_pl)
        thresh *= 0.5
    return valid & keep[:, None]


def _reduce_map(chunks: Chunks, n_pl: int = C.N_PL) -> MapPolylines:
    """Compact the surviving chunks into the fixed [1024, 20] arrays (xy only, one-hot type)."""
    keep = np.flatnonzero(chunks.valid.any(1))[:n_pl]
    n = len(keep)
    m = MapPolylines(valid=np.zeros((n_pl, C.N_PL_NODE), bool), type=np.zeros((n_pl, C.N_PL_TYPE), bool),
                     pos=np.zeros((n_pl, C.N_PL_NODE, 2), np.float32), dir=np.zeros((n_pl, C.N_PL_NODE, 2), np.float32),
                     id=np.full(n_pl, -1, np.int64), boundary=np.zeros(4, np.float32))
    m.valid[:n] = chunks.valid[keep]
    m.type[np.arange(n), chunks.type[keep]] = True
    m.pos[:n] = chunks.pos[keep, :, :2]
    m.dir[:n] = chunks.dir[keep, :, :2]
    m.id[:n] = chunks.id[keep]
    return m


def _boundary(map_: MapPolylines, agents: _Agents, hist: slice) -> np.ndarray:
    """[xmin, xmax, ymin, ymax] of the valid map nodes, or of the history positions without a map."""
    pts = map_.pos[map_.valid] if map_.valid.any() else agents.pos[:, hist, :2][agents.valid[:, hist]]
    return np.array([pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()], np.float32)


class _LaneNodes:
    """Valid nodes of some map classes, flattened in map order: xy, unit direction, polyline, feature id.

    Nodes are also kept sorted by x so that radius queries only look at a narrow x window.
    """

    def __init__(self, map_: MapPolylines, classes: tuple[int, ...]) -> None:
        mask = map_.type[:, list(classes)].any(1, keepdims=True) & map_.valid
        d = map_.dir[mask].astype(np.float64)
        self.dir = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
        self.pl = np.broadcast_to(np.arange(len(mask))[:, None], mask.shape)[mask]
        self.id = map_.id[self.pl]
        self.pos = map_.pos[mask].astype(np.float64)
        self._by_x = np.argsort(self.pos[:, 0], kind="stable")
        self._x_sorted = self.pos[self._by_x, 0]

    def __len__(self) -> int:
        return len(self.pos)

    def nearest(self, xy: np.ndarray, heading: np.ndarray | None = None, radius: float = np.inf) -> int | None:
        """Index of the node nearest to ``xy`` (first in map order on ties), optionally only among
        nodes closer than ``radius`` whose direction agrees with ``heading`` (dot product > 0)."""
        if np.isfinite(radius):
            lo, hi = np.searchsorted(self._x_sorted, [xy[0] - radius, xy[0] + radius])
            cand = np.sort(self._by_x[lo:hi])
        else:
            cand = np.arange(len(self.pos))
        delta = self.pos[cand] - xy
        dist = np.sqrt(delta[:, 0] ** 2 + delta[:, 1] ** 2)
        ok = dist < radius
        if heading is not None:
            ok &= self.dir[cand] @ heading > 0
        if not ok.any():
            return None
        return int(cand[ok][np.argmin(dist[ok])])


# --------------------------------------------------------------------------------------------------
# Agent selection
# --------------------------------------------------------------------------------------------------


def _select_agents(agents: _Agents, steps: slice, map_: MapPolylines, training: bool,
                  n_agent: int = C.N_AGENT) -> np.ndarray:
    """[N] mask of the (<= ``n_agent``) simulated agents, by the reference heuristics on ``steps``.

    Relevant agents (any role) always stay. While more than ``n_agent`` remain: drop agents unseen
    in the history; still agents (travel < 2 m, < 0.5 m on history) > 20 m from relevant agents and
    map nodes; still vehicles not on a vehicle lane and > 10 m from relevant agents; for training,
    agents with jittery yaw (all of them); then distance pruning like the map, halving from 120 m.
    """
    relevant = agents.role.any(1)
    valid = agents.valid[:, steps]
    ref = agents.pos[relevant, steps, :2][valid[relevant]]
    travel = agents.spd[:, steps].sum(1) * C.DT
    still = (travel < (STILL_TRAVEL_FULL if training else STILL_TRAVEL_HISTORY)) & ~relevant
    keep = valid.any(1) & (relevant | valid[:, :C.N_STEP_HISTORY].any(1))

    if keep.sum() > n_agent:  # still agents far from everything
        cand = np.flatnonzero(still & keep)
        start, end = _endpoints(agents, cand, steps)
        nodes = map_.pos[map_.valid].astype(np.float64)
        far = ((_min_dist(start, ref) > STILL_FAR) & (_min_dist(end, ref) > STILL_FAR)
               & (_min_dist(start, nodes) > STILL_FAR) & (_min_dist(end, nodes) > STILL_FAR))
        _drop_first(keep, _mask(len(keep), cand[far]), n_agent)

    if keep.sum() > n_agent:  # parked vehicles off the vehicle lanes
        cand = np.flatnonzero(still & keep & (agents.type == C.AgentType.VEHICLE))
        start, end = _endpoints(agents, cand, steps)
        last = _first_last(valid[cand])[1]
        heading = agents.yaw[cand, steps][np.arange(len(cand)), last]
        lanes = _LaneNodes(map_, C.VEHICLE_LANE_TYPES)
        off_lane = np.array([lanes.nearest(e, np.array([np.cos(h), np.sin(h)]), DEST_LANE_RADIUS) is None
                             for e, h in zip(end, heading)], bool)
        far = (_min_dist(start, ref) > PARKED_FAR) & (_min_dist(end, ref) > PARKED_FAR) & off_lane
        _drop_first(keep, _mask(len(keep), cand[far]), n_agent)

    if training and keep.sum() > n_agent:  # jittery headings
        both = (valid[:, :-1] & valid[:, 1:]) & keep[:, None]
        jump = np.where(both, np.abs(wrap_angle(np.diff(agents.yaw[:, steps], axis=1))), 0.0).max(1, initial=0.0)
        slow = travel < np.where(agents.type == C.AgentType.VEHICLE, JITTER_SLOW_VEHICLE, JITTER_SLOW_OTHER)
        keep &= ~(((slow & (jump > JITTER_YAW)) | (jump > JITTER_YAW_ALWAYS)) & ~relevant)

    if keep.sum() > n_agent:  # distance pruning
        idx = np.flatnonzero(keep)
        start, end = _endpoints(agents, idx, steps)
        near = np.full(len(keep), np.inf)
        near[idx] = np.minimum(_min_dist(start, ref), _min_dist(end, ref))
        thresh = THRESH_AGENT
        while keep.sum() > n_agent:
            _drop_first(keep, (near >= thresh) & ~relevant, n_agent)
            thresh *= 0.5
    return keep


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    out = np.zeros(n, bool)
    out[idx] = True
    return out


def _select_first(agents: _Agents, steps: slice, n_agent: int = C.N_AGENT) -> np.ndarray:
    """Map-less (testing) selection: relevant agents, then the first observed agents in track order."""
    seen = agents.valid[:, steps].any(1)
    keep = seen & agents.role.any(1)
    keep[np.flatnonzero(seen & ~keep)[:n_agent - int(keep.sum())]] = True
    return keep


def _no_sim_agents(agents: _Agents, sim: np.ndarray, steps: slice, scenario_id: str,
                   n_max: int = C.N_AGENT_NO_SIM) -> np.ndarray:
    """Track indices of the observed, non-simulated agents (the ``n_max`` nearest if more)."""
    idx = np.flatnonzero(agents.valid[:, steps].any(1) & ~sim)
    if len(idx) <= n_max:
        return idx
    relevant = agents.role.any(1)
    ref = agents.pos[relevant, steps, :2][agents.valid[relevant, steps]]
    start, end = _endpoints(agents, idx, steps)
    dist = np.minimum(_min_dist(start, ref), _min_dist(end, ref))
    log.warning("scenario %s: %d non-simulated agents, keeping the %d nearest to the relevant agents",
                scenario_id, len(idx), n_max)
    return np.sort(idx[np.argsort(dist, kind="stable")[:n_max]])


# --------------------------------------------------------------------------------------------------
# Agent views
# --------------------------------------------------------------------------------------------------


def interpolate_gaps(valid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation over [A, T, C] between each agent's first and last valid step.

    Returns (valid, values): valid becomes contiguous, values are zero outside it.
    """
    t = np.arange(valid.shape[1])
    prev = np.maximum.accumulate(np.where(valid, t, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(valid, t, valid.shape[1])[:, ::-1], axis=1)[:, ::-1]
    filled = (prev >= 0) & (nxt < valid.shape[1])
    lo, hi = np.clip(prev, 0, None), np.clip(nxt, None, valid.shape[1] - 1)
    rows = np.arange(valid.shape[0])[:, None]
    v_lo, v_hi = values[rows, lo], values[rows, hi]
    span = np.where(hi > lo, hi - lo, 1)[..., None]
    out = v_lo + (v_hi - v_lo) / span * (t[None, :, None] - lo[..., None])
    return filled, np.where(filled[..., None], out, 0.0)


def unwrap_valid(yaw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``np.unwrap`` of each row of [A, T] over its valid entries only (invalid entries kept)."""
    t = np.arange(yaw.shape[1])
    prev = np.maximum.accumulate(np.where(valid, t, -1), axis=1)
    prev_valid = np.concatenate([np.full((yaw.shape[0], 1), -1), prev[:, :-1]], axis=1)
    has_prev = valid & (prev_valid >= 0)
    rows = np.arange(yaw.shape[0])[:, None]
    dd = np.where(has_prev, yaw - yaw[rows, np.clip(prev_valid, 0, None)], 0.0)
    ddmod = np.mod(dd + np.pi, 2 * np.pi) - np.pi
    ddmod = np.where((ddmod == -np.pi) & (dd > 0), np.pi, ddmod)
    correction = np.where(np.abs(dd) < np.pi, 0.0, ddmod - dd)
    return yaw + np.cumsum(correction, axis=1)


def _agent_view(agents: _Agents, sim: np.ndarray, steps: slice,
                targets: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                n_agent: int = C.N_AGENT) -> AgentTracks:
    """Simulated agents over ``steps`` with gaps interpolated and finite-difference acc / yaw rate;
    ``targets`` = (cmd, goal, dest) of the full view."""
    idx = np.flatnonzero(sim)
    valid = agents.valid[idx, steps]
    yaw = unwrap_valid(agents.yaw[idx, steps], valid)
    raw = np.concatenate([agents.pos[idx, steps], agents.vel[idx, steps], agents.spd[idx, steps, None],
                          yaw[..., None]], axis=-1)
    filled, val = interpolate_gaps(valid, raw)
    pair = filled[:, 1:] & filled[:, :-1]
    rate = np.zeros_like(val[..., 5:7])
    rate[:, 1:] = np.where(pair[..., None], np.diff(val[..., 5:7], axis=1) / C.DT, 0.0)
    step = partial(_time_major, width=n_agent)
    role = _padded(agents.role[idx], n_agent, False)
    return AgentTracks(valid=_time_major(filled, n_agent, bool), pos=step(val[..., 0:2]), z=step(val[..., 2:3]),
                       vel=step(val[..., 3:5]), spd=step(val[..., 5:6]), acc=step(rate[..., 0:1]),
                       yaw_bbox=step(val[..., 6:7]), yaw_rate=step(rate[..., 1:2]), role=role,
                       **_attributes(agents, idx, n_agent), **dict(zip(("cmd", "goal", "dest"), targets or ())))


def _no_sim_view(agents: _Agents, idx: np.ndarray, steps: slice, n_max: int = C.N_AGENT_NO_SIM) -> NoSimAgents:
    """Raw (not interpolated) states of the non-simulated agents ``idx`` over ``steps``."""
    def step(x: np.ndarray) -> np.ndarray:
        return _time_major(x[idx, steps], n_max)

    return NoSimAgents(valid=_time_major(agents.valid[idx, steps], n_max, bool), pos=step(agents.pos[..., :2]),
                       z=step(agents.pos[..., 2:3]), vel=step(agents.vel), spd=step(agents.spd[..., None]),
                       yaw_bbox=step(agents.yaw[..., None]), **_attributes(agents, idx, n_max))


def _padded(x: np.ndarray, width: int, fill: float | bool | int = 0) -> np.ndarray:
    """``x`` [n, ...] padded with ``fill`` to [width, ...]."""
    out = np.full((width,) + x.shape[1:], fill, x.dtype)
    out[: len(x)] = x
    return out


def _time_major(x: np.ndarray, width: int, dtype: type = np.float32) -> np.ndarray:
    """[n, T, ...] per-agent series -> zero-padded [T, width, ...] of ``dtype``."""
    return np.ascontiguousarray(_padded(x.astype(dtype), width).swapaxes(0, 1))


def _attributes(agents: _Agents, idx: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """object_id (-1 padding), one-hot type and mean size of agents ``idx``, padded to ``width``."""
    types = np.zeros((len(idx), C.N_AGENT_TYPE), bool)
    types[np.arange(len(idx)), agents.type[idx]] = True
    return {"object_id": _padded(agents.object_id[idx], width, -1), "type": _padded(types, width, False),
            "size": _padded(agents.size[idx], width)}


# --------------------------------------------------------------------------------------------------
# Targets: goal, trajectory class, destination
# --------------------------------------------------------------------------------------------------


def classify_trajectories(valid: np.ndarray, pos: np.ndarray, yaw: np.ndarray, spd: np.ndarray) -> np.ndarray:
    """Waymo's trajectory-type classifier (AgentCmd) per row of [A, T] (first/last valid sample).

    Rows without a valid sample are STATIONARY. The heading change is wrapped to [-pi, pi).
    """
    first, last = _first_last(valid)
    rows = np.arange(len(valid))
    delta = pos[rows, last] - pos[rows, first]
    displacement = np.linalg.norm(delta, axis=-1)
    c, s = np.cos(-yaw[rows, first]), np.sin(-yaw[rows, first])
    lon = delta[:, 0] * c - delta[:, 1] * s
    lat = delta[:, 0] * s + delta[:, 1] * c
    turn = wrap_angle(yaw[rows, last] - yaw[rows, first])
    speed = np.maximum(spd[rows, first], spd[rows, last])
    u_turn = lon < CMD_UTURN_LONGITUDINAL
    cmd = np.where(u_turn, C.AgentCmd.LEFT_U_TURN, C.AgentCmd.LEFT_TURN)
    cmd = np.where((turn < -CMD_STRAIGHT_HEADING) & (lat < 0),
                   np.where(u_turn, C.AgentCmd.RIGHT_U_TURN, C.AgentCmd.RIGHT_TURN), cmd)
    straight = np.where(np.abs(lat) < CMD_STRAIGHT_LATERAL, C.AgentCmd.STRAIGHT,
                        np.where(lat > 0, C.AgentCmd.STRAIGHT_LEFT, C.AgentCmd.STRAIGHT_RIGHT))
    cmd = np.where(np.abs(turn) < CMD_STRAIGHT_HEADING, straight, cmd)
    stationary = ((speed < CMD_STATIONARY_SPEED) & (displacement < CMD_STATIONARY_DISPLACEMENT)) | ~valid.any(1)
    return np.where(stationary, C.AgentCmd.STATIONARY, cmd).astype(np.int64)


def _targets(agents: _Agents, sim: np.ndarray, map_: MapPolylines, lane_exits: dict[int, list[int]],
             rng: np.random.Generator, extend: bool,
             n_agent: int = C.N_AGENT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cmd`` [64, 8], ``goal`` [64, 4] (last valid raw x, y, yaw, spd) and ``dest`` [64]."""
    idx = np.flatnonzero(sim)
    n = len(idx)
    valid = agents.valid[idx, :C.N_STEP]
    last = _first_last(valid)[1]
    rows = np.arange(n)
    goal = np.zeros((n_agent, 4), np.float32)
    goal[:n] = np.concatenate([agents.pos[idx, last, :2], agents.yaw[idx, last, None], agents.spd[idx, last, None]], -1)
    fut = slice(C.STEP_CURRENT, C.N_STEP)
    cls = classify_trajectories(agents.valid[idx, fut], agents.pos[idx, fut, :2], agents.yaw[idx, fut],
                                agents.spd[idx, fut])
    cmd = np.zeros((n_agent, C.N_AGENT_CMD), bool)
    cmd[rows, cls] = True
    finder = DestinationFinder(map_, lane_exits, rng, extend)
    dest = np.zeros(n_agent, np.int64)
    dest[:n] = [finder(int(agents.type[i]), goal[k].astype(np.float64)) for k, i in enumerate(idx)]
    return cmd, goal, dest


class DestinationFinder:
    """The reference's destination rule on a reduced map (polyline index in [0, 1024)).

    * vehicle: vehicle-lane nodes within 3 m of the goal with agreeing heading -> from the nearest
      one's lane, walk the lane graph choosing random exits (stop when the next lane is not a
      vehicle lane of the map, at a branch after the first hop, or after 3 hops); the destination
      is the last chunk of the final lane. Else the road-edge boundary node nearest the extended goal.
    * pedestrian: road-edge boundary node nearest the extended goal.
    * cyclist: bike-lane node within 3 m of the extended goal with agreeing heading, else as pedestrian.

    The extended goal is the goal moved 5 s along its heading at its speed (if ``extend``). Without
    any road-edge boundary the nearest valid node of any class is used, and 0 without a map.
    """

    def __init__(self, map_: MapPolylines, lane_exits: dict[int, list[int]], rng: np.random.Generator,
                 extend: bool = True) -> None:
        self.vehicle = _LaneNodes(map_, C.VEHICLE_LANE_TYPES)
        self.bike = _LaneNodes(map_, (C.MapType.BIKE_LANE,))
        self.edge = _LaneNodes(map_, (C.MapType.ROAD_EDGE_BOUNDARY,))
        self.map, self.lane_exits, self.rng, self.extend = map_, lane_exits, rng, extend
        ids, first_from_end = np.unique(self.vehicle.id[::-1], return_index=True)
        last = len(self.vehicle.id) - 1 - first_from_end
        self.last_chunk: dict[int, int] = dict(zip(ids.tolist(), self.vehicle.pl[last].tolist()))
        """Feature id of every vehicle lane of the map -> index of its last chunk."""

    def __call__(self, agent_type: int, goal: np.ndarray) -> int:
        heading = np.array([np.cos(goal[2]), np.sin(goal[2])])
        target = goal[:2] + heading * goal[3] * DEST_HORIZON if self.extend else goal[:2]
        if agent_type == C.AgentType.VEHICLE:
            node = self.vehicle.nearest(goal[:2], heading, DEST_LANE_RADIUS)
            if node is not None:
                if not self.extend:
                    return int(self.vehicle.pl[node])
                return self.last_chunk[self.walk(int(self.vehicle.id[node]))]
        elif agent_type == C.AgentType.CYCLIST:
            node = self.bike.nearest(target, heading, DEST_LANE_RADIUS)
            if node is not None:
                return int(self.bike.pl[node])
        return self.road_edge(target)

    def walk(self, lane: int) -> int:
        """Feature id of the lane reached by the random forward walk from ``lane``."""
        hop = 1
        while True:
            exits = self.lane_exits.get(lane, [])
            nxt = exits[int(self.rng.integers(len(exits)))] if exits else -1
            if nxt not in self.last_chunk or (len(exits) > 1 and hop > 1) or hop > DEST_MAX_HOPS:
                return lane
            lane, hop = nxt, hop + 1

    def road_edge(self, target: np.ndarray) -> int:
        """Nearest road-edge boundary node's polyline (any class if the map has none, 0 if no map)."""
        nodes = self.edge if len(self.edge) else _LaneNodes(self.map, tuple(C.MapType))
        node = nodes.nearest(target)
        return 0 if node is None else int(nodes.pl[node])


# --------------------------------------------------------------------------------------------------
# Traffic lights
# --------------------------------------------------------------------------------------------------


@dataclass
class _Lights:
    """Raw per-step lane states [T, K] (scene frame after ``to_frame``)."""

    valid: np.ndarray
    state: np.ndarray
    lane_id: np.ndarray
    stop: np.ndarray

    def to_frame(self, center: np.ndarray, yaw: float) -> None:
        """Move valid stop points into the scene frame."""
        self.stop[..., :2] = np.where(self.valid[..., None], _rotate(self.stop[..., :2] - center, -yaw), 0.0)


def _light_views(lights: _Lights, steps: slice, map_: MapPolylines,
                 scenario_id: str) -> tuple[TrafficLightLanes, TrafficLightStops]:
    """``tl_lane`` (one entry per light x chunk of its lane) and ``tl_stop`` (one per light) over ``steps``.

    Entries keep the order of the raw lane states; states are one-hot and-ed with valid.
    """
    valid, lane_id, state = lights.valid[steps], lights.lane_id[steps], lights.state[steps]
    t = valid.shape[0]
    lanes = TrafficLightLanes(valid=np.zeros((t, C.N_TL_LANE), bool),
                              state=np.zeros((t, C.N_TL_LANE, C.N_TL_STATE), bool),
                              idx=np.full((t, C.N_TL_LANE), -1, np.int64))
    stops = TrafficLightStops(valid=np.zeros((t, C.N_TL_STOP), bool),
                              state=np.zeros((t, C.N_TL_STOP, C.N_TL_STATE), bool),
                              pos=np.zeros((t, C.N_TL_STOP, 2), np.float32),
                              dir=np.zeros((t, C.N_TL_STOP, 2), np.float32))
    # chunks of each lane id: order[first : first + count] (ascending polyline index)
    key = np.where(map_.valid.any(1), map_.id, np.iinfo(np.int64).max)
    order = np.argsort(key, kind="stable")
    first = np.searchsorted(key[order], lane_id, side="left")
    count = np.where(valid, np.searchsorted(key[order], lane_id, side="right") - first, 0)

    tt, kk = np.nonzero(valid)
    slot = (np.cumsum(valid, axis=1) - 1)[tt, kk]
    tt, kk, slot = _truncate(tt, kk, slot, C.N_TL_STOP, f"scenario {scenario_id}: traffic lights per step")
    stops.valid[tt, slot] = True
    stops.state[tt, slot, state[tt, kk]] = True
    stops.pos[tt, slot] = lights.stop[steps][tt, kk, :2]
    stops.dir[tt, slot] = map_.dir[order[first[tt, kk]], 0]

    tt, kk = np.nonzero(count)
    n = count[tt, kk]
    tt, kk = np.repeat(tt, n), np.repeat(kk, n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    slot = (np.cumsum(count, axis=1) - count)[tt, kk] + within
    tt, kk, slot, within = _truncate(tt, kk, slot, C.N_TL_LANE, f"scenario {scenario_id}: tl_lane entries per step",
                                     within)
    lanes.valid[tt, slot] = True
    lanes.state[tt, slot, state[tt, kk]] = True
    lanes.idx[tt, slot] = order[first[tt, kk] + within]
    return lanes, stops


def _truncate(step: np.ndarray, entry: np.ndarray, slot: np.ndarray, width: int, what: str,
              *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep the (step, entry, slot, ...) rows whose slot fits ``width``; log a warning if any does not."""
    ok = slot < width
    if not ok.all():
        log.warning("%s: up to %d, keeping the first %d", what, int(slot.max()) + 1, width)
    return tuple(a[ok] for a in (step, entry, slot, *more))
