"""Persistent tensor buffers: in-place assignment of tensor trees and discovery of an object's tensors.

The batched simulator, the policy and the env engine keep their per-episode tensors in buffers that are
allocated once and then overwritten in place (resets copy the new rows in, steps copy the new state in),
so that a CUDA graph captured on those buffers stays valid across steps and resets.

A *tree* is a tensor, a dataclass of trees, or a list / tuple of trees.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

_T = TypeVar("_T")
_PACKAGE = "trafficbots_gym"


def tree_leaves(tree: Any) -> Iterator[Tensor]:
    """The tensors of a tree, in a fixed order."""
    if isinstance(tree, Tensor):
        yield tree
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for f in dataclasses.fields(tree):
            yield from tree_leaves(getattr(tree, f.name))
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from tree_leaves(item)
    elif tree is not None:
        raise TypeError(f"not a tensor tree: {type(tree).__name__}")


def same_layout(a: Any, b: Any) -> bool:
    """Both trees have the same structure and every pair of tensors the same shape, dtype and device."""
    try:
        left, right = list(tree_leaves(a)), list(tree_leaves(b))
    except TypeError:
        return False
    if len(left) != len(right) or type(a) is not type(b):
        return False
    return all(x.shape == y.shape and x.dtype == y.dtype and x.device == y.device for x, y in zip(left, right))


def clone_tree(tree: _T) -> _T:
    """A deep copy of the tensors of ``tree`` (no aliasing with the input); ``None`` leaves stay ``None``."""
    if tree is None:
        return tree
    if isinstance(tree, Tensor):
        return tree.clone()  # type: ignore[return-value]
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_tree(t) for t in tree)  # type: ignore[return-value]
    return type(tree)(**{f.name: clone_tree(getattr(tree, f.name))  # type: ignore[arg-type]
                         for f in dataclasses.fields(tree)})


def assign(old: _T | None, new: _T) -> _T:
    """``new``'s values in ``old``'s buffers when the layouts match (returns ``old``), else a copy of ``new``.

    The caller stores the result; with matching layouts every tensor keeps its storage.
    """
    if old is not None and same_layout(old, new):
        for dst, src in zip(tree_leaves(old), tree_leaves(new)):
            if dst is not src:
                dst.copy_(src)
        return old
    return clone_tree(new)


def copy_rows_(old: Any, rows: Tensor | slice, new: Any) -> None:
    """Write ``new``'s batch rows into ``old`` at ``rows`` (long indices or a slice), in place."""
    for dst, src in zip(tree_leaves(old), tree_leaves(new), strict=True):
        dst[rows] = src.to(dst.dtype)


def index_tree(tree: _T, rows: Tensor | slice) -> _T:
    """The batch rows ``rows`` of every tensor of ``tree`` (a view for a slice, a copy for indices);
    ``None`` leaves stay ``None``."""
    if tree is None:
        return tree
    if isinstance(tree, Tensor):
        return tree[rows]  # type: ignore[return-value]
    if isinstance(tree, (list, tuple)):
        return type(tree)(index_tree(t, rows) for t in tree)  # type: ignore[return-value]
    return type(tree)(**{f.name: index_tree(getattr(tree, f.name), rows)  # type: ignore[arg-type]
                         for f in dataclasses.fields(tree)})


def object_tensors(root: Any) -> dict[str, Tensor]:
    """Every tensor reachable from ``root`` through attributes of this package's objects, dataclasses,
    lists, tuples and dicts, by attribute path. Modules (weights), generators, arrays, containers of
    plain values, objects whose class sets ``walk_tensors = False`` and the attributes an object's class
    lists in ``walk_skip`` are not entered.

    These are the tensors a step of ``root`` can read or write; comparing their storage before and after
    an operation tells whether it worked in place.
    """
    found: dict[str, Tensor] = {}
    seen: set[int] = set()

    def visit(obj: Any, path: str) -> None:
        if isinstance(obj, Tensor):
            found.setdefault(path, obj)
            return
        if (id(obj) in seen or isinstance(obj, (nn.Module, torch.Generator, str, bytes, int, float, bool))
                or not getattr(type(obj), "walk_tensors", True)):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            if not _plain(next(iter(obj.values()), None)):
                for key, value in obj.items():
                    visit(value, f"{path}[{key!r}]")
        elif isinstance(obj, (list, tuple)):
            if not _plain(obj[0] if obj else None):
                for i, value in enumerate(obj):
                    visit(value, f"{path}[{i}]")
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f"{path}.{f.name}")
        elif type(obj).__module__.startswith(_PACKAGE) and hasattr(obj, "__dict__"):
            skip = getattr(type(obj), "walk_skip", ())
            for key, value in vars(obj).items():
                if key not in skip:
                    visit(value, f"{path}.{key}")

    visit(root, type(root).__name__)
    return found


def _plain(value: Any) -> bool:
    """A container whose first entry is a plain value holds no tensors (e.g. scene ids): not walked."""
    return isinstance(value, (str, bytes, int, float, bool))


def storage_signature(tensors: dict[str, Tensor]) -> dict[str, tuple[Any, ...]]:
    """(address, shape, strides, dtype, device) of each tensor: equal signatures = same memory layout."""
    return {path: (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device) for path, t in tensors.items()}


def moved_tensors(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    """Paths whose tensor appeared, disappeared or changed memory between two signatures."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
