"""Specification of the batched driving metrics (trafficbots_gym.simulation.metrics)."""
from __future__ import annotations

import math

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import MapType, TLState
from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.simulation import metrics as M
from trafficbots_gym.simulation.state import AgentState

from conftest import REFERENCE_SCENES

VEH, PED = [True, False, False], [False, True, False]


def _state(pos, yaw, valid=None) -> AgentState:
    pos = torch.tensor(pos, dtype=torch.float32).unsqueeze(0)
    yaw = torch.tensor(yaw, dtype=torch.float32).unsqueeze(0)
    n = pos.shape[1]
    valid = torch.ones(1, n, dtype=torch.bool) if valid is None else torch.tensor([valid])
    zeros = torch.zeros(1, n)
    return AgentState(valid=valid, pos=pos, yaw=yaw, spd=zeros, vel=torch.zeros(1, n, 2), acc=zeros, yaw_rate=zeros)


def _overlap(p1, y1, p2, y2, l1=4.0, w1=2.0, l2=4.0, w2=2.0) -> bool:
    pos = torch.tensor([[p1, p2]], dtype=torch.float32)
    yaw = torch.tensor([[y1, y2]], dtype=torch.float32)
    m = M.box_overlap_matrix(pos, yaw, torch.tensor([[l1, l2]]), torch.tensor([[w1, w2]]))
    assert bool(m[0, 0, 1]) == bool(m[0, 1, 0])
    return bool(m[0, 0, 1])


def test_box_corners_are_counter_clockwise_around_the_heading():
    c = M.box_corners(torch.tensor([1.0, 2.0]), torch.tensor(math.pi / 2), torch.tensor(4.0), torch.tensor(2.0))
    expected = torch.tensor([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]])
    torch.testing.assert_close(c, expected, atol=1e-5, rtol=0)


def test_axis_aligned_boxes_overlap_only_when_they_intersect():
    assert _overlap([0, 0], 0.0, [3.9, 0], 0.0)
    assert not _overlap([0, 0], 0.0, [4.1, 0], 0.0)
    assert _overlap([0, 0], 0.0, [0, 1.9], 0.0)
    assert not _overlap([0, 0], 0.0, [0, 2.1], 0.0)


def test_rotated_boxes_separated_along_a_diagonal_do_not_overlap():
    # Two 45-deg boxes side by side: their axis-aligned bounds overlap, the boxes do not.
    q = math.pi / 4
    assert not _overlap([0, 0], q, [1.6, -1.6], q)
    assert _overlap([0, 0], q, [1.2, -1.2], q)


def test_rotated_box_corner_poking_into_another_box_overlaps():
    # A box rotated 45 deg whose corner reaches 0.2 m into an axis-aligned box.
    half_diag = math.hypot(2.0, 1.0)
    reach = half_diag * math.cos(math.atan2(1.0, 2.0) - math.pi / 4)
    assert _overlap([0, 0], 0.0, [2.0 + reach - 0.2, 0], math.pi / 4)
    assert not _overlap([0, 0], 0.0, [2.0 + reach + 0.2, 0], math.pi / 4)


def test_perpendicular_boxes_use_their_own_extents():
    # T-configuration: the second box stands across the first one's front.
    assert _overlap([0, 0], 0.0, [2.9, 0], math.pi / 2, l2=4.0, w2=2.0)
    assert not _overlap([0, 0], 0.0, [3.1, 0], math.pi / 2, l2=4.0, w2=2.0)


def test_collisions_exclude_self_invalid_agents_and_pedestrian_pairs():
    s = _state([[0, 0], [0.5, 0], [10, 0], [10.3, 0], [20, 0], [20.5, 0]], [0.0] * 6,
               valid=[True, True, True, True, True, False])
    size = torch.tensor([[[4.0, 2.0, 1.5], [4.0, 2.0, 1.5], [0.5, 0.5, 1.8], [0.5, 0.5, 1.8],
                          [4.0, 2.0, 1.5], [4.0, 2.0, 1.5]]])
    typ = torch.tensor([[VEH, VEH, PED, PED, VEH, VEH]])
    assert M.collisions(s, size, typ).tolist() == [[True, True, False, False, False, False]]


