"""Specification of CUDA-graph training (``model.cuda_graph=true``): the captured forward + backward pass
runs with no host synchronisation, gives the gradients of the eager pass, and plugs into Lightning so that
a fit is the same fit as without it (on the CPU the graph mode executes eagerly through the same hooks)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.graphed_training import GraphedLossBackward, batch_signature
from trafficbots_gym.model.losses import LossConfig, training_losses
from trafficbots_gym.model.rollout import rollout
from training.lightning_module import TrafficBotsModule
from training.run import run

from conftest import TINY_MODEL, tiny_model
from test_perf_batched_step import HostOps
from test_training_pipeline import make_cfg

SAFETY = LossConfig(w_collision=1.0, w_offroad=1.0)
"""The training loss with the optional collision and off-road terms (capturable too)."""
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _deterministic_loss(model: torch.nn.Module):
    """Reactive-replay losses (with the safety terms): no sampling, so eager and replayed passes must agree."""
    def loss_fn(batch: SceneBatch) -> dict[str, torch.Tensor]:
        out = rollout(model, batch, procedure="reactive_replay", n_steps=15, check_destinations=False)
        return training_losses(out, batch, SAFETY)
    return loss_fn


def _grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("selective", [False, True], ids=["plain", "selective-checkpointing"])
def test_training_rollout_losses_and_backward_run_without_host_sync_or_host_data(reference_batch, selective) -> None:
    model = tiny_model(dropout=0.1, gru_layers=2)
    model.selective_checkpointing = selective
    rollout(model, reference_batch, procedure="training", n_steps=12, check_destinations=False)  # fills caches
    with HostOps() as ops:
        out = rollout(model, reference_batch, procedure="training", n_steps=12, check_destinations=False)
        training_losses(out, reference_batch, SAFETY)["loss"].backward()
    assert ops.found == []


def test_off_cuda_every_call_is_eager_and_replaces_the_gradients(reference_batch) -> None:
    model = tiny_model(dropout=0.0)
    step = GraphedLossBackward(_deterministic_loss(model), list(model.parameters()), warmup_calls=1)
    first = step(reference_batch)
    grads = _grads(step.params)
    second = step(reference_batch)
    assert not step.captured and step.calls == 2
    assert torch.equal(first["loss"], second["loss"])
    assert sum(g is not None for g in grads) > len(grads) // 2
    for now, before in zip(_grads(step.params), grads):
        assert (now is None and before is None) or torch.equal(now, before)  # replaced, not accumulated


def test_batch_signature_tells_shapes_apart(reference_batch) -> None:
    one = reference_batch.index(torch.tensor([0]))
    assert batch_signature(reference_batch) == batch_signature(reference_batch.index(torch.tensor([1, 0])))
    assert batch_signature(reference_batch) != batch_signature(one)


def test_graph_mode_rejects_activation_checkpointing() -> None:
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrafficBotsModule(model=dict(TINY_MODEL), cuda_graph=True, activation_checkpointing=True)


def test_graph_mode_accepts_selective_checkpointing() -> None:
    module = TrafficBotsModule(model=dict(TINY_MODEL), cuda_graph=True, selective_checkpointing=True)
    assert module.model.selective_checkpointing


def test_graph_mode_fit_with_or_without_selective_checkpointing_equals_the_default_fit(tmp_path: Path) -> None:
    weights = {}
    for name, flags in (("default", ()), ("graph", ("model.cuda_graph=true",)),
                        ("graph+selective", ("model.cuda_graph=true", "model.selective_checkpointing=true"))):
        out = tmp_path / name
        run(make_cfg(out, "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                     "model.config.dropout=0.1", *flags))
        weights[name] = load_file(str(out / "export" / "last.safetensors"))
    init = TrafficBotsModule(model=dict(TINY_MODEL)).model.state_dict()
    moved = [k for k, v in weights["default"].items() if not torch.equal(v, init[k])]
    assert moved  # the two optimiser steps changed the weights
    for name in ("graph", "graph+selective"):
        for key, value in weights["default"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=0, atol=0, msg=f"{name}: {key}")


@CUDA
def test_graph_mode_refuses_fp16_loss_scaling(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "trainer.max_steps=1", "trainer.precision=16-mixed", "model.cuda_graph=true")
    cfg.trainer.accelerator = "gpu"
    with pytest.raises(ValueError, match="precision"):
        run(cfg)


@CUDA
@pytest.mark.parametrize("selective", [False, True], ids=["plain", "selective-checkpointing"])
def test_replayed_graph_gives_the_eager_losses_and_gradients(reference_batch, selective) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny_model(dropout=0.0).cuda()
    model.selective_checkpointing = selective
    batch = reference_batch.to("cuda")
    swapped = batch.index(torch.tensor([1, 0], device="cuda"))
    step = GraphedLossBackward(_deterministic_loss(model), list(model.parameters()), warmup_calls=2)
    for _ in range(3):
        step(batch)
    assert step.captured
    replayed = step(swapped)
    replayed_grads = _grads(step.params)
    eager = step._eager(swapped)
    assert step.replays == 2
    torch.testing.assert_close(replayed["loss"], eager["loss"], rtol=1e-5, atol=1e-6)
    for replayed_grad, eager_grad in zip(replayed_grads, _grads(step.params)):
        assert (replayed_grad is None) == (eager_grad is None)
        if eager_grad is not None:
            torch.testing.assert_close(replayed_grad, eager_grad, rtol=1e-4, atol=1e-6)
