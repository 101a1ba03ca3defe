"""Specification of the differentiable collision and off-road penalties (trafficbots_gym.model.safety_losses)
and their place in the training loss."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import ROAD_EDGE_TYPES, VEHICLE_LANE_TYPES, AgentType
from trafficbots_gym.model.losses import LossConfig, training_losses
from trafficbots_gym.model.safety_losses import (LANE_MARGIN, agent_discs, collision_penalty,
                                                 offroad_penalty)
from trafficbots_gym.simulation.metrics import collisions
from trafficbots_gym.simulation.state import AgentState

from test_training_losses import log_replay

VEHICLE = torch.tensor([1.0, 0.0, 0.0])
PEDESTRIAN = torch.tensor([0.0, 1.0, 0.0])


def two_agents(gap_y: float, kinds: tuple[torch.Tensor, torch.Tensor] = (VEHICLE, VEHICLE),
               valid: tuple[bool, bool] = (True, True)) -> dict[str, torch.Tensor]:
    """Two 4.5 x 2 m boxes heading along x for one step, ``gap_y`` metres apart side by side."""
    pos = torch.tensor([[[[0.0, 0.0], [0.0, gap_y]]]], requires_grad=True)     # [B=1, T=1, A=2, 2]
    return dict(pos=pos, yaw=torch.zeros(1, 1, 2), valid=torch.tensor([[list(valid)]]),
                size=torch.tensor([[[4.5, 2.0, 1.5], [4.5, 2.0, 1.5]]]), agent_type=torch.stack(kinds)[None])


def test_discs_cover_the_box_from_end_to_end() -> None:
    centres, radius = agent_discs(torch.tensor([10.0, 5.0]), torch.tensor(math.pi / 2), torch.tensor(4.5),
                                  torch.tensor(2.0))
    assert radius.item() == 1.0
    torch.testing.assert_close(centres, torch.tensor([[10.0, 3.75], [10.0, 5.0], [10.0, 6.25]]))
    round_box, _ = agent_discs(torch.zeros(2), torch.tensor(0.3), torch.tensor(0.8), torch.tensor(0.8))
    torch.testing.assert_close(round_box, torch.zeros(3, 2))  # a pedestrian's discs coincide


def test_overlapping_vehicles_are_penalised_symmetrically_and_pushed_apart() -> None:
    agents = two_agents(gap_y=1.0)
    penalty = collision_penalty(**agents)
    assert penalty.shape == (1, 1, 2)
    assert penalty[0, 0, 0].item() == pytest.approx(0.5) and penalty[0, 0, 1].item() == pytest.approx(0.5)
    penalty.sum().backward()
    grad = agents["pos"].grad[0, 0]
    assert grad[0, 1].item() > 0 > grad[1, 1].item()  # descending the loss moves agent 0 down, agent 1 up


def test_at_fault_rule_penalises_the_follower_of_a_rear_end_contact_only() -> None:
    # agent 1 is 3 m ahead of agent 0 in the same lane, both heading along x: their boxes overlap
    pos = torch.tensor([[[[0.0, 0.0], [3.0, 0.0]]]])
    agents = dict(pos=pos, yaw=torch.zeros(1, 1, 2), valid=torch.ones(1, 1, 2, dtype=torch.bool),
                  size=torch.tensor([[[4.5, 2.0, 1.5], [4.5, 2.0, 1.5]]]), agent_type=torch.stack([VEHICLE, VEHICLE])[None])
    both = collision_penalty(**agents)
    follower = collision_penalty(**agents, at_fault_only=True)
    assert both[0, 0, 0].item() > 0 and both[0, 0, 1].item() > 0
    assert follower[0, 0, 0].item() == pytest.approx(both[0, 0, 0].item()) and follower[0, 0, 1].item() == 0.0
    head_on = dict(agents, yaw=torch.tensor([[[0.0, math.pi]]]))  # facing each other: both at fault
    assert (collision_penalty(**head_on, at_fault_only=True) > 0).all()


def test_a_margin_starts_the_penalty_before_contact_and_pushes_the_pair_apart() -> None:
    assert collision_penalty(**two_agents(gap_y=2.5)).abs().sum().item() == 0.0     # 0.5 m apart
    agents = two_agents(gap_y=2.5)
    near = collision_penalty(**agents, margin=1.0)
    assert near[0, 0, 0].item() == pytest.approx(1.0 - 2.5 / 3.0)                  # relu(1 - d / (r_i + r_j + m))
    near.sum().backward()
    grad = agents["pos"].grad[0, 0]
    assert grad[0, 1].item() > 0 > grad[1, 1].item()
    assert collision_penalty(**two_agents(gap_y=3.5), margin=1.0).abs().sum().item() == 0.0  # 1.5 m apart
    with pytest.raises(ValueError, match="margin"):
        collision_penalty(**two_agents(gap_y=2.5), margin=-0.5)


def test_separated_pedestrian_pair_or_invalid_agents_are_not_penalised() -> None:
    assert collision_penalty(**two_agents(gap_y=2.5)).abs().sum().item() == 0.0
    assert collision_penalty(**two_agents(gap_y=0.5, kinds=(PEDESTRIAN, PEDESTRIAN))).sum().item() == 0.0
    assert collision_penalty(**two_agents(gap_y=0.5, kinds=(VEHICLE, PEDESTRIAN))).sum().item() > 0.0
    assert collision_penalty(**two_agents(gap_y=0.5, valid=(True, False))).sum().item() == 0.0


def _node(batch: SceneBatch, classes: tuple[int, ...]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(scene 0's polyline index, a node's position, its unit direction) of a polyline of ``classes``."""
    is_class = batch.map_type[0, :, list(classes)].any(-1) & batch.map_valid[0].all(-1)
    p = int(torch.nonzero(is_class)[0])
    direction = batch.map_dir[0, p, 5] / batch.map_dir[0, p, 5].norm()
    return p, batch.map_pos[0, p, 5], direction


