"""SUMO network -> map features: geometry helpers, lane classification, and a generated network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trafficbots_gym.data.constants import MapType, TLState
from trafficbots_gym.synth.geometry import offset, polyline_length, resample, rounded_corner
from trafficbots_gym.synth.netxml import LANE_BIKE, LANE_SIDEWALK, LANE_VEHICLE, lane_users, parse_net
from trafficbots_gym.synth.networks import NetworkSpec, build_network
from trafficbots_gym.synth.roadmap import RoadMap, build_road_map
from trafficbots_gym.synth.simulate import SUMO_TL_STATE

pytest.importorskip("sumo", reason="eclipse-sumo is not installed")

SPEC = NetworkSpec(kind="grid", seed=11, lanes=2, random_lanes=False, speed=13.89, lane_width=3.2, turn_lanes=1,
                   junction_style="mixed", sidewalks=True, bike_lanes=True, curvature=0.5, perturb=4.0,
                   junction_radius=8.0, size=3, spacing=120.0)


@pytest.fixture(scope="module")
def net_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_network(SPEC, tmp_path_factory.mktemp("net"))


@pytest.fixture(scope="module")
def road_map(net_file: Path) -> RoadMap:
    return build_road_map(parse_net(net_file))


def test_resample_keeps_both_ends_at_about_one_metre_spacing() -> None:
    pts = np.array([[0.0, 0.0], [10.3, 0.0], [10.3, 5.0]])
    out = resample(pts, 1.0)
    assert np.allclose(out[0], pts[0]) and np.allclose(out[-1], pts[-1])
    step = np.linalg.norm(np.diff(out, axis=0), axis=-1)
    assert step.max() < 1.1 and abs(polyline_length(out) - 15.3) < 0.5


def test_offset_is_left_positive_and_keeps_distance_at_bends() -> None:
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    left = offset(pts, 1.5)
    assert np.allclose(left[0], [0.0, 1.5]) and np.allclose(left[-1], [8.5, 10.0])
    assert np.allclose(left[1], [8.5, 1.5])  # mitred corner: 1.5 m from both segments


def test_rounded_corner_is_tangent_to_both_curbs() -> None:
    # Curbs of an east road (y = 5, from x = 5 outwards) and a north road (x = 5, from y = 5 upwards).
    curve = rounded_corner(np.array([10.0, 5.0]), np.array([1.0, 0.0]), np.array([5.0, 10.0]), np.array([0.0, 1.0]))
    assert len(curve) > 2
    start_dir, end_dir = curve[1] - curve[0], curve[-1] - curve[-2]
    assert start_dir[0] < 0 and abs(start_dir[1]) < 0.1 * abs(start_dir[0])  # leaves along the east curb
    assert end_dir[1] > 0 and abs(end_dir[0]) < 0.1 * abs(end_dir[1])  # arrives along the north curb
    assert np.linalg.norm(curve - [5.0, 5.0], axis=-1).min() > 1.0  # rounded, not the sharp corner


def test_rounded_corner_falls_back_to_a_segment_for_parallel_curbs() -> None:
    curve = rounded_corner(np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 7.0]), np.array([1.0, 0.0]))
    assert curve.shape == (2, 2)


@pytest.mark.parametrize("allow, disallow, users", [
    (None, "pedestrian bicycle", LANE_VEHICLE), ("bicycle", None, LANE_BIKE), ("pedestrian", None, LANE_SIDEWALK),
    (None, None, LANE_VEHICLE), ("all", None, LANE_VEHICLE)])
def test_lane_users_follow_sumo_permissions(allow: str | None, disallow: str | None, users: str) -> None:
    assert lane_users(allow, disallow) == users


def test_sumo_signal_characters_map_to_womd_states() -> None:
    assert SUMO_TL_STATE["r"] == TLState.STOP and SUMO_TL_STATE["y"] == TLState.CAUTION
    assert SUMO_TL_STATE["G"] == SUMO_TL_STATE["g"] == TLState.GO and SUMO_TL_STATE["o"] == TLState.FLASHING


def test_network_build_is_deterministic(net_file: Path, tmp_path: Path) -> None:
    again = build_network(SPEC, tmp_path)
    strip = [line for line in net_file.read_text().splitlines() if "generated on" not in line]
    assert strip == [line for line in again.read_text().splitlines() if "generated on" not in line]


def test_road_map_has_every_feature_class_of_an_urban_network(road_map: RoadMap) -> None:
    types = {pl.map_type for pl in road_map.polylines}
    for t in (MapType.SURFACE_STREET, MapType.STOP_SIGN, MapType.BIKE_LANE, MapType.ROAD_EDGE_BOUNDARY,
              MapType.BROKEN, MapType.SOLID_SINGLE, MapType.DOUBLE, MapType.CROSSWALK):
        assert t in types, MapType(t).name
    assert all(pl.is_polygon and len(pl.points) == 4 for pl in road_map.polylines if pl.map_type == MapType.CROSSWALK)
    lanes = [pl for pl in road_map.polylines if not pl.is_polygon]
    steps = np.concatenate([np.linalg.norm(np.diff(pl.points[:, :2], axis=0), axis=-1) for pl in lanes])
    assert 0.5 < steps.min() and steps.max() < 1.5  # ~1 m resampling


def test_lane_graph_links_lanes_through_junctions(road_map: RoadMap) -> None:
    assert set(road_map.lane_exits) == set(road_map.lane_ids)
    pts = {pl.feature_id: pl.points[:, :2] for pl in road_map.polylines}
    gaps = [np.linalg.norm(pts[a][-1] - pts[b][0]) for a, exits in road_map.lane_exits.items() for b in exits]
    assert len(gaps) > len(road_map.lane_ids) // 2
    assert max(gaps) < 0.5  # an exit lane starts where its predecessor ends


def test_traffic_light_links_control_internal_lanes_from_their_start(road_map: RoadMap) -> None:
    links = road_map.tl_links
    assert len(links.lane_feature) > 0
    for fid, stop in zip(links.lane_feature, links.stop_point):
        assert int(fid) in road_map.lane_ids
        assert np.allclose(road_map.polylines[int(fid)].points[0, :2], stop[:2], atol=1e-6)


def test_road_edges_never_run_inside_a_drivable_lane(net_file: Path, road_map: RoadMap) -> None:
    net = parse_net(net_file)
    lanes = [lane for lane in net.lanes.values() if lane.users in (LANE_VEHICLE, LANE_BIKE)]
    centre = np.concatenate([resample(lane.shape, 1.0) for lane in lanes])
    half = np.concatenate([np.full(len(resample(lane.shape, 1.0)), lane.width / 2) for lane in lanes])
    for pl in road_map.polylines:
        if pl.map_type in (MapType.ROAD_EDGE_BOUNDARY, MapType.ROAD_EDGE_MEDIAN):
            pts = pl.points[:, :2]
            near = (np.abs(centre - pts.mean(0)) < np.ptp(pts, axis=0) / 2 + 5.0).all(1)
            d = np.linalg.norm(pts[:, None] - centre[near][None], axis=-1)
            assert not (d < half[near][None] - 0.4).any(), pl.feature_id
