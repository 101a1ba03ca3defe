"""Synthetic WOMD-like scenes: runs -> spread-out windows -> ``pack_scenario`` -> snapped ``Scene``.

``run_seeds(seed, n)`` derives the run seeds of a dataset from one master seed, ``run_scenes``
packs the scenes of one run, and ``generate_scenes`` streams the scenes of many runs (in worker
processes, in run order, so the output does not depend on the number of workers).
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from trafficbots_gym.data.constants import N_STEP, SPLITS, STEP_CURRENT
from trafficbots_gym.data.packing import PackingError, pack_scenario
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.synth.quantize import quantize_scene
from trafficbots_gym.synth.runs import RunSpec, execute_run, sample_run_spec
from trafficbots_gym.synth.simulate import SimLog, SimulationStalled
from trafficbots_gym.synth.sumo_tools import SumoToolError
from trafficbots_gym.synth.windows import candidate_windows, cut_window

log = logging.getLogger(__name__)

MIN_SDC_SEPARATION: float = 60.0
"""Two windows of one run that overlap in time need SDCs at least this far apart (m)."""


@dataclass(frozen=True)
class GenerationConfig:
    split: str = "training"
    scenes_per_run: int = 8
    duration: float = 120.0
    """Recorded seconds per run."""


def run_seeds(seed: int, split: str, count: int, start: int = 0) -> list[int]:
    """Seeds of runs ``start .. start + count - 1`` of ``split`` for master ``seed``.

    Each split has its own seed stream, so the splits of one master seed never share a run.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    children = np.random.SeedSequence([seed, SPLITS.index(split)]).spawn(start + count)[start:]
    return [int(c.generate_state(1, np.uint32)[0]) for c in children]


def pick_windows(log_: SimLog, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` (SDC track, first step) windows of a run, spread out in time and space.

    Windows are drawn in random order and kept unless they share their SDC with a kept window
    that overlaps in time, or overlap in time with a kept window whose SDC is near at the current step.
    """
    cand = candidate_windows(log_.tracks, log_.n_step)
    chosen: list[tuple[int, int, np.ndarray]] = []
    offsets = log_.tracks.offsets
    for k in rng.permutation(len(cand)):
        track, t0 = (int(v) for v in cand[k])
        xy = log_.tracks.xy[offsets[track] + t0 + STEP_CURRENT - log_.tracks.start[track]]
        if all(abs(t0 - t1) >= N_STEP or (track != tr1 and np.linalg.norm(xy - xy1) >= MIN_SDC_SEPARATION)
               for tr1, t1, xy1 in chosen):
            chosen.append((track, t0, xy))
            if len(chosen) == n:
                break
    return [(c[0], c[1]) for c in chosen]


def run_scenes(run_seed: int, config: GenerationConfig) -> list[Scene]:
    """The packed scenes of one run, float values snapped to grids (``quantize``); fewer than
    requested when the run has too few windows."""
    spec: RunSpec = sample_run_spec(run_seed, config.duration)
    try:
        road_map, log_ = execute_run(spec)
    except (SumoToolError, SimulationStalled) as e:
        log.warning("run %s skipped: %s", spec.tag, e)
        return []
    rng = np.random.default_rng([run_seed, 1])
    scenes = []
    for track, t0 in pick_windows(log_, config.scenes_per_run, rng):
        sid = f"{spec.tag}-t{t0:05d}-sdc{int(log_.tracks.object_id[track]):05d}"
        raw = cut_window(log_, road_map, track, t0, sid)
        try:
            scene = pack_scenario(raw, config.split, rng=np.random.default_rng([run_seed, t0, track]))
            scenes.append(quantize_scene(scene))
        except PackingError as e:
            log.warning("scene %s skipped: %s", sid, e)
    return scenes


def _run_scenes_star(args: tuple[int, GenerationConfig]) -> list[Scene]:
    return run_scenes(*args)


def generate_scenes(num_scenes: int, seed: int, config: GenerationConfig, workers: int = 1) -> Iterator[Scene]:
    """Yield ``num_scenes`` scenes of runs derived from ``seed``, in run order.

    Runs are executed in ``workers`` processes (libsumo allows one simulation per process); more
    runs are started in waves until enough scenes have been produced.
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    produced, next_run = 0, 0
    pool = process_pool(workers)
    try:
        while produced < num_scenes:
            wave = max(workers, -(-(num_scenes - produced) // config.scenes_per_run))
            seeds = run_seeds(seed, config.split, wave, start=next_run)
            next_run += wave
            jobs = [(s, config) for s in seeds]
            results = pool.map(_run_scenes_star, jobs) if pool is not None else map(_run_scenes_star, jobs)
            for scenes in results:
                for scene in scenes[:num_scenes - produced]:
                    produced += 1
                    yield scene
                if produced >= num_scenes:
                    break
            if next_run > 50 * (num_scenes // config.scenes_per_run + 1):
                raise RuntimeError(f"only {produced} of {num_scenes} scenes after {next_run} runs")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def process_pool(workers: int) -> ProcessPoolExecutor | None:
    """``workers`` spawned worker processes (None for 1: run in this process).

    Workers are not daemonic, so each can run its simulations in child processes.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
