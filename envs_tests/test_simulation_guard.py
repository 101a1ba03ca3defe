"""Specification of the collision guard: an acceleration cap against what lies ahead of an agent."""
from __future__ import annotations

import math

import pytest
import torch

from trafficbots_gym.data.constants import STEP_CURRENT, TLState
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
from trafficbots_gym.simulation import BatchedSimulator
from trafficbots_gym.simulation.background import split_guard
from trafficbots_gym.simulation.guard import (EGO_GUARD, EdgeHoldParams, GuardParams, LaneKeepingParams, RestartParams,
                                              SideCheckParams, acceleration_cap, background_guards,
                                              guard_acceleration, hold_edge, keep_lane, lane_offset, nearest_edge,
                                              obstacle_gaps, occupied_sides, red_light_ahead, restart_stalled)
from trafficbots_gym.simulation.metrics import MapGeometry, collisions
from trafficbots_gym.simulation.state import AgentState

from conftest import REFERENCE_SCENES, road_batch

VEHICLE = torch.tensor([True, False, False])


def _state(agents: list[tuple[float, float, float, float]]) -> tuple[AgentState, torch.Tensor, torch.Tensor]:
    """One scene of vehicles (x, y, yaw, speed), 4.5 x 2 m; returns (state, size, agent_type)."""
    a = torch.tensor(agents, dtype=torch.float32).unsqueeze(0)
    heading = torch.stack([torch.cos(a[..., 2]), torch.sin(a[..., 2])], -1)
    state = AgentState(valid=torch.ones(1, len(agents), dtype=torch.bool), pos=a[..., :2], yaw=a[..., 2],
                       spd=a[..., 3], vel=heading * a[..., 3:4], acc=torch.zeros(1, len(agents)),
                       yaw_rate=torch.zeros(1, len(agents)))
    size = torch.tensor([[[4.5, 2.0, 1.5]] * len(agents)])
    return state, size, VEHICLE.expand(1, len(agents), 3)


def test_a_standing_car_ahead_in_the_corridor_is_the_obstacle_at_its_bumper_gap():
    state, size, _ = _state([(0, 0, 0, 10), (20, 0.5, 0, 0), (-15, 0, 0, 10), (20, 6, 0, 0)])
    gap, lead_speed = obstacle_gaps(state, size, GuardParams(lookahead=(0.0,)))
    assert gap[0, 0].item() == pytest.approx(15.5)    # 20 m between centres minus two half lengths
    assert lead_speed[0, 0].item() == 0.0
    assert math.isinf(gap[0, 1].item()) and math.isinf(gap[0, 3].item())   # nothing ahead of them
    assert gap[0, 2].item() == pytest.approx(10.5)    # the car behind sees the first one


def test_a_car_in_the_next_lane_or_behind_is_not_an_obstacle():
    state, size, agent_type = _state([(0, 0, 0, 10), (10, 3.8, 0, 0), (-8, 0, 0, 0)])
    assert math.isinf(obstacle_gaps(state, size, GuardParams())[0][0, 0].item())
    assert torch.isinf(acceleration_cap(state, size, agent_type, GuardParams())[0, 0])


def test_a_crossing_car_counts_only_when_it_will_be_in_the_corridor_by_the_time_the_agent_gets_there():
    params = GuardParams(lookahead=(0.0, 1.0, 2.0))
    entering, size, _ = _state([(0, 0, 0, 10), (15, -10, math.pi / 2, 8)])      # crosses y = 0 in ~1.2 s
    gap, _ = obstacle_gaps(entering, size, params)
    assert gap[0, 0].item() < 15.0
    leaving, size, _ = _state([(0, 0, 0, 10), (15, 6, math.pi / 2, 8)])          # already past the lane
    assert math.isinf(obstacle_gaps(leaving, size, params)[0][0, 0].item())
    far, size, _ = _state([(0, 0, 0, 2), (60, -10, math.pi / 2, 8)])             # the agent is 30 s away
    assert math.isinf(obstacle_gaps(far, size, params)[0][0, 0].item())


