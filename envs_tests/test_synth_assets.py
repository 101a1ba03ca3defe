"""The embedded synthetic default dataset: present, valid, split-correct and within the size budget."""
from __future__ import annotations

import pytest

from trafficbots_gym.assets import SCENES_DIR, default_scenes_path
from trafficbots_gym.data.constants import SPLITS
from trafficbots_gym.data.h5io import SceneReader


@pytest.mark.parametrize("split", SPLITS)
def test_each_split_holds_valid_synthetic_scenes_of_that_split(split: str) -> None:
    reader = SceneReader(default_scenes_path(split))
    assert len(reader) >= 20
    ids = reader.scenario_ids
    assert len(set(ids)) == len(ids) and all(i.startswith("sumo-") for i in ids)
    for i in (0, len(reader) - 1):
        assert reader[i].split == split  # reading validates shapes, dtypes and enums


def test_splits_share_no_simulation_run() -> None:
    runs = {split: {"-".join(i.split("-")[:3]) for i in SceneReader(default_scenes_path(split)).scenario_ids}
            for split in SPLITS}
    assert not runs["training"] & runs["validation"] and not runs["training"] & runs["testing"]
    assert not runs["validation"] & runs["testing"]


def test_dataset_fits_the_package_budget_and_documents_its_generation() -> None:
    assert sum(default_scenes_path(s).stat().st_size for s in SPLITS) <= 25e6
    record = (SCENES_DIR / "GENERATED.md").read_text()
    assert all(f"--split {s}" in record for s in SPLITS)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        default_scenes_path("train")
