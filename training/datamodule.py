"""Lightning data modules: TrafficBots H5 shards (WOMD or the embedded synthetic set) and the SUMO corpus.

Training draws scenes uniformly **with replacement** (``epoch_size`` draws per epoch, as the reference
``DataH5womd``), so an "epoch" only sets the validation period and the LR schedule; validation and test
read their split sequentially. Items are ``scene_to_arrays`` dicts, batches are ``SceneBatch``.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from trafficbots_gym.data.batch import SceneBatch, collate_arrays, scene_to_arrays
from trafficbots_gym.data.h5io import H5_SUFFIXES, SceneFormatError, SceneReader
from trafficbots_gym.synth.corpus import SyntheticWindowDataset

SPLIT_STAGES = {"train": "training", "val": "validation", "test": "testing"}
"""Lightning stage name -> reference split (file) name."""

PathLike = str | os.PathLike
Source = PathLike | Sequence[PathLike]


class SceneArraysDataset(Dataset):
    """Map-style dataset of ``scene_to_arrays`` dicts over one or many H5 shards."""

    def __init__(self, source: Source, *, validate: bool = True, history_only: bool = False) -> None:
        self.reader = SceneReader(source, validate=validate)
        self.history_only = history_only

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return scene_to_arrays(self.reader[int(index)], self.history_only)


class ReplacementSampler(Sampler):
    """``epoch_size`` indices drawn uniformly with replacement; a fresh draw every epoch, reproducible by seed.

    The draw of epoch ``e`` depends only on ``(seed, e)``; Lightning sets ``e`` through ``set_epoch`` (also
    after a resume), and each pass moves to the next epoch otherwise. With ``keyed`` the sampler yields
    ``(epoch, index)`` keys for :class:`EpochItems`.

    Not a ``RandomSampler`` subclass on purpose: under DDP Lightning then wraps it (each rank gets a
    disjoint share of the same draws) instead of replacing it by a without-replacement ``DistributedSampler``.
    """

    def __init__(self, data_len: int, epoch_size: int, seed: int = 0, keyed: bool = False) -> None:
        if data_len < 1:
            raise ValueError(f"cannot sample from an empty dataset (data_len={data_len})")
        if epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        self.data_len, self.epoch_size, self.seed, self.keyed = data_len, epoch_size, seed, keyed
        self.epoch = 0

    def __len__(self) -> int:
        return self.epoch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        indices = torch.randint(self.data_len, (self.epoch_size,), generator=g).tolist()
        yield from ((epoch, i) for i in indices) if self.keyed else indices


class EpochItems(Dataset):
    """A dataset whose items change with ``set_epoch`` (fresh synthetic windows), read by ``(epoch, index)``.

    The epoch travels with every key, so persistent DataLoader workers (which hold their own copy of the
    dataset) serve the right epoch without being restarted.
    """

    def __init__(self, dataset: Dataset) -> None:
        if not callable(getattr(dataset, "set_epoch", None)):
            raise TypeError(f"{type(dataset).__name__} has no set_epoch(epoch) method")
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
            self.epoch = epoch
        return self.dataset[index]


def split_source(data_dir: PathLike, split: str) -> Path:
    """``data_dir/<split>.h5`` (or another H5 suffix) or the shard folder ``data_dir/<split>/``."""
    root = Path(data_dir)
    candidates = [root / f"{split}{suffix}" for suffix in H5_SUFFIXES] + [root / split]
    for path in candidates:
        if path.exists():
            return path
    raise SceneFormatError(root, f"no {split!r} split: expected one of {[c.name for c in candidates]}")


def default_source(split: str) -> Path:
    """The embedded synthetic scenes of ``split`` (``trafficbots_gym.assets.default_scenes_path``)."""
    try:
        from trafficbots_gym.assets import default_scenes_path
    except ImportError as e:
        raise FileNotFoundError(
            "no data given (datamodule.data_dir / datamodule.files) and the embedded default dataset "
            f"(trafficbots_gym.assets.default_scenes_path) is not available: {e}") from e
    return Path(default_scenes_path(split))


class _SceneDataModule(pl.LightningDataModule):
    """Loader settings shared by the data modules; subclasses provide ``make_dataset(stage)``."""

    def __init__(self, batch_size: int = 4, num_workers: int = 4, pin_memory: bool = True,
                 persistent_workers: bool = True, epoch_size: int | None = None, val_batch_size: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.epoch_size = epoch_size
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}

    def make_dataset(self, stage: str) -> Dataset:
        raise NotImplementedError

    def dataset(self, stage: str) -> Dataset:
        """The dataset of ``stage`` (train / val / test), built once."""
        if stage not in self.datasets:
            self.datasets[stage] = self.make_dataset(stage)
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ())
        for s in wanted:
            self.dataset(s)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers, collate_fn=collate_arrays)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        if isinstance(ds, IterableDataset):  # it draws its own windows
            return self._loader(ds, self.batch_size, None)
        n = len(ds)  # type: ignore[arg-type]
        keyed = callable(getattr(ds, "set_epoch", None))
        sampler = ReplacementSampler(n, self.epoch_size or n, self.seed, keyed=keyed)
        return self._loader(EpochItems(ds) if keyed else ds, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.val_batch_size, None)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.val_batch_size, None)


class H5SceneDataModule(_SceneDataModule):
    """Scenes from TrafficBots H5 files.

    Sources, first match wins: ``files[split]`` (a file, a shard folder or a list of them, keyed by
    ``train``/``val``/``test`` or ``training``/``validation``/``testing``); ``data_dir`` holding the reference
    split names ``training``/``validation``/``testing`` as ``.h5`` files or shard folders; otherwise the
    embedded synthetic dataset of the package.
    """

    def __init__(self, data_dir: PathLike | None = None, files: Mapping[str, Source] | None = None,
                 validate: bool = True, **loader: Any) -> None:
        super().__init__(**loader)
        self.data_dir = data_dir
        self.files = dict(files or {})
        unknown = set(self.files) - set(SPLIT_STAGES) - set(SPLIT_STAGES.values())
        if unknown:
            raise ValueError(f"files: unknown split keys {sorted(unknown)}; use train/val/test")
        self.validate = validate

    def source(self, stage: str) -> Source:
        """Where the scenes of ``stage`` (train / val / test) come from."""
        split = SPLIT_STAGES[stage]
        for key in (stage, split):
            if key in self.files:
                value = self.files[key]
                return value if isinstance(value, (str, os.PathLike)) else list(value)
        if self.data_dir is not None:
            return split_source(self.data_dir, split)
        return default_source(split)

    def make_dataset(self, stage: str) -> Dataset:
        return SceneArraysDataset(self.source(stage), validate=self.validate)


class SynthCorpusDataModule(_SceneDataModule):
    """91-step windows cut on the fly from a compact SUMO corpus (``trafficbots_gym.synth.corpus``)."""

    def __init__(self, corpus_dir: PathLike, **loader: Any) -> None:
        super().__init__(**loader)
        self.corpus_dir = Path(corpus_dir)

    def make_dataset(self, stage: str) -> Dataset:
        return SyntheticWindowDataset(self.corpus_dir, SPLIT_STAGES[stage], self.seed)


DATA_SOURCES: dict[str, type[_SceneDataModule]] = {"h5": H5SceneDataModule, "synth_corpus": SynthCorpusDataModule}
"""``datamodule.source`` -> data module class."""


def scenes_in_batch(batch: SceneBatch) -> int:
    """Samples of a batch, for Lightning's ``ThroughputMonitor`` (``callbacks/default.yaml``)."""
    return batch.batch_size


def make_datamodule(source: str, **kwargs: Any) -> _SceneDataModule:
    """The data module of ``source`` (``h5`` or ``synth_corpus``) built with ``kwargs``."""
    if source not in DATA_SOURCES:
        raise ValueError(f"datamodule.source={source!r} is not one of {sorted(DATA_SOURCES)}")
    return DATA_SOURCES[source](**kwargs)
