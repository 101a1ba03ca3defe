"""Specification of the training data modules (training.datamodule)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.h5io import SceneFormatError
from training.datamodule import H5SceneDataModule, ReplacementSampler, SynthCorpusDataModule, make_datamodule

from conftest import REFERENCE_SCENES


def test_replacement_sampler_draws_epoch_size_indices_with_replacement_and_a_new_draw_each_epoch() -> None:
    sampler = ReplacementSampler(data_len=2, epoch_size=50, seed=3)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 50
    assert set(first) == {0, 1}  # 50 draws from 2 scenes must repeat scenes
    assert first != second
    assert list(ReplacementSampler(2, 50, seed=3)) == first  # reproducible by seed
    resumed = ReplacementSampler(2, 50, seed=3)
    resumed.set_epoch(1)
    assert list(resumed) == second                           # epoch set by the trainer, e.g. after a resume
    keyed = ReplacementSampler(2, 50, seed=3, keyed=True)
    assert list(keyed) == [(0, i) for i in first]


def test_replacement_sampler_rejects_empty_data() -> None:
    with pytest.raises(ValueError, match="empty"):
        ReplacementSampler(0, 4)


def test_h5_datamodule_reads_reference_split_names_from_a_data_dir(tmp_path: Path) -> None:
    shutil.copy(REFERENCE_SCENES, tmp_path / "training.h5")
    (tmp_path / "validation").mkdir()
    shutil.copy(REFERENCE_SCENES, tmp_path / "validation" / "shard_000.h5")
    dm = H5SceneDataModule(data_dir=tmp_path, batch_size=2, num_workers=0, pin_memory=False, epoch_size=3)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [b.batch_size for b in train] == [2, 1]  # 3 draws, last batch kept
    val = list(dm.val_dataloader())
    assert len(val) == 1 and isinstance(val[0], SceneBatch)
    assert val[0].agent_pos.shape == (2, 91, 64, 2) and val[0].map_pos.shape == (2, 1024, 20, 2)
    assert torch.equal(val[0].agent_valid[0], next(iter(dm.val_dataloader())).agent_valid[0])  # sequential


def test_h5_datamodule_names_the_missing_split(tmp_path: Path) -> None:
    dm = H5SceneDataModule(data_dir=tmp_path, num_workers=0)
    with pytest.raises(SceneFormatError, match="testing"):
        dm.setup("test")


def test_h5_datamodule_takes_explicit_files_per_split_with_workers() -> None:
    dm = H5SceneDataModule(files={"train": [REFERENCE_SCENES, REFERENCE_SCENES], "val": REFERENCE_SCENES}, batch_size=4,
                           num_workers=1, pin_memory=False, epoch_size=4, seed=1)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 4  # two shards of two scenes
    batch = next(iter(dm.train_dataloader()))
    assert batch.batch_size == 4 and batch.agent_valid.dtype == torch.bool


def test_h5_datamodule_rejects_unknown_split_keys() -> None:
    with pytest.raises(ValueError, match="trainnig"):
        H5SceneDataModule(files={"trainnig": REFERENCE_SCENES})


def test_make_datamodule_dispatches_on_source_and_rejects_unknown_sources() -> None:
    assert isinstance(make_datamodule("h5", files={"val": REFERENCE_SCENES}, num_workers=0), H5SceneDataModule)
    with pytest.raises(ValueError, match="tfrecord"):
        make_datamodule("tfrecord")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SUMO corpus with one short training run."""
    from trafficbots_gym.synth.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, {"training": 1}, seed=0, duration=12.0)
    return out


def _epoch_batch(dm: SynthCorpusDataModule, epoch: int, loader: torch.utils.data.DataLoader | None = None) -> SceneBatch:
    loader = loader or dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return next(iter(loader))


def test_synth_corpus_windows_change_with_the_epoch_also_in_persistent_workers(corpus: Path) -> None:
    args = dict(corpus_dir=corpus, batch_size=2, epoch_size=2, pin_memory=False, seed=5)
    inline = make_datamodule("synth_corpus", num_workers=0, **args)
    assert isinstance(inline, SynthCorpusDataModule)
    first = _epoch_batch(inline, 0)
    assert first.batch_size == 2 and first.agent_pos.shape[1:] == (91, 64, 2)
    assert bool(first.agent_dest_known.all())
    assert torch.equal(_epoch_batch(inline, 0).agent_pos, first.agent_pos)  # reproducible
    second = _epoch_batch(inline, 1)
    assert not torch.equal(second.agent_pos, first.agent_pos)               # fresh windows

    workers = make_datamodule("synth_corpus", num_workers=1, persistent_workers=True, **args)
    loader = workers.train_dataloader()
    assert torch.equal(_epoch_batch(workers, 0, loader).agent_pos, first.agent_pos)
    assert torch.equal(_epoch_batch(workers, 1, loader).agent_pos, second.agent_pos)


def test_h5_datamodule_defaults_to_the_embedded_synthetic_scenes() -> None:
    dm = H5SceneDataModule(batch_size=2, num_workers=0, pin_memory=False)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.batch_size == 2 and batch.num_steps == 11  # the testing split holds history only
    assert len(dm.dataset("train")) > 0 and len(dm.dataset("val")) > 0