def test_the_cap_brakes_for_a_close_obstacle_and_only_lowers_the_drivers_acceleration():
    state, size, agent_type = _state([(0, 0, 0, 10), (15, 0, 0, 0), (100, 0, 0, 10)])
    cap = acceleration_cap(state, size, agent_type, GuardParams())
    assert cap[0, 0].item() == pytest.approx(-5.0)        # hard braking, bounded by the type's limit
    acc = torch.tensor([[2.0, -3.0, 1.0]])
    guarded = guard_acceleration(acc, state, size, agent_type, GuardParams())
    assert guarded.tolist() == [[-5.0, 0.0, 1.0]]         # the free car keeps its choice; the standing one
                                                          # may brake to rest but not reverse


def test_a_standing_agent_behind_an_obstacle_is_held_and_not_reversed():
    state, size, agent_type = _state([(0, 0, 0, 0), (5.0, 0, 0, 0)])              # 0.5 m bumper gap
    guarded = guard_acceleration(torch.tensor([[2.0, 0.0]]), state, size, agent_type, GuardParams())
    assert guarded[0, 0].item() == 0.0
    reverse = torch.tensor([[-1.0, 0.0]])
    assert guard_acceleration(reverse, state, size, agent_type, GuardParams())[0, 0].item() == 0.0
    allowed = guard_acceleration(reverse, state, size, agent_type, GuardParams(allow_reverse=True))
    assert allowed[0, 0].item() == -1.0                  # the driver's own choice, not the guard's


def test_the_guard_brings_a_reversing_agent_to_a_standstill_within_its_limit():
    state, size, agent_type = _state([(0, 0, 0, -0.3), (50, 0, 0, -2.0), (-50, 0, 0, 3.0)])
    guarded = guard_acceleration(torch.tensor([[-1.0, 0.0, -2.0]]), state, size, agent_type, GuardParams())
    assert guarded[0].tolist() == pytest.approx([3.0, 5.0, -2.0])   # to zero speed, at most +5 m/s^2


def test_examining_a_subset_of_agents_gives_their_rows_of_the_full_cap():
    state, size, agent_type = _state([(0, 0, 0, 10), (15, 0, 0, 3), (40, 0, 0, 0), (0, 30, 1.0, 5)])
    full = acceleration_cap(state, size, agent_type, GuardParams())
    subset = acceleration_cap(state, size, agent_type, GuardParams(), agents=torch.tensor([[1, 0]]))
    assert torch.equal(subset, full[:, [1, 0]])


def test_guarded_full_throttle_stops_behind_a_standing_car_without_touching_it():
    state, size, agent_type = _state([(0, 0, 0, 12), (60, 0, 0, 0)])
    for _ in range(100):
        acc = guard_acceleration(torch.tensor([[5.0, 0.0]]), state, size, agent_type, GuardParams())
        state = state.step(acc, torch.zeros_like(acc))
        assert not collisions(state, size, agent_type).any()
    gap = state.pos[0, 1, 0] - state.pos[0, 0, 0] - 4.5
    assert 0.5 < gap.item() < 3.0 and abs(state.spd[0, 0].item()) < 0.1


def test_the_ego_guard_keeps_a_full_throttle_ego_off_a_standing_logged_car():
    batch = road_batch([(0.0, 0.0, 0.0, 8.0), (60.0, 0.0, 0.0, 0.0)])
    full_throttle = torch.tensor([[5.0, 0.0]])
    for guard, expect_collision in ((None, True), (GuardParams(), False)):
        sim = BatchedSimulator(background="log_replay", ego_guard=guard)
        sim.reset(batch, torch.tensor([0]))
        hit = [bool(sim.step(full_throttle).ego_collided) for _ in range(80)]
        assert any(hit) == expect_collision
    assert sim.step_index.item() == STEP_CURRENT + 80


def test_the_env_guards_learned_traffic_by_default_and_the_ego_on_request(small_checkpoint):
    default = TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=small_checkpoint, device="cpu")
    raw = TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=small_checkpoint, device="cpu",
                         background_guard=False, ego_guard=True)
    assert default.core.sim.guard == GuardParams() and default.core.sim.ego_guard is None
    assert default.core.sim.lane_keeping == LaneKeepingParams() and default.core.sim.restart == RestartParams()
    assert default.core.sim.edge_hold == EdgeHoldParams() and default.core.sim.side_check == SideCheckParams()
    assert raw.core.sim.guard is None and raw.core.sim.lane_keeping is None and raw.core.sim.restart is None
    assert raw.core.sim.edge_hold is None and raw.core.sim.side_check is None
    assert raw.core.sim.ego_guard == EGO_GUARD and not EGO_GUARD.ignore_followers
    default.close()
    raw.close()