def test_collision_of_pedestrian_with_vehicle_counts():
    s = _state([[0, 0], [1.5, 0]], [0.0, 0.0])
    size = torch.tensor([[[4.0, 2.0, 1.5], [0.5, 0.5, 1.8]]])
    assert M.collisions(s, size, torch.tensor([[VEH, PED]])).tolist() == [[True, True]]


def _straight_road_batch() -> SceneBatch:
    """One scene: a 40 m vehicle lane along y=0 (x in [0, 40]) and road edges at y = +-2 m."""
    P, N = 4, 20
    pos = torch.zeros(1, P, N, 2)
    vec = torch.zeros(1, P, N, 2)
    valid = torch.zeros(1, P, N, dtype=torch.bool)
    typ = torch.zeros(1, P, 11, dtype=torch.bool)
    for p, (y, cls) in enumerate([(0.0, MapType.SURFACE_STREET), (2.0, MapType.ROAD_EDGE_BOUNDARY),
                                  (-2.0, MapType.ROAD_EDGE_BOUNDARY)]):
        pos[0, p, :, 0] = torch.arange(N) * 2.0
        pos[0, p, :, 1] = y
        vec[0, p, :, 0] = 2.0
        valid[0, p] = True
        typ[0, p, cls] = True
    T, A, S = 1, 1, 1
    return SceneBatch(
        agent_valid=torch.ones(1, T, A, dtype=torch.bool), agent_pos=torch.zeros(1, T, A, 2),
        agent_vel=torch.zeros(1, T, A, 2), agent_spd=torch.zeros(1, T, A), agent_acc=torch.zeros(1, T, A),
        agent_yaw=torch.zeros(1, T, A), agent_yaw_rate=torch.zeros(1, T, A),
        agent_type=torch.tensor([[VEH]]), agent_role=torch.zeros(1, A, 3, dtype=torch.bool),
        agent_size=torch.tensor([[[4.0, 1.8, 1.5]]]), agent_object_id=torch.zeros(1, A, dtype=torch.long),
        agent_goal=torch.zeros(1, A, 4), agent_dest=torch.zeros(1, A, dtype=torch.long),
        agent_dest_known=torch.tensor([True]), map_valid=valid, map_type=typ, map_pos=pos, map_dir=vec,
        map_boundary=torch.tensor([[0.0, 40.0, -2.0, 2.0]]), tl_valid=torch.zeros(1, T, S, dtype=torch.bool),
        tl_state=torch.zeros(1, T, S, 5, dtype=torch.bool), tl_pos=torch.zeros(1, T, S, 2),
        tl_dir=torch.zeros(1, T, S, 2))


def test_offroad_flags_vehicles_touching_a_road_edge_or_far_from_lanes():
    batch = _straight_road_batch()
    geom = M.MapGeometry.from_batch(batch)
    cases = [([10.0, 0.0], 0.0, False),        # centred in the lane
             ([10.0, 0.9], 0.0, False),        # 0.2 m clear of the edge
             ([10.0, 1.3], 0.0, True),         # box crosses y = 2
             ([10.0, 0.0], math.pi / 2, True),  # standing across the road: box spans both edges
             ([10.0, 8.0], 0.0, True)]         # far beyond the edge, no edge inside the box
    size = torch.tensor([[[4.0, 1.8, 1.5]] * len(cases)])
    typ = torch.tensor([[VEH] * len(cases)])
    s = _state([c[0] for c in cases], [c[1] for c in cases])
    assert M.offroad(s, size, typ, geom).tolist() == [[c[2] for c in cases]]


def test_offroad_ignores_pedestrians_and_invalid_agents():
    geom = M.MapGeometry.from_batch(_straight_road_batch())
    s = _state([[10.0, 8.0], [10.0, 8.0]], [0.0, 0.0], valid=[True, False])
    size = torch.tensor([[[0.5, 0.5, 1.8], [4.0, 1.8, 1.5]]])
    assert M.offroad(s, size, torch.tensor([[PED, VEH]]), geom).tolist() == [[False, False]]


