"""GPUDrive JSON importer: contents match the source, the lane graph is rebuilt, bad files are named."""
from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from trafficbots_gym.data import gpudrive
from trafficbots_gym.data.constants import AgentType, MapType, TLState
from trafficbots_gym.data.errors import RecordError
from trafficbots_gym.data.importing import lane_exits_from_geometry, stop_sign_lanes_from_geometry
from trafficbots_gym.data.raw import RawScenario

from conftest import GPUDRIVE_JSON


@pytest.fixture(scope="module")
def source() -> dict:
    return json.loads(GPUDRIVE_JSON.read_text())


@pytest.fixture(scope="module")
def raw() -> RawScenario:
    (item,) = list(gpudrive.iter_scenarios(GPUDRIVE_JSON))
    assert isinstance(item, RawScenario), str(item)
    return item


def _convert(doc: dict) -> RawScenario:
    return gpudrive.convert_scenario(doc, "mem.json")[0]


def _error(doc: dict | str, tmp_path: Path) -> str:
    path = tmp_path / "scene.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    (item,) = list(gpudrive.iter_scenarios(path))
    assert isinstance(item, RecordError)
    assert str(path) in str(item)
    return str(item)


def test_objects_match_the_source_by_type_with_sdc_and_roles(raw: RawScenario, source: dict) -> None:
    assert raw.scenario_id == "1c365f15b70ebdbf" and raw.num_steps == 91 and raw.current_index == 10
    assert Counter(raw.tracks.type.tolist()) == {AgentType.VEHICLE: 23, AgentType.PEDESTRIAN: 2}
    assert raw.tracks.object_id.tolist() == [o["id"] for o in source["objects"]]
    assert raw.sdc_index == 24 and raw.tracks_to_predict == [7, 24]
    assert sorted(raw.tracks.object_id[raw.objects_of_interest].tolist()) == [1415, 1847]
    obj = source["objects"][7]
    valid = np.array(obj["valid"])
    np.testing.assert_array_equal(raw.tracks.valid[7], valid)
    np.testing.assert_allclose(raw.tracks.pos[7, valid, 0], np.array([p["x"] for p in obj["position"]])[valid])
    np.testing.assert_allclose(raw.tracks.size[7, valid], np.broadcast_to([obj["length"], obj["width"], obj["height"]],
                                                                         (valid.sum(), 3)), rtol=1e-6)


def test_headings_are_wrapped_and_invalid_fill_values_are_zeroed(raw: RawScenario) -> None:
    valid = raw.tracks.valid
    assert (~valid).any()
    assert np.all(np.abs(raw.tracks.heading) <= np.pi)
    assert not raw.tracks.pos[~valid].any() and not raw.tracks.vel[~valid].any()


def test_roads_are_mapped_by_element_code_with_stop_sign_lanes_found_geometrically(raw: RawScenario,
                                                                                   source: dict) -> None:
    counts = Counter(MapType(p.map_type).name for p in raw.polylines)
    # 39 lanes (33 surface street / undefined, 6 bike), 8 road lines (6 solid single, 2 double),
    # 18 road edges, 3 speed bumps + 48 driveways; 2 stop signs are points, not polylines.
    assert counts["SURFACE_STREET"] + counts["STOP_SIGN"] == 33 and counts["BIKE_LANE"] == 6
    assert counts["SOLID_SINGLE"] == 6 and counts["DOUBLE"] == 2 and counts["ROAD_EDGE_BOUNDARY"] == 18
    assert counts["SPEED_BUMP"] == 51 and sum(counts.values()) == len(source["roads"]) - 2
    lanes = {r["id"]: np.array([[p["x"], p["y"]] for p in r["geometry"]]) for r in source["roads"]
             if r["type"] == "lane" and r["map_element_id"] in (0, 1, 2)}
    expected = set()
    for road in source["roads"]:
        if road["type"] == "stop_sign":
            sign = np.array([road["geometry"][0]["x"], road["geometry"][0]["y"]])
            expected |= set(stop_sign_lanes_from_geometry(sign, lanes))
    assert expected and {p.feature_id for p in raw.polylines if p.map_type == MapType.STOP_SIGN} == expected


def test_lane_graph_links_lane_ends_to_aligned_lane_starts(raw: RawScenario, source: dict) -> None:
    lanes = {r["id"]: np.array([[p["x"], p["y"]] for p in r["geometry"]]) for r in source["roads"]
             if r["type"] == "lane"}
    assert set(raw.lane_exits) == set(lanes)
    links = [(a, b) for a, bs in raw.lane_exits.items() for b in bs]
    assert len(links) > 10
    for a, b in links:
        assert np.linalg.norm(lanes[a][-1] - lanes[b][0]) <= 0.5


