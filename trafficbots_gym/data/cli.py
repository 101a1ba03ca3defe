"""``trafficbots-pack``: pack source scenario files into TrafficBots H5 shards.

One output shard per input file (``OUT/<input name without .tfrecord/.pkl/.json>.h5``), written
atomically, so an interrupted run resumes where it stopped: shards that already exist are skipped
unless ``--overwrite``. Formats by file name: ``*.tfrecord*`` = WOMD Scenario protos,
``*.pkl`` = ScenarioNet pickles, ``*.json`` = GPUDrive scenes. Bad records are reported, skipped
and counted; the other records of the file are still packed. Each file gets its own random stream
derived from ``--seed`` and the file name, so results do not depend on ``--workers``.

Exit status: 0 when every input file was processed (even with skipped records), 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from trafficbots_gym.data.constants import SPLITS
from trafficbots_gym.data.errors import RecordError
from trafficbots_gym.data.h5io import write_index, write_scenes
from trafficbots_gym.data.packing import pack_scenario
from trafficbots_gym.data.raw import RawScenario
from trafficbots_gym.data.scene import Scene

Source = Callable[[Path], Iterator[RawScenario | RecordError]]

SOURCE_SUFFIXES = (".tfrecord", ".pkl", ".json")
SCENARIONET_INDEX_FILES = ("dataset_summary.pkl", "dataset_mapping.pkl")
"""ScenarioNet folder metadata that sits beside the scenario pickles; never packed."""


def source_for(path: Path) -> Source:
    """The ``iter_scenarios`` reader of ``path``'s format (importers are imported lazily)."""
    if path.suffix == ".pkl":
        module = "trafficbots_gym.data.scenarionet"
    elif path.suffix == ".json":
        module = "trafficbots_gym.data.gpudrive"
    elif ".tfrecord" in path.name:
        module = "trafficbots_gym.data.womd"
    else:
        raise ValueError(f"{path}: unknown input format (expected *.tfrecord*, *.pkl or *.json)")
    return importlib.import_module(module).iter_scenarios


def output_name(path: Path) -> str:
    """Shard name of an input: ``a.tfrecord`` -> ``a.h5``, ``training.tfrecord-00000-of-01000``
    -> ``training.tfrecord-00000-of-01000.h5``, ``b.pkl`` -> ``b.h5``."""
    stem = path.stem if path.suffix in SOURCE_SUFFIXES else path.name
    return f"{stem}.h5"


def find_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Input files: the given files, plus every source file below the given folders (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and _is_source(p))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def _is_source(path: Path) -> bool:
    if path.name.startswith(".") or path.name in SCENARIONET_INDEX_FILES:
        return False
    return ".tfrecord" in path.name or path.suffix in (".pkl", ".json")


def file_seed(seed: int, name: str) -> np.random.SeedSequence:
    """Random stream of one input file: a function of ``--seed`` and the file name only."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.SeedSequence([seed, digest])


def shard_split(path: Path) -> str | None:
    """Split of an existing, complete shard (None if it is missing, unreadable or incomplete).

    An empty shard (``data_len == 0``) reports ``"empty"``.
    """
    try:
        with h5py.File(path, "r") as f:
            n = int(f.attrs["data_len"])
            if n == 0:
                return "empty"
            group = f[str(n - 1)]
            if "agent/valid" not in group:
                return "testing"
            return "validation" if "history/agent/valid" in group else "training"
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class Task:
    """Pack one input file into one shard."""

    source: Path
    output: Path
    split: str
    seed: int
    rand_pos: float | None
    rand_yaw: float | None


@dataclass
class FileResult:
    """Outcome of one task: scenes written, bad records and warnings (messages), or a failure."""

    source: Path
    packed: int = 0
    bad_records: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: str | None = None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """Capture the project's warning log messages (instead of printing them)."""
    logger = logging.getLogger("trafficbots_gym")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def pack_file(task: Task) -> FileResult:
    """Pack every record of ``task.source`` into ``task.output``; never raises."""
    result = FileResult(task.source)
    rng = np.random.default_rng(file_seed(task.seed, task.source.name))

    def scenes() -> Iterator[Scene]:
        for index, item in enumerate(source_for(task.source)(task.source)):
            if isinstance(item, RecordError):
                result.bad_records.append(str(item))
                continue
            try:
                scene = pack_scenario(item, task.split, rng=rng, rand_pos=task.rand_pos, rand_yaw=task.rand_yaw)
            except Exception as e:  # one bad record must not stop a multi-hour job
                result.bad_records.append(f"{task.source}, record {index} ({item.scenario_id}): "
                                          f"{type(e).__name__}: {e}")
                continue
            result.packed += 1
            yield scene

    with _collect_warnings() as messages:
        try:
            write_scenes(task.output, scenes(), validate=False)
        except Exception as e:
            result.failed = f"{task.source}: {type(e).__name__}: {e}"
            result.packed = 0
    result.warnings = messages
    return result