def test_lane_distance_matches_brute_force_on_reference_scenes():
    reader = SceneReader(REFERENCE_SCENES)
    batch = SceneBatch.from_scenes([reader[0], reader[1]])
    geom = M.MapGeometry.from_batch(batch)
    bound = batch.map_boundary
    u = torch.rand(2, 1500, 2, generator=torch.Generator().manual_seed(0))
    points = torch.stack([bound[:, None, 0] + u[..., 0] * (bound[:, None, 1] - bound[:, None, 0]),
                          bound[:, None, 2] + u[..., 1] * (bound[:, None, 3] - bound[:, None, 2])], -1)
    points = torch.cat([points, batch.agent_pos[:, 40]], dim=1)
    fast = M.lane_distance(points, geom)
    is_lane = batch.map_type[..., :3].any(-1) & batch.map_valid.any(-1)
    for b in range(2):
        lane = is_lane[b]
        d = M.point_segment_distance(points[b], batch.map_pos[b][lane].reshape(-1, 2),
                                     batch.map_dir[b][lane].reshape(-1, 2))
        d = d.masked_fill(~batch.map_valid[b][lane].reshape(-1), float("inf")).amin(-1)
        torch.testing.assert_close(fast[b], d)


def test_the_grid_search_finds_the_nearest_lane_and_edge_segments_of_the_full_ranking():
    reader = SceneReader(REFERENCE_SCENES)
    batch = SceneBatch.from_scenes([reader[0], reader[1]])
    geom = M.MapGeometry.from_batch(batch)
    bound = batch.map_boundary
    u = torch.rand(2, 1500, 2, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1   # also a little outside
    points = torch.stack([bound[:, None, 0] + u[..., 0] * (bound[:, None, 1] - bound[:, None, 0]),
                          bound[:, None, 2] + u[..., 1] * (bound[:, None, 3] - bound[:, None, 2])], -1)
    for polylines, k in ((geom.lanes, M.LANE_CANDIDATES), (geom.edges, M.EDGE_CANDIDATES)):
        nearest = [M.point_segment_distance(points, start, vec).masked_fill(~valid, float("inf")).amin(-1)
                   for start, vec, valid in (polylines.candidates(points, k), polylines.grid_candidates(points, k))]
        torch.testing.assert_close(nearest[1], nearest[0])
    assert geom.lanes.grid_ids.shape == (2, M.GRID_CELLS ** 2, M.GRID_CANDIDATES)


def test_map_geometry_rows_can_be_replaced_by_scenes_with_more_polylines():
    reader = SceneReader(REFERENCE_SCENES)
    batch = SceneBatch.from_scenes([reader[1], reader[1]])
    small = M.MapGeometry.from_batch(batch)
    big = M.MapGeometry.from_batch(SceneBatch.from_scenes([reader[0]]))
    assert big.lanes.capacity > small.lanes.capacity
    mixed = small.replace_rows(torch.tensor([1]), big)
    points = batch.agent_pos[:, 30]
    torch.testing.assert_close(M.lane_distance(points, mixed)[0], M.lane_distance(points[:1], small.index(torch.tensor([0])))[0])
    torch.testing.assert_close(M.lane_distance(points, mixed)[1], M.lane_distance(points[1:], big)[0])
    torch.testing.assert_close(mixed.lanes.grid_candidates(points, 8)[0][1], big.lanes.grid_candidates(points[1:], 8)[0][0])


def _light(state: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    onehot = torch.zeros(1, 1, 5, dtype=torch.bool)
    onehot[0, 0, state] = True
    return torch.tensor([[True]]), onehot, torch.tensor([[[20.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]])


@pytest.mark.parametrize("light, expected", [(TLState.STOP, True), (TLState.GO, False), (TLState.CAUTION, False)])
def test_red_light_violation_only_for_a_stop_light(light, expected):
    valid, state, pos, direction = _light(light)
    prev, now = _state([[19.5, 0.2]], [0.0]), _state([[20.5, 0.2]], [0.0])
    flags = M.red_light_violation(prev, now, valid, state, pos, torch.tensor([[VEH]]), tl_dir=direction)
    assert flags.tolist() == [[expected]]


def test_red_light_not_flagged_before_reaching_or_after_passing_or_for_other_lanes():
    valid, state, pos, direction = _light(TLState.STOP)
    typ = torch.tensor([[VEH]])
    before = M.red_light_violation(_state([[18.0, 0]], [0.0]), _state([[19.0, 0]], [0.0]), valid, state, pos, typ)
    after = M.red_light_violation(_state([[21.0, 0]], [0.0]), _state([[22.0, 0]], [0.0]), valid, state, pos, typ)
    lane = M.red_light_violation(_state([[19.5, 3.5]], [0.0]), _state([[20.5, 3.5]], [0.0]), valid, state, pos, typ)
    against = M.red_light_violation(_state([[20.5, 0]], [math.pi]), _state([[19.5, 0]], [math.pi]), valid, state,
                                    pos, typ, tl_dir=direction)
    assert not before.any() and not after.any() and not lane.any() and not against.any()


def test_outside_map_uses_the_boundary_rectangle():
    s = _state([[0, 0], [50, 0], [0, -60]], [0.0] * 3)
    out = M.outside_map(s, torch.tensor([[-40.0, 40.0, -40.0, 40.0]]))
    assert out.tolist() == [[False, True, True]]


def test_destination_reached_uses_50m_30deg_for_lanes_and_10m_for_road_edges():
    batch = _straight_road_batch()
    geom = M.MapGeometry.from_batch(batch)
    lane, edge = 0, 1
    s = _state([[30, 30], [30, 30], [30, 30], [5, 8]], [0.0, math.pi / 2, 0.0, 0.0])
    dest = torch.tensor([[lane, lane, edge, edge]])
    reached = M.destination_reached(s, dest, geom, batch.map_type)
    assert reached.tolist() == [[True, False, False, True]]


def test_logged_path_fills_gaps_and_measures_progress():
    # One agent moving 1 m per step along x from step 1 to step 4 of a 6-step log.
    pos = torch.zeros(1, 6, 1, 2)
    pos[0, 1:5, 0, 0] = torch.arange(4.0)
    valid = torch.zeros(1, 6, 1, dtype=torch.bool)
    valid[0, 1:5] = True
    path = M.LoggedPath.from_log(pos, torch.zeros(1, 6, 1), valid, start=0, extension=10.0)
    assert path.length.tolist() == [[3.0]]
    assert path.arc[0, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 13.0]
    prog = M.path_progress(torch.tensor([[[1.5, 0.7]]]), path)
    torch.testing.assert_close(prog, torch.tensor([[1.5]]))
    p, yaw = path.interpolate(torch.tensor([[8.0]]))
    torch.testing.assert_close(p, torch.tensor([[[8.0, 0.0]]]))


def test_ade_and_fde_respect_validity():
    target = torch.zeros(1, 3, 2, 2)
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    pred[0, :, 1, 1] = 5.0
    valid = torch.tensor([[[True, False], [True, False], [False, False]]])
    torch.testing.assert_close(M.ade(pred, target, valid), torch.tensor([[1.5, 0.0]]))
    torch.testing.assert_close(M.fde(pred, target, valid), torch.tensor([[2.0, 0.0]]))


def test_path_projection_finds_the_nearest_point_of_a_curved_path():
    # a quarter circle of radius 30 m far from the origin, sampled at 41 points
    angle = torch.linspace(0.0, math.pi / 2, 41)
    pos = torch.stack([200.0 + 30.0 * torch.cos(angle), -150.0 + 30.0 * torch.sin(angle)], -1).view(1, 41, 1, 2)
    path = M.LoggedPath.from_log(pos, (angle + math.pi / 2).view(1, 41, 1), torch.ones(1, 41, 1, dtype=torch.bool),
                                 start=0)
    u = torch.rand(300, 2, generator=torch.Generator().manual_seed(1))
    points = torch.tensor([165.0, -185.0]) + 70.0 * u
    rel = points - torch.tensor([200.0, -150.0])
    # keep points with a unique nearest path point: away from the circle centre and from the bisector
    # of the two end points behind it
    points = points[(rel.norm(dim=-1) > 15.0) & ((rel[:, 0] > 5.0) | (rel[:, 1] > 5.0))].view(1, 1, -1, 2)
    arc, dist, _ = path.project(points)
    dense = torch.linspace(0.0, float(path.length[0, 0]), 20001)
    curve, _ = path.interpolate(dense.view(1, 1, -1))
    best, idx = (points[0, 0].unsqueeze(1) - curve[0, 0].unsqueeze(0)).norm(dim=-1).min(-1)
    torch.testing.assert_close(dist[0, 0], best, atol=2e-3, rtol=0)
    torch.testing.assert_close(arc[0, 0], dense[idx], atol=2e-2, rtol=0)
