"""Row transfer between two episode batches: how spare episodes, started ahead of time in one batched reset,
replace finished rows of a vector env by a copy instead of a reset of their own.

With early termination a few of many episodes end at almost every step, and each such step would pay a
full reset of those rows: scene encoding and warm start of the learned background, launch-bound on a GPU.
A pool of P spare episodes (``EnvConfig.reset_pool``) is reset together once every P finished episodes;
an autoreset then copies a spare's whole per-row state (scene tensors, metric geometry, agent state,
policy context and GRU state, route, statistics, observation scene tensors) into the finished row.

Per-row state is found generically: every tensor that :func:`~trafficbots_gym.simulation.buffers.object_tensors`
reaches from both batches under the same path is either per-row (leading dimension = the batch's rows),
per-row in groups (a dimension of rows x k, such as the GRU state ``[layers, rows * agents, D]``) or shared
(the same shape in both, such as the action grid). Row-number tensors (``arange(rows)``, used to index
the batch) are left alone. The two batches must have different row counts so that the layouts cannot be
confused; anything else that differs (e.g. a metric geometry padded to another capacity) makes the
transfer refuse before it writes anything, and the caller resets the rows itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from trafficbots_gym.simulation.buffers import object_tensors

Layout = tuple[Literal["rows", "grouped", "shared"], int]
"""How a tensor holds rows: ``("rows", 0)`` leading dimension, ``("grouped", d)`` dimension d = rows x k,
``("shared", -1)`` not per row."""


def row_layout(dst: Tensor, src: Tensor, n_dst: int, n_src: int) -> Layout | None:
    """The row layout of a tensor found as ``dst`` in a batch of ``n_dst`` rows and as ``src`` in one of
    ``n_src`` rows (``n_dst != n_src``); None when the two cannot exchange rows."""
    if dst.dtype != src.dtype or dst.dim() != src.dim():
        return None
    if tuple(dst.shape) == tuple(src.shape):
        return "shared", -1
    if dst.dim() == 0:
        return None
    if dst.shape[0] == n_dst and src.shape[0] == n_src and dst.shape[1:] == src.shape[1:]:
        return "rows", 0
    for d in range(1, dst.dim()):
        rest_equal = all(dst.shape[i] == src.shape[i] for i in range(dst.dim()) if i != d)
        if (rest_equal and dst.shape[d] % n_dst == 0 and src.shape[d] % n_src == 0
                and dst.shape[d] // n_dst == src.shape[d] // n_src):
            return "grouped", d
    return None


def _row_numbers(dst: Tensor, src: Tensor, n_dst: int, n_src: int) -> bool:
    """``dst`` / ``src`` are the batches' row numbers ``arange(rows)`` (indices, not per-row data)."""
    if dst.dim() != 1 or dst.dtype != torch.long:
        return False
    return (torch.equal(dst, torch.arange(n_dst, device=dst.device))
            and torch.equal(src, torch.arange(n_src, device=src.device)))


def _rows_view(t: Tensor, layout: Layout, n: int) -> Tensor:
    """``t`` with its rows as the leading dimension (a view)."""
    kind, d = layout
    if kind == "rows":
        return t
    grouped = t.unflatten(d, (n, t.shape[d] // n))
    return grouped.movedim(d, 0)


def transfer_rows(dst: Any, dst_rows: Sequence[int], n_dst: int, src: Any, src_rows: Sequence[int],
                  n_src: int) -> bool:
    """Copy rows ``src_rows`` of every per-row tensor of ``src`` into rows ``dst_rows`` of ``dst``, in place.

    Returns False, having written nothing, when the two objects do not hold the same tensors under the
    same paths with exchangeable layouts.
    """
    if n_dst == n_src:
        raise ValueError(f"row transfer needs batches of different sizes to tell rows apart, got {n_dst} and {n_src}")
    if len(dst_rows) != len(src_rows):
        raise ValueError(f"{len(dst_rows)} destination rows for {len(src_rows)} source rows")
    targets, sources = object_tensors(dst), object_tensors(src)
    if targets.keys() != sources.keys():
        return False
    plan = []
    for path, t in targets.items():
        layout = row_layout(t, sources[path], n_dst, n_src)
        if layout is None:
            return False
        if layout[0] != "shared" and not _row_numbers(t, sources[path], n_dst, n_src):
            plan.append((t, sources[path], layout))
    device = next(iter(targets.values())).device if targets else torch.device("cpu")
    to_rows = torch.as_tensor(list(dst_rows), dtype=torch.long, device=device)
    from_rows = torch.as_tensor(list(src_rows), dtype=torch.long, device=device)
    for t, s, layout in plan:
        view = _rows_view(t, layout, n_dst)
        view[to_rows.to(t.device)] = _rows_view(s, layout, n_src)[from_rows.to(s.device)]
    return True
