"""Specification of the WOSAC-style per-step features and of the background realism report."""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from trafficbots_gym.benchmarks.realism import (
    BUCKETS, FAR, WOSAC_2025, Trajectories, box_separation, evaluated_objects, min_ade, realism_inputs,
    realism_scores, road_edge_distance, scene_features,
)
from trafficbots_gym.benchmarks.realism_report import main, rollout
from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import N_STEP, STEP_CURRENT, MapType
from trafficbots_gym.simulation import BatchedSimulator
from trafficbots_gym.simulation.metrics import MAX_TIME_TO_COLLISION, MapGeometry, time_to_collision

from conftest import REFERENCE_SCENES

FEATURES = tuple(f.name for f in WOSAC_2025)
EVENTS = ("collision", "offroad", "traffic_light_violation")


# ------------------------------------------------------------------------------------ geometry
def _box(x: float, y: float, yaw: float = 0.0, length: float = 4.0, width: float = 2.0):
    return torch.tensor([x, y]), torch.tensor(yaw), torch.tensor([length, width])


def test_box_separation_is_the_gap_between_apart_boxes_and_minus_the_penetration_of_overlapping_ones():
    a = _box(0.0, 0.0)
    assert box_separation(*a, *_box(5.0, 0.0)).item() == pytest.approx(1.0)       # 1 m bumper gap
    assert box_separation(*a, *_box(3.5, 0.0)).item() == pytest.approx(-0.5)      # 0.5 m overlap
    assert box_separation(*a, *_box(0.0, 3.0, math.pi / 2)).item() == pytest.approx(0.0, abs=1e-6)  # touching
    assert box_separation(*a, *_box(20.0, 0.0)).item() == pytest.approx(16.0)


def _ttc(leader_x: float, leader_y: float, leader_speed: float, leader_yaw: float = 0.0) -> float:
    pos, yaw, size = _box(0.0, 0.0)
    others = torch.tensor([[0.0, 0.0], [leader_x, leader_y]])
    return time_to_collision(pos.view(1, 2), yaw.view(1), size.view(1, 2), torch.tensor([10.0]),
                             others, torch.tensor([0.0, leader_yaw]), size.expand(2, 2),
                             torch.tensor([10.0, leader_speed]), torch.tensor([True, True])).item()


def test_time_to_collision_is_the_gap_over_the_closing_speed_to_the_leader_capped_at_five_seconds():
    assert _ttc(14.0, 0.0, 5.0) == pytest.approx(10.0 / 5.0)          # 10 m bumper gap, closing at 5 m/s
    assert _ttc(14.0, 0.0, 12.0) == MAX_TIME_TO_COLLISION             # pulling away
    assert _ttc(104.0, 0.0, 0.0) == MAX_TIME_TO_COLLISION             # 10 s away: capped
    assert _ttc(14.0, 3.0, 0.0) == MAX_TIME_TO_COLLISION              # in the next lane
    assert _ttc(14.0, 0.0, 0.0, math.pi) == MAX_TIME_TO_COLLISION     # oncoming, not followed
    assert _ttc(-14.0, 0.0, 20.0) == MAX_TIME_TO_COLLISION            # behind


def test_road_edge_distance_is_negative_on_the_road_and_positive_past_the_edge():
    n = 20
    edge = torch.zeros(1, 1024, n, 2)
    edge[0, 0, :, 0] = torch.arange(n) * 5.0
    edge[0, 0, :, 1] = 5.0
    vec = torch.zeros_like(edge)
    vec[0, 0, :, 0] = 5.0
    valid = torch.zeros(1, 1024, n, dtype=torch.bool)
    valid[0, 0] = True
    map_type = torch.zeros(1, 1024, 11, dtype=torch.bool)
    map_type[0, 0, MapType.ROAD_EDGE_BOUNDARY] = True
    only_map = SimpleNamespace(map_pos=edge, map_dir=vec, map_valid=valid, map_type=map_type,  # all it reads
                               map_boundary=torch.tensor([[-100.0, 200.0, -100.0, 100.0]]))
    geometry = MapGeometry.from_batch(only_map)
    pos = torch.tensor([[[50.0, 0.0], [50.0, 9.0]]])
    size = torch.tensor([[[4.0, 2.0], [4.0, 2.0]]])
    d = road_edge_distance(pos, torch.zeros(1, 2), size, torch.tensor([[False, True]]), geometry)
    assert d[0, 0].item() == pytest.approx(-4.0)                       # nearest corner 4 m inside
    assert d[0, 1].item() == pytest.approx(5.0)                        # farthest corner 5 m past the edge