# ----------------------------------------------------------------------------------------- stall restart
NO_RED = torch.zeros(1, 4, dtype=torch.bool)


def test_a_stalled_vehicle_whose_logged_driver_moves_gets_the_restart_floor():
    state, _, agent_type = _state([(0, 0, 0, 0), (0, 10, 0, 0), (0, 20, 0, 4.5), (0, 30, 0, 0)])
    log_spd, log_valid = torch.tensor([[8.0, 0.5, 8.0, 8.0]]), torch.tensor([[True, True, True, False]])
    driver = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    acc = restart_stalled(driver, state, log_spd, log_valid, agent_type, NO_RED, RestartParams(accel=1.5))
    assert acc[0, 0].item() == pytest.approx(1.5)    # stands, its logged driver drives at 8 m/s
    assert acc[0, 1].item() == -1.0                  # its logged driver stands too
    assert acc[0, 2].item() == -1.0                  # 4.5 m/s is above half the log's 8 m/s
    assert acc[0, 3].item() == -1.0                  # no logged driver at this step
    faster = restart_stalled(torch.full((1, 4), 3.0), state, log_spd, log_valid, agent_type, NO_RED,
                             RestartParams(accel=1.5))
    assert torch.equal(faster, torch.full((1, 4), 3.0))   # a floor: never lowers the driver's acceleration


def test_pedestrians_and_agents_before_a_red_light_are_not_restarted():
    state, _, agent_type = _state([(0, 0, 0, 0), (0, 10, 0, 0)])
    log_spd, log_valid, driver = torch.full((1, 2), 8.0), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2)
    pedestrian = torch.tensor([[[False, True, False]] * 2])
    assert torch.equal(restart_stalled(driver, state, log_spd, log_valid, pedestrian, NO_RED[:, :2], RestartParams()),
                       driver)
    red = torch.tensor([[True, False]])
    acc = restart_stalled(driver, state, log_spd, log_valid, agent_type, red, RestartParams())
    assert acc[0, 0].item() == 0.0 and acc[0, 1].item() == RestartParams().accel


def test_a_red_light_counts_when_its_stop_point_is_ahead_in_the_lane_and_faces_the_agent():
    state, size, _ = _state([(0, 0, 0, 0), (20, 0, 0, 0), (0, 10, 0, 0), (6, 20, math.pi, 0)])
    tl_pos = torch.tensor([[[8.0, 0.0], [8.0, 10.0], [0.0, 20.0]]])
    tl_dir = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    tl_state = torch.zeros(1, 3, 5, dtype=torch.bool)
    tl_state[0, 0, TLState.STOP] = tl_state[0, 1, TLState.GO] = tl_state[0, 2, TLState.CAUTION] = True
    ahead = red_light_ahead(state, size, torch.ones(1, 3, dtype=torch.bool), tl_state, tl_pos, tl_dir, 10.0, 2.5)
    assert ahead.tolist() == [[True, False, False, True]]   # red 5.75 m ahead; behind; green; yellow, other way


def test_the_collision_guard_still_holds_a_restarted_vehicle_behind_a_standing_car():
    state, size, agent_type = _state([(0, 0, 0, 0), (5.4, 0, 0, 0)])     # 0.9 m bumper gap
    floor = restart_stalled(torch.zeros(1, 2), state, torch.full((1, 2), 8.0), torch.ones(1, 2, dtype=torch.bool),
                            agent_type, NO_RED[:, :2], RestartParams())
    assert floor[0, 0].item() == RestartParams().accel
    assert guard_acceleration(floor, state, size, agent_type, GuardParams())[0, 0].item() <= 0.0


@pytest.mark.parametrize("kwargs", [dict(pace_fraction=0.0), dict(pace_fraction=1.5), dict(accel=0.0),
                                    dict(go_speed=-1.0), dict(light_distance=-1.0)])
def test_invalid_restart_constants_are_refused(kwargs):
    with pytest.raises(ValueError, match="RestartParams"):
        RestartParams(**kwargs)


