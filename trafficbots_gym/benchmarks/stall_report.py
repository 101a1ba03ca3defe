"""Stall report of a background: simulated vehicles that stand at the end while their log still moves.

    python -m trafficbots_gym.benchmarks.stall_report [--scenes PATH] [--split validation] [--num-scenes 50]
        [--backgrounds trafficbots trafficbots+guard] [--without-guards GUARD ...] [--checkpoint PATH]
        [--latent prior] [--destination sample] [--sample-actions] [--lights logged] [--device auto] [--seed 0]
        [--scenes-per-batch 25]

Every agent is simulated (no external ego: ``BatchedSimulator.step(None)``) for the 80 future steps, one
rollout per scene. At the last step, of the simulated vehicles whose log moves faster than ``MOVING_SPEED``
m/s, a vehicle *stalls* when it stands below ``STANDING_SPEED`` m/s (the thresholds of the loss's starters),
and the stall is *free* when no box lies in its lane within ``FREE_GAP`` m ahead (the collision guard's
corridor test, no look-ahead). Also printed: the mean speed of the simulated vehicles and of their log at
``PROFILE_STEPS``. ``--lights green`` (every light green at every step) or ``none`` (no lights) edits the
scenes, to see whether the learned agents start on green at all. A learned model that brakes more than its
log, or does not start again after a stop, shows here before it shows in minADE.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from trafficbots_gym.benchmarks.cli import add_scene_options, parse_scene_command
from trafficbots_gym.benchmarks.controllers import format_markdown
from trafficbots_gym.benchmarks.realism_report import background_simulator
from trafficbots_gym.data.batch import SceneBatch, collate_arrays
from trafficbots_gym.data.constants import N_STEP, STEP_CURRENT, AgentType, TLState
from trafficbots_gym.env.scenes import SceneSource
from trafficbots_gym.model.losses import MOVING_SPEED, STANDING_SPEED
from trafficbots_gym.simulation import BatchedSimulator
from trafficbots_gym.simulation.background import BACKGROUND_SPECS
from trafficbots_gym.simulation.guard import BACKGROUND_GUARDS, GuardParams, obstacle_gaps
from trafficbots_gym.simulation.state import AgentState

FREE_GAP = 15.0
"""m: a standing vehicle with no box this close ahead in its lane has a free lane."""
EARLY_STEPS = 10
"""Simulated steps (1 s) after which a vehicle that has not moved since counts as an early stall."""
PROFILE_STEPS = (30, 60, 90)
"""Steps at which the mean speeds are reported."""


@dataclass
class StallCounts:
    """Vehicles moving in the log at the last step; those of them that stand; those with a free lane; those
    that stand since the episode's first second."""

    moving: int = 0
    stalled: int = 0
    free: int = 0
    early: int = 0

    def __add__(self, other: "StallCounts") -> "StallCounts":
        return StallCounts(self.moving + other.moving, self.stalled + other.stalled, self.free + other.free,
                           self.early + other.early)


def stall_counts(state: AgentState, size: torch.Tensor, log_spd: torch.Tensor, vehicles: torch.Tensor,
                 last_moving: torch.Tensor) -> StallCounts:
    """Stalls among ``vehicles`` [B, A] bool of the simulated ``state`` [B, A], given their logged speed [B, A]
    at the same step, the box ``size`` [B, A, >=2] and the last step each one moved, ``last_moving`` [B, A]
    (``STEP_CURRENT`` or less: not since the simulation started)."""
    moving = vehicles & (log_spd > MOVING_SPEED)
    stalled = moving & (state.spd.abs() < STANDING_SPEED)
    gap, _ = obstacle_gaps(state, size, GuardParams(lookahead=(0.0,)))
    early = stalled & (last_moving <= STEP_CURRENT + EARLY_STEPS)
    return StallCounts(int(moving.sum()), int(stalled.sum()), int((stalled & (gap > FREE_GAP)).sum()), int(early.sum()))


@dataclass
class StallReport:
    """Stall counts and the summed simulated and logged vehicle speeds at ``PROFILE_STEPS`` of one background."""

    background: str
    counts: StallCounts = field(default_factory=StallCounts)
    sim_speed: dict[int, float] = field(default_factory=lambda: dict.fromkeys(PROFILE_STEPS, 0.0))
    log_speed: dict[int, float] = field(default_factory=lambda: dict.fromkeys(PROFILE_STEPS, 0.0))
    vehicles: dict[int, int] = field(default_factory=lambda: dict.fromkeys(PROFILE_STEPS, 0))

    def row(self) -> dict[str, str]:
        """The report's table row."""
        c = self.counts
        share = c.stalled / c.moving if c.moving else float("nan")
        out = {"background": self.background, "moving in the log": str(c.moving),
               "stalled": f"{c.stalled} ({share:.0%})", "stalled, lane free": str(c.free),
               "stalled since the first second": str(c.early)}
        for t in PROFILE_STEPS:
            n = max(self.vehicles[t], 1)
            out[f"speed at step {t}: sim / log (m/s)"] = f"{self.sim_speed[t] / n:.2f} / {self.log_speed[t] / n:.2f}"
        return out


