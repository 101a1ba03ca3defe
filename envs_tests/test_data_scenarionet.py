"""ScenarioNet / MetaDrive pickle importer: contents match the source, unsafe or broken files are refused."""
from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from trafficbots_gym.data import scenarionet
from trafficbots_gym.data.constants import AgentType, MapType, TLState
from trafficbots_gym.data.errors import RecordError
from trafficbots_gym.data.importing import resample_polyline
from trafficbots_gym.data.raw import RawScenario

from conftest import SCENARIONET_PKL


@pytest.fixture(scope="module")
def source() -> dict:
    return scenarionet.load_pickle(SCENARIONET_PKL)


@pytest.fixture(scope="module")
def raw() -> RawScenario:
    (item,) = list(scenarionet.iter_scenarios(SCENARIONET_PKL))
    assert isinstance(item, RawScenario), str(item)
    return item


def _only_error(path: Path) -> RecordError:
    (item,) = list(scenarionet.iter_scenarios(path))
    assert isinstance(item, RecordError)
    return item


def test_tracks_match_the_source_by_type_with_sdc_and_roles(raw: RawScenario, source: dict) -> None:
    assert raw.scenario_id == "2a1e44d405a6833f" and raw.num_steps == 91 and raw.current_index == 10
    assert Counter(raw.tracks.type.tolist()) == {AgentType.VEHICLE: 184, AgentType.PEDESTRIAN: 25,
                                                 AgentType.CYCLIST: 2}
    assert raw.tracks.object_id.tolist() == [int(k) for k in source["tracks"]]
    assert raw.tracks.object_id[raw.sdc_index] == 1629
    assert sorted(raw.tracks.object_id[raw.tracks_to_predict].tolist()) == [332, 333, 469, 490, 507, 752, 1624]
    assert sorted(raw.tracks.object_id[raw.objects_of_interest].tolist()) == [333, 490]
    track = source["tracks"]["1629"]["state"]
    i = raw.sdc_index
    np.testing.assert_array_equal(raw.tracks.valid[i], track["valid"])
    np.testing.assert_allclose(raw.tracks.pos[i], track["position"], atol=1e-4)
    np.testing.assert_allclose(raw.tracks.vel[i], track["velocity"], atol=1e-5)


def test_headings_are_wrapped_and_invalid_steps_are_zero(raw: RawScenario, source: dict) -> None:
    heading = raw.tracks.heading
    assert np.all((heading >= -np.pi) & (heading <= np.pi))
    raw_heading = np.stack([t["state"]["heading"] for t in source["tracks"].values()])
    valid = raw.tracks.valid
    assert np.abs(raw_heading[valid]).max() > np.pi  # the source really holds unwrapped headings
    np.testing.assert_allclose(np.cos(heading[valid]), np.cos(raw_heading[valid]), atol=1e-5)
    assert not raw.tracks.pos[~valid].any() and not raw.tracks.size[~valid].any()


def test_map_features_are_mapped_by_type_with_stop_sign_lanes_relabelled(raw: RawScenario, source: dict) -> None:
    counts = Counter(MapType(p.map_type).name for p in raw.polylines)
    assert counts == {"SURFACE_STREET": 173, "STOP_SIGN": 9, "BROKEN": 23, "SOLID_SINGLE": 39, "DOUBLE": 4,
                      "ROAD_EDGE_BOUNDARY": 33, "ROAD_EDGE_MEDIAN": 18, "CROSSWALK": 16, "SPEED_BUMP": 39}
    stop_lanes = {int(lane) for f in source["map_features"].values() if f["type"] == "STOP_SIGN" for lane in f["lane"]}
    assert {p.feature_id for p in raw.polylines if p.map_type == MapType.STOP_SIGN} == stop_lanes
    polygons = [p for p in raw.polylines if p.is_polygon]
    assert {MapType(p.map_type).name for p in polygons} == {"CROSSWALK", "SPEED_BUMP"} and len(polygons) == 55


def test_lane_graph_and_polyline_spacing_follow_the_source(raw: RawScenario, source: dict) -> None:
    lanes = {int(k): f for k, f in source["map_features"].items() if f["type"].startswith("LANE_")}
    assert raw.lane_exits == {k: [int(e) for e in f["exit_lanes"]] for k, f in lanes.items()}
    lane = next(p for p in raw.polylines if p.feature_id == 144)
    np.testing.assert_allclose(lane.points, np.asarray(lanes[144]["polyline"], np.float64)[::2])
    steps = np.concatenate([np.linalg.norm(np.diff(p.points[:, :2], axis=0), axis=-1)
                            for p in raw.polylines if not p.is_polygon])
    assert 0.9 < np.median(steps) < 1.1


def test_traffic_lights_keep_every_lane_state_per_step(raw: RawScenario) -> None:
    tl = raw.traffic_lights
    assert tl.valid.shape == (91, 8) and tl.valid.all()
    assert int((tl.state == TLState.STOP).sum()) == 564 and int((tl.state == TLState.UNKNOWN).sum()) == 164
    assert 226 in tl.lane_id[0].tolist()
    np.testing.assert_allclose(tl.stop_point[:, tl.lane_id[0].tolist().index(226)],
                               np.broadcast_to([3003.271, -3205.9023, 185.14883], (91, 3)), atol=1e-3)


