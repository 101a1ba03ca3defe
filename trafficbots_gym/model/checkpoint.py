"""Our checkpoint format: safetensors weights with the JSON :class:`TrafficBotsConfig` in the metadata.

Metadata keys: ``format`` (``trafficbots-gym/1``), ``config`` (JSON) and any string-valued extras
(e.g. provenance). ``load_model(None)`` loads the checkpoint shipped with the package; a reference
Lightning ``.ckpt`` is converted on load.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trafficbots_gym.data.h5io import atomic_path
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.traffic_bots import TrafficBots

log = logging.getLogger(__name__)

FORMAT = "trafficbots-gym/1"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "trafficbots_default.safetensors"
REFERENCE_SUFFIXES = (".ckpt",)


class CheckpointError(ValueError):
    """A checkpoint file is malformed or does not fit the model; the message names the file and keys."""


def save_checkpoint(path: str | os.PathLike, model: TrafficBots, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` atomically (temporary file, then ``os.replace``)."""
    final = Path(path)
    metadata = {"format": FORMAT, "config": model.cfg.to_json()}
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"extra metadata key {key!r} is reserved")
        metadata[key] = str(value)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = atomic_path(final)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors checkpoint."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def load_model(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> TrafficBots:
    """Load a :class:`TrafficBots` in eval mode.

    ``path`` None loads the shipped default checkpoint; a ``.ckpt`` path is converted from the reference
    format. Raises ``FileNotFoundError`` for missing files and :class:`CheckpointError` for key / shape
    mismatches or non-finite parameters.
    """
    if path is None:
        path = DEFAULT_CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(
                f"no default TrafficBots checkpoint shipped at {path}; pass a checkpoint path, train one with the "
                f"training pipeline, or convert a reference checkpoint with `trafficbots-import-ckpt IN.ckpt OUT.safetensors`")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix in REFERENCE_SUFFIXES:
        from trafficbots_gym.model.reference_import import import_reference_checkpoint

        log.info("converting reference TrafficBots checkpoint %s on load (reference_compat=True)", path)
        model, _ = import_reference_checkpoint(path)
        _check_finite(model, path)
        return model.to(map_location)
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: metadata format={metadata.get('format')!r}, expected {FORMAT!r} with a config")
    try:
        cfg = TrafficBotsConfig.from_json(metadata["config"])
    except ValueError as error:
        raise CheckpointError(f"{path}: invalid config in metadata ({error})") from error
    model = TrafficBots(cfg)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong_shape = [f"{k}: {tuple(weights[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                   if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(f"{path}: missing keys {missing}; unexpected keys {unexpected}; "
                              f"shape mismatches {wrong_shape}")
    model.load_state_dict(weights, strict=True)
    _check_finite(model, path)
    return model.to(map_location).eval()


def _check_finite(model: TrafficBots, path: Path) -> None:
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(f"{path}: non-finite (NaN/inf) values in {bad}")