def test_min_ade_takes_the_best_joint_rollout():
    log = torch.zeros(1, 4, 2, 2)
    sim = torch.stack([log + 3.0, log + 1.0], dim=1)                  # rollout 1 is closer
    valid = torch.ones(1, 4, 2, dtype=torch.bool)
    assert min_ade(sim, log, valid, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(math.sqrt(2.0))


# ------------------------------------------------------------------------------------ features
def test_scene_features_cover_the_future_steps_of_every_evaluated_object(reference_batch):
    index, mask = evaluated_objects(reference_batch)
    assert mask.any(-1).all() and (index[mask] >= 0).all()
    features = scene_features(Trajectories.from_log(reference_batch), reference_batch,
                              MapGeometry.from_batch(reference_batch), index)
    assert set(features.values) == set(FEATURES) and set(features.valid) == set(FEATURES)
    shape = (2, N_STEP - STEP_CURRENT - 1, index.shape[1])
    for name in FEATURES:
        assert features.values[name].shape == shape and features.valid[name].shape == shape, name
        assert features.valid[name].any(), name
        assert torch.isfinite(features.values[name].float()).all(), name
    for name in EVENTS:
        assert features.values[name].dtype == torch.bool
    assert (features.values["time_to_collision"] <= MAX_TIME_TO_COLLISION).all()
    assert (features.values["distance_to_nearest_object"] <= FAR).all()


def test_features_are_computed_the_same_in_any_chunking(reference_batch):
    index, _ = evaluated_objects(reference_batch)
    args = (Trajectories.from_log(reference_batch), reference_batch, MapGeometry.from_batch(reference_batch), index)
    a = scene_features(*args)
    b = scene_features(*args, rows_per_chunk=1, steps_per_chunk=3)
    for name in FEATURES:
        assert torch.equal(a.values[name], b.values[name]), name


def _scores(sim: Trajectories, batch: SceneBatch) -> dict[str, torch.Tensor]:
    index, mask = evaluated_objects(batch)
    geometry = MapGeometry.from_batch(batch)
    log = scene_features(Trajectories.from_log(batch), batch, geometry, index)
    rollout_features = scene_features(sim, batch, geometry, index)
    vehicle = torch.gather(batch.agent_type[..., 0], 1, index)
    return realism_scores(realism_inputs(rollout_features, log, 1, mask, vehicle).repeat_rollouts(8))


def test_log_replay_scores_higher_than_a_corrupted_rollout_on_the_kinematic_features(reference_batch):
    log = Trajectories.from_log(reference_batch)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(log.pos.shape, generator=gen) * 0.3
    noise[:, :STEP_CURRENT + 1] = 0.0
    corrupted = Trajectories(pos=log.pos + noise, yaw=log.yaw + 0.2 * torch.randn(log.yaw.shape, generator=gen),
                             valid=log.valid)
    replay, bad = _scores(log, reference_batch), _scores(corrupted, reference_batch)
    for name in BUCKETS["kinematic_metrics"]:
        assert (replay[name] > bad[name]).all(), name
    assert (replay["realism_meta_metric"] > bad["realism_meta_metric"]).all()


# ------------------------------------------------------------------------------------ rollouts and report
def test_log_replay_rollout_without_an_ego_is_the_log_for_every_agent(reference_batch):
    traj = rollout(BatchedSimulator(background="log_replay"), reference_batch)
    assert traj.pos.shape == reference_batch.agent_pos.shape
    assert torch.equal(traj.valid, reference_batch.agent_valid)
    assert torch.allclose(traj.pos[traj.valid], reference_batch.agent_pos[reference_batch.agent_valid])


def test_constant_velocity_rollout_moves_the_sdc_too(reference_batch):
    traj = rollout(BatchedSimulator(background="constant_velocity"), reference_batch)
    sdc_log, sdc_sim = reference_batch.agent_pos[:, -1, 0], traj.pos[:, -1, 0]
    assert (sdc_sim - sdc_log).norm(dim=-1).min() > 0.5


def test_realism_report_ranks_log_replay_first_and_writes_markdown_csv_and_json(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "report"
    assert main(["--scenes", str(REFERENCE_SCENES), "--num-scenes", "2", "--rollouts", "2", "--backgrounds",
                 "trafficbots", "log_replay", "constant_velocity", "--checkpoint", str(tiny_checkpoint),
                 "--device", "cpu", "--out", str(out), "--scenes-per-batch", "1"]) == 0
    with open(out / "realism.csv") as f:
        rows = {r["background"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"trafficbots", "log_replay", "constant_velocity"}
    meta = {bg: float(r["realism_meta_metric"]) for bg, r in rows.items()}
    assert max(meta, key=meta.get) == "log_replay"
    assert all(0.0 < m <= 1.0 for m in meta.values())
    assert float(rows["log_replay"]["min_ade"]) == pytest.approx(0.0, abs=1e-5)
    assert float(rows["trafficbots"]["min_ade"]) > 0.1
    for key in ("collision_rate", "offroad_rate", "traffic_light_violation_rate", "rollout_s", "metrics_s"):
        assert key in rows["trafficbots"]
    doc = json.loads((out / "realism.json").read_text())
    assert doc["config"]["rollouts"] == 2 and len(doc["per_scene"]["trafficbots"]["scenario_ids"]) == 2
    assert "| log_replay | 2 | 2 |" in (out / "realism.md").read_text()
    assert "rollout_s" in capsys.readouterr().out
