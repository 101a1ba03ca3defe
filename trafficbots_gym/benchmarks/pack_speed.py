"""Packing throughput on the real WOMD TFRecord, per split and per stage, on one core.

    python -m trafficbots_gym.benchmarks.pack_speed [--repeats 20] [--input FILE.tfrecord]

Each split reads the file (framing + CRC32C + proto parse + conversion), packs the scenario and
writes the scenes to a gzip H5 shard, ``--repeats`` times. Times are process CPU time, so the
"scenes/s per core" column does not depend on other load on the machine. The baseline row is the
reference packer's throughput from its README (training split: 486,995 scenes in about 2 days,
one process), not a measurement on this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trafficbots_gym.data.constants import SPLITS
from trafficbots_gym.data.h5io import write_scenes
from trafficbots_gym.data.packing import pack_scenario
from trafficbots_gym.data.raw import RawScenario
from trafficbots_gym.data.tfrecord import masked_crc32c, read_records
from trafficbots_gym.data.womd import iter_scenarios

FIXTURE = (Path(__file__).resolve().parents[2] / "envs_tests" / "fixtures" / "real_womd"
           / "motion_data_one_scenario.tfrecord")
REFERENCE_SCENES_PER_S = 486_995 / (2 * 24 * 3600)
"""Reference TrafficBots packer (TensorFlow record reading, one process): training split in ~2 days."""


def _read(path: Path) -> RawScenario:
    item = next(iter_scenarios(path))
    if not isinstance(item, RawScenario):
        raise SystemExit(f"cannot benchmark on {path}: {item}")
    return item


def measure(path: Path, split: str, repeats: int, workdir: Path) -> dict[str, float]:
    """Mean CPU milliseconds per scene of each stage for one split."""
    rng = np.random.default_rng(0)
    read_s = pack_s = 0.0
    scenes = []
    for _ in tqdm(range(repeats), desc=split, leave=False):
        t0 = time.process_time()
        raw = _read(path)
        t1 = time.process_time()
        scenes.append(pack_scenario(raw, split, rng=rng))
        t2 = time.process_time()
        read_s, pack_s = read_s + t1 - t0, pack_s + t2 - t1
    t0 = time.process_time()
    write_scenes(workdir / f"{split}.h5", scenes, validate=False)
    write_s = time.process_time() - t0
    ms = {"read": read_s, "pack": pack_s, "write": write_s}
    return {k: 1000 * v / repeats for k, v in ms.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="scenes packed per split")
    parser.add_argument("--input", type=Path, default=FIXTURE, help="WOMD TFRecord (its first record is used)")
    args = parser.parse_args(argv)

    record = read_records(args.input)[0]
    t0 = time.process_time()
    for _ in range(10):
        masked_crc32c(record)
    crc_ms = 100 * (time.process_time() - t0)
    _read(args.input)  # warm-up: imports, CRC tables

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in SPLITS:
            ms = measure(args.input, split, args.repeats, Path(tmp))
            rows.append((split, ms["read"], ms["pack"], ms["write"]))

    print(f"Packing speed: {args.input.name} ({len(record) / 1e6:.2f} MB record), {args.repeats} scenes per split, "
          f"CPU time of one process; {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs")
    print(f"CRC32C of the record: {crc_ms:.1f} ms\n")
    header = ("split", "read ms", "pack ms", "write ms", "read+pack scenes/s", "end-to-end scenes/s", "vs reference")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * len(header)) + "|")
    print("| reference packer (README: 487k training scenes in ~2 days) | | | | | "
          f"{REFERENCE_SCENES_PER_S:.1f} | 1.0x |")
    for split, read_ms, pack_ms, write_ms in rows:
        total = read_ms + pack_ms + write_ms
        print(f"| {split} | {read_ms:.1f} | {pack_ms:.1f} | {write_ms:.1f} | {1000 / (read_ms + pack_ms):.1f} | "
              f"{1000 / total:.1f} | {1000 / total / REFERENCE_SCENES_PER_S:.1f}x |")


if __name__ == "__main__":
    main()
