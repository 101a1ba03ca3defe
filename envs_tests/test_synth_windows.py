"""Cutting synthetic windows: the map is a band of MAP_RADIUS around the SDC path, and overlapping boxes
are resolved."""
from __future__ import annotations

import numpy as np

from trafficbots_gym.data.constants import AgentType, MapType
from trafficbots_gym.data.raw import RawPolyline
from trafficbots_gym.synth.roadmap import RoadMap, TlLinks
from trafficbots_gym.synth.windows import MAP_RADIUS, drop_overlaps, map_near


def _line(fid: int, x0: float, x1: float, y: float, map_type: int = MapType.SURFACE_STREET) -> RawPolyline:
    x = np.arange(x0, x1 + 0.5, 1.0)
    return RawPolyline(fid, map_type, np.stack([x, np.full_like(x, y), np.zeros_like(x)], axis=-1))


def _road_map(polylines: list[RawPolyline], tl_lanes: tuple[int, ...] = ()) -> RoadMap:
    k = len(tl_lanes)
    links = TlLinks(tl_ids=["tl"], tl=np.zeros(k, np.int64), link_index=np.arange(k),
                    lane_feature=np.asarray(tl_lanes, np.int64), stop_point=np.zeros((k, 3)))
    return RoadMap(polylines, {}, links, frozenset(p.feature_id for p in polylines))


PATH = np.stack([np.linspace(0.0, 50.0, 91), np.zeros(91)], axis=-1)
"""An SDC driving 50 m along +x from the origin."""


def test_long_polylines_are_cut_to_the_band_around_the_sdc_path() -> None:
    polylines, radius = map_near(_road_map([_line(0, -1000.0, 1000.0, 10.0)]), PATH)
    assert radius == MAP_RADIUS and len(polylines) == 1
    pts = polylines[0].points
    reach = np.sqrt(MAP_RADIUS**2 - 10.0**2)
    assert np.isclose(pts[0, 0], np.ceil(-reach)) and np.isclose(pts[-1, 0], np.floor(50.0 + reach))
    assert polylines[0].feature_id == 0 and polylines[0].map_type == MapType.SURFACE_STREET


def test_features_beyond_the_band_are_left_out_and_the_rest_come_farthest_first() -> None:
    lines = [_line(0, 0.0, 50.0, 5.0), _line(1, 0.0, 50.0, MAP_RADIUS + 1.0), _line(2, 0.0, 50.0, 60.0)]
    polylines, _ = map_near(_road_map(lines), PATH)
    assert [p.feature_id for p in polylines] == [2, 0]


def test_traffic_light_lanes_stay_whole_so_their_start_remains_the_stop_point() -> None:
    lanes = [_line(0, -300.0, 0.0, 0.0), _line(1, -300.0, 0.0, 4.0)]
    polylines, _ = map_near(_road_map(lanes, tl_lanes=(0,)), PATH)
    by_id = {p.feature_id: p.points for p in polylines}
    assert len(by_id[0]) == 301 and by_id[1][0, 0] > -MAP_RADIUS


def test_a_dense_map_reports_the_radius_its_polyline_budget_covers() -> None:
    lines = [_line(k, 0.0, 50.0, 0.1 * k) for k in range(1100)]  # 3 chunks each, 0.1 m apart
    _, radius = map_near(_road_map(lines), PATH)
    assert 30.0 < radius < 40.0  # 1024 chunks = the 342 nearest lines, up to y = 34.1 m


def _boxes(x_by_step: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xy [N, T, 2], yaw [N, T] and size [N, 3] of 4 m x 2 m cars on the x axis at the given positions."""
    x = np.asarray(x_by_step, np.float64)
    xy = np.stack([x, np.zeros_like(x)], axis=-1)
    return xy, np.zeros_like(x), np.tile([4.0, 2.0, 1.5], (len(x), 1))


def test_the_higher_row_of_an_overlapping_pair_loses_that_step_and_all_later_ones() -> None:
    xy, yaw, size = _boxes([[0.0, 0.0, 0.0], [10.0, 3.0, 10.0], [20.0, 20.0, 20.0]])
    valid = drop_overlaps(np.ones((3, 3), bool), xy, yaw, size, np.full(3, AgentType.VEHICLE), keep_row=2)
    assert valid.tolist() == [[True] * 3, [True, False, False], [True] * 3]


def test_the_kept_row_never_loses_an_overlap() -> None:
    xy, yaw, size = _boxes([[0.0, 0.0], [10.0, 3.0]])
    valid = drop_overlaps(np.ones((2, 2), bool), xy, yaw, size, np.full(2, AgentType.VEHICLE), keep_row=1)
    assert valid.tolist() == [[True, False], [True, True]]


def test_users_never_valid_change_nothing_and_pedestrians_may_touch() -> None:
    xy, yaw, size = _boxes([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.5, 0.5]])
    valid = np.ones((4, 2), bool)
    valid[1] = False                                   # a ghost on top of the others: ignored
    types = np.array([AgentType.PEDESTRIAN, AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.VEHICLE])
    out = drop_overlaps(valid, xy, yaw, size, types, keep_row=0)
    assert out.tolist() == [[True, True], [False, False], [True, True], [False, False]]
