"""Batched simulation throughput: env-steps/s, agent-steps/s and peak memory of ``TrafficBotsVecEnv``
against num_envs, per background, eager vs CUDA graph, with the naive loop of single envs as baseline.

    python -m trafficbots_gym.benchmarks.vec_env_speed [--device auto] [--num-envs 1 8 64 256 1024]
        [--backgrounds trafficbots log_replay constant_velocity] [--modes eager graph] [--precisions fp32]
        [--steps 50] [--warmup 5] [--naive-envs 8] [--naive-steps 20] [--checks] [--out DIR]

Each vector-env row: one ``TrafficBotsVecEnv(num_envs, torch_output=True)`` (learned / scripted
background, collision, off-road, red-light metrics of every agent -- ``--ego-metrics-only`` for the
env default, the ego's alone --, reward and the full observation every step, no early termination), a timed full reset, ``--warmup`` steps (the graph mode captures here), then
``--steps`` timed steps (CUDA synchronised). Agent-steps count the 64 agent slots of every scene.
"with resets" amortises one full reset over an 80-step episode. The baseline rows step
``--naive-envs`` single ``TrafficBots-v0`` envs one after the other (numpy in/out, as a Gymnasium
user would), eager and, on CUDA, with the single env's CUDA graph.

Rows are printed as soon as they are measured (a timeout keeps the finished rows); an out-of-memory
row is reported as ``OOM`` and the run goes on. ``--out`` receives ``vec_env_speed.csv`` and
``vec_env_speed.png`` (throughput against num_envs, log axes). ``--checks`` first measures the largest
difference between CUDA-graph and eager trajectories, and between bf16 and fp32 policy actions.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trafficbots_gym.benchmarks.env_speed import resolve_checkpoint, resolve_scenes
from trafficbots_gym.data.constants import N_AGENT
from trafficbots_gym.env.config import LOG_HORIZON, resolve_device
from trafficbots_gym.simulation.background import (BACKGROUND_SPECS, LEARNED_BACKGROUNDS, env_background_keys,
                                                   split_guard)

MODES = ("eager", "graph")
PRECISIONS = ("fp32", "bf16")
NO_TERMINATION = {"collision": False, "offroad": False, "goal_reached": False, "outside_map": False}


def is_learned(background: str) -> bool:
    """Whether a background spec (``BACKGROUND_SPECS``: ``trafficbots`` = the raw model, ``trafficbots+guard``
    = under the background's guards) is driven by the TrafficBots policy."""
    return split_guard(background)[0] in LEARNED_BACKGROUNDS


@dataclass
class Row:
    """One measured configuration (a CSV row)."""

    background: str
    mode: str                 # eager | graph | naive-eager | naive-graph
    precision: str
    num_envs: int
    env_steps_per_s: float = float("nan")
    agent_steps_per_s: float = float("nan")
    step_ms: float = float("nan")
    reset_ms: float = float("nan")
    env_steps_per_s_with_resets: float = float("nan")
    peak_mem_mib: float = float("nan")
    vs_naive: float = float("nan")
    status: str = "ok"


class Clock:
    """Wall seconds of a call, CUDA work synchronised."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def peak_memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated since ``peak_memory_start`` (CUDA), else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def vector_rows(background: str, precision: str, num_envs: int, modes: list[str], common: dict[str, Any],
                steps: int, warmup: int, clock: Clock) -> list[Row]:
    """Throughput of one ``TrafficBotsVecEnv`` configuration in each mode (one env, reset between modes)."""
    from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
    device = resolve_device(common["device"])
    rows = [Row(background, mode, precision, num_envs) for mode in modes]
    env = None
    try:
        peak_memory_start(device)
        env = TrafficBotsVecEnv(num_envs, **env_background_keys(background), termination=NO_TERMINATION,
                                torch_output=True, prefetch=False, cuda_graphs="graph" in modes,
                                policy_precision=precision, **common)
        env.reset(seed=0)
        actions = torch.tensor([[0.1, 0.0]], device=device).expand(num_envs, 2).contiguous()
        for row in rows:
            env.core.cuda_graphs = row.mode == "graph"
            _measure(env, row, actions, steps, warmup, clock, device)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_oom(error):
            raise
        for row in rows:
            if row.status == "ok" and row.step_ms != row.step_ms:
                row.status = "OOM"
    finally:
        if env is not None:
            env.close()
        del env
        free_memory(device)
    return rows


def _measure(env: Any, row: Row, actions: torch.Tensor, steps: int, warmup: int, clock: Clock,
             device: torch.device) -> None:
    """Fill ``row``: timed full reset, ``warmup`` untimed steps, ``steps`` timed steps."""
    peak_memory_start(device)
    row.reset_ms = 1000 * clock(lambda: env.reset(seed=0))
    for _ in range(warmup):
        env.step(actions)
    if row.mode == "graph" and not env.core.graphs_active:
        row.status = f"graph not active: {env.core._step_graph.disabled_reason}"
    step_s = clock(lambda: [env.step(actions) for _ in range(steps)]) / steps
    row.step_ms = 1000 * step_s
    row.env_steps_per_s = row.num_envs / step_s
    row.agent_steps_per_s = N_AGENT * row.env_steps_per_s
    row.env_steps_per_s_with_resets = row.num_envs * LOG_HORIZON / (LOG_HORIZON * step_s + row.reset_ms / 1000)
    row.peak_mem_mib = peak_memory_mib(device)


def naive_row(background: str, graphs: bool, n_envs: int, common: dict[str, Any], steps: int,
              clock: Clock) -> Row:
    """Env steps/s of ``n_envs`` single envs stepped one after the other (numpy actions and outputs)."""
    from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
    device = resolve_device(common["device"])
    row = Row(background, "naive-graph" if graphs else "naive-eager", "fp32", n_envs)
    peak_memory_start(device)
    envs = [TrafficBotsEnv(**env_background_keys(background), termination=NO_TERMINATION, prefetch=False, **common)
            for _ in range(n_envs)]
    try:
        for i, env in enumerate(envs):
            env.core.cuda_graphs = graphs
            env.reset(seed=i)
        action = np.array([0.1, 0.0], np.float32)
        for _ in range(3):                         # warm-up (and graph capture)
            for env in envs:
                env.step(action)
        seconds = clock(lambda: [env.step(action) for _ in range(steps) for env in envs])
        row.step_ms = 1000 * seconds / (steps * n_envs)
        row.env_steps_per_s = n_envs * steps / seconds
        row.agent_steps_per_s = N_AGENT * row.env_steps_per_s
        row.reset_ms = 1000 * clock(lambda: envs[0].reset(seed=0))
        row.env_steps_per_s_with_resets = LOG_HORIZON / (LOG_HORIZON * seconds / (steps * n_envs) + row.reset_ms / 1000)
        row.peak_mem_mib = peak_memory_mib(device)
        row.vs_naive = 1.0
    finally:
        for env in envs:
            env.close()
        free_memory(device)
    return row


# ------------------------------------------------------------------------------------------------ checks
def graph_vs_eager(background: str, num_envs: int, steps: int, common: dict[str, Any]) -> dict[str, float]:
    """Largest difference between CUDA-graph and eager runs from the same seed, with autoresets."""
    from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
    runs = []
    for graphs in (False, True):
        env = TrafficBotsVecEnv(num_envs, **env_background_keys(background), torch_output=True, horizon=20,
                                prefetch=False, cuda_graphs=graphs, **common)
        obs, _ = env.reset(seed=3)
        generator = torch.Generator().manual_seed(0)
        trace_obs, trace_reward = [obs], []
        for _ in range(steps):
            action = (2 * torch.rand(num_envs, 2, generator=generator) - 1).to(env.core.device)
            obs, reward, *_ = env.step(action)
            trace_obs.append(obs)
            trace_reward.append(reward)
        active = env.core.graphs_active
        runs.append((torch.stack(trace_obs).cpu(), torch.stack(trace_reward).cpu(), active))
        env.close()
    (obs_e, rew_e, _), (obs_g, rew_g, active) = runs
    return {"graph_active": float(active), "max_obs_diff": float((obs_e - obs_g).abs().max()),
            "max_reward_diff": float((rew_e - rew_g).abs().max())}


def bf16_vs_fp32(num_envs: int, steps: int, common: dict[str, Any]) -> dict[str, float]:
    """Largest difference of learned-policy actions (acc m/s^2, yaw rate rad/s) between bf16 autocast and
    fp32 on the same states (an fp32 closed-loop run, both policies fed its states)."""
    from trafficbots_gym.data.batch import collate_arrays
    from trafficbots_gym.env.scenes import SceneSource
    from trafficbots_gym.model.checkpoint import load_model
    from trafficbots_gym.model.policy import TrafficBotsPolicy
    device = resolve_device(common["device"])
    source = SceneSource(common["scenes"])
    batch = collate_arrays([source.load(i % len(source)) for i in range(num_envs)]).to(device)
    model = load_model(common["checkpoint"])
    policies = [TrafficBotsPolicy(model, device=device, autocast_dtype=dtype) for dtype in (None, torch.bfloat16)]
    for policy in policies:
        policy.reset(batch, generator=torch.Generator(device=device).manual_seed(0))
    state = policies[0].warm_start_state
    step = torch.full((num_envs,), 11, device=device)
    acc_diff = yaw_diff = 0.0
    for _ in range(steps):
        fp32, bf16 = (p.act(state, step) for p in policies)
        acc_diff = max(acc_diff, float((fp32[..., 0] - bf16[..., 0]).abs().max()))
        yaw_diff = max(yaw_diff, float((fp32[..., 1] - bf16[..., 1]).abs().max()))
        state = state.step(fp32[..., 0], fp32[..., 1])
        step = step + 1
    return {"max_acc_diff": acc_diff, "max_yaw_rate_diff": yaw_diff}


# ------------------------------------------------------------------------------------------------ output
COLUMNS = [f.name for f in fields(Row)]
HEADER = ["background", "mode", "precision", "num_envs", "env-steps/s", "agent-steps/s", "step ms", "reset ms",
          "env-steps/s with resets", "peak MiB", "vs naive eager", "status"]


def format_row(row: Row) -> str:
    def num(v: float, digits: int = 0) -> str:
        return "" if v != v else f"{v:,.{digits}f}"
    cells = [row.background, row.mode, row.precision, str(row.num_envs), num(row.env_steps_per_s),
             num(row.agent_steps_per_s), num(row.step_ms, 2), num(row.reset_ms, 1),
             num(row.env_steps_per_s_with_resets), num(row.peak_mem_mib), num(row.vs_naive, 1) + "x", row.status]
    return "| " + " | ".join(cells) + " |"


def write_csv(path: Path, rows: list[Row]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    os.replace(tmp, path)


def plot(path: Path, rows: list[Row], title: str) -> None:
    """Agent-steps/s against num_envs (log axes): one line per background / mode / precision, the naive
    baselines dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    series: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        if r.status in ("ok",) or r.status.startswith("graph not active"):
            series.setdefault((r.background, r.mode, r.precision), []).append(r)
    colors = {"trafficbots": "tab:red", "trafficbots+guard": "tab:brown", "log_replay": "tab:blue",
              "constant_velocity": "tab:green", "idm": "tab:purple", "mixed": "tab:orange"}
    for (background, mode, precision), points in series.items():
        color = colors.get(background, "black")
        if mode.startswith("naive"):
            ax.axhline(points[0].agent_steps_per_s, color=color, ls=":" if mode == "naive-eager" else "-.", lw=1,
                       label=f"{background} naive loop ({mode[6:]})")
            continue
        points = sorted(points, key=lambda r: r.num_envs)
        style = "-o" if mode == "graph" else "--s"
        label = f"{background} {mode}" + (f" {precision}" if precision != "fp32" else "")
        ax.plot([r.num_envs for r in points], [r.agent_steps_per_s for r in points], style, color=color,
                alpha=1.0 if precision == "fp32" else 0.6, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("num_envs (scenes per batch)")
    ax.set_ylabel("agent-steps/s (64 agent slots per scene)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="simulation device (auto = CUDA if present)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 64, 256, 1024])
    parser.add_argument("--backgrounds", nargs="+", choices=BACKGROUND_SPECS,
                        default=["trafficbots", "log_replay", "constant_velocity"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None,
                        help="default: eager and graph on CUDA, eager on CPU")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="policy precisions of the learned backgrounds")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per row (graph capture)")
    parser.add_argument("--naive-envs", type=int, default=8, help="single envs of the naive baseline (0: none)")
    parser.add_argument("--naive-steps", type=int, default=20, help="timed steps per single env")
    parser.add_argument("--scenes", default=None, help="H5 file / folder (default: embedded or repo scenes)")
    parser.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: shipped or random-init)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--ego-metrics-only", action="store_true",
                        help="collision / off-road / red-light of the ego only (env default); else every agent")
    parser.add_argument("--checks", action="store_true", help="graph vs eager and bf16 vs fp32 differences first")
    parser.add_argument("--out", default="outputs/vec_env_speed", help="folder for the CSV and the plot")
    args = parser.parse_args(argv)
    if args.warmup + args.steps > LOG_HORIZON:
        parser.error(f"--warmup + --steps must stay within one episode ({LOG_HORIZON} steps)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    modes = args.modes or (list(MODES) if device.type == "cuda" else ["eager"])
    if "graph" in modes and device.type != "cuda":
        parser.error("--modes graph needs a CUDA device")
    clock = Clock(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, ckpt_desc = resolve_checkpoint(args.checkpoint, Path(tmp))
        scenes = resolve_scenes(args.scenes)
        common = {"scenes": scenes, "checkpoint": checkpoint, "device": str(device),
                  "agent_metrics": not args.ego_metrics_only}
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
        title = f"{card}, torch {torch.__version__}, {args.steps} steps/row; checkpoint: {ckpt_desc}"
        print(f"device {device} ({card}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"{os.cpu_count()} CPUs; scenes {scenes}; checkpoint: {ckpt_desc}", flush=True)
        if args.checks:
            run_checks(args, common, device)
        print("\n| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER), flush=True)
        for background in args.backgrounds:
            naive = float("nan")
            if args.naive_envs > 0:
                for graphs in ([False, True] if device.type == "cuda" else [False]):
                    r = naive_row(background, graphs, args.naive_envs, common, args.naive_steps, clock)
                    naive = r.env_steps_per_s if not graphs else naive
                    r.vs_naive = r.env_steps_per_s / naive
                    rows.append(r)
                    print(format_row(r), flush=True)
            precisions = args.precisions if is_learned(background) else ["fp32"]
            for precision in precisions:
                for n in args.num_envs:
                    for r in vector_rows(background, precision, n, modes, common, args.steps, args.warmup, clock):
                        r.vs_naive = r.env_steps_per_s / naive
                        rows.append(r)
                        print(format_row(r), flush=True)
                    write_csv(out / "vec_env_speed.csv", rows)
        write_csv(out / "vec_env_speed.csv", rows)
        try:
            plot(out / "vec_env_speed.png", rows, title)
        except ImportError as error:
            print(f"\nno plot ({error})", flush=True)
        print(f"\nwrote {out / 'vec_env_speed.csv'} and {out / 'vec_env_speed.png'}", flush=True)
    return rows


def run_checks(args: argparse.Namespace, common: dict[str, Any], device: torch.device) -> None:
    """Print the graph-vs-eager and bf16-vs-fp32 differences (skipped parts say why)."""
    learned = [b for b in args.backgrounds if is_learned(b)] or ["trafficbots"]
    if device.type == "cuda":
        for background in dict.fromkeys([learned[0], *args.backgrounds]):
            d = graph_vs_eager(background, 8, 30, common)
            print(f"check graph vs eager ({background}, 8 envs, 30 steps with autoresets): graph active "
                  f"{bool(d['graph_active'])}, max |obs diff| {d['max_obs_diff']:.2e}, "
                  f"max |reward diff| {d['max_reward_diff']:.2e}", flush=True)
    else:
        print("check graph vs eager: skipped (no CUDA device)", flush=True)
    d = bf16_vs_fp32(8, 20, common)
    print(f"check bf16 vs fp32 policy actions (8 scenes, 20 steps, same states): max |acc diff| "
          f"{d['max_acc_diff']:.3f} m/s^2, max |yaw rate diff| {d['max_yaw_rate_diff']:.4f} rad/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
