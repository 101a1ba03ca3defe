"""``trafficbots-bench``: ego controllers x background agents, batched, with 95% confidence intervals.

    trafficbots-bench --controller expert constant_velocity idm random ppo [PATH.zip ...]
                      --background log_replay trafficbots trafficbots+guard constant_velocity [idm mixed]
                      [--scenes PATH | --split validation] [--episodes 100] [--seed 0] [--out bench_results]
                      [--device auto] [--checkpoint PATH] [--num-envs 64] [--horizon 80] [--count-after-goal]

Each (controller, background) pair runs the same episodes: episode i is scene ``i mod n_scenes`` with
seed ``seed + i``, so the pairs are compared on identical scenes. Episodes run in batches of
``--num-envs`` rows of one ``TrafficBotsVecEnv`` (one ``BatchedSimulator``, on the GPU when present) for
the full horizon with no early termination, so every metric covers the same steps. ``trafficbots`` is the
raw learned background, ``trafficbots+guard`` the same under its guards (the env's default,
``background_guard=True``); an SB3 policy trained with ``ego_guard=True`` is benchmarked with it. The safety events
(collision, off-road, red light) count up to the step on which the ego reaches its goal, where the
env's default episode ends (``--count-after-goal``: over the whole horizon).

Per pair: goal rate (within 2 m of the logged goal, at any step), collision rate and the at-fault share
of the decidable collisions, off-road rate, red-light rate (any violation), progress along the logged
route (m), ADE to the logged ego trajectory (m), comfort (max |jerk|, m/s^3) and speeding (max m/s above the
top speed of the ego's own log), and how far the ego was ahead of its logged driver at its first
collision (``ahead_at_collision``, m, over the episodes with one). Rates carry Wilson 95%
intervals, means Student-t 95% intervals. Prints a Markdown table and writes ``OUT/results.csv``,
``OUT/results.md`` and ``OUT/results.png``.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tqdm import tqdm

from trafficbots_gym.benchmarks.ego_controllers import BUILTIN_CONTROLLERS, EgoController, make_controller
from trafficbots_gym.data.h5io import atomic_path
from trafficbots_gym.env.config import LOG_HORIZON, NO_TERMINATION, resolve_device
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
from trafficbots_gym.simulation.background import BACKGROUND_SPECS, env_background_keys, split_guard
from trafficbots_gym.simulation.metrics import box_overlap_matrix
from trafficbots_gym.simulation.state import AgentState

DEFAULT_CONTROLLERS = BUILTIN_CONTROLLERS
DEFAULT_BACKGROUNDS = ("log_replay", "trafficbots", "trafficbots+guard", "constant_velocity")
RATES = ("goal_rate", "collision_rate", "at_fault_rate", "offroad_rate", "red_light_rate")
MEANS = ("progress", "route_completion", "ade", "max_jerk", "max_overspeed")
STOPPED_SPEED = 0.1
"""m/s: an ego slower than this when it collides was hit (not at fault)."""
CONTACT_CONE = math.radians(45.0)
"""Half angle of the front and rear cones that decide fault from the partner's bearing."""


class CollisionKind(IntEnum):
    """How the ego's first collision happened (decides fault where possible)."""

    NONE = 0
    FRONT = 1      # partner ahead of the ego (ego rear-ends or runs into it): ego at fault
    REAR = 2       # partner behind the ego (ego is rear-ended): not at fault
    STOPPED = 3    # ego (nearly) stopped: not at fault
    LATERAL = 4    # partner beside the ego: undecided


