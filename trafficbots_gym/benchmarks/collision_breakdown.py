"""Where simulated agents collide: each evaluated agent's first contact, by speed, direction and log.

    python -m trafficbots_gym.benchmarks.collision_breakdown [--backgrounds trafficbots log_replay]
        [--num-scenes 40] [--scenes PATH | --split validation] [--checkpoint PATH] [--device auto] [--seed 0]
        [--scenes-per-batch 10] [--out collision_breakdown]

Every agent of a scene is simulated for the 80 future steps as in the realism report (one rollout per
scene). For each evaluated object (the SDC and the tracks to predict, as the report's ``collision_rate``)
whose box first overlaps another agent's box at step t, the contact is described by

* its speed and the partner's (m/s, from the simulated positions of steps t-1 and t),
* the direction of the partner: same heading (within 30 deg), opposite (within 30 deg of reversed) or
  crossing, and where it is (ahead / behind within 45 deg, beside; "stopped" when the agent moves under
  0.5 m/s),
* the log at step t: the agent's logged speed, the separation of the pair's logged boxes (m, the bumper
  gap for a queue), and the agent's distance to its own logged position.

The table gives the share of contacts in each class; ``queue`` = logged speed under 1 m/s and a logged
gap under 2 m to the same partner (the pair stood close in a queue), ``low_speed`` = both under 2 m/s.
Writes ``OUT/collision_breakdown.md`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trafficbots_gym.benchmarks.cli import add_scene_options, parse_scene_command
from trafficbots_gym.benchmarks.controllers import bearing_of, format_markdown, write_csv, write_text
from trafficbots_gym.benchmarks.realism import Trajectories, box_separation, evaluated_objects
from trafficbots_gym.benchmarks.realism_report import background_simulator, rollout
from trafficbots_gym.data.batch import SceneBatch, collate_arrays
from trafficbots_gym.data.constants import DT, STEP_CURRENT
from trafficbots_gym.env.scenes import SceneSource
from trafficbots_gym.simulation.background import BACKGROUND_SPECS
from trafficbots_gym.simulation.metrics import box_overlap_matrix

SAME_HEADING = math.radians(30.0)
"""Heading difference under which the partner drives the same way (over 180 deg minus it: the opposite)."""
CONE = math.radians(45.0)
"""Half angle of the ahead / behind cones of the partner's bearing."""
STOPPED = 0.5
"""m/s: an agent slower than this at contact was (nearly) stopped."""
LOW_SPEED = 2.0
"""m/s: a contact with both agents slower than this is a low-speed one."""
QUEUE_SPEED, QUEUE_GAP = 1.0, 2.0
"""Logged speed (m/s) and logged box separation (m) under which the pair stood close in a queue."""


@dataclass
class FirstContacts:
    """One entry per colliding evaluated agent, numpy [N], plus the number of evaluated agents."""

    row: np.ndarray             # batch row of the scene
    agent: np.ndarray           # agent slot
    step: np.ndarray            # log step of the first contact
    speed: np.ndarray           # m/s at contact
    partner_speed: np.ndarray   # m/s (NaN when the partner appeared at this step)
    heading_diff: np.ndarray    # |partner heading - heading| in [0, pi]
    bearing: np.ndarray         # |bearing of the partner's centre in the agent frame| in [0, pi]
    log_speed: np.ndarray       # m/s of the agent's log at that step (NaN where the log lacks it)
    log_gap: np.ndarray         # m between the pair's logged boxes (NaN where the log lacks one)
    log_deviation: np.ndarray   # m from the agent's logged position (NaN where the log lacks it)
    agents: int                 # evaluated agents (the denominator of the collision rate)

    @staticmethod
    def concat(parts: Sequence["FirstContacts"]) -> "FirstContacts":
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(FirstContacts)
                  if f.name != "agents"}
        return FirstContacts(**arrays, agents=sum(p.agents for p in parts))

    def offset_rows(self, by: int) -> "FirstContacts":
        """The same contacts with their batch rows shifted by ``by`` (to number the scenes of later batches)."""
        return FirstContacts(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "row"},
                             row=self.row + by)


