"""Closed-loop validation metrics of a rollout against its log, pooled exactly over an epoch.

Per batch, :func:`rollout_metrics` returns ``{name: (sum, count)}`` pairs; :class:`MetricSums` adds them
up (and reduces them across DDP ranks) so the epoch value is ``sum / count`` over all agents, not a mean
of batch means. Geometry (boxes, lanes, road edges) comes from :mod:`trafficbots_gym.simulation.metrics`.

Scored agent-steps are the free closed-loop transitions: step >= ``step_start`` (11), the agent simulated
(``pred_valid``) and not replaced by its log at that step (``override``, e.g. a spawn).

* ``ade`` / ``fde``: per-agent average / final displacement (m) over scored steps where the log is
  valid, averaged over agents with at least one such step;
* ``collision_rate``: agents whose box overlaps another simulated agent at any scored step, over
  agents with a scored step (pedestrian pairs excluded);
* ``offroad_rate``: vehicles off the road at any scored step, over vehicles with a scored step;
* ``outside_map_rate`` / ``dest_reached_rate``: agents flagged by the rollout's rule checker at the end;
* ``dest_accuracy``: argmax of the destination predictor equals the logged destination, over agents
  with a history and a logged destination.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT, AgentType
from trafficbots_gym.simulation.metrics import MapGeometry, ade, collisions, fde, offroad
from trafficbots_gym.simulation.state import AgentState

SumCount = tuple[Tensor, Tensor]


class RolloutLike(Protocol):
    """The fields of a ``RolloutOutput`` the metrics read."""

    steps: Tensor        # [T] absolute step of each rollout index
    pred_pos: Tensor     # [B, T, A, 2]
    pred_yaw: Tensor     # [B, T, A]
    pred_valid: Tensor   # [B, T, A]
    override: Tensor     # [B, T, A]
    outside_map: Tensor  # [B, T, A] cumulative
    dest_reached: Tensor  # [B, T, A] cumulative
    dest_logits: Tensor  # [B, A, P]
    dest_valid: Tensor   # [B, A]


def free_steps(out: RolloutLike, step_start: int = STEP_CURRENT + 1) -> Tensor:
    """[B, T, A] agent-steps simulated in closed loop: step >= ``step_start``, simulated, not overridden."""
    return out.pred_valid & ~out.override & (out.steps >= step_start)[None, :, None]


def _states(out: RolloutLike, valid: Tensor) -> AgentState:
    """The predicted states of every rollout step with the time axis folded into the batch: [B*T, A]."""
    flat = valid.flatten(0, 1)
    zeros = torch.zeros_like(out.pred_yaw).flatten(0, 1)
    return AgentState(valid=flat, pos=out.pred_pos.flatten(0, 1), yaw=out.pred_yaw.flatten(0, 1), spd=zeros,
                      vel=torch.zeros_like(out.pred_pos).flatten(0, 1), acc=zeros, yaw_rate=zeros)


def _per_step(x: Tensor, n_step: int) -> Tensor:
    """Repeat per-scene ``x`` [B, ...] for each step -> [B*T, ...]."""
    return x.repeat_interleave(n_step, dim=0)


def _rate(flag: Tensor, among: Tensor) -> SumCount:
    return (flag & among).sum().float(), among.sum().float()


def displacement_metrics(out: RolloutLike, batch: SceneBatch, scored: Tensor) -> dict[str, SumCount]:
    """ADE / FDE (m) against the log over ``scored`` [B, T, A] steps where the log is valid."""
    idx = out.steps.to(batch.agent_pos.device)
    gt_pos, gt_valid = batch.agent_pos[:, idx], batch.agent_valid[:, idx]
    valid = scored & gt_valid
    agents = valid.any(1)
    return {"ade": ((ade(out.pred_pos, gt_pos, valid) * agents).sum(), agents.sum().float()),
            "fde": ((fde(out.pred_pos, gt_pos, valid) * agents).sum(), agents.sum().float())}


def interaction_metrics(out: RolloutLike, batch: SceneBatch, scored: Tensor,
                        geometry: MapGeometry | None = None) -> dict[str, SumCount]:
    """Collision and off-road rates of the simulated agents over ``scored`` [B, T, A] steps."""
    n_batch, n_step, n_agent = scored.shape
    # Collisions are checked against every agent the simulator holds at the step, scored or not.
    states = _states(out, out.pred_valid)
    size = _per_step(batch.agent_size, n_step)
    atype = _per_step(batch.agent_type, n_step)
    collided = (collisions(states, size, atype).view(n_batch, n_step, n_agent) & scored).any(1)
    geom = geometry if geometry is not None else MapGeometry.from_batch(batch)
    # Off-road is per agent: fold the steps into the agent axis so each scene's map is used once.
    flat = AgentState(valid=scored.flatten(1, 2), pos=out.pred_pos.flatten(1, 2), yaw=out.pred_yaw.flatten(1, 2),
                      spd=torch.zeros_like(out.pred_yaw).flatten(1, 2),
                      vel=torch.zeros_like(out.pred_pos).flatten(1, 2),
                      acc=torch.zeros_like(out.pred_yaw).flatten(1, 2),
                      yaw_rate=torch.zeros_like(out.pred_yaw).flatten(1, 2))
    off = offroad(flat, batch.agent_size.repeat(1, n_step, 1), batch.agent_type.repeat(1, n_step, 1), geom)
    off = off.view(n_batch, n_step, n_agent).any(1)
    simulated = scored.any(1)
    vehicle = batch.agent_type[..., AgentType.VEHICLE].bool()
    return {"collision_rate": _rate(collided, simulated), "offroad_rate": _rate(off, simulated & vehicle)}


def rule_metrics(out: RolloutLike, scored: Tensor) -> dict[str, SumCount]:
    """Map-exit and destination-reached rates from the rollout's own rule checker."""
    simulated = scored.any(1)
    return {"outside_map_rate": _rate(out.outside_map[:, -1], simulated),
            "dest_reached_rate": _rate(out.dest_reached[:, -1], simulated)}