# ----------------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``successes / n`` (NaNs for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def student_t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom: exact for df 1 and 2, the
    Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5) otherwise (relative error < 0.2% at df 3,
    < 0.05% from df 4 on)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of ``values`` (NaN bounds for fewer than 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = student_t_quantile(0.5 + confidence / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------------

@dataclass
class EpisodeResults:
    """Per-episode outcomes of one (controller, background) pair, numpy arrays [N]."""

    scenario_id: list[str]
    goal_reached: np.ndarray
    collided: np.ndarray
    collision_kind: np.ndarray      # CollisionKind of the first collision
    offroad: np.ndarray
    red_light: np.ndarray           # at least one violation
    progress: np.ndarray            # m
    route_completion: np.ndarray
    ade: np.ndarray                 # m
    max_jerk: np.ndarray            # m/s^3
    max_overspeed: np.ndarray       # m/s above the ego's top logged speed
    ahead_at_collision: np.ndarray  # m ahead of its logged driver at the first collision (NaN: none)
    seconds: float                  # wall time of the pair
    env_steps: int                  # rows x steps simulated

    @staticmethod
    def concat(parts: Sequence["EpisodeResults"]) -> "EpisodeResults":
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in
                  ("goal_reached", "collided", "collision_kind", "offroad", "red_light", "progress",
                   "route_completion", "ade", "max_jerk", "max_overspeed", "ahead_at_collision")}
        return EpisodeResults(scenario_id=[s for p in parts for s in p.scenario_id], **arrays,
                              seconds=sum(p.seconds for p in parts), env_steps=sum(p.env_steps for p in parts))


def collision_kind(state: AgentState, size: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
    """[B] ``CollisionKind`` of each ego's contact with the nearest agent its box overlaps (NONE if none).

    Stopped ego (speed < 0.1 m/s): STOPPED. Otherwise the partner's centre bearing in the ego frame
    decides: within 45 deg of straight ahead FRONT, of straight behind REAR, else LATERAL.
    """
    rows = torch.arange(ego.shape[0], device=ego.device)
    overlap = box_overlap_matrix(state.pos, state.yaw, size[..., 0], size[..., 1])[rows, ego]    # [B, A]
    not_ego = torch.arange(state.valid.shape[1], device=ego.device).unsqueeze(0) != ego.unsqueeze(1)
    touching = overlap & state.valid & not_ego & state.valid[rows, ego].unsqueeze(1)
    rel = state.pos - state.pos[rows, ego].unsqueeze(1)
    dist = rel.norm(dim=-1).masked_fill(~touching, float("inf"))
    partner = dist.argmin(-1)
    bearing = bearing_of(rel[rows, partner], state.yaw[rows, ego]).abs()
    kind = torch.full_like(ego, int(CollisionKind.LATERAL))
    kind = torch.where(bearing <= CONTACT_CONE, int(CollisionKind.FRONT), kind)
    kind = torch.where(bearing >= math.pi - CONTACT_CONE, int(CollisionKind.REAR), kind)
    kind = torch.where(state.spd[rows, ego].abs() < STOPPED_SPEED, int(CollisionKind.STOPPED), kind)
    return torch.where(touching.any(-1), kind, int(CollisionKind.NONE))


def bearing_of(offset: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Signed angle (rad, left positive) of ``offset`` [..., 2] seen from heading ``yaw`` [...]."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    return torch.atan2(-offset[..., 0] * s + offset[..., 1] * c, offset[..., 0] * c + offset[..., 1] * s)


def make_env(controller: EgoController, background: str, num_envs: int, *, scenes: Any, split: str,
             device: torch.device, checkpoint: str | None, horizon: int,
             env_kwargs: Mapping[str, Any] | None = None) -> TrafficBotsVecEnv:
    """The batched env of one pair: torch outputs, no autoreset and no early termination; ``background`` is a
    name of ``BACKGROUND_SPECS`` (``trafficbots`` = the raw model, ``trafficbots+guard`` = under its guards);
    ``env_kwargs`` adds env keys (e.g. ``ego``)."""
    return TrafficBotsVecEnv(num_envs, autoreset_mode=AutoresetMode.DISABLED, torch_output=True, scenes=scenes,
                             split=split, **env_background_keys(background), checkpoint=checkpoint,
                             device=str(device),
                             horizon=horizon, termination=NO_TERMINATION, prefetch=False,
                             **{**(env_kwargs or {}), **controller.env_overrides})


SAFETY_EVENTS = ("collided", "offroad", "red_light")


def count_events_(seen: dict[str, torch.Tensor], step: Mapping[str, Any], goal_before: torch.Tensor,
                  count_after_goal: bool) -> torch.Tensor:
    """OR one step's ego flags (``step[name]`` [B] for each of ``SAFETY_EVENTS``) into ``seen``, for the rows
    whose goal was not reached on an earlier step (every row with ``count_after_goal``), then add this
    step's ``goal_reached`` to ``goal_before``; all in place. Returns the rows counted on this step."""
    counting = torch.ones_like(goal_before) if count_after_goal else ~goal_before
    for name in SAFETY_EVENTS:
        seen[name] |= step[name] & counting
    goal_before |= step["goal_reached"]
    return counting


@torch.no_grad()
def run_batch(env: TrafficBotsVecEnv, controller: EgoController, scene_index: list[int], seed: int,
              count_after_goal: bool = False) -> EpisodeResults:
    """One batch of episodes (row i on scene ``scene_index[i]``, seed ``seed + i``) for the full horizon;
    collisions, off-road and red lights count up to the goal step unless ``count_after_goal``."""
    start = time.perf_counter()
    obs, _ = env.reset(seed=seed, options={"scene_index": scene_index})
    controller.reset(env, seed)
    sim = env.core.sim
    kind = torch.zeros(env.num_envs, dtype=torch.long, device=env.core.device)
    ahead = torch.full((env.num_envs,), math.nan, device=env.core.device)
    events = {k: torch.zeros(env.num_envs, dtype=torch.bool, device=env.core.device) for k in SAFETY_EVENTS}
    goal_before = torch.zeros(env.num_envs, dtype=torch.bool, device=env.core.device)
    info: dict[str, Any] = {}
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(controller.act(env, obs))
        steps += 1
        counting = count_events_(events, info, goal_before, count_after_goal)
        first = info["collided"] & counting & (kind == CollisionKind.NONE)
        kind = torch.where(first, collision_kind(sim.state, sim.batch.agent_size, sim.ego_index), kind)
        ahead = torch.where(first, info["ahead_of_log"], ahead)
        if bool((terminated | truncated).all()):
            break
    ep = {k: v.cpu().numpy() for k, v in info["episode"].items() if not k.startswith("_")}
    return EpisodeResults(scenario_id=[str(s) for s in env.core.scenario_ids], goal_reached=ep["goal_reached"],
                          collided=events["collided"].cpu().numpy(), collision_kind=kind.cpu().numpy(),
                          offroad=events["offroad"].cpu().numpy(), red_light=events["red_light"].cpu().numpy(),
                          progress=ep["progress"], route_completion=ep["route_completion"], ade=ep["ade"],
                          max_jerk=ep["max_jerk"], max_overspeed=ep["max_overspeed"],
                          ahead_at_collision=ahead.cpu().numpy(), seconds=time.perf_counter() - start,
                          env_steps=steps * env.num_envs)


def run_pair(controller: EgoController, background: str, *, episodes: int, seed: int, scenes: Any = None,
             split: str = "validation", device: torch.device | str = "cpu", checkpoint: str | None = None,
             num_envs: int = 64, horizon: int = LOG_HORIZON, env_kwargs: Mapping[str, Any] | None = None,
             progress: tqdm | None = None, count_after_goal: bool = False) -> EpisodeResults:
    """``episodes`` episodes of ``controller`` against ``background`` (see the module docstring);
    ``progress`` advances by the episodes of each finished batch."""
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    rows = min(num_envs, episodes)
    env = make_env(controller, background, rows, scenes=scenes, split=split, device=torch.device(device),
                   checkpoint=checkpoint, horizon=horizon, env_kwargs=env_kwargs)
    try:
        n_scenes = len(env.core.source)
        parts = []
        for first in range(0, episodes, rows):
            ids = [(first + i) % n_scenes for i in range(rows)]
            part = run_batch(env, controller, ids, seed + first, count_after_goal)
            keep = min(rows, episodes - first)
            parts.append(_head(part, keep))
            if progress is not None:
                progress.update(keep)
        return EpisodeResults.concat(parts)
    finally:
        env.close()


def _head(r: EpisodeResults, n: int) -> EpisodeResults:
    """The first ``n`` episodes of ``r`` (the rows of a last, partly filled batch are dropped)."""
    if n == len(r.scenario_id):
        return r
    return EpisodeResults(scenario_id=r.scenario_id[:n], goal_reached=r.goal_reached[:n], collided=r.collided[:n],
                          collision_kind=r.collision_kind[:n], offroad=r.offroad[:n], red_light=r.red_light[:n],
                          progress=r.progress[:n], route_completion=r.route_completion[:n], ade=r.ade[:n],
                          max_jerk=r.max_jerk[:n], max_overspeed=r.max_overspeed[:n],
                          ahead_at_collision=r.ahead_at_collision[:n], seconds=r.seconds,
                          env_steps=r.env_steps)


# ----------------------------------------------------------------------------------------------------
# Summary and outputs
# ----------------------------------------------------------------------------------------------------

def summarize(controller: str, background: str, r: EpisodeResults) -> dict[str, Any]:
    """One results row: every rate with its Wilson interval, every mean with its t interval."""
    n = len(r.scenario_id)
    kinds = r.collision_kind
    at_fault = kinds == CollisionKind.FRONT
    decidable = int(np.isin(kinds, [CollisionKind.FRONT, CollisionKind.REAR, CollisionKind.STOPPED]).sum())
    row: dict[str, Any] = {"controller": controller, "background": background, "episodes": n}
    for name, events, total in (("goal_rate", r.goal_reached, n), ("collision_rate", r.collided, n),
                                ("at_fault_rate", at_fault, n), ("offroad_rate", r.offroad, n),
                                ("red_light_rate", r.red_light, n), ("at_fault_share", at_fault, decidable)):
        k = int(np.sum(events))
        lo, hi = wilson_interval(k, total)
        row[name] = k / total if total else math.nan
        row[f"{name}_lo"], row[f"{name}_hi"] = lo, hi
    row["decidable_collisions"] = decidable
    for name in MEANS:
        mean, lo, hi = t_interval(getattr(r, name))
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = mean, lo, hi
    mean, lo, hi = t_interval(r.ahead_at_collision[~np.isnan(r.ahead_at_collision)])
    row["ahead_at_collision"], row["ahead_at_collision_lo"], row["ahead_at_collision_hi"] = mean, lo, hi
    row["steps_per_s"] = r.env_steps / r.seconds if r.seconds > 0 else math.nan
    return row


def format_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (floats with 4 significant digits)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def display_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Table rows with each value and its interval in one cell: ``0.42 [0.33, 0.52]``."""
    out = []
    for row in rows:
        cells = {"controller": row["controller"], "background": row["background"], "episodes": str(row["episodes"])}
        for name in (*RATES, "at_fault_share", *MEANS, "ahead_at_collision"):
            cells[name] = f"{_cell(row[name])} [{_cell(row[name + '_lo'])}, {_cell(row[name + '_hi'])}]"
        cells["steps/s"] = _cell(row["steps_per_s"])
        out.append(cells)
    return out


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    tmp = atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV (header = the first row's keys) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def plot_results(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bar chart (controllers x backgrounds) of every metric with its 95% interval, as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("goal_rate", "collision_rate", "offroad_rate", "red_light_rate", "progress", "ade", "max_jerk")
    controllers = list(dict.fromkeys(r["controller"] for r in rows))
    backgrounds = list(dict.fromkeys(r["background"] for r in rows))
    by_pair = {(r["controller"], r["background"]): r for r in rows}
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    width = 0.8 / len(backgrounds)
    x = np.arange(len(controllers))
    for ax, metric in zip(axes.flat, metrics):
        for j, bg in enumerate(backgrounds):
            vals = np.array([by_pair[(c, bg)][metric] if (c, bg) in by_pair else np.nan for c in controllers])
            lo = np.array([by_pair[(c, bg)][metric + "_lo"] if (c, bg) in by_pair else np.nan for c in controllers])
            hi = np.array([by_pair[(c, bg)][metric + "_hi"] if (c, bg) in by_pair else np.nan for c in controllers])
            err = np.nan_to_num(np.stack([vals - lo, hi - vals]), nan=0.0).clip(min=0.0)
            ax.bar(x + (j - (len(backgrounds) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=bg)
        ax.set_title(metric)
        ax.set_xticks(x, controllers, rotation=20, ha="right", fontsize=8)
    axes.flat[-1].axis("off")
    axes.flat[0].legend(title="background", fontsize=8)
    fig.suptitle("Ego controllers x background agents (95% intervals)")
    fig.tight_layout()
    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def write_results(rows: Sequence[dict[str, Any]], out: Path, header: str = "") -> str:
    """``results.csv``, ``results.md`` and ``results.png`` in ``out``; returns the Markdown table."""
    table = format_markdown(display_rows(rows))
    write_csv(out / "results.csv", rows)
    write_text(out / "results.md", "# Ego controller benchmark\n\n" + header + table + "\n")
    plot_results(rows, out / "results.png")
    return table


def run_benchmark(controllers: Iterable[str], backgrounds: Iterable[str], *, episodes: int, seed: int,
                  out: Path, scenes: Any = None, split: str = "validation", device: str = "auto",
                  checkpoint: str | None = None, num_envs: int = 64, horizon: int = LOG_HORIZON,
                  count_after_goal: bool = False) -> list[dict[str, Any]]:
    """Every (controller, background) pair; writes the results to ``out`` and returns the rows."""
    dev = resolve_device(device)
    pairs = [(c, b) for c in controllers for b in backgrounds]
    for _, b in pairs:
        split_guard(b)
    rows = []
    with tqdm(total=len(pairs) * episodes, desc="benchmark episodes", unit="episode") as bar:
        for spec, background in pairs:
            controller = make_controller(spec, dev)
            bar.set_postfix_str(f"{controller.name} / {background}")
            result = run_pair(controller, background, episodes=episodes, seed=seed, scenes=scenes, split=split,
                              device=dev, checkpoint=checkpoint, num_envs=num_envs, horizon=horizon, progress=bar,
                              count_after_goal=count_after_goal)
            rows.append(summarize(controller.name, background, result))
    header = (f"Scenes: {scenes if scenes is not None else f'embedded {split} split'}; {episodes} episodes per pair; "
              f"seed {seed}; horizon {horizon} steps; device {dev}; safety events counted "
              f"{'over the whole horizon' if count_after_goal else 'up to the goal'}.\n\n")
    write_results(rows, out, header)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trafficbots-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--controller", nargs="+", default=list(DEFAULT_CONTROLLERS),
                   help=f"{', '.join(BUILTIN_CONTROLLERS)} or a Stable-Baselines3 model .zip")
    p.add_argument("--background", nargs="+", default=list(DEFAULT_BACKGROUNDS), choices=BACKGROUND_SPECS,
                   help="trafficbots = the raw learned model, trafficbots+guard = under its guards "
                        "(the env's default)")
    p.add_argument("--scenes", default=None, help="H5 file or folder of shards (default: embedded --split scenes)")
    p.add_argument("--split", default="validation",
                   help="embedded held-out split (default: validation; testing-split files hold only the "
                        "11-step history, the benchmark needs the logged future)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results")
    p.add_argument("--device", default="auto", help="torch device; auto = CUDA when available")
    p.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    p.add_argument("--num-envs", type=int, default=64, help="episodes simulated together (batch rows)")
    p.add_argument("--horizon", type=int, default=LOG_HORIZON, help="controlled steps per episode (default 80)")
    p.add_argument("--count-after-goal", action="store_true",
                   help="count collisions, off-road and red lights after the ego reached its goal too")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trafficbots-bench``; returns the exit status."""
    args = build_parser().parse_args(argv)
    rows = run_benchmark(args.controller, args.background, episodes=args.episodes, seed=args.seed,
                         out=Path(args.out), scenes=args.scenes, split=args.split, device=args.device,
                         checkpoint=args.checkpoint, num_envs=args.num_envs, horizon=args.horizon,
                         count_after_goal=args.count_after_goal)
    print(format_markdown(display_rows(rows)))
    print(f"wrote {Path(args.out) / 'results.csv'}, results.md, results.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
