"""The embedded synthetic default dataset: present, valid, split-correct, recorded and within the size budget."""
from __future__ import annotations

import hashlib
import re

import h5py
import numpy as np
import pytest

from trafficbots_gym.assets import SCENES_DIR, default_scenes_path
from trafficbots_gym.data.constants import SPLITS
from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.synth.quantize import STEPS

REALISM_SCENES = 100
"""Held-out scenes the realism report evaluates by default (validation) and the testing split holds."""


def _record() -> dict[str, tuple[int, str]]:
    """``{split: (scene count, sha256 prefix)}`` from the table of GENERATED.md."""
    rows = re.findall(r"^\| `(\w+)\.h5` \| (\d+) \| [\d.]+ \| ([0-9a-f]{16}) \|$",
                      (SCENES_DIR / "GENERATED.md").read_text(), flags=re.MULTILINE)
    return {split: (int(n), sha) for split, n, sha in rows}


@pytest.mark.parametrize("split", SPLITS)
def test_each_split_holds_valid_synthetic_scenes_of_that_split(split: str) -> None:
    reader = SceneReader(default_scenes_path(split))
    ids = reader.scenario_ids
    assert len(set(ids)) == len(ids) and all(i.startswith("sumo-") for i in ids)
    for i in (0, len(reader) - 1):
        assert reader[i].split == split  # reading validates shapes, dtypes and enums


def test_dataset_has_hundreds_of_scenes_with_a_hundred_held_out_per_split() -> None:
    counts = {s: len(SceneReader(default_scenes_path(s))) for s in SPLITS}
    assert sum(counts.values()) >= 300
    assert counts["validation"] >= REALISM_SCENES and counts["testing"] >= REALISM_SCENES


def test_splits_share_no_simulation_run() -> None:
    runs = {split: {"-".join(i.split("-")[:3]) for i in SceneReader(default_scenes_path(split)).scenario_ids}
            for split in SPLITS}
    assert not runs["training"] & runs["validation"] and not runs["training"] & runs["testing"]
    assert not runs["validation"] & runs["testing"]


def test_dataset_fits_the_package_budget_and_matches_its_generation_record() -> None:
    assert sum(default_scenes_path(s).stat().st_size for s in SPLITS) <= 25e6
    record = (SCENES_DIR / "GENERATED.md").read_text()
    assert all(f"--split {s}" in record for s in SPLITS)
    table = _record()
    for split in SPLITS:
        path = default_scenes_path(split)
        assert table[split] == (len(SceneReader(path)), hashlib.sha256(path.read_bytes()).hexdigest()[:16]), split


@pytest.mark.parametrize("split", SPLITS)
def test_files_use_only_the_standard_gzip_and_shuffle_filters_and_snapped_maps(split: str) -> None:
    with h5py.File(default_scenes_path(split), "r") as f:
        group = f["0"]
        datasets: list[h5py.Dataset] = []
        group.visititems(lambda _, v: datasets.append(v) if isinstance(v, h5py.Dataset) else None)
        for ds in datasets:
            plist = ds.id.get_create_plist()
            filters = {plist.get_filter(k)[0] for k in range(plist.get_nfilters())}
            assert filters == {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE}, ds.name
        pos = group["map/pos"][()] / STEPS["position"]
        assert np.array_equal(pos, np.round(pos))


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        default_scenes_path("train")
