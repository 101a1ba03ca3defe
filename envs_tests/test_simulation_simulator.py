"""Specification of the batched simulator and its log-replay / constant-velocity / IDM backgrounds."""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT, TLState
from trafficbots_gym.simulation import BACKGROUNDS, BatchedSimulator

from conftest import road_batch

NON_LEARNED = ("log_replay", "constant_velocity", "idm")


def _expert_action(batch: SceneBatch, ego: torch.Tensor, step: int) -> torch.Tensor:
    rows = torch.arange(batch.batch_size)
    return torch.stack([batch.agent_acc[rows, step, ego], batch.agent_yaw_rate[rows, step, ego]], -1)


def _rollout(sim: BatchedSimulator, batch: SceneBatch, ego: torch.Tensor, n: int = 80) -> list:
    sim.reset(batch, ego)
    return [sim.step(_expert_action(batch, ego, min(STEP_CURRENT + i + 1, batch.num_steps - 1))) for i in range(n)]


def _truncate(batch: SceneBatch, n_step: int) -> SceneBatch:
    """The first ``n_step`` logged steps of ``batch`` (a short log that ends early)."""
    return SceneBatch(**{f.name: getattr(batch, f.name)[:, :n_step] if getattr(batch, f.name).ndim > 1
                         and getattr(batch, f.name).shape[1] == batch.num_steps else getattr(batch, f.name)
                         for f in fields(batch)})


def _assert_same_output(a, b) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "state":
            for g in fields(x):
                assert torch.equal(getattr(x, g.name), getattr(y, g.name)), g.name
        else:
            assert torch.equal(x, y), f.name


# --------------------------------------------------------------------------------------------------

def test_unknown_background_lists_valid_choices():
    with pytest.raises(ValueError, match="log_replay.*constant_velocity.*idm.*trafficbots.*mixed"):
        BatchedSimulator(background="replay")


@pytest.mark.parametrize("name", ["trafficbots", "mixed"])
def test_learned_backgrounds_require_a_policy(name):
    with pytest.raises(ValueError, match="TrafficBotsPolicy"):
        BatchedSimulator(background=name)


def test_reset_starts_from_the_logged_current_step(reference_batch):
    sim = BatchedSimulator(background="idm")
    sim.reset(reference_batch, torch.tensor([0, 0]))
    assert sim.step_index.tolist() == [STEP_CURRENT, STEP_CURRENT]
    assert torch.equal(sim.state.valid, reference_batch.agent_valid[:, STEP_CURRENT])
    assert torch.equal(sim.state.pos[sim.state.valid], reference_batch.agent_pos[:, STEP_CURRENT][sim.state.valid])


def test_reset_rejects_an_ego_that_is_not_valid_at_the_current_step(reference_batch):
    invalid = int((~reference_batch.agent_valid[1, STEP_CURRENT]).nonzero()[0])
    with pytest.raises(ValueError, match="not valid at step 10"):
        BatchedSimulator(background="log_replay").reset(reference_batch, torch.tensor([0, invalid]))


def test_log_replay_with_expert_ego_actions_reproduces_the_log_for_80_steps(reference_batch):
    ego = torch.tensor([0, 0])
    outs = _rollout(BatchedSimulator(background="log_replay"), reference_batch, ego)
    for i, out in enumerate(outs):
        t = STEP_CURRENT + 1 + i
        assert out.step.tolist() == [t, t]
        assert torch.equal(out.state.valid, reference_batch.agent_valid[:, t])
        v = out.state.valid
        assert torch.equal(out.state.pos[:, 1:][v[:, 1:]], reference_batch.agent_pos[:, t, 1:][v[:, 1:]])
        torch.testing.assert_close(out.state.pos[:, 0], reference_batch.agent_pos[:, t, 0], atol=1e-3, rtol=0)
        torch.testing.assert_close(out.state.yaw[:, 0], reference_batch.agent_yaw[:, t, 0], atol=1e-4, rtol=0)
    final = outs[-1]
    torch.testing.assert_close(final.ego_progress, final.ego_path_length, atol=1e-2, rtol=0)
    assert final.ego_dist_to_goal.max() < 1e-2 and final.ego_log_distance.max() < 1e-3


