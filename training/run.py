"""Hydra entry point of the training pipeline: ``python -m training.run action=fit|validate|test ...``.

``ckpt_path`` accepts three kinds of weights (:func:`checkpoint_kind`):

* a Lightning checkpoint of this pipeline (``*.ckpt`` with the model config inside): ``fit`` resumes it
  (weights, optimizer, schedule, loops); ``validate``/``test`` evaluate its weights;
* a reference TrafficBots checkpoint (PyTorch Lightning 1.5 ``.ckpt``): converted with
  ``reference_import`` (reference-compatible config); ``fit`` fine-tunes from it with a fresh optimizer;
* our ``.safetensors`` export: loaded with ``checkpoint.load_model``; same use as a reference checkpoint.

The network architecture always comes from the checkpoint when one is given; the optimizer, loss and
evaluation settings come from the config.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from trafficbots_gym.model.checkpoint import load_model
from trafficbots_gym.model.reference_import import import_reference_checkpoint
from trafficbots_gym.model.traffic_bots import TrafficBots
from training.datamodule import make_datamodule
from training.export import SafetensorsExport
from training.lightning_module import MODEL_CONFIG_KEY, TrafficBotsModule

log = logging.getLogger(__name__)

ACTIONS = ("fit", "validate", "test")


def checkpoint_kind(path: str | Path) -> str:
    """``lightning`` (this pipeline), ``reference`` (reference TrafficBots .ckpt) or ``safetensors``.

    A pickle that is not a plain-container checkpoint is handed to the reference importer, which reads
    pickled OmegaConf hyper-parameters safely and rejects anything else naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no such file {path}")
    if path.suffix == ".safetensors":
        return "safetensors"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return "reference"
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"ckpt_path: {path} is not a readable checkpoint ({error})") from error
    return "lightning" if isinstance(ckpt, dict) and MODEL_CONFIG_KEY in ckpt else "reference"


def load_init_weights(path: str | Path, kind: str) -> TrafficBots:
    """The network of a reference ``.ckpt`` or of our ``.safetensors`` (for fine-tuning / evaluation)."""
    if kind == "reference":
        model, info = import_reference_checkpoint(path)
        log.info("converted reference TrafficBots checkpoint %s (PL %s, epoch %s, step %s): %d tensors, "
                 "reference_compat=%s", path, info["pytorch_lightning_version"], info["epoch"],
                 info["global_step"], info["mapped_keys"], model.cfg.reference_compat)
        return model
    model = load_model(path)
    log.info("loaded safetensors weights %s", path)
    return model


def build_module(cfg: DictConfig, model_config: dict[str, Any] | None = None) -> TrafficBotsModule:
    """The LightningModule of ``cfg.model``; ``model_config`` (from a checkpoint) overrides the architecture."""
    m = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(m, dict)
    arch = model_config if model_config is not None else m.pop("config", {})
    m.pop("config", None)
    return TrafficBotsModule(model=arch, **m)


def build_trainer(cfg: DictConfig) -> tuple[pl.Trainer, SafetensorsExport | None]:
    """Trainer with the configured loggers and callbacks (+ the safetensors export after fit)."""
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("loggers") or {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    export = SafetensorsExport(cfg.export_dir) if cfg.get("export_dir") and cfg.action == "fit" else None
    if export is not None:
        callbacks.append(export)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_args, dict)
    trainer_args = {k: v for k, v in trainer_args.items() if v is not None}
    return pl.Trainer(logger=loggers or False, callbacks=callbacks, default_root_dir=cfg.output_dir,
                      **trainer_args), export


def run(cfg: DictConfig) -> dict[str, float]:
    """Run ``cfg.action`` and return the metrics the trainer logged last (``trainer.callback_metrics``)."""
    if cfg.action not in ACTIONS:
        raise ValueError(f"action={cfg.action!r} is not one of {ACTIONS}")
    pl.seed_everything(cfg.seed, workers=True)
    dm_args = OmegaConf.to_container(cfg.datamodule, resolve=True)
    assert isinstance(dm_args, dict)
    datamodule = make_datamodule(**dm_args)

    ckpt_path = cfg.get("ckpt_path")
    kind = checkpoint_kind(ckpt_path) if ckpt_path else None
    resume = None
    if kind == "lightning":
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        module = build_module(cfg, saved[MODEL_CONFIG_KEY])
        if cfg.action == "fit":
            resume = str(ckpt_path)
            log.info("resuming fit from %s (epoch %s, step %s)", ckpt_path, saved.get("epoch"), saved.get("global_step"))
        else:
            module.load_state_dict(saved["state_dict"], strict=True)
            log.info("evaluating %s (epoch %s, step %s)", ckpt_path, saved.get("epoch"), saved.get("global_step"))
    elif kind is not None:
        init = load_init_weights(ckpt_path, kind)
        module = build_module(cfg, init.cfg.to_dict())
        module.model.load_state_dict(init.state_dict(), strict=True)
    else:
        module = build_module(cfg)
    log.info("TrafficBots: %s trainable parameters", f"{module.model.num_parameters():,}")

    trainer, export = build_trainer(cfg)
    if cfg.action == "fit":
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    elif cfg.action == "validate":
        trainer.validate(module, datamodule=datamodule)
    else:
        trainer.test(module, datamodule=datamodule)
    if export is not None:
        for name, path in export.exported.items():
            log.info("%s weights: %s", name, path)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> None:
    """Console entry point (Hydra parses the overrides)."""
    # Lightning's DDP launcher re-runs this script with hydra.run.dir set to rank 0's folder: take the
    # folder from Hydra so that every rank agrees even when output_dir holds a ${now:...} timestamp.
    cfg.output_dir = HydraConfig.get().runtime.output_dir
    metrics = run(cfg)
    if metrics:
        width = max(map(len, metrics))
        print("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    main()
