"""``TrafficBotsModule``: a thin LightningModule around the plain :class:`TrafficBots` network.

* training step: a differentiable closed-loop ``training`` rollout (steps 1..90, GT warm start to step
  10, free afterwards) and :func:`~trafficbots_gym.model.losses.training_losses`;
* validation / test: closed-loop rollouts (``reactive_replay`` and / or ``joint_future``) scored by
  :mod:`training.metrics` (ADE/FDE vs log, collision, off-road, map exit, destination accuracy) and, on
  validation, ``val/loss`` = the training loss of the first validation procedure;
* Adam with a second parameter group (``lr_goal``) for the destination predictor and StepLR per epoch,
  as the reference;
* checkpoints also carry the model config under :data:`MODEL_CONFIG_KEY`;
* the action log-stds are frozen: training executes the action mean, so they never get a gradient;
* ``cuda_graph=True`` captures the training forward + backward pass once into a CUDA graph
  (:class:`~trafficbots_gym.model.graphed_training.GraphedLossBackward`) and replays it for every batch;
  gradient clipping, the optimizer and the LR schedule stay Lightning's (one device, fp32 or bf16).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.graphed_training import GraphedLossBackward
from trafficbots_gym.model.losses import LossConfig, training_losses
from trafficbots_gym.model.rollout import PROCEDURES, RolloutOutput, rollout
from trafficbots_gym.model.traffic_bots import TrafficBots
from trafficbots_gym.simulation.metrics import MapGeometry
from training.metrics import MetricSums, rollout_metrics

MODEL_CONFIG_KEY = "trafficbots_model_config"
"""Checkpoint entry holding ``TrafficBotsConfig.to_dict()``; also marks a checkpoint of this pipeline."""
GOAL_PARAM_PREFIX = "dest_predictor."
"""Parameters under this prefix (of the network) train with ``lr_goal``."""
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam learning rates and the StepLR schedule (stepped once per epoch); defaults are the reference's."""

    lr: float = 3e-4
    lr_goal: float = 3e-4
    step_size: int = 7
    gamma: float = 0.5
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.lr_goal <= 0:
            raise ValueError(f"optimizer: lr and lr_goal must be > 0, got {self.lr}, {self.lr_goal}")
        if self.step_size < 1 or not 0 < self.gamma <= 1:
            raise ValueError(f"optimizer: need step_size >= 1 and 0 < gamma <= 1, got {self.step_size}, {self.gamma}")