def test_log_replay_agents_vanish_after_the_log_and_traffic_lights_hold(reference_batch):
    short = _truncate(reference_batch, 21)
    sim = BatchedSimulator(background="log_replay")
    outs = _rollout(sim, short, torch.tensor([0, 0]), n=11)
    assert outs[-1].step.tolist() == [21, 21]
    assert outs[-2].state.valid.sum(-1).tolist() == short.agent_valid[:, 20].sum(-1).tolist()
    assert outs[-1].state.valid.sum(-1).tolist() == [1, 1]        # only the egos remain
    valid, state, pos, _ = sim.traffic_lights(torch.tensor([25, 30]))
    assert torch.equal(valid, short.tl_valid[:, -1]) and torch.equal(state, short.tl_state[:, -1])
    assert torch.equal(pos, short.tl_pos[:, -1])


def test_constant_velocity_keeps_speed_and_heading(reference_batch):
    sim = BatchedSimulator(background="constant_velocity")
    outs = _rollout(sim, reference_batch, torch.tensor([0, 0]), n=30)
    start = reference_batch.agent_valid[:, STEP_CURRENT].clone()
    start[:, 0] = False
    alive = start & outs[-1].state.valid
    assert alive.sum() > 50
    torch.testing.assert_close(outs[-1].state.spd[alive], reference_batch.agent_spd[:, STEP_CURRENT][alive])
    torch.testing.assert_close(outs[-1].state.yaw[alive], reference_batch.agent_yaw[:, STEP_CURRENT][alive])
    assert (outs[-1].state.acc[alive] == 0).all() and (outs[-1].state.yaw_rate[alive] == 0).all()


@pytest.mark.parametrize("name", ["constant_velocity", "idm"])
def test_reactive_agents_spawn_at_their_logged_state_when_they_appear(reference_batch, name):
    # scene 0: agent 36 first appears at step 18; scene 1: agent 38 at step 53
    sim = BatchedSimulator(background=name)
    outs = _rollout(sim, _truncate(reference_batch, 55), torch.tensor([0, 0]), n=44)
    for row, agent, step in [(0, 36, 18), (1, 38, 53)]:
        before, at = outs[step - STEP_CURRENT - 2].state, outs[step - STEP_CURRENT - 1].state
        assert not before.valid[row, agent] and at.valid[row, agent]
        assert torch.equal(at.pos[row, agent], reference_batch.agent_pos[row, step, agent])
        assert torch.equal(at.spd[row, agent], reference_batch.agent_spd[row, step, agent])


@pytest.mark.parametrize("name", ["constant_velocity", "idm"])
def test_reactive_agents_keep_driving_after_the_log_ends(reference_batch, name):
    short = _truncate(reference_batch, 21)
    outs = _rollout(BatchedSimulator(background=name), short, torch.tensor([0, 0]), n=14)
    last = outs[-1].state
    assert (last.valid.sum(-1) > 10).all()
    moving = last.valid & (last.spd.abs() > 1.0)
    assert moving.sum() > 5
    assert (outs[-1].state.pos - outs[-2].state.pos).norm(dim=-1)[moving].min() > 0.05


def test_idm_follower_stops_behind_a_stopped_leader_without_collision():
    # ego parked on the other lane; follower at 15 m/s, 60 m behind a car stopped in its lane
    batch = road_batch([(0.0, 50.0, 0.0, 0.0), (0.0, 0.0, 0.0, 15.0), (60.0, 0.0, 0.0, 0.0)])
    sim = BatchedSimulator(background="idm")
    sim.reset(batch, torch.tensor([0]))
    gaps = []
    for _ in range(120):
        out = sim.step(torch.zeros(1, 2))
        assert not out.collided.any()
        gaps.append(float(out.state.pos[0, 2, 0] - out.state.pos[0, 1, 0]) - 4.5)
    assert out.state.spd[0, 1].abs() < 0.1 and out.state.spd[0, 2] == 0
    assert 0.5 < gaps[-1] < 5.0
    assert min(gaps) > 0.5


