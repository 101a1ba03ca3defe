"""Specification of the controller benchmark (``trafficbots-bench``) and its ego controllers."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from trafficbots_gym.benchmarks.controllers import (
    SAFETY_EVENTS, CollisionKind, collision_kind, count_events_, main, run_pair, student_t_quantile, summarize, t_interval, wilson_interval,
)
from trafficbots_gym.benchmarks.ego_controllers import (
    make_controller, route_leader, stop_point_gap, tracking_action,
)
from trafficbots_gym.data.constants import DT, TLState
from trafficbots_gym.simulation.dynamics import unicycle_step
from trafficbots_gym.simulation.idm import IDMParams
from trafficbots_gym.simulation.metrics import LoggedPath
from trafficbots_gym.simulation.state import AgentState

from conftest import REFERENCE_SCENES, WOMD_EGO

REQUIRED_COLUMNS = ("controller", "background", "episodes", "goal_rate", "collision_rate", "offroad_rate",
                    "red_light_rate", "progress", "ade")


# ------------------------------------------------------------------------------------ intervals
def test_wilson_interval_contains_the_rate_and_shrinks_with_more_episodes():
    widths = []
    for n in (10, 100, 1000):
        lo, hi = wilson_interval(3 * n // 10, n)
        assert lo < 0.3 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_wilson_interval_matches_the_textbook_value_and_stays_in_the_unit_interval():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.0 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042)])
def test_student_t_quantile_matches_the_table(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, rel=2e-3)


def test_t_interval_contains_the_mean_and_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5.0, 1.0, 10), rng.normal(5.0, 1.0, 1000)
    m_small, lo_small, hi_small = t_interval(small)
    m_large, lo_large, hi_large = t_interval(large)
    assert lo_small < m_small < hi_small and lo_large < 5.0 < hi_large
    assert hi_large - lo_large < hi_small - lo_small
    assert math.isnan(t_interval([1.0])[1])


# ------------------------------------------------------------------------------------ fault
def _two_cars(other_xy: tuple[float, float], ego_speed: float = 5.0) -> AgentState:
    pos = torch.tensor([[[0.0, 0.0], list(other_xy)]])
    zeros = torch.zeros(1, 2)
    return AgentState(valid=torch.ones(1, 2, dtype=torch.bool), pos=pos, yaw=zeros.clone(),
                      spd=torch.tensor([[ego_speed, 5.0]]), vel=torch.zeros(1, 2, 2), acc=zeros.clone(),
                      yaw_rate=zeros.clone())


@pytest.mark.parametrize("other,speed,kind", [
    ((4.0, 0.0), 5.0, CollisionKind.FRONT),      # ego runs into the car ahead: at fault
    ((-4.0, 0.0), 5.0, CollisionKind.REAR),      # ego is rear-ended
    ((0.5, 1.8), 5.0, CollisionKind.LATERAL),    # side swipe: undecided
    ((4.0, 0.0), 0.0, CollisionKind.STOPPED),    # stopped ego is hit
    ((10.0, 0.0), 5.0, CollisionKind.NONE),      # no contact
])
def test_collision_kind_decides_fault_from_the_partner_bearing_and_ego_speed(other, speed, kind):
    size = torch.tensor([[[4.5, 2.0, 1.5], [4.5, 2.0, 1.5]]])
    assert collision_kind(_two_cars(other, speed), size, torch.tensor([0])).item() == kind


def test_summary_counts_only_front_collisions_as_at_fault_among_decidable_ones():
    from trafficbots_gym.benchmarks.controllers import EpisodeResults
    kinds = np.array([CollisionKind.FRONT, CollisionKind.REAR, CollisionKind.LATERAL, CollisionKind.NONE])
    r = EpisodeResults(scenario_id=list("abcd"), goal_reached=np.array([1, 0, 0, 1], bool),
                       collided=kinds != CollisionKind.NONE, collision_kind=kinds, offroad=np.zeros(4, bool),
                       red_light=np.zeros(4, bool), progress=np.ones(4), route_completion=np.ones(4), ade=np.zeros(4),
                       max_jerk=np.ones(4), max_overspeed=np.zeros(4),
                       ahead_at_collision=np.array([6.0, 0.0, 3.0, np.nan]), seconds=1.0, env_steps=8)
    row = summarize("c", "b", r)
    assert row["collision_rate"] == 0.75 and row["at_fault_rate"] == 0.25
    assert row["ahead_at_collision"] == 3.0                         # over the three collisions only
    assert row["decidable_collisions"] == 2 and row["at_fault_share"] == 0.5
    assert row["goal_rate_lo"] < 0.5 < row["goal_rate_hi"]


# ------------------------------------------------------------------------------------ controllers
def test_tracking_action_over_one_step_inverts_the_unicycle():
    pos, yaw, spd = torch.tensor([[1.0, 2.0]]), torch.tensor([0.3]), torch.tensor([7.0])
    acc, yaw_rate = torch.tensor([-1.7]), torch.tensor([0.4])
    target_pos, target_yaw, _, _ = unicycle_step(pos, yaw, spd, acc, yaw_rate)
    action = tracking_action(pos, yaw, spd, target_pos, target_yaw, DT)
    assert torch.allclose(action, torch.stack([acc, yaw_rate], -1), atol=1e-4)


def test_tracking_action_reaches_a_straight_target_with_constant_acceleration():
    pos, yaw, spd = torch.zeros(1, 2), torch.zeros(1), torch.tensor([10.0])
    target = torch.tensor([[10.0 * 0.5 + 0.5 * 2.0 * 0.25, 0.0]])          # 0.5 s at 10 m/s, +2 m/s^2
    action = tracking_action(pos, yaw, spd, target, torch.zeros(1), 0.5)
    assert torch.allclose(action, torch.tensor([[2.0, 0.0]]), atol=1e-4)


def _straight_route(n: int = 21) -> LoggedPath:
    x = torch.arange(n, dtype=torch.float32) * 5.0
    points = torch.stack([x, torch.zeros(n)], -1).view(1, 1, n, 2)
    return LoggedPath(points=points, yaw=torch.zeros(1, 1, n), arc=x.view(1, 1, n), length=x[-1:].view(1, 1),
                      valid=torch.ones(1, 1, dtype=torch.bool))


def test_route_leader_is_the_nearest_agent_ahead_on_the_route_not_beside_or_behind():
    pos = torch.tensor([[[0.0, 0.0], [30.0, 0.5], [12.0, 6.0], [-10.0, 0.0], [50.0, 0.0]]])
    n = pos.shape[1]
    state = AgentState(valid=torch.ones(1, n, dtype=torch.bool), pos=pos, yaw=torch.zeros(1, n),
                       spd=torch.tensor([[10.0, 3.0, 9.0, 9.0, 9.0]]), vel=torch.zeros(1, n, 2),
                       acc=torch.zeros(1, n), yaw_rate=torch.zeros(1, n))
    size = torch.tensor([[4.0, 2.0, 1.5]]).expand(1, n, 3)
    gap, speed = route_leader(_straight_route(), state, torch.tensor([0]), size, 0.5)
    assert gap.item() == pytest.approx(30.0 - 2.0 - 2.0) and speed.item() == pytest.approx(3.0)


def test_stop_point_gap_sees_red_lights_on_the_route_that_can_still_be_stopped_for():
    tl_state = torch.zeros(1, 2, 5, dtype=torch.bool)
    tl_state[0, 0, TLState.STOP] = True
    tl_state[0, 1, TLState.GO] = True
    tl_pos = torch.tensor([[[40.0, 0.3], [20.0, 0.0]]])
    tl_dir = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    args = (torch.tensor([True, True]).view(1, 2), tl_state, tl_pos, tl_dir, IDMParams())
    gap = stop_point_gap(_straight_route(), torch.tensor([10.0]), torch.tensor([4.0]), *args)
    assert gap.item() == pytest.approx(38.0, abs=0.1)               # the green light at 20 m is ignored
    too_fast = stop_point_gap(_straight_route(), torch.tensor([30.0]), torch.tensor([4.0]), *args)
    assert math.isinf(too_fast.item())                              # 150 m to stop at 3 m/s^2: proceeds


def test_unknown_controller_and_missing_model_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown controller 'mpc'"):
        make_controller("mpc")
    with pytest.raises(FileNotFoundError, match="no Stable-Baselines3 model"):
        make_controller(str(tmp_path / "missing.zip"))


def test_shipped_ppo_policy_is_a_builtin_controller_that_reaches_most_held_out_goals():
    controller = make_controller("ppo", device="cpu")
    assert controller.name == "ppo" and controller.env_overrides == {"obs_mode": "flat", "action_mode": "continuous"}
    result = run_pair(controller, "log_replay", episodes=8, seed=0, num_envs=8)  # embedded held-out scenes
    assert result.goal_reached.mean() >= 0.5
    assert result.progress.mean() > 20.0


def test_shipped_route_mode_policy_carries_its_action_mode_and_stays_on_the_road():
    controller = make_controller("ppo_route", device="cpu")
    assert controller.name == "ppo_route" and controller.env_overrides["action_mode"] == "route"
    result = run_pair(controller, "log_replay", episodes=8, seed=0, num_envs=8)  # embedded held-out scenes
    assert result.goal_reached.mean() >= 0.375                       # 4 of these 8 (0.72 of 100 held-out)
    assert result.offroad.mean() <= 0.125                            # 0 of these 8 (the ppo policy: 1)


def test_shipped_time_to_collision_policy_reaches_the_held_out_goals():
    controller = make_controller("ppo_route_ttc", device="cpu")
    assert controller.env_overrides["action_mode"] == "route"
    result = run_pair(controller, "log_replay", episodes=24, seed=0, num_envs=24)  # embedded held-out scenes
    assert result.goal_reached.sum() >= 16                           # 18 of these 24 (0.85 of 100 held-out)
    assert not result.offroad.any()


def test_shipped_guarded_policy_drives_under_its_guard_and_reaches_the_held_out_goals():
    controller = make_controller("ppo_route_guard", device="cpu")
    assert (controller.env_overrides["action_mode"], controller.env_overrides["ego_guard"]) == ("route", True)
    result = run_pair(controller, "log_replay", episodes=24, seed=0, num_envs=24)  # embedded held-out scenes
    assert result.goal_reached.sum() >= 19                           # 22 of these 24 (0.87 of 100 held-out)
    assert result.collided.sum() + result.offroad.sum() <= 4         # 1 collision, 2 off-road here


# ------------------------------------------------------------------------------------ episodes
@pytest.fixture(scope="module")
def womd_runs(womd_scene) -> dict:
    """One full log-replay episode of each built-in deterministic controller on a moving real vehicle."""
    return {name: run_pair(make_controller(name), "log_replay", episodes=1, seed=0, scenes=womd_scene,
                           env_kwargs={"ego": WOMD_EGO})
            for name in ("expert", "constant_velocity", "idm")}


def test_expert_under_log_replay_reproduces_the_logged_ego_without_causing_a_collision(womd_runs):
    result = womd_runs["expert"]
    assert result.progress[0] > 50.0                                 # the ego really drives
    assert result.ade[0] < 0.05                                      # a few cm: real logs jitter sideways
    assert not result.collided[0] and not result.offroad[0] and not result.red_light[0]
    assert result.goal_reached[0]
    assert result.max_overspeed[0] < 0.5                           # never much faster than its own log


def test_constant_velocity_drifts_from_the_log_that_the_expert_follows(womd_runs):
    assert womd_runs["constant_velocity"].ade[0] > 10 * max(womd_runs["expert"].ade[0], 0.01)


def test_idm_route_follower_drives_the_logged_route_to_its_goal(womd_runs):
    result = womd_runs["idm"]
    assert result.progress[0] > 50.0 and result.goal_reached[0]
    assert not result.offroad[0] and not result.collided[0]


def test_results_have_one_row_per_controller_and_background_with_the_required_columns(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--controller", "expert", "random", "--background", "log_replay", "constant_velocity",
                 "--scenes", str(REFERENCE_SCENES), "--episodes", "2", "--num-envs", "2", "--horizon", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["controller"], r["background"]) for r in rows) == sorted(
        (c, b) for c in ("expert", "random") for b in ("log_replay", "constant_velocity"))
    for column in REQUIRED_COLUMNS:
        assert column in rows[0]
    for name in ("goal_rate", "collision_rate", "offroad_rate", "red_light_rate", "progress", "ade"):
        assert f"{name}_lo" in rows[0] and f"{name}_hi" in rows[0]
    assert all(r["episodes"] == "2" for r in rows)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| expert | log_replay | 2 |" in (out / "results.md").read_text()
    assert "| random | constant_velocity | 2 |" in capsys.readouterr().out


def test_episodes_cycle_through_the_scenes_in_batches_and_repeat_with_the_same_seed():
    kwargs = {"episodes": 3, "seed": 3, "scenes": REFERENCE_SCENES, "horizon": 3, "num_envs": 2}
    a = run_pair(make_controller("random"), "constant_velocity", **kwargs)
    b = run_pair(make_controller("random"), "constant_velocity", **kwargs)
    assert len(a.scenario_id) == 3 and a.scenario_id[0] == a.scenario_id[2] != a.scenario_id[1]
    assert np.array_equal(a.ade, b.ade) and np.array_equal(a.progress, b.progress)


def test_how_far_the_ego_is_ahead_of_its_log_is_taken_at_its_first_collision_only():
    # the SDC of reference scene 0 overlaps another agent at step 11; scene 1 has no collision
    r = run_pair(make_controller("expert"), "log_replay", episodes=2, seed=0, scenes=REFERENCE_SCENES, horizon=5,
                 num_envs=2)
    assert r.collided.tolist() == [True, False]
    assert 0.0 <= r.ahead_at_collision[0] < 0.5                      # the expert is level with its log
    assert np.isnan(r.ahead_at_collision[1])


def _flags(**true_rows):
    names = ("collided", "offroad", "red_light", "goal_reached")
    return {n: torch.tensor([r in true_rows.get(n, ()) for r in range(2)]) for n in names}


@pytest.mark.parametrize("after_goal, expected_offroad", [(False, [False, False]), (True, [True, False])])
def test_safety_events_count_up_to_the_goal_step_unless_asked_to_count_after_it(after_goal, expected_offroad):
    seen = {n: torch.zeros(2, dtype=torch.bool) for n in SAFETY_EVENTS}
    goal_before = torch.zeros(2, dtype=torch.bool)
    count_events_(seen, _flags(goal_reached=[0], collided=[0]), goal_before, after_goal)  # goal step
    count_events_(seen, _flags(goal_reached=[0], offroad=[0]), goal_before, after_goal)   # after it
    count_events_(seen, _flags(red_light=[1]), goal_before, after_goal)                    # no goal
    assert seen["collided"].tolist() == [True, False]        # the goal step itself still counts
    assert seen["offroad"].tolist() == expected_offroad
    assert seen["red_light"].tolist() == [False, True]
    assert goal_before.tolist() == [True, False]