# ------------------------------------------------------------------------------------------ lane keeping
def _lane_geometry() -> MapGeometry:
    """A straight lane along y = 0 heading +x, road edges at y = +-2 m (and a second road at y = 50)."""
    return MapGeometry.from_batch(road_batch([(0.0, 0.0, 0.0, 0.0)]))


def test_the_lane_offset_is_measured_to_the_nearest_lane_going_the_agents_way():
    state, _, _ = _state([(10, 1.5, 0, 8), (10, 1.5, math.pi, 8)])
    offset, point, direction = lane_offset(state, _lane_geometry(), LaneKeepingParams())
    assert offset[0, 0].item() == pytest.approx(1.5)
    assert point[0, 0].tolist() == pytest.approx([10.0, 0.0]) and direction[0, 0].tolist() == pytest.approx([1.0, 0.0])
    assert math.isinf(offset[0, 1].item())                     # no lane runs the other way


def test_a_vehicle_inside_its_lane_steers_freely_and_one_that_drifted_out_is_pulled_back():
    geometry, params = _lane_geometry(), LaneKeepingParams()
    state, _, agent_type = _state([(10, 0.2, 0, 8), (10, 1.5, 0, 8), (10, 1.5, math.pi, 8)])
    driver = torch.tensor([[0.3, 0.3, 0.3]])
    kept = keep_lane(driver, state, agent_type, geometry, params)
    assert kept[0, 0].item() == pytest.approx(0.3)            # 0.2 m off: its own choice
    assert kept[0, 1].item() < 0.0                            # 1.5 m left of the lane: steered right
    assert kept[0, 2].item() == pytest.approx(0.3)            # wrong way: no lane to keep
    pedestrian = torch.tensor([[[False, True, False]] * 3])
    assert torch.equal(keep_lane(driver, state, pedestrian, geometry, params), driver)


def test_lane_keeping_holds_a_drifting_vehicle_near_its_lane():
    geometry, params = _lane_geometry(), LaneKeepingParams()
    offsets = {}
    for keeping in (False, True):
        state, _, agent_type = _state([(0, 0, 0, 10)])
        offsets[keeping] = []
        for _ in range(80):
            yaw_rate = torch.tensor([[0.2]])                  # a driver drifting left
            if keeping:
                yaw_rate = keep_lane(yaw_rate, state, agent_type, geometry, params)
            state = state.step(torch.zeros(1, 1), yaw_rate)
            offsets[keeping].append(state.pos[0, 0, 1].item())
    assert max(offsets[False]) > 10.0                         # circles away from the road
    assert max(abs(y) for y in offsets[True]) < 1.2           # one overshoot past the pull's full weight ...
    assert abs(offsets[True][-1]) < params.pull_full          # ... then it settles inside


def test_guards_can_be_left_out_of_the_guarded_background_by_name():
    ablated = background_guards(True, without=("restart", "edge_hold"))
    assert ablated == {"guard": GuardParams(), "lane_keeping": LaneKeepingParams(), "restart": None, "edge_hold": None,
                       "side_check": SideCheckParams()}
    assert all(v is None for v in background_guards(False).values())
    with pytest.raises(ValueError, match="unknown guard.*'stall'.*valid names: guard, lane_keeping"):
        background_guards(True, without=("stall",))


def test_guarded_background_names_parse_and_bad_names_are_refused():
    assert split_guard("trafficbots+guard") == ("trafficbots", True)
    assert split_guard("idm") == ("idm", False)
    with pytest.raises(ValueError, match="idm\\+guard"):
        split_guard("idm+guard")


def test_a_faster_car_coming_from_behind_is_left_to_overtake_unless_followers_count():
    # the car behind at 14 m/s passes the agent (8 m/s) 1.5 m to its left: in 1 s it is ahead, inside the corridor
    state, size, _ = _state([(0, 0, 0, 8), (-6, 1.5, 0, 14)])
    assert math.isinf(obstacle_gaps(state, size, GuardParams())[0][0, 0].item())
    assert obstacle_gaps(state, size, GuardParams(ignore_followers=False))[0][0, 0].item() < 5.0


