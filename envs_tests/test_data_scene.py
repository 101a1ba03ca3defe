"""The typed Scene (validation rules) and its H5 files (layout, round trip, corrupt-file errors)."""
from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from trafficbots_gym.data.h5io import (SceneFormatError, SceneReader, resolve_scene_files, write_index,
                                       write_scenes)
from trafficbots_gym.data.packing import pack_scenario
from trafficbots_gym.data.scene import Scene, SceneValidationError, all_keys
from trafficbots_gym.data.womd import iter_scenarios

from conftest import WOMD_TFRECORD


@pytest.fixture(scope="module")
def scenes() -> dict[str, Scene]:
    raw = next(iter_scenarios(WOMD_TFRECORD))
    return {split: pack_scenario(raw, split, rng=np.random.default_rng(1))
            for split in ("training", "validation", "testing")}


@pytest.fixture
def scene(scenes: dict[str, Scene]) -> Scene:
    """A fresh copy of the validation scene (it holds every view)."""
    return copy.deepcopy(scenes["validation"])


def _renamed(scene: Scene, scenario_id: str) -> Scene:
    out = copy.deepcopy(scene)
    out.scenario_id = scenario_id
    return out


@pytest.mark.parametrize("split", ["training", "validation", "testing"])
def test_a_scene_reports_the_split_its_views_belong_to(scenes: dict[str, Scene], split: str) -> None:
    assert scenes[split].split == split
    assert scenes[split].sim_agents.valid.shape[0] == (91 if split != "testing" else 11)


def test_arrays_round_trip_through_the_flat_h5_key_mapping(scene: Scene) -> None:
    arrays = scene.to_arrays()
    assert set(arrays) <= set(all_keys()) and "history/agent_no_sim/valid" in arrays
    back = Scene.from_arrays(arrays, scene.attrs()).validate()
    assert all(np.array_equal(arrays[k], v) for k, v in back.to_arrays().items())


@pytest.mark.parametrize("edit, key, message", [
    (lambda s: setattr(s.agent, "pos", s.agent.pos[:, :10]), "agent/pos", "shape (91, 10, 2), expected (91, 64, 2)"),
    (lambda s: setattr(s.map, "valid", s.map.valid.astype(np.uint8)), "map/valid", "dtype uint8, expected bool"),
    (lambda s: setattr(s, "history_tl_stop", None), "history/tl_stop", "missing for a validation scene"),
    (lambda s: s.agent.type.__setitem__((3, slice(None)), True), "agent/type", "more than one class"),
    (lambda s: s.agent.dest.__setitem__(2, 1024), "agent/dest", "values outside [0, 1023]"),
    (lambda s: s.tl_lane.idx.__setitem__((0, 0), 5000), "tl_lane/idx", "values outside [-1, 1023]"),
    (lambda s: s.map.type.__setitem__((1023, 0), True), "map/type", "without valid nodes"),
    (lambda s: s.agent.size.__setitem__((0, 0), -1.0), "agent/size", "negative"),
    (lambda s: setattr(s, "scenario_yaw", float("nan")), "scenario_yaw", "non-finite"),
])
def test_validation_errors_name_the_scene_and_key(scene: Scene, edit, key: str, message: str) -> None:
    edit(scene)
    with pytest.raises(SceneValidationError) as info:
        scene.validate(source="shard.h5 group 7")
    text = str(info.value)
    assert text.startswith("shard.h5 group 7: scene '637f20cafde22ff8'") and f"key {key!r}" in text and message in text


def test_non_finite_values_are_rejected_only_at_valid_entries(scene: Scene) -> None:
    invalid_slot = int(np.flatnonzero(~scene.agent.valid[:, 63])[0])
    scene.agent.pos[invalid_slot, 63] = np.nan  # padding slot: ignored
    scene.validate()
    scene.agent.pos[0, 0] = np.nan  # the SDC at step 0: rejected
    with pytest.raises(SceneValidationError, match="agent/pos.*non-finite"):
        scene.validate()


def test_written_file_has_the_reference_layout(scenes: dict[str, Scene], tmp_path: Path) -> None:
    path = tmp_path / "validation.h5"
    assert write_scenes(path, [scenes["validation"], _renamed(scenes["validation"], "second")]) == 2
    with h5py.File(path, "r") as f:
        assert f.attrs["data_len"] == 2 and sorted(f.keys()) == ["0", "1"]
        group = f["0"]
        assert group.attrs["scenario_id"] == "637f20cafde22ff8" and bool(group.attrs["with_map"])
        assert group.attrs["scenario_center"].shape == (2,)
        ds = group["agent/pos"]
        assert ds.compression == "gzip" and ds.compression_opts == 4 and ds.shuffle
        assert group["history/agent/valid"].shape == (11, 64) and group["agent_no_sim/valid"].shape == (91, 256)


