"""A training forward + backward pass captured once into a CUDA graph and replayed for every batch.

A TrafficBots training step is a 90-step closed-loop rollout: thousands of small kernels whose launch
cost, not the GPU, bounds the step time at the batch sizes that fit in memory. :class:`GraphedLossBackward`
runs ``loss_fn(batch)`` and ``loss.backward()`` eagerly for a few warm-up calls (on a side stream, as CUDA
graph capture requires), then captures both into one ``torch.cuda.CUDAGraph``; later calls copy the batch
into the captured input tensors and replay the graph, so the whole forward and backward pass is one launch.
The optimizer step (and gradient clipping) stays outside, on the gradients left in ``param.grad``.

Requirements of the captured function, all met by :func:`~trafficbots_gym.model.rollout.rollout` with
``check_destinations=False`` and :func:`~trafficbots_gym.model.losses.training_losses`: static shapes, no
host synchronisation, no tensors made from host data, random draws from the default CUDA generator. A
batch with other shapes runs eagerly (e.g. a short last batch); on a non-CUDA device every call is eager.
Autocast may be active around the calls: capture and replay disable its weight-cast cache (a cached cast
made inside a graph must not outlive it). Capture uses the ``thread_local`` error mode, so that other
threads of the process (the DataLoader's pin-memory thread) may keep allocating pinned memory meanwhile. A
failed capture raises: the CUDA context is not fit to continue after it.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace

import torch
from torch import Tensor

from trafficbots_gym.data.batch import SceneBatch

log = logging.getLogger(__name__)

LossFn = Callable[[SceneBatch], dict[str, Tensor]]
"""Returns named scalar losses; the total to differentiate is under ``"loss"``."""


def batch_signature(batch: SceneBatch) -> tuple[tuple[str, tuple[int, ...], torch.dtype, torch.device], ...]:
    """Name, shape, dtype and device of every tensor field: what a captured graph is specialised to."""
    return tuple((f.name, tuple(t.shape), t.dtype, t.device) for f in fields(batch)
                 if isinstance(t := getattr(batch, f.name), Tensor))


@contextlib.contextmanager
def _autocast_without_cache(device_type: str) -> Iterator[None]:
    """Keep the surrounding autocast state but turn its weight-cast cache off."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False):
        yield


class GraphedLossBackward:
    """``loss_fn`` and its backward pass, replayed from a CUDA graph after ``warmup_calls`` eager calls.

    Each call returns the losses (detached copies) and leaves the gradients of ``params`` in ``.grad``
    as after ``loss.backward()`` on zeroed gradients: earlier gradients are replaced, never accumulated.
    """

    def __init__(self, loss_fn: LossFn, params: Sequence[torch.nn.Parameter], warmup_calls: int = 3) -> None:
        if warmup_calls < 1:
            raise ValueError(f"warmup_calls must be >= 1 (CUDA graph capture needs a warm-up), got {warmup_calls}")
        self.loss_fn = loss_fn
        self.params = [p for p in params if p.requires_grad]
        self.warmup_calls = warmup_calls
        self.calls = 0
        self.replays = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_batch: SceneBatch | None = None
        self._static_losses: dict[str, Tensor] = {}
        self._static_grads: list[Tensor | None] = []

    @property
    def captured(self) -> bool:
        """True once the graph exists (later calls with the same batch shapes replay it)."""
        return self._graph is not None

    def __call__(self, batch: SceneBatch) -> dict[str, Tensor]:
        self.calls += 1
        device = batch.device
        if device.type != "cuda":
            return self._eager(batch)
        with _autocast_without_cache(device.type):
            if self._graph is None:
                if self.calls <= self.warmup_calls:
                    return self._eager_on_side_stream(batch)
                try:
                    self._capture(batch)
                except RuntimeError as error:
                    raise RuntimeError(f"CUDA graph capture of the training pass failed ({error}); "
                                       "train without it (model.cuda_graph=false)") from error
            if batch_signature(batch) != batch_signature(self._static_batch):
                return self._eager(batch)
            return self._replay(batch)

    # ------------------------------------------------------------------------------------------ eager
    def _eager(self, batch: SceneBatch) -> dict[str, Tensor]:
        for p in self.params:
            p.grad = None
        losses = self.loss_fn(batch)
        losses["loss"].backward()
        return {k: v.detach() for k, v in losses.items()}

    def _eager_on_side_stream(self, batch: SceneBatch) -> dict[str, Tensor]:
        stream = torch.cuda.Stream(batch.device)
        stream.wait_stream(torch.cuda.current_stream(batch.device))
        with torch.cuda.stream(stream):
            losses = self._eager(batch)
        torch.cuda.current_stream(batch.device).wait_stream(stream)
        return losses

    # -------------------------------------------------------------------------------------- the graph
    def _capture(self, batch: SceneBatch) -> None:
        static = replace(batch, **{f.name: getattr(batch, f.name).clone() for f in fields(batch)
                                   if isinstance(getattr(batch, f.name), Tensor)})
        torch.cuda.synchronize(batch.device)
        for p in self.params:
            p.grad = None  # backward inside the capture allocates the gradients in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            losses = self.loss_fn(static)
            losses["loss"].backward()
        self._graph, self._static_batch = graph, static
        self._static_losses = {k: v.detach() for k, v in losses.items()}
        self._static_grads = [p.grad for p in self.params]
        log.info("captured the training forward + backward pass in a CUDA graph (batch %d)", batch.batch_size)

    def _replay(self, batch: SceneBatch) -> dict[str, Tensor]:
        assert self._graph is not None and self._static_batch is not None
        static = self._static_batch
        if batch is not static:
            for f in fields(batch):
                value = getattr(batch, f.name)
                if isinstance(value, Tensor):
                    getattr(static, f.name).copy_(value, non_blocking=True)
        self._graph.replay()
        self.replays += 1
        for p, grad in zip(self.params, self._static_grads):
            p.grad = grad
        return {k: v.clone() for k, v in self._static_losses.items()}