def one_vehicle_at(batch: SceneBatch, pos: torch.Tensor, yaw: float) -> dict[str, torch.Tensor]:
    """Rollout tensors [1, 1, A] with agent 0 of scene 0 (a vehicle) at ``pos`` and every other agent invalid."""
    n_agents = batch.agent_valid.shape[-1]
    positions = torch.zeros(1, 1, n_agents, 2)
    positions[0, 0, 0] = pos
    valid = torch.zeros(1, 1, n_agents, dtype=torch.bool)
    valid[0, 0, 0] = True
    return dict(pos=positions.requires_grad_(), yaw=torch.full((1, 1, n_agents), yaw), valid=valid)


@pytest.fixture
def scene0(reference_batch: SceneBatch) -> SceneBatch:
    """Scene 0 of the reference batch with agent 0 a 4.5 x 2 m vehicle."""
    one = reference_batch.index(torch.tensor([0]))
    one.agent_type[0, 0] = VEHICLE.bool()
    one.agent_size[0, 0] = torch.tensor([4.5, 2.0, 1.5])
    return one


def test_vehicle_on_a_lane_centreline_and_away_from_edges_costs_nothing(scene0: SceneBatch) -> None:
    _, node, direction = _node(scene0, VEHICLE_LANE_TYPES)
    inputs = one_vehicle_at(scene0, node, math.atan2(direction[1], direction[0]))
    penalty = offroad_penalty(**inputs, batch=scene0)
    edge_free = penalty[0, 0, 0].item() == 0.0
    assert edge_free or penalty[0, 0, 0].item() < 1.0  # a lane may run next to an edge: the disc term is <= 1
    assert penalty[0, 0, 1:].abs().sum().item() == 0.0


def test_vehicle_far_from_every_lane_pays_the_distance_beyond_the_margin(scene0: SceneBatch) -> None:
    _, node, direction = _node(scene0, VEHICLE_LANE_TYPES)
    lanes = scene0.map_type[0, :, list(VEHICLE_LANE_TYPES)].any(-1)
    away = node + 1000.0 * torch.tensor([direction[1], -direction[0]])  # far off the map, no edge in reach
    lane_pts = scene0.map_pos[0][lanes & scene0.map_valid[0].any(-1)]
    d_lane = (lane_pts[scene0.map_valid[0][lanes & scene0.map_valid[0].any(-1)]] - away).norm(dim=-1).min()
    penalty = offroad_penalty(**one_vehicle_at(scene0, away, 0.0), batch=scene0)
    assert penalty[0, 0, 0].item() == pytest.approx(d_lane.item() - LANE_MARGIN, abs=25.0)  # nodes ~ segments
    assert penalty[0, 0, 0].item() > 900.0