def test_non_numeric_ids_keep_the_lane_graph_stop_signs_and_lights_consistent(raw: RawScenario, source: dict) -> None:
    token = {k: f"tok-{k}" for k in source["map_features"]}

    def rename(feat: dict) -> dict:
        feat = dict(feat)
        for ref in ("exit_lanes", "entry_lanes", "lane"):
            if ref in feat:
                feat[ref] = [token[str(k)] for k in feat[ref]]
        return feat

    data = dict(source, map_features={token[k]: rename(f) for k, f in source["map_features"].items()},
                dynamic_map_states={k: dict(v, lane=token[str(v["lane"])])
                                    for k, v in source["dynamic_map_states"].items()})
    renamed, _ = scenarionet.convert_scenario(data, "mem.pkl")
    position = {k: i for i, k in enumerate(source["map_features"])}
    assert renamed.lane_exits == {position[str(a)]: [position[str(b)] for b in bs] for a, bs in raw.lane_exits.items()}
    assert ({p.feature_id for p in renamed.polylines if p.map_type == MapType.STOP_SIGN}
            == {position[str(p.feature_id)] for p in raw.polylines if p.map_type == MapType.STOP_SIGN})
    assert set(renamed.traffic_lights.lane_id[0].tolist()) == {position[str(i)] for i in raw.traffic_lights.lane_id[0]}


def test_unsupported_track_and_feature_types_are_skipped_and_counted(source: dict) -> None:
    data = dict(source, tracks=dict(source["tracks"]), map_features=dict(source["map_features"]))
    data["tracks"]["9999"] = dict(source["tracks"]["325"], type="TRAFFIC_CONE")
    data["map_features"]["99999"] = {"type": "UNKNOWN_LINE", "polyline": np.zeros((5, 3), np.float32)}
    raw, report = scenarionet.convert_scenario(data, "mem.pkl")
    assert raw.tracks.num_tracks == 211 and len(raw.polylines) == 354
    assert report.skipped_tracks == {"TRAFFIC_CONE": 1} and report.skipped_features == {"UNKNOWN_LINE": 1}


def test_malicious_pickle_is_refused_naming_the_global_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    err = _only_error(evil)
    assert "os.system" in str(err) and str(evil) in str(err)
    assert not marker.exists()


def test_reduce_based_payloads_are_refused_too(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # noqa: ANN204 - pickle protocol
            return (eval, ("1 + 1",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"tracks": Payload()}))
    assert "builtins.eval" in str(_only_error(path))


def test_truncated_and_garbage_pickles_give_clear_errors(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(SCENARIONET_PKL.read_bytes()[:50_000])
    assert "truncated pickle" in str(_only_error(truncated))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    err = str(_only_error(garbage))
    assert str(garbage) in err and ("corrupt pickle" in err or "forbidden" in err or "truncated" in err)
    not_a_scene = tmp_path / "list.pkl"
    not_a_scene.write_bytes(pickle.dumps([1, 2, 3]))
    assert "expected a ScenarioDescription dict" in str(_only_error(not_a_scene))


def test_malformed_fields_are_named(source: dict, tmp_path: Path) -> None:
    data = dict(source, tracks=dict(source["tracks"]))
    state = dict(source["tracks"]["325"]["state"], position=np.zeros((90, 3), np.float32))
    data["tracks"]["325"] = dict(source["tracks"]["325"], state=state)
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(data))
    err = str(_only_error(path))
    assert "tracks['325'].state.position" in err and "(90, 3)" in err
    position = np.array(source["tracks"]["325"]["state"]["position"])
    position[source["tracks"]["325"]["state"]["valid"].argmax(), 0] = np.nan
    data["tracks"]["325"] = dict(source["tracks"]["325"], state=dict(state, position=position))
    path.write_bytes(pickle.dumps(data))
    err = str(_only_error(path))
    assert "tracks['325'].state.position" in err and "non-finite values at valid steps" in err


def test_dataset_summary_is_reported_as_not_a_scenario_and_skipped_in_folders(tmp_path: Path) -> None:
    summary = {SCENARIONET_PKL.name: {"id": "2a1e44d405a6833f", "number_summary": {"object": 211}}}
    (tmp_path / "dataset_summary.pkl").write_bytes(pickle.dumps(summary))
    assert "not a scenario" in str(_only_error(tmp_path / "dataset_summary.pkl"))
    (tmp_path / SCENARIONET_PKL.name).write_bytes(SCENARIONET_PKL.read_bytes())
    items = list(scenarionet.iter_scenarios(tmp_path))
    assert [type(i).__name__ for i in items] == ["RawScenario"]


def test_resampling_keeps_every_second_point_of_half_metre_lines_and_densifies_sparse_ones() -> None:
    dense = np.stack([np.arange(0, 10.01, 0.5), np.zeros(21), np.zeros(21)], axis=-1)
    np.testing.assert_array_equal(resample_polyline(dense), dense[::2])
    sparse = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 1.0], [10.0, 0.0, 2.0]])
    out = resample_polyline(sparse)
    np.testing.assert_allclose(out[:, 0], np.arange(11.0))
    np.testing.assert_allclose(out[:, 2], np.arange(11.0) / 5.0)


@pytest.mark.parametrize("split", ["training", "validation", "testing"])
def test_packs_into_a_valid_scene_with_the_sdc_first_and_its_traffic_lights(raw: RawScenario, split: str) -> None:
    from trafficbots_gym.data.packing import pack_scenario

    scene = pack_scenario(raw, split, rng=np.random.default_rng(0)).validate()
    assert scene.split == split and scene.scenario_id == raw.scenario_id
    agents = scene.sim_agents
    assert agents.object_id[0] == 1629 and agents.valid.any(0).sum() == 64
    assert scene.sim_tl_stop.valid.any() and (scene.map.type_index == MapType.STOP_SIGN).any()
