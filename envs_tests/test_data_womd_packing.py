"""WOMD reading and scene packing: the real TFRecord, corrupted inputs, and the packer's rules on
small synthetic scenarios."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trafficbots_gym.data import constants as C
from trafficbots_gym.data.constants import AgentCmd, AgentRole, AgentType, MapType, TLState
from trafficbots_gym.data.errors import RecordError, ScenarioParseError
from trafficbots_gym.data.h5io import SceneReader, write_scenes
from trafficbots_gym.data.packing import (PackingError, chunk_polylines, classify_trajectories, interpolate_gaps,
                                          pack_scenario, polygon_to_polylines, unwrap_valid, wrap_angle)
from trafficbots_gym.data.raw import RawPolyline, RawScenario, RawTracks, RawTrafficLights
from trafficbots_gym.data.tfrecord import read_records, write_records
from trafficbots_gym.data.womd import iter_scenarios, scenario_from_bytes
from trafficbots_gym.data.womd_proto import Scenario

from conftest import WOMD_TFRECORD

SPLIT_KEYS = {
    "training": {"agent", "tl_lane", "tl_stop"},
    "validation": {"agent", "tl_lane", "tl_stop", "agent_no_sim", "history_agent", "history_agent_no_sim",
                   "history_tl_lane", "history_tl_stop"},
    "testing": {"history_agent", "history_agent_no_sim", "history_tl_lane", "history_tl_stop"},
}
VIEWS = ("agent", "agent_no_sim", "tl_lane", "tl_stop", "history_agent", "history_agent_no_sim",
         "history_tl_lane", "history_tl_stop")


# --------------------------------------------------------------------------------------------------
# The real scenario 637f20cafde22ff8
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record() -> bytes:
    return read_records(WOMD_TFRECORD)[0]


@pytest.fixture(scope="module")
def proto(record: bytes) -> Scenario:
    msg = Scenario()
    msg.ParseFromString(record)
    return msg


@pytest.fixture(scope="module")
def raw(record: bytes) -> RawScenario:
    return scenario_from_bytes(record, WOMD_TFRECORD, 0)


@pytest.fixture(scope="module")
def packed(raw: RawScenario) -> dict:
    return {split: pack_scenario(raw, split, rng=np.random.default_rng(0)) for split in C.SPLITS}


def test_raw_tracks_match_the_proto_state_by_state(proto: Scenario, raw: RawScenario) -> None:
    tr = raw.tracks
    assert tr.object_id.tolist() == [t.id for t in proto.tracks]
    assert tr.type.tolist() == [t.object_type - 1 for t in proto.tracks]
    valid = np.array([[s.valid for s in t.states] for t in proto.tracks])
    xyz = np.array([[(s.center_x, s.center_y, s.center_z) for s in t.states] for t in proto.tracks])
    heading = np.array([[s.heading for s in t.states] for t in proto.tracks], np.float32)
    assert (tr.valid == valid).all()
    np.testing.assert_array_equal(tr.pos[valid], xyz[valid])
    np.testing.assert_array_equal(tr.heading[valid], heading[valid])  # stored unwrapped, as in the proto


def test_raw_scenario_matches_the_published_fixture_stats(raw: RawScenario) -> None:
    tr = raw.tracks
    assert raw.scenario_id == "637f20cafde22ff8" and raw.num_steps == 91 and raw.current_index == 10
    assert Counter(tr.type.tolist()) == {AgentType.VEHICLE: 70, AgentType.PEDESTRIAN: 10, AgentType.CYCLIST: 3}
    assert tr.valid[:, 10].sum() == 50
    assert raw.sdc_index == 82 and tr.object_id[82] == 2406
    assert sorted(tr.object_id[raw.tracks_to_predict].tolist()) == [1675, 1676, 2320]
    assert raw.objects_of_interest == []
    by_type = Counter(pl.map_type for pl in raw.polylines)
    assert by_type[MapType.SURFACE_STREET] + by_type[MapType.STOP_SIGN] == 198 and by_type[MapType.BIKE_LANE] == 1
    assert (by_type[MapType.BROKEN], by_type[MapType.SOLID_SINGLE], by_type[MapType.DOUBLE]) == (24, 35, 0)
    assert (by_type[MapType.ROAD_EDGE_BOUNDARY], by_type[MapType.ROAD_EDGE_MEDIAN]) == (15, 13)
    assert (by_type[MapType.CROSSWALK], by_type[MapType.SPEED_BUMP]) == (4, 3)
    tl = raw.traffic_lights
    assert tl.valid.shape == (91, 12) and tl.valid.all() and len(np.unique(tl.lane_id)) == 12
    assert Counter(tl.state.ravel().tolist()) == {TLState.UNKNOWN: 540, TLState.STOP: 324 + 228}


def test_map_polylines_keep_every_second_proto_point(proto: Scenario, raw: RawScenario) -> None:
    by_id = {pl.feature_id: pl for pl in raw.polylines}
    for mf in proto.map_features:
        kind = mf.WhichOneof("feature_data")
        if kind in ("lane", "road_line", "road_edge"):
            points = [(p.x, p.y, p.z) for p in getattr(mf, kind).polyline]
            np.testing.assert_array_equal(by_id[mf.id].points, np.array(points)[::2])
        elif kind in ("crosswalk", "speed_bump"):
            assert by_id[mf.id].is_polygon and len(by_id[mf.id].points) == len(getattr(mf, kind).polygon)


def test_map_point_without_a_coordinate_is_read_point_by_point(proto: Scenario, raw: RawScenario) -> None:
    def edit(m: Scenario) -> None:
        lane = next(f for f in m.map_features if f.WhichOneof("feature_data") == "lane")
        lane.lane.polyline[0].ClearField("z")  # the coordinate columns no longer line up
    changed = scenario_from_bytes(_modified(proto, edit), WOMD_TFRECORD, 0)
    first_lane = next(i for i, f in enumerate(proto.map_features) if f.WhichOneof("feature_data") == "lane")
    k = [pl.feature_id for pl in raw.polylines].index(proto.map_features[first_lane].id)
    assert changed.polylines[k].points[0, 2] == 0.0  # an unset field reads as 0, like protobuf does
    np.testing.assert_array_equal(changed.polylines[k].points[1:], raw.polylines[k].points[1:])
    assert all(np.array_equal(a.points, b.points) for i, (a, b) in enumerate(zip(changed.polylines, raw.polylines))
               if i != k)


def test_lanes_listed_by_stop_signs_are_relabelled_and_lane_graph_is_kept(proto: Scenario, raw: RawScenario) -> None:
    stop_lanes = {lane for mf in proto.map_features if mf.WhichOneof("feature_data") == "stop_sign"
                  for lane in mf.stop_sign.lane}
    assert stop_lanes
    for pl in raw.polylines:
        if pl.feature_id in stop_lanes:
            assert pl.map_type in (MapType.STOP_SIGN, MapType.BIKE_LANE)
        elif pl.map_type == MapType.STOP_SIGN:
            pytest.fail(f"lane {pl.feature_id} relabelled without a stop sign")
    exits = {mf.id: list(mf.lane.exit_lanes) for mf in proto.map_features if mf.WhichOneof("feature_data") == "lane"}
    assert raw.lane_exits == exits


@pytest.mark.parametrize("split", C.SPLITS)
def test_every_split_validates_with_exactly_its_keys(packed: dict, split: str) -> None:
    scene = packed[split].validate()
    present = {v for v in VIEWS if getattr(scene, v) is not None}
    assert present == SPLIT_KEYS[split]
    assert scene.split == split and scene.with_map


@pytest.mark.parametrize("split", C.SPLITS)
def test_sdc_is_agent_zero_and_all_relevant_agents_are_simulated(packed: dict, split: str) -> None:
    agents = packed[split].sim_agents
    assert agents.object_id[0] == 2406 and agents.role[0].tolist() == [True, False, False]
    predicted = set(agents.object_id[agents.role[:, AgentRole.PREDICT]].tolist())
    assert predicted == {1675, 1676, 2320}
    assert agents.role[:, AgentRole.SDC].sum() == 1


@pytest.mark.parametrize("split", C.SPLITS)
def test_sim_agents_are_the_tracks_seen_in_the_history(proto: Scenario, packed: dict, split: str) -> None:
    seen = {t.id: t.object_type - 1 for t in proto.tracks if any(s.valid for s in t.states[:11])}
    agents = packed[split].sim_agents
    ids = agents.object_id[agents.object_id >= 0]
    assert len(ids) == len(seen) == 55  # <= 64, so none is pruned
    assert {int(i): int(t) for i, t in zip(ids, agents.type[: len(ids)].argmax(1))} == seen
    assert (agents.valid.any(0) == (agents.object_id >= 0)).all()


def test_no_sim_agents_are_the_observed_agents_left_over(packed: dict) -> None:
    val = packed["validation"]
    assert val.agent_no_sim.valid.sum() == 0 and val.history_agent_no_sim.valid.sum() == 0
    assert (val.agent_no_sim.object_id == -1).all()


def _to_world(xy: np.ndarray, scene) -> np.ndarray:
    c, s = np.cos(scene.scenario_yaw), np.sin(scene.scenario_yaw)
    return np.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], -1) + scene.scenario_center


@pytest.mark.parametrize("split", ["training", "validation"])
def test_packed_states_map_back_to_the_logged_world_states(raw: RawScenario, packed: dict, split: str) -> None:
    scene = packed[split]
    agents = scene.agent
    track = {int(i): k for k, i in enumerate(raw.tracks.object_id)}
    for a in np.flatnonzero(agents.object_id >= 0):
        k = track[int(agents.object_id[a])]
        v = raw.tracks.valid[k]
        np.testing.assert_allclose(_to_world(agents.pos[v, a].astype(np.float64), scene), raw.tracks.pos[k, v, :2],
                                   atol=0.02)
        np.testing.assert_allclose(agents.z[v, a, 0], raw.tracks.pos[k, v, 2], atol=1e-3)
        dyaw = wrap_angle(agents.yaw_bbox[v, a, 0] + scene.scenario_yaw - raw.tracks.heading[k, v])
        np.testing.assert_allclose(dyaw, 0.0, atol=1e-4)
        speed = np.linalg.norm(raw.tracks.vel[k, v], axis=-1)
        np.testing.assert_allclose(np.abs(agents.spd[v, a, 0]), speed, atol=1e-4)


def test_gaps_are_interpolated_and_acc_yaw_rate_are_finite_differences(raw: RawScenario, packed: dict) -> None:
    agents = packed["training"].agent
    track = {int(i): k for k, i in enumerate(raw.tracks.object_id)}
    gaps = 0
    for a in np.flatnonzero(agents.object_id >= 0):
        v_raw = raw.tracks.valid[track[int(agents.object_id[a])]]
        steps = np.flatnonzero(v_raw)
        expected = np.zeros(91, bool)
        expected[steps[0]: steps[-1] + 1] = True
        assert (agents.valid[:, a] == expected).all()
        gaps += int(expected.sum() - v_raw.sum())
        both = expected[1:] & expected[:-1]
        np.testing.assert_allclose(agents.acc[1:, a, 0][both], np.diff(agents.spd[:, a, 0])[both] / 0.1, atol=1e-3)
        np.testing.assert_allclose(agents.yaw_rate[1:, a, 0][both], np.diff(agents.yaw_bbox[:, a, 0])[both] / 0.1,
                                   atol=1e-3)
        assert np.abs(np.diff(agents.yaw_bbox[:, a, 0])[both]).max(initial=0) <= np.pi  # unwrapped
    assert gaps > 0  # the real log has gaps, so interpolation was exercised


def test_map_holds_the_nearby_features_as_one_metre_chunks(raw: RawScenario, packed: dict) -> None:
    m = packed["validation"].map
    n = m.valid.any(1).sum()
    assert 0 < n <= C.N_PL and not m.valid[n:].any() and (m.id[n:] == -1).all()
    assert 0.9 < np.median(np.linalg.norm(m.dir[m.valid], axis=-1)) < 1.1
    raw_type = {pl.feature_id: pl.map_type for pl in raw.polylines}
    assert all(raw_type[int(i)] == t for i, t in zip(m.id[:n], m.type_index[:n]))
    pts = m.pos[m.valid]
    np.testing.assert_allclose(m.boundary, [pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()])
    # a 200 m scene fits the 1024 polylines: every raw feature with enough points is present
    assert {pl.feature_id for pl in raw.polylines if len(pl.points) >= 5} <= set(m.id[:n].tolist())


@pytest.mark.parametrize("split, view", [("training", "tl_stop"), ("validation", "history_tl_stop")])
def test_twelve_signalised_lanes_give_twelve_stop_points_per_step(raw: RawScenario, packed: dict, split: str,
                                                                  view: str) -> None:
    scene = packed[split]
    stops, lanes = getattr(scene, view), getattr(scene, view.replace("stop", "lane"))
    t = stops.valid.shape[0]
    assert (stops.valid.sum(1) == 12).all()
    assert (stops.state.argmax(-1)[stops.valid] == raw.traffic_lights.state[:t].ravel()).all()
    assert (stops.state.any(-1) == stops.valid).all() and (lanes.state.any(-1) == lanes.valid).all()
    controlled = lanes.idx[lanes.valid]
    assert set(scene.map.id[controlled].tolist()) == set(raw.traffic_lights.lane_id.ravel().tolist())
    first_chunk = {int(i): k for k, i in reversed(list(enumerate(scene.map.id)))}
    for k in range(12):
        lane_chunk = first_chunk[int(raw.traffic_lights.lane_id[0, k])]
        np.testing.assert_allclose(stops.dir[0, k], scene.map.dir[lane_chunk, 0])


def test_validation_frame_is_the_sdc_pose_and_training_frame_is_randomised(raw: RawScenario, packed: dict) -> None:
    sdc_xy, sdc_yaw = raw.tracks.pos[82, 0, :2], float(wrap_angle(raw.tracks.heading[82, 0]))
    val, train = packed["validation"], packed["training"]
    np.testing.assert_allclose(val.scenario_center, sdc_xy, atol=1e-3)
    assert val.scenario_yaw == pytest.approx(sdc_yaw, abs=1e-6)
    np.testing.assert_allclose(val.agent.pos[0, 0], [0.0, 0.0], atol=1e-3)
    assert val.agent.yaw_bbox[0, 0, 0] == pytest.approx(0.0, abs=1e-5)
    offset = np.abs(train.scenario_center - sdc_xy)
    assert (offset <= 50.0).all() and offset.max() > 1e-3
    assert abs(train.scenario_yaw - sdc_yaw) <= 3.14


def test_packing_is_deterministic_per_seed(raw: RawScenario) -> None:
    a = pack_scenario(raw, "training", rng=np.random.default_rng(7)).to_arrays()
    b = pack_scenario(raw, "training", rng=np.random.default_rng(7)).to_arrays()
    c = pack_scenario(raw, "training", rng=np.random.default_rng(8))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["map/pos"], c.map.pos)


@pytest.mark.parametrize("split", C.SPLITS)
def test_write_then_read_is_lossless(packed: dict, split: str, tmp_path: Path) -> None:
    scene = packed[split]
    write_scenes(tmp_path / "s.h5", [scene])
    back = SceneReader(tmp_path / "s.h5")[0]
    a, b = scene.to_arrays(), back.to_arrays()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert back.scenario_id == scene.scenario_id and back.with_map == scene.with_map
    np.testing.assert_array_equal(back.scenario_center, scene.scenario_center)
    assert back.scenario_yaw == np.float32(scene.scenario_yaw)


# --------------------------------------------------------------------------------------------------
# Corrupted WOMD inputs
# --------------------------------------------------------------------------------------------------


def _modified(proto: Scenario, edit) -> bytes:
    msg = Scenario()
    msg.CopyFrom(proto)
    edit(msg)
    return msg.SerializeToString()


def test_truncated_file_gives_an_error_naming_file_and_record(record: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.tfrecord"
    write_records(path, [record])
    path.write_bytes(path.read_bytes()[:500_000])
    items = list(iter_scenarios(path))
    assert len(items) == 1 and isinstance(items[0], RecordError)
    assert str(path) in str(items[0]) and "record 0" in str(items[0]) and "truncated data" in str(items[0])


def test_crc_flip_gives_an_error_naming_file_and_record(record: bytes, tmp_path: Path) -> None:
    path = tmp_path / "flip.tfrecord"
    write_records(path, [record, record])
    blob = bytearray(path.read_bytes())
    blob[300_000] ^= 0x10
    path.write_bytes(bytes(blob))
    items = list(iter_scenarios(path))
    assert isinstance(items[0], RecordError) and "record 0" in str(items[0]) and "CRC mismatch" in str(items[0])
    assert isinstance(items[1], RawScenario)


def test_one_bad_record_does_not_poison_the_rest_of_the_shard(proto: Scenario, record: bytes, tmp_path: Path) -> None:
    other = _modified(proto, lambda m: setattr(m, "scenario_id", "second"))
    path = tmp_path / "mixed.tfrecord"
    write_records(path, [record, b"\xff\x13garbage that is not a Scenario proto", other])
    items = list(iter_scenarios(path))
    assert [type(i).__name__ for i in items] == ["RawScenario", "RecordError", "RawScenario"]
    assert "record 1" in str(items[1]) and "not a Scenario proto" in str(items[1])
    assert items[2].scenario_id == "second"


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=400))
def test_arbitrary_payloads_only_ever_give_scenario_parse_errors(payload: bytes) -> None:
    try:
        scenario_from_bytes(payload, "fuzz.tfrecord", 0)
    except ScenarioParseError as e:
        assert str(e).startswith("fuzz.tfrecord, record 0")


def _set_type(m: Scenario, i: int, value: int) -> None:
    m.tracks[i].object_type = value


def _set_tl_state(m: Scenario) -> None:
    m.dynamic_map_states[3].lane_states[2].state = 11


def _set_road_line(m: Scenario, value: int) -> None:
    next(f for f in m.map_features if f.WhichOneof("feature_data") == "road_line").road_line.type = value


def _drop_states(m: Scenario) -> None:
    del m.tracks[4].states[-1]


@pytest.mark.parametrize("edit, field, message", [
    (lambda m: _set_type(m, 5, 9), "tracks[5].object_type", "unknown object type 9"),
    (_set_tl_state, "dynamic_map_states[3].lane_states[2].state", "unknown signal state 11"),
    (lambda m: _set_road_line(m, 42), ".road_line.type", "unknown road_line type 42"),
    (_drop_states, "tracks[4].states", "90 states, expected 91"),
    (lambda m: setattr(m, "sdc_track_index", 500), "sdc_track_index", "out of range"),
    (lambda m: m.ClearField("tracks"), "tracks", "no tracks"),
])
def test_invalid_field_values_give_errors_naming_file_record_and_field(proto: Scenario, edit, field: str,
                                                                       message: str) -> None:
    with pytest.raises(ScenarioParseError) as info:
        scenario_from_bytes(_modified(proto, edit), "shard.tfrecord", 3)
    text = str(info.value)
    assert text.startswith("shard.tfrecord, record 3, field") and field in text and message in text


def test_other_and_unset_tracks_are_skipped_with_a_counted_warning(proto: Scenario, caplog) -> None:
    def edit(m: Scenario) -> None:
        m.tracks[0].object_type = 4  # TYPE_OTHER
        m.tracks[1].object_type = 0  # TYPE_UNSET
    with caplog.at_level(logging.WARNING, logger="trafficbots_gym"):
        raw = scenario_from_bytes(_modified(proto, edit), "s.tfrecord", 0)
    assert raw.tracks.num_tracks == 81 and raw.sdc_index == 80 and raw.tracks.object_id[80] == 2406
    assert sorted(raw.tracks.object_id[raw.tracks_to_predict].tolist()) == [1675, 1676, 2320]
    assert "TYPE_OTHER: 1" in caplog.text and "TYPE_UNSET: 1" in caplog.text
    pack_scenario(raw, "validation", rng=np.random.default_rng(0))


def test_unknown_road_lines_are_skipped_with_a_warning(proto: Scenario, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="trafficbots_gym"):
        raw = scenario_from_bytes(_modified(proto, lambda m: _set_road_line(m, 0)), "s.tfrecord", 0)
    assert len(raw.polylines) == 292 and "road_line TYPE_UNKNOWN: 1" in caplog.text


# --------------------------------------------------------------------------------------------------
# Synthetic scenarios: the packer's rules one by one
# --------------------------------------------------------------------------------------------------


def lane(fid: int, start: tuple[float, float], end: tuple[float, float], map_type: int = MapType.SURFACE_STREET,
         spacing: float = 1.0) -> RawPolyline:
    """A straight polyline from ``start`` to ``end`` with points every ``spacing`` metres."""
    a, b = np.array(start, float), np.array(end, float)
    n = int(round(np.linalg.norm(b - a) / spacing)) + 1
    xy = a + (b - a) * np.linspace(0, 1, n)[:, None]
    return RawPolyline(fid, int(map_type), np.concatenate([xy, np.zeros((n, 1))], 1))


def road(length: float = 600.0) -> list[RawPolyline]:
    """Two opposite lanes along x (y = 0 east, y = 4 west) between road-edge boundaries."""
    return [lane(1, (-100, 0), (length, 0)), lane(2, (length, 4), (-100, 4)),
            lane(3, (-100, -3), (length, -3), MapType.ROAD_EDGE_BOUNDARY),
            lane(4, (length, 7), (-100, 7), MapType.ROAD_EDGE_BOUNDARY)]


def tracks(start: np.ndarray, speed: np.ndarray | float = 5.0, heading: np.ndarray | float = 0.0,
           n_step: int = 91, types: np.ndarray | None = None, valid: np.ndarray | None = None) -> RawTracks:
    """Agents driving straight at constant speed from ``start`` [N, 2]."""
    n = len(start)
    speed = np.broadcast_to(np.asarray(speed, float), (n,))
    heading = np.broadcast_to(np.asarray(heading, float), (n,))
    t = np.arange(n_step) * C.DT
    direction = np.stack([np.cos(heading), np.sin(heading)], -1)
    xy = start[:, None] + direction[:, None] * (speed[:, None, None] * t[None, :, None])
    return RawTracks(object_id=np.arange(100, 100 + n, dtype=np.int64),
                     type=np.zeros(n, np.int64) if types is None else np.asarray(types, np.int64),
                     valid=np.ones((n, n_step), bool) if valid is None else valid,
                     pos=np.concatenate([xy, np.zeros((n, n_step, 1))], -1),
                     size=np.broadcast_to(np.array([4.5, 2.0, 1.6], np.float32), (n, n_step, 3)).copy(),
                     heading=np.broadcast_to(heading[:, None], (n, n_step)).astype(np.float32),
                     vel=(direction[:, None] * speed[:, None, None] * np.ones((1, n_step, 1))).astype(np.float32))


def scenario(tr: RawTracks, polylines: list[RawPolyline] | None = None, **kwargs) -> RawScenario:
    return RawScenario(scenario_id=kwargs.pop("scenario_id", "synthetic"), tracks=tr, sdc_index=kwargs.pop("sdc", 0),
                       polylines=road() if polylines is None else polylines,
                       traffic_lights=kwargs.pop("lights", RawTrafficLights.empty(tr.valid.shape[1])), **kwargs)


@pytest.mark.parametrize("n_points, chunk_nodes", [(1, []), (2, [1]), (20, [19]), (21, [10, 10]),
                                                   (41, [13, 13, 14]), (61, [15, 15, 15, 15])])
def test_polylines_are_cut_into_l_div_20_plus_1_chunks(n_points: int, chunk_nodes: list[int]) -> None:
    chunks = chunk_polylines([lane(9, (0, 0), (n_points - 1, 0))])
    assert chunks.valid.sum(1).tolist() == chunk_nodes
    if chunk_nodes:
        starts = np.cumsum([0] + chunk_nodes[:-1])
        np.testing.assert_allclose(chunks.pos[:, 0, 0], starts)  # node 0 of each chunk = its first point
        np.testing.assert_allclose(chunks.dir[chunks.valid][:, 0], 1.0)  # unnormalised 1 m vectors


def test_a_polygon_becomes_both_directions_of_its_two_long_sides() -> None:
    rect = np.array([[0, 0, 0], [10, 0, 0], [10, 2, 0], [0, 2, 0]], float)
    sides = polygon_to_polylines(rect)
    assert len(sides) == 4
    np.testing.assert_allclose(sides[0][[0, -1], :2], [[0, 0], [10, 0]])
    np.testing.assert_allclose(sides[2][[0, -1], :2], [[10, 2], [0, 2]])
    np.testing.assert_allclose(sides[1], sides[0][::-1])
    assert len(sides[0]) == 12  # every metre 0..10, plus the exact end point
    tall = polygon_to_polylines(rect[:, [1, 0, 2]])  # long sides now along y: 0->3 and 2->1
    np.testing.assert_allclose(tall[0][[0, -1], :2], [[0, 0], [0, 10]])
    assert polygon_to_polylines(np.zeros((3, 3))) == []  # degenerate: no NaN polylines


def _crowd(n_near: int, n_far: int, split: str, **kwargs):
    """SDC at the origin, then half of the far agents (250-500 m), the near ones (5-60 m), the rest."""
    near = np.stack([np.linspace(5, 60, n_near), np.zeros(n_near)], 1)
    far = np.stack([np.linspace(250, 500, n_far), np.full(n_far, 4.0)], 1)
    start = np.concatenate([[[0.0, 0.0]], far[: n_far // 2], near, far[n_far // 2:]])
    return pack_scenario(scenario(tracks(start, speed=2.0), **kwargs), split, rng=np.random.default_rng(0))


@pytest.mark.parametrize("split", C.SPLITS)
def test_crowded_scenes_prune_far_agents_in_track_order_down_to_64(split: str) -> None:
    scene = _crowd(30, 50, split, tracks_to_predict=[80])
    agents = scene.sim_agents
    assert agents.valid.any(0).sum() == 64 and agents.object_id[0] == 100
    kept = set(agents.object_id[agents.object_id >= 0].tolist())
    far_ids = [100 + i for i in range(1, 81) if not 26 <= i <= 55]
    near_ids = set(range(126, 156))
    assert near_ids <= kept and 180 in kept  # near agents and the (far) predicted agent stay
    assert not kept & set(far_ids[:17]) and set(far_ids[17:]) <= kept  # the first 17 far ones go
    if split != "training":
        no_sim = scene.history_agent_no_sim
        assert set(no_sim.object_id[no_sim.valid.any(0)].tolist()) == set(far_ids[:17])


def test_still_agents_far_from_the_road_and_relevant_agents_go_first() -> None:
    moving = np.stack([np.linspace(5, 200, 60), np.zeros(60)], 1)
    parked = np.stack([np.linspace(0, 90, 10), np.full(10, 80.0)], 1)  # 73 m beyond the road edge
    start = np.concatenate([[[0.0, 0.0]], parked[:3], moving, parked[3:]])
    speed = np.r_[5.0, np.zeros(3), np.full(60, 5.0), np.zeros(7)]
    scene = pack_scenario(scenario(tracks(start, speed=speed)), "training", rng=np.random.default_rng(0))
    kept = set(scene.agent.object_id[scene.agent.object_id >= 0].tolist())
    parked_ids = [101, 102, 103] + list(range(164, 171))
    assert len(kept) == 64 and not kept & set(parked_ids[:7]) and set(parked_ids[7:]) <= kept


def test_more_than_256_unsimulated_agents_keep_the_nearest_with_a_warning(caplog) -> None:
    x = np.linspace(1, 480, 400)
    start = np.concatenate([[[0.0, 0.0]], np.stack([x, np.zeros(400)], 1)[::-1]])  # farthest first
    with caplog.at_level(logging.WARNING, logger="trafficbots_gym"):
        scene = pack_scenario(scenario(tracks(start, speed=3.0)), "validation", rng=np.random.default_rng(0))
    no_sim = scene.agent_no_sim
    assert no_sim.valid.any(0).sum() == 256 and "337 non-simulated agents" in caplog.text
    sim_x = scene.agent.pos[0, scene.agent.valid[0], 0]
    no_sim_x = no_sim.pos[0, no_sim.valid[0], 0]
    dropped = set(range(101, 501)) - set(scene.agent.object_id.tolist()) - set(no_sim.object_id.tolist())
    assert len(dropped) == 400 - 63 - 256 and sim_x.max() < no_sim_x.min()
    dropped_x = [start[i - 100, 0] for i in dropped]
    assert min(dropped_x) > no_sim_x.max() + scene.scenario_center[0] - 1e-3  # the farthest are the ones dropped


def test_more_than_1024_polylines_keep_those_near_the_relevant_agents() -> None:
    grid = [(x, y) for x in range(-400, 400, 20) for y in range(-400, 400, 20)]
    polylines = [lane(10 + k, (x, y), (x + 9, y)) for k, (x, y) in enumerate(grid)]
    scene = pack_scenario(scenario(tracks(np.zeros((1, 2)), speed=0.0), polylines), "validation",
                          rng=np.random.default_rng(0))
    m = scene.map
    assert len(grid) == 1600 and m.valid.any(1).sum() == 1024
    kept = set(m.id[m.valid.any(1)].tolist())
    dist = {10 + k: min(np.hypot(x, y), np.hypot(x + 8, y)) for k, (x, y) in enumerate(grid)}
    assert {i for i, d in dist.items() if d < 250} <= kept and max(dist[i] for i in kept) < 500


def test_traffic_light_overflow_is_truncated_with_a_warning(caplog) -> None:
    long_lanes = [lane(50 + k, (-100, 20 * k), (1100, 20 * k)) for k in range(3)]  # 60 chunks each
    short = [lane(60 + k, (3 * k, -10), (3 * k, -20)) for k in range(45)]
    ids = [50, 51, 52] + [60 + k for k in range(45)]
    n = len(ids)
    lights = RawTrafficLights(valid=np.ones((91, n), bool), lane_id=np.tile(np.array(ids), (91, 1)),
                              state=np.full((91, n), TLState.GO), stop_point=np.zeros((91, n, 3)))
    with caplog.at_level(logging.WARNING, logger="trafficbots_gym"):
        scene = pack_scenario(scenario(tracks(np.zeros((1, 2)), speed=0.0), road() + long_lanes + short,
                                       lights=lights), "training", rng=np.random.default_rng(0))
    assert (scene.tl_lane.valid.sum(1) == C.N_TL_LANE).all() and (scene.tl_stop.valid.sum(1) == C.N_TL_STOP).all()
    assert "tl_lane entries per step" in caplog.text and "traffic lights per step" in caplog.text


def _chain_scene(goal: tuple[float, float], agent_type: int = AgentType.VEHICLE, exits: dict | None = None,
                 seed: int = 0, extend: bool = True, heading: float = 0.0, speed: float = 0.0, polylines=None):
    """Agent 1 ends at ``goal`` (world) with ``heading`` / ``speed`` on a chain of lanes 1..5 along x
    (30 m each, exits 1->2->3->4->5), a branch lane 20, a road edge 30 (y = -5), a bike lane 40 (y = 10)."""
    chain = [lane(k, (30 * (k - 1), 0), (30 * k, 0)) for k in range(1, 6)]
    chain += [lane(20, (30, 0), (60, 30)), lane(30, (-50, -5), (200, -5), MapType.ROAD_EDGE_BOUNDARY),
              lane(40, (-50, 10), (200, 10), MapType.BIKE_LANE)]
    lane_exits = {1: [2], 2: [3], 3: [4], 4: [5], 5: []} if exits is None else exits
    direction = np.array([np.cos(heading), np.sin(heading)])
    start = np.array([[0.0, 3.0], np.array(goal) - direction * speed * 9.0])
    tr = tracks(start, speed=np.array([0.0, speed]), heading=np.array([0.0, heading]),
                types=np.array([AgentType.VEHICLE, agent_type]))
    raw = scenario(tr, chain if polylines is None else polylines, lane_exits=lane_exits)
    scene = pack_scenario(raw, "validation", rng=np.random.default_rng(seed), dest_extend=extend)
    return scene, int(scene.agent.dest[1])


def _chunks_of(scene, feature_id: int) -> list[int]:
    return np.flatnonzero((scene.map.id == feature_id) & scene.map.valid.any(1)).tolist()


def _gap(scene, chunk: int, world_xy: tuple[float, float]) -> float:
    """Distance (m) from ``world_xy`` to the nearest node of ``chunk`` (validation frame: no rotation)."""
    nodes = scene.map.pos[chunk][scene.map.valid[chunk]] + scene.scenario_center
    return float(np.linalg.norm(nodes - world_xy, axis=-1).min())


def test_vehicle_destination_walks_three_lanes_ahead_to_the_last_chunk() -> None:
    scene, dest = _chain_scene((5.0, 0.0))
    assert dest == _chunks_of(scene, 4)[-1]
    scene, dest = _chain_scene((5.0, 0.0), extend=False)
    assert dest == _chunks_of(scene, 1)[0]  # without extension: the lane under the goal


def test_vehicle_destination_picks_random_exits_and_stops_at_later_branches() -> None:
    first_branch = {1: [2, 20], 2: [3], 3: [4], 4: [5], 20: []}
    seen = {_chain_scene((5.0, 0.0), exits=first_branch, seed=s)[1] for s in range(12)}
    scene = _chain_scene((5.0, 0.0), exits=first_branch)[0]
    assert seen == {_chunks_of(scene, 4)[-1], _chunks_of(scene, 20)[-1]}
    second_branch = {1: [2], 2: [3, 20], 3: [4], 20: []}
    scene, dest = _chain_scene((5.0, 0.0), exits=second_branch)
    assert dest == _chunks_of(scene, 2)[-1]


def test_vehicle_off_the_lanes_heads_for_the_road_edge_ahead() -> None:
    scene, dest = _chain_scene((100.0, 2.0), heading=-np.pi / 2, speed=1.0)  # crossing the lanes
    assert scene.map.id[dest] == 30 and _gap(scene, dest, (100.0, -5.0)) < 1.0


def test_pedestrian_destination_is_the_road_edge_nearest_the_goal_5_s_ahead() -> None:
    scene, dest = _chain_scene((100.0, 0.0), AgentType.PEDESTRIAN, heading=-np.pi / 2, speed=1.0)
    assert scene.map.id[dest] == 30 and _gap(scene, dest, (100.0, -5.0)) < 1.0


def test_cyclist_destination_is_the_bike_lane_when_riding_along_it() -> None:
    scene, dest = _chain_scene((100.0, 10.0), AgentType.CYCLIST, heading=0.0, speed=2.0)
    assert scene.map.id[dest] == 40 and _gap(scene, dest, (110.0, 10.0)) < 1.0
    scene, dest = _chain_scene((100.0, 10.0), AgentType.CYCLIST, heading=np.pi, speed=2.0)  # wrong way
    assert scene.map.id[dest] == 30


def test_destination_without_any_road_edge_falls_back_to_the_nearest_node() -> None:
    polylines = [lane(1, (-50, 0), (200, 0)), lane(7, (-50, 20), (200, 20), MapType.CROSSWALK)]
    scene, dest = _chain_scene((100.0, 15.0), AgentType.PEDESTRIAN, polylines=polylines, exits={})
    assert scene.map.id[dest] == 7


@pytest.mark.parametrize("edit, field", [
    (lambda r: r.tracks.type.__setitem__(1, 3), "tracks.type[1]"),
    (lambda r: setattr(r, "sdc_index", 9), "sdc_index"),
    (lambda r: r.polylines.append(RawPolyline(99, 11, np.zeros((5, 3)))), "polylines[4].map_type"),
    (lambda r: r.tracks.valid.__setitem__((0, slice(0, 11)), False), "sdc_index"),
    (lambda r: setattr(r, "current_index", 20), "current_index"),
    (lambda r: setattr(r, "polylines", []), "polylines"),
])
def test_unpackable_inputs_raise_packing_errors_naming_the_field(edit, field: str) -> None:
    raw = scenario(tracks(np.array([[0.0, 0.0], [10.0, 0.0]])))
    edit(raw)
    with pytest.raises(PackingError, match="scenario 'synthetic', " + field.replace("[", r"\[").replace("]", r"\]")):
        pack_scenario(raw, "training", rng=np.random.default_rng(0))


def test_more_relevant_agents_than_simulation_slots_is_an_error() -> None:
    raw = scenario(tracks(np.stack([np.arange(70) * 3.0, np.zeros(70)], 1)), tracks_to_predict=list(range(1, 70)))
    with pytest.raises(PackingError, match="70 relevant agents"):
        pack_scenario(raw, "validation", rng=np.random.default_rng(0))


def test_testing_split_packs_history_only_scenarios_with_and_without_map() -> None:
    tr = tracks(np.stack([np.arange(70) * 3.0, np.zeros(70)], 1), n_step=11)
    scene = pack_scenario(scenario(tr), "testing", rng=np.random.default_rng(0))
    assert scene.with_map and scene.history_agent.valid.any(0).sum() == 64
    bare = pack_scenario(scenario(tr, [], tracks_to_predict=[69]), "testing", rng=np.random.default_rng(0))
    agents = bare.history_agent
    assert not bare.with_map and not bare.map.valid.any()
    assert agents.object_id[:63].tolist() == list(range(100, 163)) and agents.object_id[63] == 169
    np.testing.assert_allclose(bare.map.boundary[:2], [0.0, 69 * 3.0 + 5 * 1.0], atol=1e-3)
    assert bare.history_agent_no_sim.valid.any(0).sum() == 6


@pytest.mark.parametrize("end_xy, end_yaw, speed, expected", [
    ((50, 0), 0.0, 10.0, AgentCmd.STRAIGHT),
    ((50, 6), 0.0, 10.0, AgentCmd.STRAIGHT_LEFT),
    ((50, -6), 0.0, 10.0, AgentCmd.STRAIGHT_RIGHT),
    ((20, 20), np.pi / 2, 10.0, AgentCmd.LEFT_TURN),
    ((20, -20), -np.pi / 2, 10.0, AgentCmd.RIGHT_TURN),
    ((-10, 8), np.pi - 0.1, 10.0, AgentCmd.LEFT_U_TURN),
    ((-10, -8), -np.pi + 0.1, 10.0, AgentCmd.RIGHT_U_TURN),
    ((2, 0), 0.0, 1.0, AgentCmd.STATIONARY),
])
def test_trajectory_classes_follow_waymos_thresholds(end_xy, end_yaw: float, speed: float, expected: int) -> None:
    pos = np.array([[[0.0, 0.0], end_xy]], float)
    cls = classify_trajectories(np.ones((1, 2), bool), pos, np.array([[0.0, end_yaw]]), np.full((1, 2), speed))
    assert cls.tolist() == [expected]


def test_trajectory_class_of_a_heading_crossing_pi_is_straight() -> None:
    pos = np.array([[[0.0, 0.0], [-50.0, 0.0]]])
    yaw = np.array([[np.pi - 0.01, -np.pi + 0.01]])
    assert classify_trajectories(np.ones((1, 2), bool), pos, yaw, np.full((1, 2), 10.0)).tolist() == [AgentCmd.STRAIGHT]
    assert classify_trajectories(np.zeros((1, 2), bool), pos, yaw, np.zeros((1, 2))).tolist() == [AgentCmd.STATIONARY]


def test_interpolation_fills_gaps_linearly_between_first_and_last_valid_step() -> None:
    valid = np.array([[False, True, False, False, True, False]])
    values = np.array([[[0.0], [1.0], [0.0], [0.0], [4.0], [0.0]]])
    filled, out = interpolate_gaps(valid, values)
    assert filled.tolist() == [[False, True, True, True, True, False]]
    np.testing.assert_allclose(out[0, :, 0], [0, 1, 2, 3, 4, 0])


def test_yaw_is_unwrapped_over_valid_steps_only() -> None:
    yaw = np.array([[3.0, 0.0, -3.0, 3.1, -3.1]])
    valid = np.array([[True, False, True, True, True]])
    out = unwrap_valid(yaw, valid)
    np.testing.assert_allclose(out[0, [0, 2, 3, 4]], np.unwrap(yaw[0, [0, 2, 3, 4]]))
