"""Compact SUMO corpus: lossless-enough storage and a window dataset that feeds the DataLoader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trafficbots_gym.data.batch import collate_arrays
from trafficbots_gym.data.constants import N_STEP
from trafficbots_gym.synth.corpus import (CorpusFormatError, SyntheticWindowDataset, build_corpus, corpus_scenes,
                                          load_run, save_run)
from trafficbots_gym.synth.generate import run_seeds
from trafficbots_gym.synth.runs import execute_run, sample_run_spec

pytest.importorskip("libsumo", reason="libsumo is not installed")

SEED = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, {"training": 1}, seed=SEED, duration=40.0)
    return out


def test_a_run_survives_quantised_storage(tmp_path: Path) -> None:
    spec = sample_run_spec(run_seeds(SEED, "validation", 1)[0], 15.0)
    road_map, log = execute_run(spec)
    loaded = load_run(save_run(tmp_path / "validation-0000.npz", spec, "validation", road_map, log))
    a, b = log.tracks, loaded.log.tracks
    for name in ("object_id", "type", "start", "length"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.abs(a.xy - b.xy).max() <= 0.005 + 1e-9
    assert np.abs(np.angle(np.exp(1j * (a.yaw - b.yaw)))).max() < 2e-4
    assert np.abs(a.speed - b.speed).max() <= 0.005 + 1e-6
    assert np.array_equal(log.tl_state, loaded.log.tl_state)
    assert loaded.road_map.lane_exits == road_map.lane_exits and loaded.road_map.lane_ids == road_map.lane_ids
    assert [p.map_type for p in loaded.road_map.polylines] == [p.map_type for p in road_map.polylines]
    assert np.array_equal(loaded.road_map.tl_links.lane_feature, road_map.tl_links.lane_feature)


def test_dataset_items_collate_into_a_scene_batch(corpus: Path) -> None:
    ds = SyntheticWindowDataset(corpus, "training", seed=0)
    assert len(ds) > 10
    batch = collate_arrays([ds[0], ds[len(ds) - 1]])
    assert batch.agent_pos.shape == (2, N_STEP, 64, 2) and batch.map_pos.shape == (2, 1024, 20, 2)
    assert batch.agent_valid[:, :, 0].all() and bool(batch.agent_dest_known.all())
    assert torch.isfinite(batch.agent_pos[batch.agent_valid]).all()


def test_windows_stay_inside_their_sdc_track(corpus: Path) -> None:
    ds = SyntheticWindowDataset(corpus, "training", seed=0)
    for i in range(0, len(ds), max(1, len(ds) // 25)):
        k, track, t0 = ds.window(i)
        tracks = ds.run(k).log.tracks
        assert tracks.start[track] <= t0 and t0 + N_STEP <= tracks.start[track] + tracks.length[track]


def test_items_are_reproducible_per_seed_and_epoch(corpus: Path) -> None:
    a, b = SyntheticWindowDataset(corpus, seed=7), SyntheticWindowDataset(corpus, seed=7)
    x, y = a[3], b[3]
    assert all(np.array_equal(x[k], y[k]) for k in x)
    b.set_epoch(1)
    assert not np.array_equal(x["map_pos"], b[3]["map_pos"])  # new frame augmentation


def test_missing_split_and_bad_files_raise_clear_errors(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(CorpusFormatError, match="no 'validation' runs"):
        SyntheticWindowDataset(corpus, "validation")
    (tmp_path / "training-0000.npz").write_bytes(b"not a corpus")
    with pytest.raises(CorpusFormatError, match="training-0000.npz"):
        SyntheticWindowDataset(tmp_path, "training")


def test_corpus_scenes_are_distinct_windows_fixed_by_the_seed_not_the_workers(corpus: Path) -> None:
    one = [scene.scenario_id for scene in corpus_scenes(corpus, "training", 20, seed=5)]
    two = [scene.scenario_id for scene in corpus_scenes(corpus, "training", 20, seed=5, workers=2)]
    assert one == two and len(set(one)) == 20
    assert one != [scene.scenario_id for scene in corpus_scenes(corpus, "training", 20, seed=6)]
    with pytest.raises(ValueError, match=r"num_scenes must be in \[1, \d+\].*got 1000000"):
        next(corpus_scenes(corpus, "training", 1_000_000, seed=5))


def test_the_loader_benchmark_times_an_existing_corpus(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trafficbots_gym.benchmarks.synth_speed import main

    assert main(["--corpus", str(corpus), "--items", "3"]) == 0
    rate = float(capsys.readouterr().out.split("windows/s per worker")[1].split()[0])
    assert rate > 0