def test_the_corridor_bends_along_the_arc_of_the_yaw_rate_the_agent_drives():
    # a standing car 10 m ahead and 4 m to the left: off the straight corridor, on the left turn of radius 12.5 m
    state, size, _ = _state([(0, 0, 0, 5), (10, 4, 0.8, 0)])
    assert math.isinf(obstacle_gaps(state, size, GuardParams())[0][0, 0].item())
    turning = torch.tensor([[5.0 / 12.5, 0.0]])
    gap, _ = obstacle_gaps(state, size, GuardParams(), yaw_rate=turning)
    assert 0.0 < gap[0, 0].item() < 10.0
    assert math.isinf(obstacle_gaps(state, size, GuardParams(), yaw_rate=-turning)[0][0, 0].item())   # turning right
    assert math.isinf(obstacle_gaps(state, size, GuardParams(max_curvature=0.0), yaw_rate=turning)[0][0, 0].item())


@pytest.mark.parametrize("kwargs", [dict(min_gap=0.0), dict(time_headway=-1.0), dict(lookahead=()),
                                    dict(lookahead=(-1.0,)), dict(timing_tolerance=-0.1), dict(max_curvature=-0.1)])
def test_invalid_guard_constants_are_refused(kwargs):
    with pytest.raises(ValueError, match="GuardParams"):
        GuardParams(**kwargs)


# ------------------------------------------------------------------------------------------------ edge hold
def test_the_nearest_road_edge_gives_its_distance_direction_and_the_side_of_the_agent():
    state, _, _ = _state([(10, 1.2, 0, 8), (10, -1.5, math.pi, 8)])
    dist, direction, normal = nearest_edge(state, _lane_geometry())
    assert dist[0].tolist() == pytest.approx([0.8, 0.5])          # edges at y = +-2 m
    assert abs(direction[0, 0, 0].item()) == pytest.approx(1.0)
    assert torch.allclose(normal[0], torch.tensor([[0.0, -1.0], [0.0, 1.0]]))


def test_a_vehicle_or_cyclist_heading_onto_a_close_edge_is_turned_along_it_and_nothing_else_is():
    geometry, params = _lane_geometry(), EdgeHoldParams(start=0.3, lead_time=0.0, turn_time=0.5)
    # heading 0.2 rad towards the left edge, box side 0.1 m from it; far from it; heading away; pedestrian
    state, size, agent_type = _state([(10, 0.9, 0.2, 8), (10, 0.0, 0.2, 8), (10, 0.9, -0.2, 8), (10, 0.9, 0.2, 8)])
    agent_type = agent_type.clone()
    agent_type[0, 3] = torch.tensor([False, True, False])
    driver = torch.full((1, 4), 0.1)
    held = hold_edge(driver, state, size, agent_type, geometry, params)
    assert held[0, 0].item() == pytest.approx(-0.2 / 0.5)         # turned back parallel to the edge in 0.5 s
    assert held[0, 1:].tolist() == pytest.approx([0.1, 0.1, 0.1])
    cyclist = torch.tensor([[[False, False, True]] * 4])
    assert hold_edge(driver, state, size, cyclist, geometry, params)[0, 0].item() < 0.0
    harder = hold_edge(torch.full((1, 4), -1.0), state, size, agent_type, geometry, params)
    assert harder[0, 0].item() == -1.0                             # a driver turning away harder keeps its turn


def test_the_edge_hold_starts_earlier_for_an_agent_fast_towards_the_edge_and_measures_its_corner():
    geometry, params = _lane_geometry(), EdgeHoldParams(start=0.1, lead_time=0.5, turn_time=0.5)
    driver = torch.zeros(1, 2)
    # both 0.2 rad onto the left edge (y = 2), the leading corner 0.27 m from it: at 10 m/s it gets there in
    # 0.14 s and is held, at 1 m/s in 1.4 s and is not (yet)
    state, size, agent_type = _state([(10, 0.3, 0.2, 10.0), (30, 0.3, 0.2, 1.0)])
    held = hold_edge(driver, state, size, agent_type, geometry, params)
    assert held[0, 0].item() < 0.0 and held[0, 1].item() == 0.0
    # heading straight at it: the front bumper, not the box side (0.4 m away), is what comes close
    state, size, agent_type = _state([(10, 0.6, math.pi / 2, 1.0)])
    assert hold_edge(torch.zeros(1, 1), state, size, agent_type, geometry, EdgeHoldParams(start=0.3))[0, 0].item() != 0.0


