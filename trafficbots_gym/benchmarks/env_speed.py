"""Environment speed: step/reset latency per background, vector-env throughput vs num_envs, memory soak.

    python -m trafficbots_gym.benchmarks.env_speed [--parts latency throughput autoreset soak] [--device auto]
        [--scenes H5] [--checkpoint CKPT] [--steps 200] [--resets 10] [--latency-scenes busiest median]
        [--num-envs 1 4 16] [--reset-pools 0 32] [--threads N] [--soak-steps 10000]

1. Latency (single ``TrafficBots-v0``): median / p90 ``step()`` and median ``reset()`` of the learned
   background (every valid non-ego agent is a TrafficBots agent) next to ``log_replay``, ``idm`` and
   ``constant_velocity`` in the same run, on the scene with the most agents valid at step 10 and on one
   with the median count (of the first 64 scenes). Resets are timed twice: "cold" with the encoding cache
   off (what the first reset of a never-seen scene costs) and "warm" with it on (a scene reset before; the
   default).
2. Throughput: env steps per second of ``TrafficBotsVecEnv(num_envs=N)`` (learned background, one
   batched simulator) against the naive baseline of N single envs stepped one after the other, both
   ``--steps`` steps per env without early termination, so both reset every 80 steps per env (resets
   included in the time).
3. Autoreset: env steps per second of ``TrafficBotsVecEnv(num_envs=N)`` with the learned background, the
   default termination and random actions (episodes end at different steps, so rows autoreset at most
   steps), for each ``--reset-pools`` size (0 = rows reset directly; P = spare episodes copied in), in the
   same run; also the mean wall time per autoreset call.
4. Soak: ``--soak-steps`` env steps with resets (``--soak-background``, default ``log_replay``);
   reports resident memory after warm-up and at ten evenly spaced points after it (plateau vs growth).

Times are wall clock (CUDA synchronised) and, on CPU, process CPU time too, which depends less on other
load. Without ``--checkpoint`` and without a shipped checkpoint, a random-init full-size model is used:
same compute as trained weights, random behaviour.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.env.config import resolve_device
from trafficbots_gym.env.scenes import SceneSource, default_scenes
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv

REPO_SCENES = Path(__file__).resolve().parents[2] / "envs_tests" / "fixtures" / "reference_vectors" / "reference_scenes.h5"
LATENCY_BACKGROUNDS = ("trafficbots", "log_replay", "idm", "constant_velocity")
NO_TERMINATION = {"collision": False, "offroad": False, "goal_reached": False, "outside_map": False}
PARTS = ("latency", "throughput", "autoreset", "soak")
LEARNED = ("trafficbots", "mixed")


class Timer:
    """Wall and process-CPU seconds of a call (CUDA work synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu


def resolve_scenes(scenes: str | None) -> Path:
    """``--scenes``, else the embedded default scenes, else the reference scenes of a repo checkout."""
    if scenes is not None:
        return Path(scenes)
    try:
        return default_scenes("validation")
    except FileNotFoundError:
        if REPO_SCENES.is_file():
            return REPO_SCENES
        raise SystemExit("no scenes: pass --scenes <H5 file or folder>") from None


def resolve_checkpoint(checkpoint: str | None, workdir: Path) -> tuple[Path | None, str]:
    """``--checkpoint``, else the shipped one, else a random-init full-size checkpoint; and a description."""
    from trafficbots_gym.model.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
    from trafficbots_gym.model.config import TrafficBotsConfig
    from trafficbots_gym.model.traffic_bots import TrafficBots
    if checkpoint is not None:
        return Path(checkpoint), checkpoint
    if DEFAULT_CHECKPOINT.is_file():
        return None, f"shipped ({DEFAULT_CHECKPOINT.name})"
    torch.manual_seed(0)
    path = save_checkpoint(workdir / "random_init.safetensors", TrafficBots(TrafficBotsConfig()))
    return path, "random-init full-size model (no shipped checkpoint)"


def busiest_scene(source: SceneSource, limit: int = 64) -> tuple[int, int]:
    """Index of the scene (among the first ``limit``) with the most agents valid at step 10, and that count."""
    counts = _agent_counts(source, limit)
    best = int(np.argmax(counts))
    return best, counts[best]


def median_scene(source: SceneSource, limit: int = 64) -> tuple[int, int]:
    """Index of a scene (among the first ``limit``) with the median number of agents valid at step 10, and
    that count."""
    counts = _agent_counts(source, limit)
    index = int(np.argsort(counts, kind="stable")[len(counts) // 2])
    return index, counts[index]


def _agent_counts(source: SceneSource, limit: int) -> list[int]:
    return [int(source.load(i)["agent_valid"][STEP_CURRENT].sum()) for i in range(min(limit, len(source)))]


def latency(background: str, common: dict[str, Any], scene: int, steps: int, resets: int,
            timer: Timer) -> dict[str, float]:
    """Median/p90 step ms and median cold / warm reset ms of one background on one scene."""
    options = {"scene_index": scene}
    cold_env = TrafficBotsEnv(background=background, termination=NO_TERMINATION, encoding_cache_mb=0, **common)
    cold_env.reset(seed=0, options=options)
    cold_wall, cold_cpu = zip(*[timer(lambda: cold_env.reset(options=options)) for _ in range(resets)])
    cold_env.close()
    env = TrafficBotsEnv(background=background, termination=NO_TERMINATION, **common)
    env.reset(seed=0, options=options)
    reset_wall, reset_cpu = zip(*[timer(lambda: env.reset(options=options)) for _ in range(resets)])
    action = np.array([0.1, 0.0], np.float32)
    for _ in range(5):                                   # warm-up
        env.step(action)
    walls, cpus = [], []
    for _ in tqdm(range(steps), desc=background, leave=False):
        result: list[Any] = []
        wall, cpu = timer(lambda: result.append(env.step(action)))
        walls.append(wall)
        cpus.append(cpu)
        if result[0][2] or result[0][3]:
            env.reset(options=options)
    reactive = int((env.core.sim.reactive & env.core.sim.state.valid).sum())
    env.close()
    return {"reactive": reactive, "step_ms": 1000 * statistics.median(walls),
            "step_p90_ms": 1000 * float(np.percentile(walls, 90)), "step_cpu_ms": 1000 * statistics.median(cpus),
            "cold_reset_ms": 1000 * statistics.median(cold_wall), "cold_reset_cpu_ms": 1000 * statistics.median(cold_cpu),
            "reset_ms": 1000 * statistics.median(reset_wall), "reset_cpu_ms": 1000 * statistics.median(reset_cpu)}


def vector_throughput(num_envs: int, common: dict[str, Any], steps: int, timer: Timer) -> tuple[float, float]:
    """Env steps per wall second and per CPU second of one ``TrafficBotsVecEnv`` (autoresets included)."""
    env = TrafficBotsVecEnv(num_envs, termination=NO_TERMINATION, **common)
    env.reset(seed=0)
    actions = np.tile(np.array([0.1, 0.0], np.float32), (num_envs, 1))
    for _ in range(3):
        env.step(actions)
    wall, cpu = timer(lambda: [env.step(actions) for _ in range(steps)])
    env.close()
    return num_envs * steps / wall, num_envs * steps / cpu


def naive_throughput(num_envs: int, common: dict[str, Any], steps: int, timer: Timer) -> tuple[float, float]:
    """Env steps per wall / CPU second of ``num_envs`` single envs stepped in a Python loop (resets included)."""
    envs = [TrafficBotsEnv(termination=NO_TERMINATION, **common) for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    action = np.array([0.1, 0.0], np.float32)

    def loop() -> None:
        for _ in range(steps):
            for env in envs:
                if env.step(action)[2:4] != (False, False):
                    env.reset()
    for env in envs:
        env.step(action)
    wall, cpu = timer(loop)
    for env in envs:
        env.close()
    return num_envs * steps / wall, num_envs * steps / cpu


def autoreset_throughput(num_envs: int, reset_pool: int, common: dict[str, Any], steps: int,
                         timer: Timer) -> dict[str, float]:
    """Env steps per second with early termination and random actions, and the autoresets' cost."""
    env = TrafficBotsVecEnv(num_envs, reset_pool=reset_pool, **common)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, (num_envs, 2)).astype(np.float32) for _ in range(steps + 3)]
    for a in actions[:3]:
        env.step(a)
    resets: list[float] = []
    reset_rows = env._reset_rows

    def timed_reset(rows: list[int], options: list[Any]) -> None:
        start = time.perf_counter()
        reset_rows(rows, options)
        resets.append(time.perf_counter() - start)
    env._reset_rows = timed_reset  # type: ignore[method-assign]
    wall, _ = timer(lambda: [env.step(a) for a in actions[3:]])
    env.close()
    return {"steps_per_s": num_envs * steps / wall, "resets": len(resets),
            "reset_ms": 1000 * statistics.mean(resets) if resets else float("nan")}


def rss_mib() -> float:
    """Resident memory of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(steps: int, background: str, common: dict[str, Any]) -> dict[str, Any]:
    """Run ``steps`` env steps with resets; resident memory after warm-up and at ten points after it."""
    env = TrafficBotsEnv(background=background, horizon=20, **common)
    env.reset(seed=0)
    action = np.array([0.2, 0.05], np.float32)
    warmup, resets = min(500, steps // 10), 0
    marks = set(np.linspace(warmup, steps - 1, 11).astype(int).tolist())
    samples: list[float] = []
    t0 = time.perf_counter()
    for i in tqdm(range(steps), desc=f"soak {background}"):
        if i == warmup:
            t0 = time.perf_counter()
        if i in marks:
            samples.append(rss_mib())
        if any(env.step(action)[2:4]):
            env.reset()
            resets += 1
    env.close()
    return {"steps": steps, "resets": resets, "rss": samples,
            "steps_per_s": (steps - warmup) / (time.perf_counter() - t0)}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["latency", "throughput"])
    parser.add_argument("--device", default="auto", help="torch device of the simulation (auto = CUDA if present)")
    parser.add_argument("--scenes", default=None, help="H5 file / folder (default: embedded or repo scenes)")
    parser.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: shipped or random-init)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per latency row / per env in throughput")
    parser.add_argument("--resets", type=int, default=10, help="timed resets per latency row")
    parser.add_argument("--latency-scenes", nargs="+", choices=("busiest", "median"), default=["busiest", "median"],
                        help="latency on the scene with the most agents and/or one with the median count")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 16], help="vector env sizes")
    parser.add_argument("--reset-pools", type=int, nargs="+", default=[0, 32],
                        help="autoreset part: spare-episode pool sizes (0 = direct resets)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--soak-steps", type=int, default=10_000, help="env steps of the memory soak")
    parser.add_argument("--soak-background", default="log_replay")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    timer = Timer(device)
    scenes = resolve_scenes(args.scenes)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, ckpt_desc = resolve_checkpoint(args.checkpoint, Path(tmp))
        common = {"scenes": scenes, "checkpoint": checkpoint, "device": str(device)}
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
        print(f"device {device} ({card}), torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; "
              f"scenes {scenes}; checkpoint: {ckpt_desc}")

        if "latency" in args.parts:
            for kind in args.latency_scenes:
                scene, n_valid = (busiest_scene if kind == "busiest" else median_scene)(SceneSource(scenes))
                print(f"\nlatency, {kind} scene: index {scene}, {n_valid} agents valid at step {STEP_CURRENT}\n")
                rows = []
                for background in LATENCY_BACKGROUNDS:
                    m = latency(background, common, scene, args.steps, args.resets, timer)
                    rows.append([background, m["reactive"], m["step_ms"], m["step_p90_ms"], m["step_cpu_ms"],
                                 m["cold_reset_ms"], m["cold_reset_cpu_ms"], m["reset_ms"], m["reset_cpu_ms"]])
                print(_table(["background", "reactive agents", "step ms (median)", "step ms (p90)", "step CPU ms",
                              "cold reset ms", "cold reset CPU ms", "warm reset ms", "warm reset CPU ms"], rows))

        if "throughput" in args.parts:
            rows = []
            for n in args.num_envs:
                vec, vec_cpu = vector_throughput(n, common, args.steps, timer)
                naive, naive_cpu = naive_throughput(n, common, args.steps, timer)
                rows.append([n, vec, naive, f"{vec / naive:.2f}x", vec_cpu, naive_cpu, f"{vec_cpu / naive_cpu:.2f}x"])
            print(f"\nlearned background, env steps/s, {args.steps} steps per env (autoresets included)\n")
            print(_table(["num_envs", "TrafficBotsVecEnv", "naive loop of single envs", "speedup",
                          "VecEnv per CPU s", "naive per CPU s", "CPU speedup"], rows))

        if "autoreset" in args.parts:
            rows = []
            for n in args.num_envs:
                for pool in args.reset_pools:
                    m = autoreset_throughput(n, pool, common, args.steps, timer)
                    rows.append([n, pool, m["steps_per_s"], m["resets"], m["reset_ms"]])
            print(f"\nlearned background, default termination, random actions, {args.steps} steps\n")
            print(_table(["num_envs", "reset_pool", "env steps/s", "autoreset calls", "ms per autoreset call"], rows))

        if "soak" in args.parts:
            soak_common = {**common, "checkpoint": checkpoint if args.soak_background in LEARNED else None}
            s = soak(args.soak_steps, args.soak_background, soak_common)
            rss = s["rss"]
            print(f"\nsoak: {s['steps']} steps ({args.soak_background}), {s['resets']} resets, "
                  f"{s['steps_per_s']:.0f} steps/s; RSS {rss[0]:.1f} MiB after warm-up -> {rss[-1]:.1f} MiB at the "
                  f"end ({rss[-1] - rss[0]:+.1f} MiB); every tenth: {' '.join(f'{v:.0f}' for v in rss)} MiB")


if __name__ == "__main__":
    main()
