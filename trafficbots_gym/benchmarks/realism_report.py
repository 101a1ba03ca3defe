"""Realism report of the background-agent models: WOSAC-style likelihoods, minADE and event rates.

    python -m trafficbots_gym.benchmarks.realism_report [--scenes PATH] [--split validation] [--num-scenes 100]
        [--rollouts 32] [--backgrounds trafficbots log_replay constant_velocity idm] [--without-guards GUARD ...]
        [--checkpoint PATH] [--device auto] [--seed 0] [--scenes-per-batch 100] [--out realism_report]

Every agent of a scene is simulated (no external ego: ``BatchedSimulator.step(None)``) for the 80 future
steps. The stochastic "trafficbots" background runs K rollouts per scene (latents and destinations
sampled per rollout) as one simulator batch of S*K rows; the deterministic backgrounds run once per scene
and their rollout counts K times. Writes ``OUT/realism.md``, ``OUT/realism.csv`` and ``OUT/realism.json``
(per-scene values included) and prints the Markdown table with the rollout and metric timings.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trafficbots_gym.benchmarks.cli import add_scene_options, parse_scene_command
from trafficbots_gym.benchmarks.controllers import format_markdown, write_csv, write_text
from trafficbots_gym.benchmarks.realism import (
    BUCKETS, WOSAC_2025, Trajectories, bucket_scores, evaluated_objects, gather_agents, min_ade, realism_inputs,
    realism_scores, scene_features, simulated_event_rates,
)
from trafficbots_gym.data.batch import SceneBatch, collate_arrays
from trafficbots_gym.data.constants import STEP_CURRENT, AgentRole, AgentType
from trafficbots_gym.env.scenes import SceneSource
from trafficbots_gym.simulation import BatchedSimulator
from trafficbots_gym.simulation.background import BACKGROUND_SPECS, LEARNED_BACKGROUNDS, split_guard
from trafficbots_gym.simulation.guard import BACKGROUND_GUARDS, background_guards
from trafficbots_gym.simulation.metrics import MapGeometry

STOCHASTIC_BACKGROUNDS = LEARNED_BACKGROUNDS
"""Backgrounds whose rollouts differ; the others are simulated once per scene."""
DEFAULT_BACKGROUNDS = ("trafficbots", "log_replay", "constant_velocity", "idm")
SUMMARY_KEYS = ("realism_meta_metric", *BUCKETS, *(f.name for f in WOSAC_2025), "min_ade", "collision_rate",
                "offroad_rate", "traffic_light_violation_rate")
"""Per-scene values of the report, averaged over scenes (NaN-aware) for the table."""


@dataclass
class BackgroundReport:
    """Per-scene results [S] of one background and its timings (s)."""

    background: str
    rollouts: int
    scenario_ids: list[str]
    values: dict[str, np.ndarray]
    rollout_s: float
    metrics_s: float

    def summary(self) -> dict[str, Any]:
        """One table row: the dataset mean of every value, the scene and rollout counts and the timings."""
        row: dict[str, Any] = {"background": self.background, "scenes": len(self.scenario_ids),
                               "rollouts": self.rollouts}
        for key in SUMMARY_KEYS:
            finite = self.values[key][np.isfinite(self.values[key])]
            row[key] = float(finite.mean()) if finite.size else math.nan
        row["rollout_s"], row["metrics_s"] = self.rollout_s, self.metrics_s
        return row


def ego_slots(batch: SceneBatch) -> torch.Tensor:
    """[B] the SDC slot of each scene (else its first agent valid at step 10), needed by the simulator."""
    valid = batch.agent_valid[:, STEP_CURRENT]
    sdc = batch.agent_role[..., AgentRole.SDC].bool() & valid
    first_valid = torch.argmax(valid.to(torch.uint8), dim=-1)
    slot = torch.where(sdc.any(-1), torch.argmax(sdc.to(torch.uint8), dim=-1), first_valid)
    if not bool(valid.gather(1, slot.unsqueeze(1)).all()):
        raise ValueError("a scene has no agent valid at step 10")
    return slot


@torch.no_grad()
def rollout(sim: BatchedSimulator, batch: SceneBatch, generator: torch.Generator | None = None) -> Trajectories:
    """Every agent of ``batch`` simulated from step 10 to the log's last step with no external ego
    (steps 0..9 are the log); trajectories over all steps."""
    sim.reset(batch, ego_slots(batch), generator=generator)
    states = [sim.state.clone()]                 # the simulator may overwrite its state buffers in place
    for _ in range(batch.num_steps - 1 - STEP_CURRENT):
        sim.step(None)
        states.append(sim.state.clone())
    return Trajectories(pos=torch.cat([batch.agent_pos[:, :STEP_CURRENT], *(s.pos.unsqueeze(1) for s in states)], 1),
                        yaw=torch.cat([batch.agent_yaw[:, :STEP_CURRENT], *(s.yaw.unsqueeze(1) for s in states)], 1),
                        valid=torch.cat([batch.agent_valid[:, :STEP_CURRENT],
                                         *(s.valid.unsqueeze(1) for s in states)], 1))


def evaluate_batch(sim: BatchedSimulator, batch: SceneBatch, rollouts: int, stochastic: bool,
                   generator: torch.Generator, device: torch.device) -> tuple[dict[str, torch.Tensor], float, float]:
    """Per-scene values [S] for one batch of S scenes, with the rollout and the metric time (s).

    A stochastic background simulates ``rollouts`` rows per scene; a deterministic one simulates one
    row per scene, which then counts ``rollouts`` times in the likelihoods."""
    s = batch.batch_size
    k_sim = rollouts if stochastic else 1
    rows = torch.arange(s, device=batch.agent_valid.device).repeat_interleave(k_sim)
    sim_batch = batch.index(rows)
    t0 = _now(device)
    traj = rollout(sim, sim_batch, generator)
    t1 = _now(device)
    eval_index, eval_mask = evaluated_objects(batch)
    sim_features = scene_features(traj, sim_batch, sim.geometry, eval_index[rows])
    log_features = scene_features(Trajectories.from_log(batch), batch, MapGeometry.from_batch(batch), eval_index)
    is_vehicle = torch.gather(batch.agent_type[..., AgentType.VEHICLE].bool(), 1, eval_index)
    inputs = realism_inputs(sim_features, log_features, k_sim, eval_mask, is_vehicle).repeat_rollouts(rollouts)
    values = realism_scores(inputs)
    values.update(bucket_scores(values))
    values.update(simulated_event_rates(inputs))
    future = slice(STEP_CURRENT + 1, None)
    sim_pos = gather_agents(traj.pos[:, future], eval_index[rows])
    values["min_ade"] = min_ade(sim_pos.reshape(s, k_sim, *sim_pos.shape[1:]),
                                gather_agents(batch.agent_pos[:, future], eval_index),
                                gather_agents(batch.agent_valid[:, future], eval_index), eval_mask)
    return values, t1 - t0, _now(device) - t1


def background_simulator(background: str, device: torch.device, checkpoint: str | None = None,
                         sample_actions: bool = False, latent: str = "prior",
                         destination: str = "sample", without_guards: Sequence[str] = ()) -> BatchedSimulator:
    """A simulator of ``background`` (a name of ``BACKGROUND_SPECS``: ``"trafficbots+guard"`` adds the collision
    guard, lane keeping, the stall restart and the edge hold) with no external ego (the learned one loads
    ``checkpoint`` and draws its latents and destinations as ``latent`` and ``destination`` say; see
    ``TrafficBotsPolicy.reset``); ``without_guards``: names of ``BACKGROUND_GUARDS`` left out of the guarded
    background (ablations)."""
    background, guarded = split_guard(background)
    policy = None
    if background in LEARNED_BACKGROUNDS:
        from trafficbots_gym.model.checkpoint import load_model
        from trafficbots_gym.model.policy import TrafficBotsPolicy
        policy = TrafficBotsPolicy(load_model(checkpoint), device=device)
    return BatchedSimulator(background=background, policy=policy, device=device, latent=latent,
                            destination=destination, deterministic_action=not sample_actions,
                            **background_guards(guarded, without_guards))


def evaluate_background(background: str, source: SceneSource, indices: Sequence[int], *, rollouts: int,
                        device: torch.device, seed: int, scenes_per_batch: int, checkpoint: str | None = None,
                        sample_actions: bool = False, without_guards: Sequence[str] = ()) -> BackgroundReport:
    """Simulate and score ``background`` on the scenes ``indices`` of ``source`` (``without_guards``: guards left
    out of a guarded background)."""
    sim = background_simulator(background, device, checkpoint, sample_actions, without_guards=without_guards)
    generator = torch.Generator(device=device).manual_seed(seed)
    stochastic = split_guard(background)[0] in STOCHASTIC_BACKGROUNDS
    parts: list[dict[str, torch.Tensor]] = []
    rollout_s = metrics_s = 0.0
    for start in tqdm(range(0, len(indices), scenes_per_batch), desc=f"realism {background}", unit="batch"):
        chunk = indices[start:start + scenes_per_batch]
        batch = collate_arrays([source.load(i) for i in chunk]).to(device)
        values, t_roll, t_metric = evaluate_batch(sim, batch, rollouts, stochastic, generator, device)
        parts.append({k: v.detach().float().cpu() for k, v in values.items()})
        rollout_s += t_roll
        metrics_s += t_metric
    merged = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    return BackgroundReport(background=background, rollouts=rollouts,
                            scenario_ids=[source.scenario_id(i) for i in indices], values=merged,
                            rollout_s=rollout_s, metrics_s=metrics_s)


def write_report(reports: Sequence[BackgroundReport], out: Path, config: dict[str, Any]) -> str:
    """Write ``realism.md``, ``realism.csv`` and ``realism.json`` to ``out``; return the Markdown table."""
    rows = [r.summary() for r in reports]
    table = format_markdown(rows)
    write_text(out / "realism.md", "# Background realism (WOSAC-2025 style)\n\n" + table + "\n")
    write_csv(out / "realism.csv", rows)
    per_scene = {r.background: {"scenario_ids": r.scenario_ids,
                                **{k: [_json_float(x) for x in v] for k, v in r.values.items()}} for r in reports}
    doc = {"config": config, "results": [{k: _json_float(v) for k, v in row.items()} for row in rows],
           "per_scene": per_scene}
    write_text(out / "realism.json", json.dumps(doc, indent=1))
    return table


def _json_float(x: Any) -> Any:
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trafficbots_gym.benchmarks.realism_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_options(p, num_scenes=100)
    p.add_argument("--rollouts", type=int, default=32, help="rollouts per scene (default 32, as WOSAC)")
    p.add_argument("--backgrounds", nargs="+", default=list(DEFAULT_BACKGROUNDS), choices=BACKGROUND_SPECS,
                   help="background models (a learned one + '+guard': under the collision guard, lane keeping, "
                        "the stall restart and the edge hold)")
    p.add_argument("--without-guards", nargs="+", default=[], choices=list(BACKGROUND_GUARDS), metavar="GUARD",
                   help=f"leave these guards out of a '+guard' background (ablation): {', '.join(BACKGROUND_GUARDS)}")
    p.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    p.add_argument("--device", default="auto", help="torch device; auto = CUDA when available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes-per-batch", type=int, default=100,
                   help="scenes per simulator batch (x rollouts rows for the learned background)")
    p.add_argument("--sample-actions", action="store_true",
                   help="sample the learned agents' actions instead of taking the Gaussian mean")
    p.add_argument("--out", default="realism_report", help="output folder (default: realism_report)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args, device, source, indices = parse_scene_command(build_parser(), argv,
                                                        ("num_scenes", "rollouts", "scenes_per_batch"))
    torch.manual_seed(args.seed)
    reports = [evaluate_background(bg, source, indices, rollouts=args.rollouts, device=device, seed=args.seed,
                                   scenes_per_batch=args.scenes_per_batch, checkpoint=args.checkpoint,
                                   sample_actions=args.sample_actions, without_guards=args.without_guards)
               for bg in args.backgrounds]
    config = {"scenes": source.describe(), "num_scenes": len(indices), "rollouts": args.rollouts,
              "device": str(device), "seed": args.seed, "sample_actions": args.sample_actions,
              "without_guards": args.without_guards,
              "checkpoint": args.checkpoint or "shipped"}
    table = write_report(reports, Path(args.out), config)
    print(f"scenes: {source.describe()} ({len(indices)}), rollouts: {args.rollouts}, device: {device}")
    print(table)
    print(f"wrote {Path(args.out) / 'realism.md'}, realism.csv, realism.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
