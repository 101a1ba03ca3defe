"""``trafficbots-synth``: sharded scene output with an index, single files, corpus, cut, argument errors."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.synth.cli import GZIP_LEVEL, main

pytest.importorskip("libsumo", reason="libsumo is not installed")


def test_scenes_go_to_shards_with_an_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scenes"
    assert main(["--num-scenes", "3", "--out", str(out), "--seed", "1", "--split", "validation",
                 "--scenes-per-run", "2", "--duration", "25", "--shard-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "validation-00000.h5", "validation-00001.h5"]
    index = json.loads((out / "index.json").read_text())
    assert [s["data_len"] for s in index["shards"]] == [2, 1]
    reader = SceneReader(out)
    assert len(reader) == 3 and all(scene.split == "validation" for scene in reader)
    assert "3 validation scenes" in capsys.readouterr().out
    assert not list(out.glob("*.tmp"))


def test_an_h5_path_gets_a_single_gzip9_file_with_one_chunk_per_dataset(tmp_path: Path) -> None:
    out = tmp_path / "one.h5"
    assert main(["--num-scenes", "1", "--out", str(out), "--seed", "2", "--duration", "15"]) == 0
    assert len(SceneReader(out)) == 1 and [p.name for p in tmp_path.iterdir()] == ["one.h5"]
    with h5py.File(out, "r") as f:
        ds = f["0/map/pos"]
        assert ds.compression == "gzip" and ds.compression_opts == GZIP_LEVEL and ds.shuffle
        assert ds.chunks == ds.shape  # one chunk (one deflate stream) per dataset


def test_corpus_subcommand_reports_runs_windows_and_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corpus", "--out", str(tmp_path), "--seed", "4", "--runs", "1", "--val-runs", "0",
                 "--duration", "15"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["training-0000.npz"]
    assert "1 runs" in capsys.readouterr().out


def test_cut_subcommand_writes_corpus_windows_as_env_scenes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    assert main(["corpus", "--out", str(corpus), "--seed", "4", "--runs", "1", "--val-runs", "0",
                 "--duration", "25"]) == 0
    out = tmp_path / "cut"
    assert main(["cut", "--corpus", str(corpus), "--num-scenes", "5", "--out", str(out), "--seed", "0",
                 "--shard-size", "3"]) == 0
    assert "5 training scenes cut from" in capsys.readouterr().out
    reader = SceneReader(out)
    assert len(reader) == 5 and len(set(reader.scenario_ids)) == 5
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "training-00000.h5", "training-00001.h5"]


@pytest.mark.parametrize("argv", [["--num-scenes", "0", "--out", "x", "--seed", "1"],
                                  ["--num-scenes", "2", "--out", "x", "--seed", "1", "--split", "train"],
                                  ["corpus", "--out", "x", "--seed", "-1"],
                                  ["cut", "--corpus", "c", "--num-scenes", "0", "--out", "x", "--seed", "1"],
                                  ["--num-scenes", "2", "--out", "x", "--seed", "1", "--duration", "5"]])
def test_bad_arguments_exit_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