def test_geometric_lane_graph_on_a_fork_and_a_reverse_lane() -> None:
    x = np.linspace(0.0, 10.0, 21)
    lanes = {
        1: np.stack([x, np.zeros_like(x)], -1),                      # 0 -> 10 along +x
        2: np.stack([x + 10.0, np.zeros_like(x)], -1),               # continues straight
        3: np.stack([10.0 + x * 0.866, x * 0.5], -1),                # forks off at 30 deg
        4: np.stack([10.0 - x, np.full_like(x, 0.2)], -1),           # starts next to the end, wrong way
        5: np.stack([x + 10.0, np.full_like(x, 2.0)], -1),           # parallel, 2 m away
    }
    assert lane_exits_from_geometry(lanes) == {1: [2, 3], 2: [], 3: [], 4: [], 5: []}


def test_traffic_light_states_are_placed_at_their_time_indices(source: dict) -> None:
    doc = copy.deepcopy(source)
    doc["tl_states"] = {"42": {"state": ["stop", "arrow_go", "flashing_caution"], "x": [1.0, 1.0, 1.5],
                               "y": [2.0, 2.0, 2.5], "z": [0.0, 0.0, 0.0], "time_index": [0, 1, 10]}}
    tl = _convert(doc).traffic_lights
    assert tl.valid.shape == (91, 1) and tl.valid[:, 0].nonzero()[0].tolist() == [0, 1, 10]
    assert tl.state[[0, 1, 10], 0].tolist() == [TLState.STOP, TLState.GO, TLState.FLASHING]
    assert tl.lane_id[10, 0] == 42 and tl.stop_point[10, 0].tolist() == [1.5, 2.5, 0.0]


def test_other_objects_are_skipped_and_roles_follow_the_remaining_indices(source: dict) -> None:
    doc = copy.deepcopy(source)
    doc["objects"][0]["type"] = "other"
    raw, report = gpudrive.convert_scenario(doc, "mem.json")
    assert report.skipped_tracks == {"other": 1} and raw.tracks.num_tracks == 24
    assert raw.sdc_index == 23 and raw.tracks_to_predict == [6, 23]
    doc["metadata"]["sdc_track_index"] = 0
    with pytest.raises(ValueError, match=r"metadata\.sdc_track_index.*not the index of a vehicle"):
        _convert(doc)


def test_truncated_and_garbage_json_give_clear_errors(tmp_path: Path) -> None:
    text = GPUDRIVE_JSON.read_text()
    err = _error(text[: len(text) // 3], tmp_path)
    assert "invalid JSON" in err and "truncated file?" in err
    assert "invalid JSON at line 1 column 1" in _error("\x00garbage{", tmp_path)
    assert "expected a JSON object at the top level" in _error("[1, 2]", tmp_path)
    assert "non-finite number NaN" in _error('{"scenario_id": "x", "objects": [NaN]}', tmp_path)


def test_structure_errors_name_the_json_path(source: dict, tmp_path: Path) -> None:
    doc = copy.deepcopy(source)
    del doc["objects"][3]["position"][12]["x"]
    assert "field 'objects[3].position[12].x': missing" in _error(doc, tmp_path)
    doc = copy.deepcopy(source)
    doc["objects"][2]["heading"][5] = "north"
    assert "objects[2].heading[5]" in _error(doc, tmp_path)
    doc = copy.deepcopy(source)
    doc["objects"][1]["valid"] = doc["objects"][1]["valid"][:50]
    assert "objects[1].valid" in _error(doc, tmp_path) and "expected 91" in _error(doc, tmp_path)
    doc = copy.deepcopy(source)
    k = next(i for i, r in enumerate(doc["roads"]) if r["type"] == "lane")
    doc["roads"][k]["map_element_id"] = 15
    assert f"roads[{k}].map_element_id" in _error(doc, tmp_path)
    doc = copy.deepcopy(source)
    del doc["metadata"]
    assert "field 'metadata': missing" in _error(doc, tmp_path)


def test_headings_in_degrees_from_old_converters_are_refused(source: dict, tmp_path: Path) -> None:
    doc = copy.deepcopy(source)
    doc["objects"][0]["heading"] = [np.degrees(h) if v else h
                                    for h, v in zip(doc["objects"][0]["heading"], doc["objects"][0]["valid"])]
    assert "not in radians" in _error(doc, tmp_path)


@pytest.mark.parametrize("split", ["training", "validation", "testing"])
def test_packs_into_a_valid_scene_with_the_sdc_first(raw: RawScenario, split: str) -> None:
    from trafficbots_gym.data.packing import pack_scenario

    scene = pack_scenario(raw, split, rng=np.random.default_rng(0)).validate()
    assert scene.split == split and scene.scenario_id == raw.scenario_id
    agents = scene.sim_agents
    assert agents.object_id[0] == raw.tracks.object_id[raw.sdc_index]
    # Fewer than 64 agents: every agent seen in the history (steps 0..10) is kept.
    assert agents.valid.any(0).sum() == int(raw.tracks.valid[:, :11].any(1).sum())
    assert (scene.map.type_index == MapType.STOP_SIGN).any()