def _init_worker() -> None:
    logging.basicConfig(level=logging.WARNING)


def run_tasks(tasks: Sequence[Task], workers: int) -> Iterator[FileResult]:
    """Results of ``tasks`` (in completion order), in this process or in ``workers`` spawned processes."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(pack_file, tasks)
        return
    with mp.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(pack_file, tasks)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trafficbots-pack",
                                description="Pack WOMD TFRecords (*.tfrecord*), ScenarioNet pickles (*.pkl) or "
                                            "GPUDrive scenes (*.json) into TrafficBots H5 shards, one per input file.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="source files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder of the H5 shards")
    p.add_argument("--split", required=True, choices=SPLITS, help="which keys to write and how to select agents")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one input file each (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-file random streams (default 0)")
    p.add_argument("--rand-pos", type=float, default=None,
                   help="random frame shift per axis (m); default 50 for training, off otherwise; <= 0 = off")
    p.add_argument("--rand-yaw", type=float, default=None,
                   help="random frame rotation (rad); default 3.14 for training, off otherwise; <= 0 = off")
    p.add_argument("--overwrite", action="store_true", help="repack shards that already exist")
    return p


def pack_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``trafficbots-pack``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = find_inputs(args.inputs)
    except FileNotFoundError as e:
        print(f"trafficbots-pack: {e}", file=sys.stderr)
        return 1
    if not files:
        print("trafficbots-pack: no input files found", file=sys.stderr)
        return 1
    outputs: dict[str, Path] = {}
    for f in files:
        name = output_name(f)
        if name in outputs:
            print(f"trafficbots-pack: {outputs[name]} and {f} would both write {name}", file=sys.stderr)
            return 1
        outputs[name] = f
    args.out.mkdir(parents=True, exist_ok=True)

    tasks, done, failed = [], 0, []
    for f in files:
        out = args.out / output_name(f)
        existing = None if args.overwrite else shard_split(out)
        if existing in (args.split, "empty"):
            done += 1
        elif existing is not None:
            failed.append(f"{out} exists with {existing} keys, not {args.split}; pass --overwrite to repack")
        else:
            tasks.append(Task(f, out, args.split, args.seed, args.rand_pos, args.rand_yaw))

    packed, bad, warned = 0, 0, 0
    with tqdm(total=len(tasks), unit="file", desc="packing", dynamic_ncols=True) as bar:
        for result in run_tasks(tasks, args.workers):
            for message in result.warnings:
                tqdm.write(f"warning: {message}", file=sys.stderr)
            for message in result.bad_records:
                tqdm.write(f"skipped: {message}", file=sys.stderr)
            if result.failed:
                tqdm.write(f"failed: {result.failed}", file=sys.stderr)
                failed.append(result.failed)
            packed += result.packed
            bad += len(result.bad_records)
            warned += len(result.warnings)
            bar.set_postfix(scenes=packed, bad=bad)
            bar.update()
    write_index(args.out)
    for message in failed:
        print(f"failed: {message}", file=sys.stderr)
    print(f"packed {packed} scenes, skipped {bad} bad records ({len(tasks)} files processed, {done} already done, "
          f"{len(failed)} failed, {warned} warnings); index: {args.out / 'index.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(pack_main())