def test_vehicle_centred_on_a_road_edge_pays_the_edge_term_and_pedestrians_never_do(scene0: SceneBatch) -> None:
    _, node, direction = _node(scene0, ROAD_EDGE_TYPES)
    inputs = one_vehicle_at(scene0, node, math.atan2(direction[1], direction[0]))  # discs along the edge
    penalty = offroad_penalty(**inputs, batch=scene0)
    assert penalty[0, 0, 0].item() >= 0.9
    penalty.sum().backward()
    assert torch.isfinite(inputs["pos"].grad).all()
    scene0.agent_type[0, 0] = PEDESTRIAN.bool()
    assert offroad_penalty(**one_vehicle_at(scene0, node, 0.0), batch=scene0).sum().item() == 0.0


def test_discs_lie_inside_the_box_so_a_penalised_pair_is_a_collision_of_the_metric(
        reference_batch: SceneBatch) -> None:
    pos, yaw, valid = reference_batch.agent_pos[:, 11:], reference_batch.agent_yaw[:, 11:], \
        reference_batch.agent_valid[:, 11:]
    penalty = collision_penalty(pos, yaw, valid, reference_batch.agent_size, reference_batch.agent_type)
    flagged = torch.stack([collisions(AgentState(valid=valid[:, t], pos=pos[:, t], yaw=yaw[:, t],
                                                 spd=yaw[:, t], vel=pos[:, t], acc=yaw[:, t], yaw_rate=yaw[:, t]),
                                      reference_batch.agent_size, reference_batch.agent_type)
                           for t in range(pos.shape[1])], dim=1)
    assert (penalty > 0).any()  # real logs hold a few overlapping boxes
    assert not ((penalty > 0) & ~flagged).any()


def test_weighted_penalties_enter_the_total_loss_with_a_finite_gradient(reference_batch: SceneBatch) -> None:
    out = log_replay(reference_batch)
    out.pred_pos = (out.pred_pos + torch.randn(out.pred_pos.shape, generator=torch.Generator().manual_seed(0))
                    * 3.0).requires_grad_()
    plain = training_losses(out, reference_batch)
    weighted = training_losses(out, reference_batch, replace(LossConfig(), w_collision=2.0, w_offroad=0.5))
    assert weighted["collision"].item() > 0.0 and weighted["offroad"].item() > 0.0
    expected = plain["loss"] + 2.0 * weighted["collision"] + 0.5 * weighted["offroad"]
    assert weighted["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    weighted["loss"].backward()
    assert torch.isfinite(out.pred_pos.grad).all() and out.pred_pos.grad.abs().sum() > 0


def test_at_fault_flag_of_the_loss_config_keeps_only_part_of_the_collision_term(reference_batch: SceneBatch) -> None:
    out = log_replay(reference_batch)
    out.pred_pos = out.pred_pos + torch.randn(out.pred_pos.shape, generator=torch.Generator().manual_seed(0)) * 3.0
    both = training_losses(out, reference_batch, replace(LossConfig(), w_collision=1.0))["collision"]
    at_fault = training_losses(out, reference_batch,
                               replace(LossConfig(), w_collision=1.0, collision_at_fault_only=True))["collision"]
    assert 0.0 < at_fault.item() < both.item()


def test_collision_margin_of_the_loss_config_enlarges_the_collision_term(reference_batch: SceneBatch) -> None:
    out = log_replay(reference_batch)
    out.pred_pos = out.pred_pos + torch.randn(out.pred_pos.shape, generator=torch.Generator().manual_seed(0)) * 3.0
    contact = training_losses(out, reference_batch, replace(LossConfig(), w_collision=1.0))["collision"]
    margin = training_losses(out, reference_batch,
                             replace(LossConfig(), w_collision=1.0, collision_margin=1.0))["collision"]
    assert margin.item() > contact.item() > 0.0
    with pytest.raises(ValueError, match="collision_margin"):
        LossConfig(collision_margin=-1.0)


def test_loss_config_rejects_negative_safety_weights() -> None:
    with pytest.raises(ValueError, match="w_collision"):
        LossConfig(w_collision=-1.0)
    with pytest.raises(ValueError, match="w_offroad"):
        LossConfig(w_offroad=-0.1)


def test_vehicle_type_column_is_the_first() -> None:
    assert AgentType.VEHICLE == 0 and AgentType.PEDESTRIAN == 1  # the one-hots above rely on it