def test_idm_follower_brakes_for_the_ego_cutting_in():
    # the ego stands still in the follower's lane 40 m ahead: the ego counts as a leader
    batch = road_batch([(40.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 10.0)])
    sim = BatchedSimulator(background="idm")
    sim.reset(batch, torch.tensor([0]))
    for _ in range(100):
        out = sim.step(torch.zeros(1, 2))
        assert not out.collided.any()
    assert out.state.spd[0, 1].abs() < 0.1


@pytest.mark.parametrize(("leader_x", "ttc"), [(30.0, 1.45), (100.0, 5.0)])
def test_ego_time_to_collision_is_the_gap_to_the_stopped_leader_over_the_closing_speed(leader_x, ttc):
    # the ego drives at 10 m/s towards a parked 4.5 m car in its lane; a car in the other lane and one behind
    # are not followed. After one step from step 10 the ego is at x = 11: gap = leader_x - 11 - 2 * 2.25 m
    batch = road_batch([(0.0, 0.0, 0.0, 10.0), (leader_x, 0.0, 0.0, 0.0), (10.0, 50.0, 0.0, 0.0),
                         (-20.0, 0.0, 0.0, 0.0)])
    sim = BatchedSimulator(background="log_replay")
    sim.reset(batch, torch.tensor([0]))
    out = sim.step(torch.zeros(1, 2))
    assert out.ego_time_to_collision.tolist() == pytest.approx([ttc], abs=1e-4)


def test_idm_vehicle_stops_at_a_red_light_and_passes_a_green_one():
    agents = [(0.0, 50.0, 0.0, 0.0), (0.0, 0.0, 0.0, 12.0)]
    final_x = {}
    for state in (TLState.STOP, TLState.GO):
        sim = BatchedSimulator(background="idm")
        sim.reset(road_batch(agents, light=(50.0, state)), torch.tensor([0]))
        red = False
        for _ in range(80):
            out = sim.step(torch.zeros(1, 2))
            red |= bool(out.red_light[0, 1])
        final_x[state] = float(out.state.pos[0, 1, 0])
        assert not red
    assert 40.0 < final_x[TLState.STOP] < 50.0 - 2.25
    assert final_x[TLState.GO] > 100.0


def test_ego_running_a_red_light_is_flagged_once():
    batch = road_batch([(30.0, 0.0, 0.0, 10.0), (0.0, 50.0, 0.0, 0.0)], light=(50.0, TLState.STOP))
    sim = BatchedSimulator(background="log_replay")
    sim.reset(batch, torch.tensor([0]))
    flags = [bool(sim.step(torch.zeros(1, 2)).ego_red_light[0]) for _ in range(40)]
    assert sum(flags) == 1 and flags.index(True) in (9, 10)


def test_ego_actions_are_clipped_to_the_vehicle_limits():
    batch = road_batch([(0.0, 0.0, 0.0, 10.0)])
    sim = BatchedSimulator(background="log_replay")
    sim.reset(batch, torch.tensor([0]))
    out = sim.step(torch.tensor([[100.0, -100.0]]))
    assert out.state.acc[0, 0] == 5.0 and out.state.yaw_rate[0, 0] == -1.5
    assert out.state.spd[0, 0] == pytest.approx(10.5)


@pytest.mark.parametrize("name", NON_LEARNED)
def test_rollouts_are_deterministic(reference_batch, name):
    a = _rollout(BatchedSimulator(background=name), reference_batch, torch.tensor([0, 0]), n=10)
    b = _rollout(BatchedSimulator(background=name), reference_batch, torch.tensor([0, 0]), n=10)
    for x, y in zip(a, b):
        _assert_same_output(x, y)


