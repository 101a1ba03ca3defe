"""Specification of the closed-loop validation metrics (training.metrics)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import AgentType
from trafficbots_gym.data.scene import Scene
from training.metrics import MetricSums, free_steps, rollout_metrics


@dataclass
class FakeRollout:
    steps: torch.Tensor
    pred_pos: torch.Tensor
    pred_yaw: torch.Tensor
    pred_valid: torch.Tensor
    override: torch.Tensor
    outside_map: torch.Tensor
    dest_reached: torch.Tensor
    dest_logits: torch.Tensor
    dest_valid: torch.Tensor


@pytest.fixture(scope="module")
def batch(reference_scenes: list[Scene]) -> SceneBatch:
    """The second reference scene alone."""
    return SceneBatch.from_scenes(reference_scenes[1:])


def log_replay(batch: SceneBatch, n_steps: int = 30) -> FakeRollout:
    """A rollout of steps 1..n_steps that reproduces the log; its destination logits pick the logged destination."""
    valid = batch.agent_valid[:, :n_steps] & batch.agent_valid[:, 1:n_steps + 1]
    logits = torch.zeros(batch.batch_size, batch.agent_dest.shape[1], 1024)
    logits.scatter_(-1, batch.agent_dest.unsqueeze(-1), 1.0)
    return FakeRollout(steps=torch.arange(1, n_steps + 1), pred_pos=batch.agent_pos[:, 1:n_steps + 1].clone(),
                       pred_yaw=batch.agent_yaw[:, 1:n_steps + 1].clone(), pred_valid=valid,
                       override=torch.zeros_like(valid), outside_map=torch.zeros_like(valid),
                       dest_reached=torch.zeros_like(valid), dest_logits=logits,
                       dest_valid=batch.agent_valid[:, :11].any(1))


def values(metrics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    sums = MetricSums()
    sums.update(metrics)
    return sums.compute()


def test_log_replay_has_zero_displacement_error_and_perfect_destination_accuracy(batch: SceneBatch) -> None:
    v = values(rollout_metrics(log_replay(batch), batch))
    assert v["ade"] == 0.0 and v["fde"] == 0.0 and v["dest_accuracy"] == 1.0
    assert v["outside_map_rate"] == 0.0


def test_displacement_error_is_the_offset_of_a_shifted_rollout(batch: SceneBatch) -> None:
    out = log_replay(batch)
    out.pred_pos = out.pred_pos + torch.tensor([3.0, 4.0])
    v = values(rollout_metrics(out, batch))
    assert v["ade"] == pytest.approx(5.0) and v["fde"] == pytest.approx(5.0)


def test_history_and_overridden_steps_are_not_scored(batch: SceneBatch) -> None:
    out = log_replay(batch)
    out.pred_pos[:, :10] += 100.0           # teacher-forced history transitions
    out.override[:, 20, 7] = True
    out.pred_pos[:, 20, 7] += 100.0         # a spawn / override step
    assert not free_steps(out)[:, :10].any()
    v = values(rollout_metrics(out, batch))
    assert v["ade"] == 0.0


def test_two_simulated_agents_driven_onto_each_other_count_as_collisions(batch: SceneBatch) -> None:
    out = log_replay(batch)
    a, b = [int(i) for i in torch.nonzero(out.pred_valid[0, 10:].all(0))[:2, 0]]
    keep = torch.zeros_like(out.pred_valid)
    keep[..., [a, b]] = True
    out.pred_valid &= keep  # only agents a and b are simulated
    assert values(rollout_metrics(out, batch))["collision_rate"] == 0.0
    out.pred_pos[:, 20:, b] = out.pred_pos[:, 20:, a]
    out.pred_yaw[:, 20:, b] = out.pred_yaw[:, 20:, a]
    assert values(rollout_metrics(out, batch))["collision_rate"] == 1.0


def test_a_vehicle_far_from_every_lane_is_off_road(batch: SceneBatch) -> None:
    out = log_replay(batch)
    vehicles = torch.nonzero(batch.agent_type[0, :, AgentType.VEHICLE] & free_steps(out)[0].any(0))[:, 0]
    out.pred_pos[:, :, vehicles] = torch.tensor([500.0, 500.0])
    assert values(rollout_metrics(out, batch))["offroad_rate"] == 1.0


def test_metric_sums_pool_over_batches_and_report_nan_without_samples() -> None:
    sums = MetricSums()
    sums.update({"ade": (torch.tensor(3.0), torch.tensor(1.0))}, prefix="val/")
    sums.update({"ade": (torch.tensor(1.0), torch.tensor(3.0)), "rate": (torch.tensor(0.0), torch.tensor(0.0))},
                prefix="val/")
    v = sums.compute()
    assert v["val/ade"] == pytest.approx(1.0)  # (3 + 1) / (1 + 3), not the mean of batch means
    assert v["val/rate"] != v["val/rate"]      # NaN
    sums.reset()
    assert sums.compute() == {}
