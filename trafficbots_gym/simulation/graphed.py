"""CUDA graphs of a batched step: capture the whole step once, then replay it with one launch.

:class:`StepGraph` wraps a callable without arguments that reads and writes the persistent tensors of
an owner object (e.g. the env engine: simulator, policy, observation and episode buffers) and returns
a tree of tensors. Its life cycle:

1. first call: runs eagerly and records which persistent tensors the step writes (their version
   counters move) and checks that it writes them in place (no attribute gets a new tensor);
2. second call: warm-up on a side stream, the written tensors restored, capture, one replay;
3. later calls: ``graph.replay()`` -- the outputs are the same static tensors every time, overwritten
   by the next replay.

Inputs reach the graph through the owner's buffers (copy new values into them before the call).
Resets happen outside the graph and must write in place; :meth:`StepGraph.check` (call it after each
reset) re-captures lazily when a persistent tensor was reallocated or the owner's Python-level
configuration (``key``) changed. A capture failure falls back to eager execution for good, with the
reason in :attr:`StepGraph.disabled_reason`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import torch

from trafficbots_gym.simulation.buffers import moved_tensors, object_tensors, storage_signature

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class StepGraph(Generic[_T]):
    """A callable ``fn() -> tensors`` replayed from a CUDA graph (see the module docstring).

    ``owner``: the object whose tensors ``fn`` reads and writes; ``key``: Python-level state that
    changes what ``fn`` records (a change re-captures); ``name``: for messages.
    """

    walk_tensors = False   # its static outputs are not part of the owner's state

    def __init__(self, fn: Callable[[], _T], owner: Any, *, name: str,
                 key: Callable[[], Hashable] | None = None) -> None:
        self.fn, self.owner, self.name = fn, owner, name
        self.key = key or (lambda: None)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: _T | None = None
        self.disabled_reason: str | None = None
        self.captures = 0
        self._written: list[str] | None = None
        self._signature: tuple[Any, Hashable] | None = None

    @property
    def active(self) -> bool:
        """A captured graph is being replayed."""
        return self.graph is not None

    def __call__(self) -> _T:
        if self.disabled_reason is not None:
            return self.fn()
        if self.graph is not None:
            self.graph.replay()
            return self.outputs  # type: ignore[return-value]
        if self._written is None:
            return self._discover()
        return self._capture()

    def check(self) -> None:
        """Drop the graph if the owner's tensors moved or its ``key`` changed (call after resets)."""
        if self.graph is not None and self._current_signature() != self._signature:
            self.invalidate()

    def invalidate(self) -> None:
        """Forget the graph; the next call runs eagerly and the one after re-captures."""
        self.graph, self.outputs, self._written, self._signature = None, None, None, None

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the graph (re-captured after unpickling); ``fn`` and ``key`` must pickle."""
        state = self.__dict__.copy()
        state.update(graph=None, outputs=None, _written=None, _signature=None)
        return state

    def disable(self, reason: str) -> None:
        """Run eagerly from now on."""
        self.invalidate()
        self.disabled_reason = reason
        log.warning("CUDA graph of %s disabled, running eagerly: %s", self.name, reason)

    # --------------------------------------------------------------------------------------- internals
    def _current_signature(self) -> tuple[Any, Hashable]:
        return storage_signature(object_tensors(self.owner)), self.key()

    def _discover(self) -> _T:
        """Eager call that finds the tensors the step writes and checks that it writes them in place."""
        before = object_tensors(self.owner)
        versions = {path: t._version for path, t in before.items()}
        out = self.fn()
        after = object_tensors(self.owner)
        moved = moved_tensors(storage_signature(before), storage_signature(after))
        if moved:
            self.disable(f"the step replaces tensors instead of writing them in place: {moved[:5]}")
        else:
            self._written = [p for p, t in after.items() if t._version != versions[p]]
        return out

    def _capture(self) -> _T:
        tensors = object_tensors(self.owner)
        written = [tensors[p] for p in self._written or [] if p in tensors]
        saved = [t.clone() for t in written]
        before = storage_signature(tensors)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()                       # warm-up: lazy initialisation, cuBLAS workspaces
            torch.cuda.current_stream().wait_stream(side)
            _restore(written, saved)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.fn()
        except RuntimeError as error:          # an operation that cannot be captured
            _restore(written, saved)
            self.disable(f"capture failed: {error}")
            return self.fn()
        moved = moved_tensors(before, storage_signature(object_tensors(self.owner)))
        if moved:
            _restore(written, saved)
            self.disable(f"the step replaces tensors instead of writing them in place: {moved[:5]}")
            return self.fn()
        self.graph, self.outputs, self.captures = graph, outputs, self.captures + 1
        self._signature = self._current_signature()
        graph.replay()
        return outputs


def _restore(tensors: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for t, s in zip(tensors, saved):
        t.copy_(s)
