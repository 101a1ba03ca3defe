"""Speed and compactness of the SUMO synthetic pipeline (one process = one core).

    python -m trafficbots_gym.benchmarks.synth_speed [--runs 3] [--duration 120] [--scenes-per-run 8]
                                                      [--corpus-duration 600] [--items 200] [--seed 0]
    python -m trafficbots_gym.benchmarks.synth_speed --corpus DIR [--items 200] [--seed 0]

Measures, per stage, the seconds of a scene-generation run (network, demand, simulation, window
cutting + packing) and the resulting scenes/s per core; then builds a one-run corpus and measures
its size per distinct window and the windows/s one DataLoader worker serves (cut + pack + arrays).
With ``--corpus`` only that last number is measured, on the training split of an existing corpus
(what a training run's workers serve; no SUMO needed). Prints a table (the numbers for BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trafficbots_gym.data.packing import pack_scenario
from trafficbots_gym.synth.corpus import SyntheticWindowDataset, build_corpus
from trafficbots_gym.synth.demand import build_routes
from trafficbots_gym.synth.generate import pick_windows, run_seeds
from trafficbots_gym.synth.networks import build_network
from trafficbots_gym.synth.netxml import parse_net
from trafficbots_gym.synth.roadmap import build_road_map
from trafficbots_gym.synth.runs import sample_run_spec
from trafficbots_gym.synth.simulate import simulate
from trafficbots_gym.synth.windows import cut_window


def time_run(run_seed: int, duration: float, scenes_per_run: int, workdir: Path) -> dict[str, float]:
    """Seconds per stage of one generation run, and the number of scenes it packed."""
    spec = sample_run_spec(run_seed, duration)
    t = [time.perf_counter()]
    net = build_network(spec.network, workdir)
    road_map = build_road_map(parse_net(net))
    t.append(time.perf_counter())
    routes = build_routes(net, spec.demand, workdir)
    t.append(time.perf_counter())
    log = simulate(net, routes, road_map.tl_links, spec.sim)
    t.append(time.perf_counter())
    n = 0
    for track, t0 in pick_windows(log, scenes_per_run, np.random.default_rng([run_seed, 1])):
        raw = cut_window(log, road_map, track, t0, f"{spec.tag}-{t0}-{track}")
        pack_scenario(raw, "training", rng=np.random.default_rng([run_seed, t0, track]))
        n += 1
    t.append(time.perf_counter())
    stages = np.diff(t)
    return {"network": stages[0], "demand": stages[1], "simulation": stages[2], "windows+packing": stages[3],
            "scenes": float(n), "agents": float(log.tracks.num_tracks)}


def time_corpus(seed: int, duration: float, items: int, workdir: Path) -> dict[str, float]:
    """Size per distinct window and single-worker windows/s of a one-run corpus."""
    t0 = time.perf_counter()
    ((path, n_windows),) = build_corpus(workdir, {"training": 1}, seed, duration)
    build_s = time.perf_counter() - t0
    size = Path(path).stat().st_size
    return {"build_s": build_s, "windows": float(n_windows), "bytes": float(size),
            "bytes_per_window": size / max(n_windows, 1), "windows_per_s": windows_per_second(workdir, items, seed)}


def windows_per_second(corpus_dir: Path, items: int, seed: int) -> float:
    """Training windows/s one DataLoader worker serves from ``corpus_dir`` (every run decoded beforehand,
    as in a worker that has served a while)."""
    ds = SyntheticWindowDataset(corpus_dir, "training", seed)
    for k in range(len(ds.files)):
        ds.run(k)
    idx = np.random.default_rng(seed).integers(0, len(ds), items)
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return items / (time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=120.0, help="recorded seconds per generation run")
    p.add_argument("--scenes-per-run", type=int, default=8)
    p.add_argument("--corpus-duration", type=float, default=600.0)
    p.add_argument("--items", type=int, default=200, help="windows timed from the corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", type=Path, default=None,
                   help="time only the DataLoader windows/s of this existing corpus (training split)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.corpus is not None:
        rate = windows_per_second(a.corpus, a.items, a.seed)
        print(f"Corpus {a.corpus}: {a.items} training windows, one process")
        print(f"{'windows/s per worker':<26}{rate:>10.1f}")
        print(f"{'ms per window':<26}{1e3 / rate:>10.1f}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        for k, seed in enumerate(run_seeds(a.seed, "training", a.runs)):
            rows.append(time_run(seed, a.duration, a.scenes_per_run, Path(tmp) / f"run{k}"))
        corpus = time_corpus(a.seed, a.corpus_duration, a.items, Path(tmp) / "corpus")
    total = {k: sum(r[k] for r in rows) for k in rows[0]}
    seconds = sum(total[k] for k in ("network", "demand", "simulation", "windows+packing"))
    print(f"Scene generation: {a.runs} runs x {a.duration:.0f} s recorded (+ warm-up), "
          f"{a.scenes_per_run} scenes per run, one process")
    print(f"{'stage':<18}{'s per run':>12}{'share':>9}")
    for k in ("network", "demand", "simulation", "windows+packing"):
        print(f"{k:<18}{total[k] / a.runs:>12.2f}{total[k] / seconds:>9.0%}")
    print(f"{'scenes/s per core':<18}{total['scenes'] / seconds:>12.2f}   ({total['scenes']:.0f} scenes, "
          f"{total['agents'] / a.runs:.0f} tracks per run)")
    print(f"\nCorpus: one run of {a.corpus_duration:.0f} s recorded")
    print(f"{'build s':<26}{corpus['build_s']:>10.1f}")
    print(f"{'distinct windows':<26}{corpus['windows']:>10.0f}")
    print(f"{'file MB':<26}{corpus['bytes'] / 1e6:>10.2f}")
    print(f"{'bytes per window':<26}{corpus['bytes_per_window']:>10.0f}")
    print(f"{'MB per 100k windows':<26}{corpus['bytes_per_window'] * 1e5 / 1e6:>10.1f}")
    print(f"{'windows/s per worker':<26}{corpus['windows_per_s']:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
