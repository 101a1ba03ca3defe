"""``trafficbots-synth``: synthetic WOMD-like scenes from SUMO, and compact SUMO corpora.

    trafficbots-synth --num-scenes N --out DIR_OR_FILE.h5 --seed S [--split training|validation|testing]
                      [--workers K] [--scenes-per-run 8] [--duration 120] [--shard-size 500]
    trafficbots-synth corpus --out DIR --seed S [--runs 20] [--val-runs 1] [--test-runs 0]
                      [--duration 600] [--workers K]
    trafficbots-synth cut --corpus DIR --num-scenes N --out DIR_OR_FILE.h5 --seed S [--split training]
                      [--shard-size 500] [--workers K]

``cut`` writes N distinct windows of a corpus (drawn at random) as scenes: the cheap way to many scenes
(a 16 MB corpus of 10 runs holds about 100,000 windows), e.g. to train an ego policy on.

Scenes: an ``--out`` ending in ``.h5`` gets one file; otherwise ``DIR/<split>-NNNNN.h5`` shards plus
``index.json``, written with gzip level :data:`GZIP_LEVEL` (+ shuffle). Output depends only on the seed
and options, not on ``--workers``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from trafficbots_gym.data.constants import DT, N_STEP, SPLITS
from trafficbots_gym.data.h5io import H5_SUFFIXES, write_index, write_scenes
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.synth.generate import GenerationConfig, generate_scenes

GZIP_LEVEL: int = 9
"""Synthetic scene files use the strongest gzip level: about 9 % smaller than the reference level 4,
equally fast to read; the slower write is negligible next to the simulation."""


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return n


def _duration(value: str) -> float:
    seconds = float(value)
    if not seconds >= N_STEP * DT:
        raise argparse.ArgumentTypeError(f"a run must record at least one {N_STEP * DT:.1f} s window, got {value}")
    return seconds


def scenes_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trafficbots-synth", description="Generate synthetic scenes with SUMO "
                                "(use 'trafficbots-synth corpus -h' for compact training corpora).")
    p.add_argument("--num-scenes", type=_positive, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder of shards, or a single .h5 file")
    p.add_argument("--seed", type=_non_negative, required=True)
    p.add_argument("--split", choices=SPLITS, default="training")
    p.add_argument("--workers", type=_positive, default=1)
    p.add_argument("--scenes-per-run", type=_positive, default=GenerationConfig.scenes_per_run)
    p.add_argument("--duration", type=_duration, default=GenerationConfig.duration, help="recorded seconds per run")
    p.add_argument("--shard-size", type=_positive, default=500, help="scenes per shard (folder output)")
    return p


def corpus_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trafficbots-synth corpus",
                                description="Simulate long SUMO runs into a compact corpus folder.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=_non_negative, required=True)
    p.add_argument("--runs", type=_non_negative, default=20, help="training runs")
    p.add_argument("--val-runs", type=_non_negative, default=1)
    p.add_argument("--test-runs", type=_non_negative, default=0)
    p.add_argument("--duration", type=_duration, default=600.0, help="recorded seconds per run")
    p.add_argument("--workers", type=_positive, default=1)
    return p


def write_scene_output(out: Path, scenes: Iterator[Scene], total: int, split: str, shard_size: int) -> list[Path]:
    """Write ``scenes`` to one ``.h5`` file or to shards of ``out`` (+ index.json); return the files."""
    bar = tqdm(scenes, total=total, desc=f"{split} scenes", unit="scene")
    if out.suffix in H5_SUFFIXES:
        write_scenes(out, bar, compression_opts=GZIP_LEVEL)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    files, k = [], 0
    it = iter(bar)
    while chunk := list(islice(it, shard_size)):
        files.append(out / f"{split}-{k:05d}.h5")
        write_scenes(files[-1], chunk, compression_opts=GZIP_LEVEL)
        k += 1
    write_index(out)
    return files


def cut_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trafficbots-synth cut",
                                description="Write distinct windows of a corpus, drawn at random, as scenes.")
    p.add_argument("--corpus", type=Path, required=True, help="corpus folder (trafficbots-synth corpus)")
    p.add_argument("--num-scenes", type=_positive, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder of shards, or a single .h5 file")
    p.add_argument("--seed", type=_non_negative, required=True)
    p.add_argument("--split", choices=SPLITS, default="training")
    p.add_argument("--shard-size", type=_positive, default=500, help="scenes per shard (folder output)")
    p.add_argument("--workers", type=_positive, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["corpus"]:
        from trafficbots_gym.synth.corpus import build_corpus

        a = corpus_parser().parse_args(argv[1:])
        runs = {"training": a.runs, "validation": a.val_runs, "testing": a.test_runs}
        results = build_corpus(a.out, {k: v for k, v in runs.items() if v > 0}, a.seed, a.duration, a.workers)
        size = sum(Path(f).stat().st_size for f, _ in results)
        print(f"{len(results)} runs, {sum(n for _, n in results)} distinct windows, {size / 1e6:.1f} MB in {a.out}")
        return 0
    if argv[:1] == ["cut"]:
        from trafficbots_gym.synth.corpus import corpus_scenes

        a = cut_parser().parse_args(argv[1:])
        scenes = corpus_scenes(a.corpus, a.split, a.num_scenes, a.seed, a.workers)
        files = write_scene_output(a.out, scenes, a.num_scenes, a.split, a.shard_size)
        print(f"{a.num_scenes} {a.split} scenes cut from {a.corpus} in {len(files)} file(s) under {a.out}")
        return 0
    a = scenes_parser().parse_args(argv)
    config = GenerationConfig(split=a.split, scenes_per_run=a.scenes_per_run, duration=a.duration)
    files = write_scene_output(a.out, generate_scenes(a.num_scenes, a.seed, config, a.workers), a.num_scenes,
                               a.split, a.shard_size)
    print(f"{a.num_scenes} {a.split} scenes in {len(files)} file(s) under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