def first_contacts(traj: Trajectories, batch: SceneBatch) -> FirstContacts:
    """The first contact after step 10 of every evaluated object of ``batch`` in ``traj`` (steps 0..90)."""
    b, t, a = traj.valid.shape
    length, width = batch.agent_size[..., 0], batch.agent_size[..., 1]
    fut = slice(STEP_CURRENT + 1, t)
    f = t - STEP_CURRENT - 1
    pos, yaw, valid = traj.pos[:, fut], traj.yaw[:, fut], traj.valid[:, fut]
    overlap = box_overlap_matrix(pos.reshape(b * f, a, 2), yaw.reshape(b * f, a),
                                 length.repeat_interleave(f, 0), width.repeat_interleave(f, 0)).view(b, f, a, a)
    not_self = ~torch.eye(a, dtype=torch.bool, device=overlap.device)
    overlap &= valid.unsqueeze(-1) & valid.unsqueeze(-2) & not_self
    index, mask = evaluated_objects(batch)
    evaluated = torch.zeros(b, a, dtype=torch.bool, device=overlap.device).scatter_(1, index, mask)
    touching = overlap.any(-1) & evaluated.unsqueeze(1)                                       # [B, F, A]
    hit = touching.any(1)                                                                      # [B, A]
    rows, agent = hit.nonzero(as_tuple=True)
    step = torch.argmax(touching.to(torch.uint8), dim=1)[rows, agent]                          # future index
    here = pos[rows, step, agent]
    dist = (pos[rows, step] - here.unsqueeze(1)).norm(dim=-1).masked_fill(~overlap[rows, step, agent], math.inf)
    partner = dist.argmin(-1)
    prev = (traj.pos[rows, STEP_CURRENT + step, agent], traj.pos[rows, STEP_CURRENT + step, partner])
    speed = (here - prev[0]).norm(dim=-1) / DT
    there = pos[rows, step, partner]
    partner_speed = ((there - prev[1]).norm(dim=-1) / DT).masked_fill(
        ~traj.valid[rows, STEP_CURRENT + step, partner], math.nan)
    heading = yaw[rows, step, agent]
    heading_diff = torch.remainder(yaw[rows, step, partner] - heading + math.pi, 2 * math.pi) - math.pi
    bearing = bearing_of(there - here, heading)
    s = STEP_CURRENT + 1 + step
    log_i, log_j = batch.agent_valid[rows, s, agent], batch.agent_valid[rows, s, partner]
    log_pos_i, log_pos_j = batch.agent_pos[rows, s, agent], batch.agent_pos[rows, s, partner]
    log_gap = box_separation(log_pos_i, batch.agent_yaw[rows, s, agent], batch.agent_size[rows, agent],
                             log_pos_j, batch.agent_yaw[rows, s, partner], batch.agent_size[rows, partner])
    nan = torch.full_like(speed, math.nan)
    values = {"speed": speed, "partner_speed": partner_speed, "heading_diff": heading_diff.abs(),
              "bearing": bearing.abs(), "log_speed": torch.where(log_i, batch.agent_spd[rows, s, agent].abs(), nan),
              "log_gap": torch.where(log_i & log_j, log_gap, nan),
              "log_deviation": torch.where(log_i, (here - log_pos_i).norm(dim=-1), nan)}
    return FirstContacts(row=rows.cpu().numpy(), agent=agent.cpu().numpy(), step=s.cpu().numpy(),
                         **{k: v.float().cpu().numpy() for k, v in values.items()}, agents=int(mask.sum()))


def summarize_contacts(background: str, c: FirstContacts) -> dict[str, Any]:
    """One table row: the collision rate and the share of the contacts in each class."""
    n = len(c.speed)
    stopped = c.speed < STOPPED
    share = (lambda flags: float(np.mean(flags)) if n else math.nan)
    with np.errstate(invalid="ignore"):
        queue = (c.log_speed < QUEUE_SPEED) & (c.log_gap < QUEUE_GAP)
        low = (c.speed < LOW_SPEED) & (c.partner_speed < LOW_SPEED)
    return {"background": background, "agents": c.agents, "colliding": n,
            "collision_rate": n / c.agents if c.agents else math.nan,
            "same_direction": share(c.heading_diff < SAME_HEADING),
            "opposite": share(c.heading_diff > math.pi - SAME_HEADING),
            "crossing": share((c.heading_diff >= SAME_HEADING) & (c.heading_diff <= math.pi - SAME_HEADING)),
            "stopped": share(stopped), "ahead": share(~stopped & (c.bearing <= CONE)),
            "behind": share(~stopped & (c.bearing >= math.pi - CONE)),
            "beside": share(~stopped & (c.bearing > CONE) & (c.bearing < math.pi - CONE)),
            "low_speed": share(low), "queue": share(queue),
            "median_speed": float(np.median(c.speed)) if n else math.nan,
            "median_log_deviation": float(np.nanmedian(c.log_deviation)) if n else math.nan}


def breakdown(background: str, source: SceneSource, indices: Sequence[int], *, device: torch.device, seed: int,
              scenes_per_batch: int, checkpoint: str | None = None) -> FirstContacts:
    """One rollout of ``background`` on the scenes ``indices`` of ``source``, and its first contacts (``row``
    numbers the position in ``indices``)."""
    sim = background_simulator(background, device, checkpoint)
    generator = torch.Generator(device=device).manual_seed(seed)
    parts = []
    for start in tqdm(range(0, len(indices), scenes_per_batch), desc=f"contacts {background}", unit="batch"):
        batch = collate_arrays([source.load(i) for i in indices[start:start + scenes_per_batch]]).to(device)
        with torch.no_grad():
            parts.append(first_contacts(rollout(sim, batch, generator), batch).offset_rows(start))
    return FirstContacts.concat(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Where simulated agents collide (first contact of each agent).")
    p.add_argument("--backgrounds", nargs="+", default=["trafficbots", "log_replay"], choices=BACKGROUND_SPECS)
    add_scene_options(p, num_scenes=40)
    p.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes-per-batch", type=int, default=10)
    p.add_argument("--out", default="collision_breakdown")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, device, source, indices = parse_scene_command(build_parser(), argv, ("num_scenes", "scenes_per_batch"))
    rows = [summarize_contacts(bg, breakdown(bg, source, indices, device=device, seed=args.seed,
                                             scenes_per_batch=args.scenes_per_batch, checkpoint=args.checkpoint))
            for bg in args.backgrounds]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_markdown(rows)
    write_csv(out / "collision_breakdown.csv", rows)
    write_text(out / "collision_breakdown.md", f"# First contacts, {len(indices)} scenes, seed {args.seed}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
