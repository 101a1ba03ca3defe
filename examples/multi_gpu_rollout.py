"""One batched TrafficBots vector env per GPU under torch.distributed: aggregate throughput and metrics.

    torchrun --nproc_per_node=2 examples/multi_gpu_rollout.py --num-envs 1024 --steps 200
    torchrun --nproc_per_node=2 examples/multi_gpu_rollout.py --device cpu --num-envs 4 --steps 20   # gloo

Every process drives its own ``TrafficBotsVecEnv`` (``--num-envs`` scenes, learned background by
default, CUDA graphs on a GPU, autoresets) on the GPU of its local rank (NCCL), or on the CPU (gloo).
Row ``i`` of rank ``r`` is seeded ``--seed + r * num_envs + i``, so the ranks run different episodes of
the same scene set (pass ``--shard-scenes`` with a folder / list of H5 shards to give each rank its own
files). The ego drives with a constant action (``--action``); the point is the background and the
simulator. After ``--warmup`` untimed steps the ranks step ``--steps`` times between two barriers;
env-steps, finished episodes and their collision / off-road / red-light / goal counts are all-reduced
(sum; wall time: max over ranks). Rank 0 prints the time of each phase (env construction, first reset,
warm-up, timed steps) as it ends, then a table, and writes ``--out`` (JSON). ``--no-termination`` lets
episodes end at the horizon only (every row resets together), which measures the simulator rather than
the resets of rows that end early.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trafficbots_gym.data.constants import N_AGENT
from trafficbots_gym.data.h5io import resolve_scene_files
from trafficbots_gym.env.config import NO_TERMINATION
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv

EPISODE_SUMS = ("episodes", "goal_reached", "collided", "offroad", "red_light_violations", "return")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-envs", type=int, default=256, help="scenes per process")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (CUDA graph capture)")
    parser.add_argument("--background", default="trafficbots")
    parser.add_argument("--scenes", default=None, help="H5 file, folder of shards or default scenes")
    parser.add_argument("--shard-scenes", action="store_true", help="split the scene files over the ranks")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="learned policy precision")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--no-termination", action="store_true", help="episodes end at the horizon only")
    parser.add_argument("--action", type=float, nargs=2, default=(0.1, 0.0), help="normalised ego action")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON results (rank 0)")
    return parser.parse_args(argv)


def rank_scenes(scenes: str | None, rank: int, world: int, shard: bool) -> Any:
    """This rank's scene source: every file, or (``shard``) every ``world``-th file from ``rank`` on."""
    if not shard or scenes is None:
        return scenes
    files = resolve_scene_files(scenes)
    if len(files) < world:
        raise SystemExit(f"--shard-scenes needs at least {world} scene files, {scenes} has {len(files)}")
    return [str(f) for f in files[rank::world]]


class PhaseClock:
    """Prints (rank 0) how long each phase took, as soon as it ends."""

    def __init__(self, rank: int, device: torch.device) -> None:
        self.rank, self.device = rank, device
        self.last = time.perf_counter()

    def done(self, phase: str) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if self.rank == 0:
            print(f"rank 0: {phase} {seconds:.2f} s", flush=True)
        return seconds


def run(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict[str, float]:
    """Step this rank's vector env; returns its local sums (env steps, wall seconds, episode counts)."""
    clock = PhaseClock(rank, device)
    termination = NO_TERMINATION if args.no_termination else None
    env = TrafficBotsVecEnv(args.num_envs, scenes=rank_scenes(args.scenes, rank, world, args.shard_scenes),
                            checkpoint=args.checkpoint, background=args.background, device=str(device),
                            torch_output=True, cuda_graphs=False if args.no_cuda_graphs else None,
                            policy_precision=args.precision, termination=termination)
    clock.done("env construction")
    env.reset(seed=[args.seed + rank * args.num_envs + i for i in range(args.num_envs)])
    clock.done(f"first reset of {args.num_envs} rows")
    action = torch.tensor([args.action], dtype=torch.float32, device=device).expand(args.num_envs, 2).contiguous()
    for _ in range(args.warmup):
        env.step(action)
    clock.done(f"{args.warmup} warm-up steps")
    sums = torch.zeros(len(EPISODE_SUMS), dtype=torch.float64, device=device)
    dist.barrier()
    clock.done("barrier")
    start = time.perf_counter()
    for _ in range(args.steps):
        _, _, _, _, info = env.step(action)
        if "episode" in info:      # rows that finished this step (values are zero in the other rows)
            ep = info["episode"]
            finished = torch.full((), float(info["_episode"].sum()), device=device)
            sums += torch.stack([finished, ep["goal_reached"].sum(), ep["collided"].sum(), ep["offroad"].sum(),
                                 ep["red_light_violations"].sum(), ep["r"].sum()]).to(sums)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    clock.done(f"{args.steps} timed steps")
    graphs = float(env.core.graphs_active)
    env.close()
    return {"env_steps": float(args.num_envs * args.steps), "wall_s": wall, "graphs": graphs,
            **{k: float(v) for k, v in zip(EPISODE_SUMS, sums.tolist())}}


def all_reduce(local: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum every entry over the ranks, except the wall time (max) and the graph flag (min)."""
    keys = sorted(local)
    values = torch.tensor([local[k] for k in keys], dtype=torch.float64, device=device)
    summed, longest, least = values.clone(), values.clone(), values.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    out = dict(zip(keys, summed.tolist()))
    out["wall_s"] = longest[keys.index("wall_s")].item()
    out["graphs"] = least[keys.index("graphs")].item()
    return out


def report(total: dict[str, float], args: argparse.Namespace, world: int, device: torch.device) -> dict[str, Any]:
    env_steps_per_s = total["env_steps"] / total["wall_s"]
    episodes = max(total["episodes"], 1.0)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result = {"world_size": world, "device": card, "backend": dist.get_backend(), "background": args.background,
              "precision": args.precision, "cuda_graphs": bool(total["graphs"]), "num_envs_per_rank": args.num_envs,
              "steps": args.steps, "env_steps": int(total["env_steps"]), "wall_s": total["wall_s"],
              "env_steps_per_s": env_steps_per_s, "agent_steps_per_s": N_AGENT * env_steps_per_s,
              "episodes": int(total["episodes"]), "goal_rate": total["goal_reached"] / episodes,
              "collision_rate": total["collided"] / episodes, "offroad_rate": total["offroad"] / episodes,
              "red_lights_per_episode": total["red_light_violations"] / episodes,
              "mean_return": total["return"] / episodes}
    print(f"{world} x {card} ({result['backend']}), {args.num_envs} envs/rank, background {args.background}, "
          f"{args.precision}, CUDA graphs {result['cuda_graphs']}")
    print("| ranks | env-steps/s | agent-steps/s | episodes | goal | collision | off-road | red lights/ep |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {world} | {env_steps_per_s:,.0f} | {result['agent_steps_per_s']:,.0f} | {result['episodes']} | "
          f"{result['goal_rate']:.3f} | {result['collision_rate']:.3f} | {result['offroad_rate']:.3f} | "
          f"{result['red_lights_per_episode']:.3f} |", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(world, 1)))
        dist.init_process_group("gloo")
    try:
        total = all_reduce(run(args, rank, world, device), device)
        if rank == 0:
            result = report(total, args, world, device)
            if args.out:
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(out.suffix + ".tmp")
                tmp.write_text(json.dumps(result, indent=2))
                os.replace(tmp, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