def test_the_edge_hold_keeps_a_drifting_vehicle_on_the_road_without_pushing_it_away():
    geometry, params = _lane_geometry(), EdgeHoldParams()
    for hold in (False, True):
        state, size, agent_type = _state([(0, 0.5, 0.05, 8)])
        touched = False
        for _ in range(60):
            yaw_rate = torch.tensor([[0.05]])                        # a driver drifting left, onto the edge
            if hold:
                yaw_rate = hold_edge(yaw_rate, state, size, agent_type, geometry, params)
            state = state.step(torch.zeros(1, 1), yaw_rate)
            touched |= state.pos[0, 0, 1].item() + 1.0 > 2.0            # box side past the edge at y = 2
        assert touched != hold
    assert 0.5 < state.pos[0, 0, 1].item() < 1.0                      # held near the edge, not pushed back


# ------------------------------------------------------------------------------------------------ side check
def test_a_side_is_occupied_by_a_neighbour_alongside_or_catching_up_within_the_clearance():
    params = SideCheckParams(clearance=0.5, horizon=1.0)
    # agent 0 at 8 m/s; 1: alongside on its left, 0.3 m between the sides; 2: 5 m behind on its right at 14 m/s
    # (reaches its flank within 1 s); 3: 5 m behind on the left but slower; 4: beside on the right, 2 m clear
    state, size, _ = _state([(0, 0, 0, 8), (1, 2.3, 0, 8), (-5, -2.3, 0, 14), (-5, 2.3, 0, 6), (0, -4.0, 0, 8)])
    left, right = occupied_sides(state, size, params)
    assert left[0, 0].item() and right[0, 0].item()
    state, size, _ = _state([(0, 0, 0, 8), (-5, 2.3, 0, 6), (0, -4.0, 0, 8)])
    left, right = occupied_sides(state, size, params)
    assert not left[0, 0].item() and not right[0, 0].item()


def test_lateral_guards_do_not_steer_towards_an_occupied_side_but_keep_the_drivers_own_turn():
    geometry = _lane_geometry()
    # heading 0.2 rad onto the left edge (the hold turns it right), a neighbour alongside on its right
    state, size, agent_type = _state([(10, 0.9, 0.2, 8), (10, -1.4, 0.0, 8)])
    driver = torch.tensor([[0.1, 0.0]])
    sides = occupied_sides(state, size, SideCheckParams())
    assert sides[1][0, 0].item()
    assert hold_edge(driver, state, size, agent_type, geometry, EdgeHoldParams())[0, 0].item() < 0.0
    assert hold_edge(driver, state, size, agent_type, geometry, EdgeHoldParams(), sides)[0, 0].item() == pytest.approx(0.1)
    # 1 m left of its lane (lane keeping pulls it right), the neighbour 0.4 m clear on its right
    state, size, agent_type = _state([(10, 1.0, 0.0, 8), (10, -1.4, 0.0, 8)])
    sides = occupied_sides(state, size, SideCheckParams())
    assert keep_lane(driver, state, agent_type, geometry, LaneKeepingParams())[0, 0].item() < 0.0
    assert keep_lane(driver, state, agent_type, geometry, LaneKeepingParams(), sides)[0, 0].item() == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs", [dict(clearance=-0.1), dict(horizon=-1.0)])
def test_invalid_side_check_constants_are_refused(kwargs):
    with pytest.raises(ValueError, match="SideCheckParams"):
        SideCheckParams(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(start=0.0), dict(turn_time=0.0), dict(lead_time=-0.1)])
def test_invalid_edge_hold_constants_are_refused(kwargs):
    with pytest.raises(ValueError, match="EdgeHoldParams"):
        EdgeHoldParams(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(pull_start=1.0, pull_full=1.0), dict(pull_start=-0.1),
                                    dict(heading_tolerance=0.0), dict(min_lookahead=0.0)])
def test_invalid_lane_keeping_constants_are_refused(kwargs):
    with pytest.raises(ValueError, match="LaneKeepingParams"):
        LaneKeepingParams(**kwargs)
