"""Compact SUMO corpus: long runs stored once, 91-step training windows cut on the fly.

A corpus is a folder of ``<split>-NNNN.npz`` files, one per run, each holding

* the road map once (polylines as float32 points, types, lane graph, TL links),
* the TL link states per step (int8 TLState),
* all tracks at 10 Hz, quantised: positions as centimetre deltas (int16, or int32 when a run needs
  it) from a per-track int32 start, headings as int16 (2^-15 pi rad), speeds as uint16 cm/s,
* the table of candidate windows (SDC track, first step, every 10 steps),
* the run specification as JSON.

:class:`SyntheticWindowDataset` serves ``scene_to_arrays(pack_scenario(...))`` dicts of fresh windows
(random first step within the 1 s grid cell, the indexed SDC, random frame shift / rotation for
training) so it plugs into a DataLoader with ``collate_arrays``; :func:`corpus_scenes` writes a random
draw of distinct windows as scenes for the env.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from trafficbots_gym.data.batch import scene_to_arrays
from trafficbots_gym.data.constants import N_STEP, SPLITS
from trafficbots_gym.data.h5io import atomic_path
from trafficbots_gym.data.packing import pack_scenario
from trafficbots_gym.data.raw import RawPolyline
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.synth.generate import process_pool, run_seeds
from trafficbots_gym.synth.roadmap import RoadMap, TlLinks
from trafficbots_gym.synth.runs import RunSpec, execute_run, sample_run_spec
from trafficbots_gym.synth.simulate import SimLog, SimulationStalled, TrackLog
from trafficbots_gym.synth.sumo_tools import SumoToolError
from trafficbots_gym.synth.windows import candidate_windows, cut_window

logger = logging.getLogger(__name__)

CORPUS_VERSION: int = 1
WINDOW_STRIDE: int = 10
"""Steps between the first steps of two candidate windows of one SDC (distinct windows)."""
_YAW_SCALE = 32767.0 / np.pi


class CorpusFormatError(ValueError):
    """A corpus file is missing, of another version, or lacks an array."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)


@dataclass
class CorpusRun:
    """One decoded run of a corpus."""

    tag: str
    split: str
    road_map: RoadMap
    log: SimLog
    windows: np.ndarray
    """[W, 2] int64 (SDC track, first step)."""


def run_file_name(split: str, index: int) -> str:
    return f"{split}-{index:04d}.npz"