def simulate_batch(sim: BatchedSimulator, batch: SceneBatch, generator: torch.Generator, report: StallReport) -> None:
    """Roll ``batch`` out under ``sim`` (every agent simulated) and add its stalls and speeds to ``report``."""
    sim.reset(batch, torch.zeros(batch.batch_size, dtype=torch.long, device=batch.agent_valid.device),
              generator=generator)
    is_vehicle = batch.agent_type[..., AgentType.VEHICLE].bool()
    last_moving = torch.where(batch.agent_spd[:, STEP_CURRENT].abs() >= STANDING_SPEED, STEP_CURRENT, -1)
    for t in range(STEP_CURRENT + 1, N_STEP):
        sim.step(None)
        last_moving = torch.where(sim.state.spd.abs() >= STANDING_SPEED, t, last_moving)
        if t in PROFILE_STEPS:
            vehicles = simulated_vehicles(sim, batch, is_vehicle, t)
            report.sim_speed[t] += float(sim.state.spd[vehicles].sum())
            report.log_speed[t] += float(batch.agent_spd[:, t][vehicles].sum())
            report.vehicles[t] += int(vehicles.sum())
    last = N_STEP - 1
    report.counts += stall_counts(sim.state, batch.agent_size, batch.agent_spd[:, last],
                                  simulated_vehicles(sim, batch, is_vehicle, last), last_moving)


def simulated_vehicles(sim: BatchedSimulator, batch: SceneBatch, is_vehicle: torch.Tensor, step: int) -> torch.Tensor:
    """[B, A] bool: vehicles valid in the simulation and in the log at ``step``."""
    return is_vehicle & sim.state.valid & batch.agent_valid[:, step]


def edit_lights(batch: SceneBatch, lights: str) -> SceneBatch:
    """``batch`` with its traffic lights as logged, all green at every step, or none."""
    if lights == "logged":
        return batch
    if lights == "green":
        state = torch.zeros_like(batch.tl_state)
        state[..., TLState.GO] = True
        return dataclasses.replace(batch, tl_state=state)
    if lights == "none":
        return dataclasses.replace(batch, tl_valid=torch.zeros_like(batch.tl_valid))
    raise ValueError(f"lights must be 'logged', 'green' or 'none', got {lights!r}")


def evaluate(background: str, source: SceneSource, indices: Sequence[int], *, device: torch.device, seed: int,
             scenes_per_batch: int, checkpoint: str | None = None, sample_actions: bool = False,
             latent: str = "prior", destination: str = "sample", lights: str = "logged",
             without_guards: Sequence[str] = ()) -> StallReport:
    """The stall report of ``background`` on the scenes ``indices`` of ``source`` (lights per ``edit_lights``;
    ``without_guards``: guards left out of a guarded background)."""
    sim = background_simulator(background, device, checkpoint, sample_actions, latent=latent, destination=destination,
                               without_guards=without_guards)
    generator = torch.Generator(device=device).manual_seed(seed)
    report = StallReport(background)
    for start in tqdm(range(0, len(indices), scenes_per_batch), desc=f"stalls {background}", unit="batch"):
        chunk = indices[start:start + scenes_per_batch]
        batch = edit_lights(collate_arrays([source.load(i) for i in chunk]), lights)
        simulate_batch(sim, batch.to(device), generator, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trafficbots_gym.benchmarks.stall_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_options(p, num_scenes=50)
    p.add_argument("--backgrounds", nargs="+", default=["trafficbots", "trafficbots+guard"], choices=BACKGROUND_SPECS,
                   help="background models (default: the learned one raw and under the guards)")
    p.add_argument("--without-guards", nargs="+", default=[], choices=list(BACKGROUND_GUARDS), metavar="GUARD",
                   help=f"leave these guards out of a '+guard' background (ablation): {', '.join(BACKGROUND_GUARDS)}")
    p.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    p.add_argument("--latent", choices=("prior", "posterior"), default="prior",
                   help="the learned agents' personality: prior (the env's draw) or posterior (from the whole log)")
    p.add_argument("--destination", choices=("sample", "argmax", "logged"), default="sample",
                   help="the learned agents' destination (default: sampled, as in the env)")
    p.add_argument("--sample-actions", action="store_true",
                   help="sample the learned agents' actions instead of taking the Gaussian mean")
    p.add_argument("--lights", choices=("logged", "green", "none"), default="logged",
                   help="traffic lights as logged (default), all green at every step, or none")
    p.add_argument("--device", default="auto", help="torch device; auto = CUDA when available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes-per-batch", type=int, default=25, help="scenes per simulator batch (default 25)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args, device, source, indices = parse_scene_command(build_parser(), argv, ("num_scenes", "scenes_per_batch"))
    reports = [evaluate(bg, source, indices, device=device, seed=args.seed, scenes_per_batch=args.scenes_per_batch,
                        checkpoint=args.checkpoint, sample_actions=args.sample_actions, latent=args.latent,
                        destination=args.destination, lights=args.lights, without_guards=args.without_guards)
               for bg in args.backgrounds]
    print(f"scenes: {source.describe()} ({len(indices)}), latent: {args.latent}, destination: {args.destination}, "
          f"actions: {'sampled' if args.sample_actions else 'mean'}, lights: {args.lights}, device: {device}")
    print(format_markdown([r.row() for r in reports]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