def destination_metrics(out: RolloutLike, batch: SceneBatch) -> dict[str, SumCount]:
    """Top-1 accuracy of the destination predictor against the logged destination."""
    known = out.dest_valid & batch.agent_dest_known[:, None]
    correct = out.dest_logits.argmax(-1) == batch.agent_dest
    return {"dest_accuracy": _rate(correct, known)}


def rollout_metrics(out: RolloutLike, batch: SceneBatch, geometry: MapGeometry | None = None,
                    step_start: int = STEP_CURRENT + 1) -> dict[str, SumCount]:
    """All closed-loop metrics of one rollout as ``(sum, count)`` pairs; log-based ones need the full log."""
    scored = free_steps(out, step_start)
    metrics = {**interaction_metrics(out, batch, scored, geometry), **rule_metrics(out, scored)}
    if batch.num_steps > int(out.steps.max()):
        metrics.update(displacement_metrics(out, batch, scored))
        metrics.update(destination_metrics(out, batch))
    return metrics


class MetricSums:
    """Running ``(sum, count)`` per metric name; ``compute`` gives ``sum / count`` (NaN when count is 0)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def update(self, metrics: dict[str, SumCount], prefix: str = "") -> None:
        for name, (total, count) in metrics.items():
            key = prefix + name
            self.sums[key] = self.sums.get(key, 0.0) + total.detach().double()
            self.counts[key] = self.counts.get(key, 0.0) + count.detach().double()

    def compute(self, reduce: Callable[[Tensor], Tensor] = lambda t: t) -> dict[str, float]:
        """Epoch values; ``reduce`` sums a tensor across processes (identity on one process)."""
        out = {}
        for key in sorted(self.sums):
            total, count = reduce(self.sums[key]), reduce(self.counts[key])
            out[key] = float(total / count) if float(count) > 0 else float("nan")
        return out

    def reset(self) -> None:
        self.sums, self.counts = {}, {}