def test_reader_spans_the_shards_of_a_folder_with_its_index(scenes: dict[str, Scene], tmp_path: Path) -> None:
    base = scenes["training"]
    write_scenes(tmp_path / "a.h5", [_renamed(base, "a0"), _renamed(base, "a1")])
    write_scenes(tmp_path / "b.h5", [_renamed(base, "b0")])
    index = json.loads(write_index(tmp_path).read_text())
    assert [(s["file"], s["data_len"]) for s in index["shards"]] == [("a.h5", 2), ("b.h5", 1)]
    reader = SceneReader(tmp_path)
    assert len(reader) == 3 and reader.scenario_ids == ["a0", "a1", "b0"]
    assert reader.index_of("b0") == 2 and reader.locate(-1) == (tmp_path / "b.h5", "0")
    assert reader[2].scenario_id == "b0"
    np.testing.assert_array_equal(reader[1].agent.pos, base.agent.pos)
    arrays, attrs = reader.read_arrays(0, ["map/valid", "agent/dest"])
    assert set(arrays) == {"map/valid", "agent/dest"} and attrs["scenario_id"] == "a0"
    with pytest.raises(KeyError, match="'zz'"):
        reader.index_of("zz")
    with pytest.raises(IndexError):
        reader[3]


def test_reader_survives_pickling_into_a_worker(scenes: dict[str, Scene], tmp_path: Path) -> None:
    write_scenes(tmp_path / "s.h5", [scenes["testing"]])
    reader = SceneReader(tmp_path / "s.h5")
    reader[0]
    clone = pickle.loads(pickle.dumps(reader))
    assert clone[0].scenario_id == "637f20cafde22ff8"


def _one_scene_file(scene: Scene, tmp_path: Path) -> Path:
    path = tmp_path / "one.h5"
    write_scenes(path, [scene])
    return path


def test_missing_dataset_is_reported_with_file_scene_and_key(scene: Scene, tmp_path: Path) -> None:
    path = _one_scene_file(scene, tmp_path)
    with h5py.File(path, "a") as f:
        del f["0/history/agent/yaw_rate"]
    reader = SceneReader(path)
    with pytest.raises(SceneFormatError, match=r"one\.h5, scene '0', key 'history/agent/yaw_rate': dataset missing"):
        reader.read_arrays(0, ["history/agent/yaw_rate"])
    with pytest.raises(SceneValidationError, match=r"one\.h5 group 0: .*key 'history/agent/yaw_rate': missing"):
        reader[0]


def test_dataset_of_wrong_shape_is_reported_with_its_source(scene: Scene, tmp_path: Path) -> None:
    path = _one_scene_file(scene, tmp_path)
    with h5py.File(path, "a") as f:
        del f["0/map/pos"]
        f["0/map/pos"] = np.zeros((1024, 20, 3), np.float32)
    with pytest.raises(SceneValidationError, match=r"one\.h5 group 0: .*'map/pos': shape \(1024, 20, 3\)"):
        SceneReader(path)[0]


def test_unreadable_or_incomplete_files_give_format_errors(scene: Scene, tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not HDF5")
    with pytest.raises(SceneFormatError, match=r"junk\.h5: not a readable HDF5 file"):
        SceneReader(junk)
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f.create_group("0")
    with pytest.raises(SceneFormatError, match=r"bare\.h5: root attribute 'data_len' missing"):
        SceneReader(bare)
    path = _one_scene_file(scene, tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["data_len"] = 2
    with pytest.raises(SceneFormatError, match=r"scene '1': scene group missing"):
        SceneReader(path)[1]


def test_malformed_index_and_missing_inputs_are_reported(scenes: dict[str, Scene], tmp_path: Path) -> None:
    write_scenes(tmp_path / "a.h5", [scenes["testing"]])
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(SceneFormatError, match=r"index\.json: malformed index"):
        SceneReader(tmp_path)
    with pytest.raises(SceneFormatError, match="no such file or folder"):
        resolve_scene_files(tmp_path / "missing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneFormatError, match="folder holds no .h5 shards"):
        resolve_scene_files(tmp_path / "empty")


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary_behind(scene: Scene, tmp_path: Path) -> None:
    bad = copy.deepcopy(scene)
    bad.map.pos = bad.map.pos[:10]
    with pytest.raises(SceneValidationError, match="map/pos"):
        write_scenes(tmp_path / "out.h5", [scene, bad])
    assert list(tmp_path.iterdir()) == []
