"""``trafficbots-pack``: shards per input file, resumption, bad records, index, determinism."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trafficbots_gym.data import cli
from trafficbots_gym.data.cli import Task, file_seed, find_inputs, output_name, pack_main, run_tasks
from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.data.tfrecord import read_records, write_records

from conftest import WOMD_TFRECORD

SCENARIO_ID = "637f20cafde22ff8"


def _summary(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_packing_the_real_file_writes_one_shard_and_an_index(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert pack_main([str(WOMD_TFRECORD), "--out", str(out), "--split", "validation", "--workers", "1"]) == 0
    assert _summary(capsys).startswith("packed 1 scenes, skipped 0 bad records")
    index = json.loads((out / "index.json").read_text())
    assert index["shards"] == [{"file": "motion_data_one_scenario.h5", "data_len": 1, "scenario_ids": [SCENARIO_ID]}]
    reader = SceneReader(out)
    assert len(reader) == 1 and reader[0].split == "validation" and reader[0].scenario_id == SCENARIO_ID
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "motion_data_one_scenario.h5"]


def test_rerun_skips_finished_shards_unless_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [str(WOMD_TFRECORD), "--out", str(out), "--split", "training"]
    assert pack_main(args) == 0
    shard = out / "motion_data_one_scenario.h5"
    stamp = shard.stat().st_mtime_ns
    capsys.readouterr()
    assert pack_main(args) == 0
    summary = _summary(capsys)
    assert summary.startswith("packed 0 scenes") and "1 already done" in summary
    assert shard.stat().st_mtime_ns == stamp
    assert pack_main(args + ["--overwrite"]) == 0
    assert _summary(capsys).startswith("packed 1 scenes") and shard.stat().st_mtime_ns != stamp


def test_existing_shard_of_another_split_is_not_mixed_in(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert pack_main([str(WOMD_TFRECORD), "--out", str(out), "--split", "testing"]) == 0
    assert pack_main([str(WOMD_TFRECORD), "--out", str(out), "--split", "training"]) == 1
    err = capsys.readouterr().err
    assert "exists with testing keys, not training; pass --overwrite" in err


def test_bad_records_are_reported_skipped_and_counted(tmp_path: Path, capsys) -> None:
    good = read_records(WOMD_TFRECORD)[0]
    src = tmp_path / "src"
    src.mkdir()
    write_records(src / "mixed.tfrecord", [b"\x08\x01not a scenario at all", good, good[:1000]])
    assert pack_main([str(src), "--out", str(tmp_path / "out"), "--split", "training"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("packed 1 scenes, skipped 2 bad records")
    assert "mixed.tfrecord, record 0" in captured.err and "mixed.tfrecord, record 2" in captured.err
    assert SceneReader(tmp_path / "out").scenario_ids == [SCENARIO_ID]


def test_a_file_that_cannot_be_read_fails_the_run_but_not_the_other_files(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.tfrecord", "b.tfrecord"):
        shutil.copy(WOMD_TFRECORD, src / name)
    real_source = cli.source_for

    def failing_source(path: Path):
        if path.name != "b.tfrecord":
            return real_source(path)

        def read(_: Path):
            raise OSError("device read error")
            yield  # a generator, like the real readers

        return read

    monkeypatch.setattr(cli, "source_for", failing_source)
    assert pack_main([str(src), "--out", str(tmp_path / "out"), "--split", "testing"]) == 1
    captured = capsys.readouterr()
    assert "packed 1 scenes" in captured.out and "1 failed" in captured.out
    assert "b.tfrecord: OSError: device read error" in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.h5", "index.json"]


def test_output_names_keep_shard_numbers_and_drop_known_extensions() -> None:
    assert output_name(Path("motion.tfrecord")) == "motion.h5"
    assert output_name(Path("training.tfrecord-00007-of-01000")) == "training.tfrecord-00007-of-01000.h5"
    assert output_name(Path("sd.tfrecord-00000-of-01000_2a1e.pkl")) == "sd.tfrecord-00000-of-01000_2a1e.h5"
    assert output_name(Path("scene.json")) == "scene.h5"


def test_folder_inputs_skip_scenarionet_metadata_and_hidden_files(tmp_path: Path) -> None:
    for name in ("b.tfrecord-00001-of-00002", "a.pkl", "dataset_summary.pkl", "dataset_mapping.pkl", ".x.json",
                 "notes.txt", "sub/c.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in find_inputs([tmp_path])]
    assert found == ["a.pkl", "b.tfrecord-00001-of-00002", "sub/c.json"]
    with pytest.raises(FileNotFoundError):
        find_inputs([tmp_path / "nope"])


def test_two_inputs_that_would_share_a_shard_are_refused(tmp_path: Path, capsys) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        shutil.copy(WOMD_TFRECORD, tmp_path / d / "same.tfrecord")
    assert pack_main([str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "out"),
                      "--split", "training"]) == 1
    assert "would both write same.h5" in capsys.readouterr().err


def test_per_file_random_streams_depend_on_seed_and_name_only() -> None:
    draw = lambda seed, name: np.random.default_rng(file_seed(seed, name)).random()  # noqa: E731
    assert draw(0, "a.tfrecord") == draw(0, "a.tfrecord")
    assert len({draw(0, "a.tfrecord"), draw(1, "a.tfrecord"), draw(0, "b.tfrecord")}) == 3


def test_training_shards_are_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    centers = []
    for run, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert pack_main([str(WOMD_TFRECORD), "--out", str(tmp_path / run), "--split", "training", "--seed", seed]) == 0
        centers.append(SceneReader(tmp_path / run)[0].scenario_center)
    assert np.array_equal(centers[0], centers[1]) and not np.array_equal(centers[0], centers[2])


@pytest.mark.slow
def test_spawned_workers_produce_the_same_shards_as_one_process(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.tfrecord", "b.tfrecord"):
        shutil.copy(WOMD_TFRECORD, src / name)
    tasks = [Task(src / n, tmp_path / w / f"{n[0]}.h5", "training", 5, None, None)
             for w in ("one", "two") for n in ("a.tfrecord", "b.tfrecord")]
    for w in ("one", "two"):
        (tmp_path / w).mkdir()
    serial = list(run_tasks(tasks[:2], workers=1))
    parallel = list(run_tasks(tasks[2:], workers=2))
    assert sorted(r.packed for r in serial + parallel) == [1, 1, 1, 1]
    for name in ("a.h5", "b.h5"):
        x, y = SceneReader(tmp_path / "one" / name)[0], SceneReader(tmp_path / "two" / name)[0]
        assert all(np.array_equal(v, y.to_arrays()[k]) for k, v in x.to_arrays().items())
    a, b = SceneReader(tmp_path / "one" / "a.h5")[0], SceneReader(tmp_path / "one" / "b.h5")[0]
    assert not np.array_equal(a.scenario_center, b.scenario_center)  # per-file streams differ
