"""``EncodingCache``: least-recently-used store of per-scene policy encodings, bounded in bytes.

Encoding a scene at reset (map polylines, traffic lights, latent and destination heads, warm-start
recurrence) costs far more than the rest of a reset and depends only on the scene and the network
weights. The cache keeps those tensors (on the policy's device) under a caller-chosen key, evicts the
least recently used entries when their total size exceeds ``max_bytes``, and empties itself when the
weights it was filled with change (any parameter replaced or modified in place).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from torch import nn

from trafficbots_gym.simulation.buffers import tree_leaves

MIB = 2**20


def tree_nbytes(tree: Any) -> int:
    """Bytes of the tensors of a tensor tree (expanded views counted at their full size)."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree))


def weights_fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity of ``model``'s current weights: storage address and in-place version of every parameter
    and buffer (``load_state_dict``, optimiser steps and ``.to()`` all change it)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


class EncodingCache:
    """LRU map ``key -> tensor tree`` holding at most ``max_bytes`` (0 disables the cache).

    Call :meth:`bind` with the model before looking entries up: a change of its weights since the last
    call clears the cache. An entry larger than the whole budget is not stored.
    """

    walk_tensors = False   # cached encodings are not per-step state (see buffers.object_tensors)

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._nbytes = 0
        self._fingerprint: tuple[tuple[int, int], ...] | None = None
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def bind(self, model: nn.Module) -> None:
        """Declare the model whose weights the next entries depend on; clears the cache if they changed."""
        fingerprint = weights_fingerprint(model)
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint

    def get(self, key: Hashable) -> Any | None:
        """The entry of ``key`` (now the most recently used) or None."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key``, evicting least recently used entries to stay within budget."""
        size = tree_nbytes(value)
        if key in self._entries:
            self._nbytes -= self._entries.pop(key)[1]
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self._nbytes += size
        while self._nbytes > self.max_bytes:
            self._nbytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._nbytes = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without entries (they are derived data and can be large)."""
        return {**self.__dict__, "_entries": OrderedDict(), "_nbytes": 0, "_fingerprint": None}
