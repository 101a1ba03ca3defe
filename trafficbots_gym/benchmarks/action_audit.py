"""Teacher-forced action audit of a TrafficBots checkpoint: the policy's one-step actions from logged states
against the log's own actions, and the closed-loop speed profile of the same scenes.

    python -m trafficbots_gym.benchmarks.action_audit [--scenes PATH] [--split validation] [--num-scenes 30]
        [--checkpoint PATH] [--device auto]

Teacher forcing puts every agent back on its logged state after each policy step (steps 1..90; posterior-mean
latent, logged destinations, the traffic lights of each step), so every action is a one-step prediction from
a logged state. The log's action is the inverse of the midpoint unicycle (``simulation.dynamics``):
acceleration ``(spd[t] - spd[t-1]) / dt`` and yaw rate ``(yaw[t] - yaw[t-1]) / dt``. A mean difference here
("bias") is the policy's own, given logged inputs; a closed loop that drifts without one compounds error.

Printed for vehicles per step range: mean policy and log acceleration of moving vehicles (logged speed
> 0.5 m/s), their difference and the mean absolute error, the same for the yaw rate; "restarts" (logged
speed < 0.3 m/s, log acceleration > 0.5 m/s^2); and the mean vehicle speed of a ``reactive_replay``
rollout against the log at a few steps.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trafficbots_gym.benchmarks.cli import add_scene_options, require_positive
from trafficbots_gym.data.batch import SceneBatch, collate_arrays
from trafficbots_gym.data.constants import DT, AgentType
from trafficbots_gym.env.config import resolve_device
from trafficbots_gym.env.scenes import SceneSource
from trafficbots_gym.model.checkpoint import load_model
from trafficbots_gym.model.closed_loop import (encode_episode, episode_context, initial_loop_state,
                                               teacher_forcing_mask, transition)
from trafficbots_gym.model.rollout import rollout
from trafficbots_gym.model.traffic_bots import TrafficBots
from trafficbots_gym.simulation.state import AgentState

STEP_RANGES: tuple[tuple[int, int], ...] = ((1, 10), (11, 30), (31, 60), (61, 90))
"""Inclusive ranges of the step a transition leads to (1..10 is the warm start of training rollouts)."""
MOVING_SPEED: float = 0.5
"""Vehicles whose logged speed before the transition exceeds this (m/s) count as moving."""
STOPPED_SPEED, RESTART_ACC = 0.3, 0.5
"""A restart: logged speed below STOPPED_SPEED (m/s) and log acceleration above RESTART_ACC (m/s^2)."""
PROFILE_STEPS: tuple[int, ...] = (11, 30, 60, 90)


def log_actions(spd: Tensor, yaw: Tensor, dt: float = DT) -> Tensor:
    """[..., T-1, A, 2] (acceleration, yaw rate) that take the midpoint unicycle from each logged step to the
    next, from ``spd`` / unwrapped ``yaw`` [..., T, A]."""
    return torch.stack([spd[..., 1:, :] - spd[..., :-1, :], yaw[..., 1:, :] - yaw[..., :-1, :]], dim=-1) / dt


@torch.no_grad()
def teacher_forced_actions(model: TrafficBots, batch: SceneBatch) -> Tensor:
    """[B, T-1, A, 2] physical actions of the deterministic policy for the transitions to steps 1..T-1, every agent
    put on its logged state after each step (an agent without a logged state is left out, not simulated; zero
    where the agent is not valid before the transition)."""
    enc = encode_episode(model, batch)
    if enc.full_tokens is None:
        raise ValueError(f"the audit needs the logged future; the batch has {batch.num_steps} steps")
    post = model.latent(enc.full_tokens, batch.agent_valid, enc.tl_tokens, enc.tl_valid, enc.map, posterior=True)
    ctx = episode_context(model, batch, enc, batch.agent_type, batch.agent_size, post.mean.float(), batch.agent_dest,
                          batch.num_steps - 1)
    last = batch.num_steps - 1
    forced = teacher_forcing_mask(batch.agent_valid, last, last)
    state = initial_loop_state(model, batch, enc.history_valid.any(1))
    actions = []
    for step in range(1, batch.num_steps):
        tr = transition(model, ctx, state, step, batch, forced, deterministic=True)
        actions.append(tr.policy.physical)
        state = dataclasses.replace(tr.state, agents=AgentState.from_log(batch, step))
    return torch.stack(actions, dim=1)


def action_bias(policy: Tensor, log: Tensor, mask: Tensor,
                ranges: Sequence[tuple[int, int]] = STEP_RANGES) -> list[dict[str, float]]:
    """Per step range: counted transitions ``n``, mean policy / log acceleration and yaw rate, their mean
    difference (``*_bias``) and mean absolute difference (``*_mae``) over ``mask`` [B, T-1, A].

    ``policy`` / ``log`` are [B, T-1, A, 2] with index i the transition to step i + 1.
    """
    steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)[None, :, None]
    rows = []
    for lo, hi in ranges:
        m = mask & (steps >= lo) & (steps <= hi)
        n = int(m.sum())
        row: dict[str, float] = {"first_step": lo, "last_step": hi, "n": n}
        for k, name in enumerate(("acc", "yaw_rate")):
            p, g = policy[..., k][m], log[..., k][m]
            nan = float("nan")
            row.update({f"{name}_policy": float(p.mean()) if n else nan, f"{name}_log": float(g.mean()) if n else nan,
                        f"{name}_bias": float((p - g).mean()) if n else nan,
                        f"{name}_mae": float((p - g).abs().mean()) if n else nan})
        rows.append(row)
    return rows


@dataclass
class AuditResult:
    """What :func:`audit` measures (rows as returned by :func:`action_bias`)."""

    moving: list[dict[str, float]]   # moving vehicles, per step range of STEP_RANGES
    restart: dict[str, float]        # vehicles the log restarts from a stop, all steps
    profile: list[dict[str, float]]  # reactive replay: step, n, sim_speed, log_speed at PROFILE_STEPS


@torch.no_grad()
def audit(model: TrafficBots, batches: Iterable[SceneBatch]) -> AuditResult:
    """Teacher-forced bias of moving vehicles per step range, restart actions and the closed-loop speed profile,
    over the scenes of ``batches`` (scored together; the batches bound the memory)."""
    parts: dict[str, list[Tensor]] = {k: [] for k in ("policy", "log", "both", "before", "sim_spd", "sim_valid",
                                                       "log_spd")}
    for batch in batches:
        vehicle = batch.agent_type[..., AgentType.VEHICLE][:, None]
        out = rollout(model, batch, procedure="reactive_replay")
        for key, value in (("policy", teacher_forced_actions(model, batch)),
                           ("log", log_actions(batch.agent_spd, batch.agent_yaw)),
                           ("both", batch.agent_valid[:, :-1] & batch.agent_valid[:, 1:] & vehicle),
                           ("before", batch.agent_spd[:, :-1]), ("sim_spd", out.pred_spd),
                           ("sim_valid", out.pred_valid & batch.agent_valid[:, 1:] & vehicle),
                           ("log_spd", batch.agent_spd[:, 1:])):
            parts[key].append(value)
    policy, log, both, before, sim_spd, sim_valid, log_spd = (torch.cat(parts[k]) for k in (
        "policy", "log", "both", "before", "sim_spd", "sim_valid", "log_spd"))
    restart = both & (before < STOPPED_SPEED) & (log[..., 0] > RESTART_ACC)
    profile = []
    for step in PROFILE_STEPS:
        m = sim_valid[:, step - 1]
        profile.append({"step": step, "n": int(m.sum()), "sim_speed": float(sim_spd[:, step - 1][m].mean()),
                        "log_speed": float(log_spd[:, step - 1][m].mean())})
    return AuditResult(moving=action_bias(policy, log, both & (before > MOVING_SPEED)),
                       restart=action_bias(policy, log, restart, ranges=((1, policy.shape[1]),))[0], profile=profile)


def format_audit(result: AuditResult) -> str:
    """Plain-text tables of :func:`audit`'s result."""
    lines = ["moving vehicles, teacher-forced one-step actions (m/s^2, rad/s):",
             "steps   |     n | acc policy |  acc log | acc bias | acc MAE | yaw-rate bias | yaw-rate MAE"]
    for r in result.moving:
        lines.append(f"{r['first_step']:2d}-{r['last_step']:2d}   | {r['n']:5d} | {r['acc_policy']:+10.3f} | "
                     f"{r['acc_log']:+8.3f} | {r['acc_bias']:+8.3f} | {r['acc_mae']:7.3f} | {r['yaw_rate_bias']:+13.4f} |"
                     f" {r['yaw_rate_mae']:12.4f}")
    r = result.restart
    lines.append(f"restarts (logged speed < {STOPPED_SPEED} m/s, log acc > {RESTART_ACC} m/s^2): n {r['n']}, "
                 f"policy acc {r['acc_policy']:+.3f}, log acc {r['acc_log']:+.3f}")
    lines.append("reactive replay, mean vehicle speed (m/s): " + ", ".join(
        f"step {p['step']}: sim {p['sim_speed']:.2f} / log {p['log_speed']:.2f}" for p in result.profile))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trafficbots_gym.benchmarks.action_audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_options(p, num_scenes=30)
    p.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    p.add_argument("--scenes-per-batch", type=int, default=8, help="scenes per model call (default 8; bounds memory)")
    p.add_argument("--device", default="auto", help="torch device; auto = CUDA when available")
    return p


def scene_batches(source: SceneSource, num_scenes: int, per_batch: int,
                  device: torch.device) -> Iterator[SceneBatch]:
    """The first ``num_scenes`` scenes of ``source`` in batches of ``per_batch`` on ``device``."""
    n = min(num_scenes, len(source))
    for lo in range(0, n, per_batch):
        yield collate_arrays([source.load(i) for i in range(lo, min(lo + per_batch, n))]).to(device)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    require_positive(args, "num_scenes", "scenes_per_batch")
    device = resolve_device(args.device)
    source = SceneSource(args.scenes, split=args.split)
    batches = scene_batches(source, args.num_scenes, args.scenes_per_batch, device)
    print(format_audit(audit(load_model(args.checkpoint, map_location=device), batches)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