def save_run(path: str | os.PathLike, spec: RunSpec, split: str, road_map: RoadMap, log: SimLog) -> Path:
    """Write one run compactly (atomic); return the path."""
    final = Path(path)
    arrays = {**_encode_map(road_map), **_encode_tracks(log.tracks)}
    arrays["tl_state"] = log.tl_state.astype(np.int8)
    arrays["windows"] = candidate_windows(log.tracks, log.n_step, WINDOW_STRIDE).astype(np.int32)
    meta = {"version": CORPUS_VERSION, "tag": spec.tag, "split": split, "n_step": log.n_step,
            "spec": {"seed": spec.seed, "network": spec.network.to_dict(), "demand": spec.demand.to_dict(),
                     "warmup": spec.sim.warmup, "duration": spec.sim.duration}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    tmp = atomic_path(final)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a run file (version, tag, split, n_step, spec)."""
    with _open(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
    if meta.get("version") != CORPUS_VERSION:
        raise CorpusFormatError(path, f"corpus version {meta.get('version')}, expected {CORPUS_VERSION}")
    return meta


def read_windows(path: str | os.PathLike) -> np.ndarray:
    with _open(path) as z:
        return _get(z, path, "windows").astype(np.int64)


def load_run(path: str | os.PathLike) -> CorpusRun:
    """Decode a run file into its road map, log and window table."""
    meta = read_meta(path)
    with _open(path) as z:
        arrays = {k: z[k] for k in z.files}
    for key in ("pl_points", "tracks_xy0", "tl_state", "windows"):
        _get(arrays, path, key)
    log = SimLog(int(meta["n_step"]), _decode_tracks(arrays), arrays["tl_state"].astype(np.int8))
    return CorpusRun(meta["tag"], meta["split"], _decode_map(arrays), log, arrays["windows"].astype(np.int64))


def _open(path: str | os.PathLike) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorpusFormatError(path, f"not a readable corpus file ({e})") from e


def _get(arrays: Any, path: str | os.PathLike, key: str) -> np.ndarray:
    if key not in arrays:
        raise CorpusFormatError(path, f"array {key!r} missing")
    return arrays[key]


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _encode_map(road_map: RoadMap) -> dict[str, np.ndarray]:
    pls = road_map.polylines
    if [pl.feature_id for pl in pls] != list(range(len(pls))):
        raise ValueError("road map feature ids must be 0..P-1 in order")
    lanes = np.array(sorted(road_map.lane_ids), np.int32)
    exits = [road_map.lane_exits.get(int(f), []) for f in lanes]
    links = road_map.tl_links
    return {
        "pl_points": np.concatenate([pl.points[:, :2] for pl in pls]).astype(np.float32),
        "pl_offsets": np.concatenate([[0], np.cumsum([len(pl.points) for pl in pls])]).astype(np.int64),
        "pl_type": np.array([pl.map_type for pl in pls], np.int8),
        "pl_polygon": np.array([pl.is_polygon for pl in pls], bool),
        "lane_ids": lanes,
        "exit_offsets": np.concatenate([[0], np.cumsum([len(e) for e in exits])]).astype(np.int64),
        "exit_targets": np.array([x for e in exits for x in e], np.int32),
        "tl_ids": np.array(links.tl_ids, dtype=np.str_),
        "tl_tl": links.tl.astype(np.int32), "tl_link_index": links.link_index.astype(np.int32),
        "tl_lane": links.lane_feature.astype(np.int32), "tl_stop": links.stop_point[:, :2].astype(np.float32),
    }


def _decode_map(a: dict[str, np.ndarray]) -> RoadMap:
    pts = a["pl_points"].astype(np.float64)
    off = a["pl_offsets"]
    polylines = [RawPolyline(i, int(a["pl_type"][i]),
                             np.concatenate([pts[off[i]:off[i + 1]], np.zeros((off[i + 1] - off[i], 1))], -1),
                             is_polygon=bool(a["pl_polygon"][i])) for i in range(len(a["pl_type"]))]
    lanes = a["lane_ids"].astype(np.int64)
    eo = a["exit_offsets"]
    exits = {int(f): [int(x) for x in a["exit_targets"][eo[k]:eo[k + 1]]] for k, f in enumerate(lanes)}
    stop = a["tl_stop"].astype(np.float64)
    links = TlLinks([str(t) for t in a["tl_ids"]], a["tl_tl"].astype(np.int64), a["tl_link_index"].astype(np.int64),
                    a["tl_lane"].astype(np.int64), np.concatenate([stop, np.zeros((len(stop), 1))], -1))
    return RoadMap(polylines, exits, links, frozenset(int(f) for f in lanes))


def _encode_tracks(tracks: TrackLog) -> dict[str, np.ndarray]:
    starts = tracks.offsets[:-1]
    q = np.round(tracks.xy * 100.0).astype(np.int64)
    delta = np.diff(q, axis=0, prepend=q[:1])
    delta[starts] = 0
    dtype = np.int16 if len(delta) == 0 or np.abs(delta).max() < 2**15 else np.int32
    yaw = (tracks.yaw.astype(np.float64) + np.pi) % (2 * np.pi) - np.pi
    return {
        "tracks_id": tracks.object_id.astype(np.int32), "tracks_type": tracks.type.astype(np.int8),
        "tracks_size": tracks.size.astype(np.float16), "tracks_start": tracks.start.astype(np.int32),
        "tracks_length": tracks.length.astype(np.int32), "tracks_xy0": q[starts].astype(np.int32),
        "tracks_dxy": delta.astype(dtype), "tracks_yaw": np.round(yaw * _YAW_SCALE).astype(np.int16),
        "tracks_speed": np.round(np.clip(tracks.speed, 0, 655) * 100.0).astype(np.uint16),
    }


def _segment_cumsum(steps: np.ndarray, first: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-segment running sums: segment k starts at ``first[k]`` and adds ``steps`` after that."""
    z = steps.copy()
    z[starts] = first
    c = np.cumsum(z, axis=0)
    base = np.repeat(c[starts] - z[starts], lengths, axis=0)
    return c - base


def _decode_tracks(a: dict[str, np.ndarray]) -> TrackLog:
    lengths = a["tracks_length"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    xy = _segment_cumsum(a["tracks_dxy"].astype(np.int64), a["tracks_xy0"].astype(np.int64), starts, lengths) / 100.0
    yaw_w = a["tracks_yaw"].astype(np.float64) / _YAW_SCALE
    dyaw = (np.diff(yaw_w, prepend=yaw_w[:1]) + np.pi) % (2 * np.pi) - np.pi
    yaw = _segment_cumsum(dyaw, yaw_w[starts], starts, lengths)
    return TrackLog(a["tracks_id"].astype(np.int64), a["tracks_type"].astype(np.int64),
                    a["tracks_size"].astype(np.float32), a["tracks_start"].astype(np.int64), lengths, xy,
                    yaw.astype(np.float32), (a["tracks_speed"].astype(np.float32) / 100.0))


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _build_one(args: tuple[int, str, int, float, str]) -> tuple[str, int] | None:
    run_seed, split, index, duration, out_dir = args
    spec = sample_run_spec(run_seed, duration)
    try:
        road_map, log = execute_run(spec)
    except (SumoToolError, SimulationStalled) as e:
        logger.warning("run %s skipped: %s", spec.tag, e)
        return None
    path = save_run(Path(out_dir) / run_file_name(split, index), spec, split, road_map, log)
    return str(path), int(len(read_windows(path)))


def build_corpus(out_dir: str | os.PathLike, runs: dict[str, int], seed: int, duration: float = 600.0,
                 workers: int = 1) -> list[tuple[str, int]]:
    """Simulate ``runs[split]`` runs of ``duration`` seconds per split into ``out_dir``.

    Returns (file, distinct windows) per stored run, in order (a run whose tools fail or whose
    simulation stalls is skipped with a warning); shows a progress bar. Runs are simulated in
    ``workers`` processes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, split, k, duration, str(out)) for split, n in runs.items()
            for k, s in enumerate(run_seeds(seed, split, n))]
    pool = process_pool(workers)
    try:
        results = pool.map(_build_one, jobs) if pool is not None else map(_build_one, jobs)
        return [r for r in tqdm(results, total=len(jobs), desc="corpus runs", unit="run") if r is not None]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def corpus_files(corpus_dir: str | os.PathLike, split: str) -> list[Path]:
    """The run files of ``split`` in ``corpus_dir`` (sorted); raise if there are none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(corpus_dir)
    if not folder.is_dir():
        raise CorpusFormatError(folder, "no such corpus folder")
    files = sorted(folder.glob(f"{split}-*.npz"))
    if not files:
        raise CorpusFormatError(folder, f"no {split!r} runs ({split}-NNNN.npz); build them with "
                                        f"'trafficbots-synth corpus --split {split}'")
    return files


class SyntheticWindowDataset(Dataset):
    """Fresh 91-step scenes cut on the fly from a SUMO corpus, as ``scene_to_arrays`` dicts.

    Item ``i`` is candidate window ``i`` (a moving SDC and a 1 s grid cell of first steps); the
    exact first step within the cell and the frame augmentation are drawn from
    ``default_rng([seed, epoch, i])``, so items are reproducible and change with ``set_epoch``.
    Runs are decoded lazily and cached per process (fork-safe: a forked worker starts empty).
    """

    def __init__(self, corpus_dir: str | os.PathLike, split: str = "training", seed: int = 0) -> None:
        self.files = corpus_files(corpus_dir, split)
        self.split, self.seed, self.epoch = split, int(seed), 0
        counts = []
        for path in self.files:
            meta = read_meta(path)
            if meta["split"] != split:
                raise CorpusFormatError(path, f"run of split {meta['split']!r} named as {split!r}")
            counts.append(len(read_windows(path)))
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: dict[int, CorpusRun] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Draw new first steps and augmentations for every item."""
        self.epoch = int(epoch)

    def run(self, k: int) -> CorpusRun:
        """Decoded run ``k`` (cached per process)."""
        if os.getpid() != self._pid:
            self._cache, self._pid = {}, os.getpid()
        if k not in self._cache:
            self._cache[k] = load_run(self.files[k])
        return self._cache[k]

    def window(self, index: int) -> tuple[int, int, int]:
        """(run, SDC track, first step) of item ``index`` in this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        run = self.run(k)
        track, t0 = (int(v) for v in run.windows[index - self._offsets[k]])
        tracks = run.log.tracks
        last_start = min(int(tracks.start[track] + tracks.length[track]), run.log.n_step) - N_STEP
        shift = int(np.random.default_rng([self.seed, self.epoch, index, 1]).integers(0, WINDOW_STRIDE))
        return k, track, min(t0 + shift, last_start)

    def scene(self, index: int) -> Scene:
        """Item ``index`` of this epoch as a packed :class:`Scene`."""
        k, track, t0 = self.window(index)
        run = self.run(k)
        sid = f"{run.tag}-t{t0:05d}-sdc{int(run.log.tracks.object_id[track]):05d}"
        raw = cut_window(run.log, run.road_map, track, t0, sid)
        return pack_scenario(raw, self.split, rng=np.random.default_rng([self.seed, self.epoch, index]))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return scene_to_arrays(self.scene(index))


def corpus_scenes(corpus_dir: str | os.PathLike, split: str, num_scenes: int, seed: int,
                  workers: int = 1) -> Iterator[Scene]:
    """``num_scenes`` distinct windows of a corpus split, drawn at random by ``seed``, as packed scenes.

    This is how a corpus becomes env scenes: many more distinct situations than a scene file generated
    directly (e.g. for training an ego policy without over-fitting to a few hundred scenes). Scenes come
    in window order and depend only on the seed, not on ``workers`` (processes that cut them).
    """
    total = len(SyntheticWindowDataset(corpus_dir, split, seed))
    if not 1 <= num_scenes <= total:
        raise ValueError(f"num_scenes must be in [1, {total}] (the windows of split {split!r} in "
                         f"{corpus_dir}), got {num_scenes}")
    picked = np.sort(np.random.default_rng([seed, 2]).choice(total, size=num_scenes, replace=False))
    chunks = [(str(corpus_dir), split, seed, c.tolist()) for c in np.array_split(picked, -(-num_scenes // 16))]
    pool = process_pool(workers)
    try:
        for scenes in (pool.map(_cut_scenes, chunks) if pool is not None else map(_cut_scenes, chunks)):
            yield from scenes
    finally:
        _CUT_DATASETS.pop((str(corpus_dir), split, seed), None)  # this process's decoded runs
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_CUT_DATASETS: dict[tuple[str, str, int], SyntheticWindowDataset] = {}
"""Per process: the dataset of each (corpus, split, seed) cut from, kept so that its decoded runs serve
every chunk instead of being decoded again per chunk."""


def _cut_scenes(job: tuple[str, str, int, list[int]]) -> list[Scene]:
    corpus_dir, split, seed, indices = job
    key = (corpus_dir, split, seed)
    if key not in _CUT_DATASETS:
        _CUT_DATASETS[key] = SyntheticWindowDataset(corpus_dir, split, seed)
    return [_CUT_DATASETS[key].scene(i) for i in indices]
