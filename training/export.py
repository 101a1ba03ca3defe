"""Export trained weights to the package's safetensors format (``trafficbots_gym.model.checkpoint``).

:class:`SafetensorsExport` writes ``last.safetensors`` (the weights at the end of fit) and
``best.safetensors`` (the weights of the ModelCheckpoint's best checkpoint) so that the Gymnasium
env and ``load_model`` can use them directly.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from trafficbots_gym.model.checkpoint import save_checkpoint
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.traffic_bots import TrafficBots
from training.lightning_module import MODEL_CONFIG_KEY, TrafficBotsModule

log = logging.getLogger(__name__)


def model_from_lightning_checkpoint(path: str | os.PathLike) -> tuple[TrafficBots, dict[str, Any]]:
    """The network stored in a checkpoint of this pipeline, and the checkpoint's epoch / global_step."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if MODEL_CONFIG_KEY not in ckpt:
        raise ValueError(f"{path}: no {MODEL_CONFIG_KEY!r} entry; not a checkpoint of this training pipeline")
    model = TrafficBots(TrafficBotsConfig.from_dict(ckpt[MODEL_CONFIG_KEY]))
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(weights, strict=True)
    return model, {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}


def export_weights(path: str | os.PathLike, model: TrafficBots, module: TrafficBotsModule,
                   info: dict[str, Any]) -> Path:
    """Write ``model`` with provenance metadata (training settings, epoch, step, source) to ``path``."""
    meta = {"training": json.dumps({k: v for k, v in module.hparams_summary().items() if k != "model"}, sort_keys=True)}
    meta.update({k: str(v) for k, v in info.items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, meta)


class SafetensorsExport(pl.Callback):
    """At the end of fit, export the last and the best weights to ``dirpath`` (rank zero only)."""

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.exported: dict[str, Path] = {}

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, TrafficBotsModule)
        info = {"epoch": trainer.current_epoch, "global_step": trainer.global_step, "source": "end of fit"}
        self.exported["last"] = export_weights(self.dirpath / "last.safetensors", pl_module.model, pl_module, info)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            model, ckpt_info = model_from_lightning_checkpoint(best)
            ckpt_info.update(source=Path(best).name, best_score=str(trainer.checkpoint_callback.best_model_score))
            self.exported["best"] = export_weights(self.dirpath / "best.safetensors", model, pl_module, ckpt_info)
        for name, path in self.exported.items():
            log.info("exported %s weights to %s", name, path)