class TrafficBotsModule(pl.LightningModule):
    """Training and closed-loop evaluation of a :class:`TrafficBots` network.

    ``model``: ``TrafficBotsConfig`` fields (defaults = reference architecture); ``optimizer``:
    :class:`OptimizerConfig` fields; ``loss``: :class:`LossConfig` fields. ``val_procedures`` /
    ``test_procedures``: rollout procedures scored in validation / test; ``p_training_rollout_prior``:
    probability that a training rollout uses the prior latent; ``n_rollout_steps``: simulated steps
    (90 = the whole log; fewer gives a shorter training horizon); ``activation_checkpointing`` recomputes
    each step's activations in the backward pass; ``selective_checkpointing`` recomputes only the parts
    that draw no random numbers (``TrafficBots.selective_checkpointing``: about 40% less activation memory,
    the same gradients, works with ``cuda_graph``); ``autocast_dtype`` (``bfloat16``/``float16``/None) runs the
    network, not the dynamics, under autocast. ``cuda_graph`` replays the training forward + backward pass
    from a CUDA graph (on a CUDA device; eager elsewhere); it needs one device, no activation checkpointing
    and no fp16 loss scaling.
    """

    def __init__(self, model: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None,
                 loss: dict[str, Any] | None = None,
                 val_procedures: Sequence[str] = ("reactive_replay", "joint_future"),
                 test_procedures: Sequence[str] = ("joint_future",), p_training_rollout_prior: float = 0.1,
                 n_rollout_steps: int = 90, activation_checkpointing: bool = False,
                 selective_checkpointing: bool = False, autocast_dtype: str | None = None,
                 cuda_graph: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TrafficBots(TrafficBotsConfig.from_dict(dict(model or {})))
        # Training rollouts execute the action mean, so the action log-stds get no gradient (as in the
        # reference, they stay at their initial value). Frozen, DDP needs no unused-parameter search.
        self.model.action_head.log_std.requires_grad_(False)
        self.model.selective_checkpointing = selective_checkpointing
        self.optim_cfg = OptimizerConfig(**(optimizer or {}))
        self.loss_cfg = LossConfig(**(loss or {}))
        for name, procs in (("val_procedures", val_procedures), ("test_procedures", test_procedures)):
            bad = [p for p in procs if p not in PROCEDURES or p == "training"]
            if bad or not procs:
                raise ValueError(f"{name}={list(procs)}: expected a non-empty list of reactive_replay / joint_future")
        if not 0.0 <= p_training_rollout_prior <= 1.0:
            raise ValueError(f"p_training_rollout_prior must be in [0, 1], got {p_training_rollout_prior}")
        if not 1 <= n_rollout_steps <= 90:
            raise ValueError(f"n_rollout_steps must be in 1..90, got {n_rollout_steps}")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype={autocast_dtype!r} is not one of {sorted(AUTOCAST_DTYPES)} or None")
        if cuda_graph and activation_checkpointing:
            raise ValueError("cuda_graph=True cannot be combined with activation_checkpointing=True "
                             "(recomputation reads the RNG state on the host); selective_checkpointing=True can")
        self.val_procedures, self.test_procedures = list(val_procedures), list(test_procedures)
        self.p_prior = p_training_rollout_prior
        self.n_rollout_steps = n_rollout_steps
        self.activation_checkpointing = activation_checkpointing
        self.autocast_dtype = AUTOCAST_DTYPES.get(autocast_dtype or "")
        self.eval_sums = MetricSums()
        self.cuda_graph = cuda_graph
        self.flops_per_batch: int | None = None  # not counted; ThroughputMonitor reports samples/s only
        self._graphed: GraphedLossBackward | None = None

    # ---------------------------------------------------------------------------------------- rollouts
    def run_rollout(self, batch: SceneBatch, procedure: str, check_destinations: bool = True) -> RolloutOutput:
        """One rollout of the network on ``batch`` with this module's settings."""
        return rollout(self.model, batch, procedure=procedure, p_prior=self.p_prior,  # type: ignore[arg-type]
                       n_steps=self.n_rollout_steps, use_checkpoint=self.activation_checkpointing,
                       autocast_dtype=self.autocast_dtype, check_destinations=check_destinations)

    def _training_losses(self, batch: SceneBatch) -> dict[str, torch.Tensor]:
        """Losses of one training rollout (in graph mode the training step checks the destinations)."""
        out = self.run_rollout(batch, "training", check_destinations=not self.cuda_graph)
        return training_losses(out, batch, self.loss_cfg)

    def training_step(self, batch: SceneBatch, batch_idx: int) -> torch.Tensor:
        if self.cuda_graph:
            if not bool(batch.agent_dest_known.all()):  # checked here: the captured rollout cannot
                raise ValueError("procedure 'training' needs logged destinations (agent/dest) for every scene")
            if self._graphed is None:
                self._graphed = GraphedLossBackward(self._training_losses, list(self.model.parameters()))
            losses = self._graphed(batch)  # gradients are in .grad already; backward() below is skipped
        else:
            losses = self._training_losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=batch.batch_size,
                      prog_bar=False)
        self.log("loss", losses["loss"].detach(), batch_size=batch.batch_size, prog_bar=True, logger=False)
        return losses["loss"]

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if not self.cuda_graph:  # graph mode: the training step ran the backward pass already
            super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if not self.cuda_graph:  # graph mode: the training step replaces the gradients
            optimizer.zero_grad()

    def on_fit_start(self) -> None:
        if not self.cuda_graph:
            return
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(f"cuda_graph=True supports trainer.precision 32-true or bf16-mixed, not {precision} "
                             "(fp16 loss scaling happens in the backward call that the graph replaces)")
        if self.trainer.world_size > 1:
            raise ValueError(f"cuda_graph=True runs on one device; this trainer has {self.trainer.world_size} "
                             "processes (train DDP without it)")

    def _evaluate(self, batch: SceneBatch, stage: str, procedures: Sequence[str]) -> None:
        geometry = MapGeometry.from_batch(batch)
        for i, procedure in enumerate(procedures):
            out = self.run_rollout(batch, procedure)
            self.eval_sums.update(rollout_metrics(out, batch, geometry), prefix=f"{stage}/{procedure}/")
            if i == 0 and batch.num_steps > self.n_rollout_steps:
                losses = training_losses(out, batch, self.loss_cfg)
                n = torch.tensor(float(batch.batch_size), device=batch.device)
                self.eval_sums.update({k: (v * n, n) for k, v in losses.items()}, prefix=f"{stage}/")

    def validation_step(self, batch: SceneBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_procedures)

    def test_step(self, batch: SceneBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_procedures)

    def _log_epoch(self) -> None:
        values = self.eval_sums.compute(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        self.eval_sums.reset()
        self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self.eval_sums.reset()

    def on_test_epoch_start(self) -> None:
        self.eval_sums.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch()

    def on_test_epoch_end(self) -> None:
        self._log_epoch()

    # ------------------------------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Adam groups: the network with ``lr``, the destination predictor with ``lr_goal``."""
        goal, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (goal if name.startswith(GOAL_PARAM_PREFIX) else rest).append(p)
        return [{"params": rest, "lr": self.optim_cfg.lr, "name": "model"},
                {"params": goal, "lr": self.optim_cfg.lr_goal, "name": "goal"}]

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.Adam(self.parameter_groups(), lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.optim_cfg.step_size, gamma=self.optim_cfg.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch", "frequency": 1}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self.model, norm_type=2)
        if norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"], batch_size=1)

    # -------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_CONFIG_KEY] = self.model.cfg.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(MODEL_CONFIG_KEY)
        if saved is not None and TrafficBotsConfig.from_dict(saved) != self.model.cfg:
            raise ValueError(f"checkpoint model config {saved} differs from this module's {self.model.cfg.to_dict()}")

    def hparams_summary(self) -> dict[str, Any]:
        """Model, optimizer and loss settings in effect (plain values, for logs and exports)."""
        return {"model": self.model.cfg.to_dict(), "optimizer": asdict(self.optim_cfg), "loss": asdict(self.loss_cfg)}