@pytest.mark.parametrize("name", NON_LEARNED)
def test_batch_of_two_equals_two_batches_of_one(reference_batch, name):
    ego = torch.tensor([0, 2])
    both = _rollout(BatchedSimulator(background=name), reference_batch, ego, n=10)
    for row in range(2):
        single = _rollout(BatchedSimulator(background=name), reference_batch.index([row]), ego[row:row + 1], n=10)
        for x, y in zip(both, single):
            assert torch.equal(x.state.pos[row], y.state.pos[0]) and torch.equal(x.state.valid[row], y.state.valid[0])
            assert torch.equal(x.collided[row], y.collided[0]) and torch.equal(x.offroad[row], y.offroad[0])
            torch.testing.assert_close(x.ego_progress[row], y.ego_progress[0])


@pytest.mark.parametrize("name", NON_LEARNED)
def test_reset_with_env_ids_replaces_only_those_rows(reference_batch, name):
    ego = torch.tensor([0, 0])
    sim = BatchedSimulator(background=name)
    sim.reset(reference_batch, ego)
    reference = BatchedSimulator(background=name)
    reference.reset(reference_batch, ego)
    for t in range(11, 16):
        sim.step(_expert_action(reference_batch, ego, t))
        reference.step(_expert_action(reference_batch, ego, t))
    # row 1 gets scene 0 (ego slot 2) as a fresh scene; row 0 continues
    sim.reset(reference_batch.index([0]), torch.tensor([2]), env_ids=torch.tensor([1]))
    assert sim.step_index.tolist() == [15, STEP_CURRENT]
    assert sim.ego_index.tolist() == [0, 2]
    assert torch.equal(sim.batch.agent_pos[1], reference_batch.agent_pos[0])
    fresh = BatchedSimulator(background=name)
    fresh.reset(reference_batch.index([0]), torch.tensor([2]))
    for t in range(16, 26):
        action = _expert_action(reference_batch, ego, t)
        out = sim.step(torch.stack([action[0], torch.zeros(2)]))
        ref = reference.step(action)
        one = fresh.step(torch.zeros(1, 2))
        assert torch.equal(out.state.pos[0], ref.state.pos[0]) and torch.equal(out.state.valid[0], ref.state.valid[0])
        assert torch.equal(out.state.pos[1], one.state.pos[0]) and torch.equal(out.state.valid[1], one.state.valid[0])
        assert torch.equal(out.offroad[1], one.offroad[0])


def test_reset_with_env_ids_accepts_a_full_batch(reference_batch):
    sim = BatchedSimulator(background="idm")
    sim.reset(reference_batch, torch.tensor([0, 0]))
    sim.step(torch.zeros(2, 2))
    swapped = reference_batch.index([1, 0])
    sim.reset(swapped, torch.tensor([0, 0]), env_ids=torch.tensor([0]))
    assert torch.equal(sim.batch.agent_pos[0], reference_batch.agent_pos[1])
    assert sim.step_index.tolist() == [STEP_CURRENT, STEP_CURRENT + 1]


def test_backgrounds_constant_lists_every_mode():
    assert BACKGROUNDS == ("log_replay", "constant_velocity", "idm", "trafficbots", "mixed")


def test_step_without_ego_action_moves_the_ego_like_the_background(reference_batch):
    replay = BatchedSimulator(background="log_replay")
    replay.reset(reference_batch, torch.tensor([0, 0]))
    cv = BatchedSimulator(background="constant_velocity")
    cv.reset(reference_batch, torch.tensor([0, 0]))
    for _ in range(5):
        logged, kept = replay.step(None), cv.step(None)
    assert torch.equal(logged.state.pos[:, 0], reference_batch.agent_pos[:, STEP_CURRENT + 5, 0])
    torch.testing.assert_close(kept.state.spd[:, 0], reference_batch.agent_spd[:, STEP_CURRENT, 0])
    assert (kept.state.acc[:, 0] == 0).all()
