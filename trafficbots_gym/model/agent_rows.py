"""``AgentRows``: compute a per-agent network on the agents that matter only, with the same result.

Agents that are invalid get zero outputs from every per-agent part of TrafficBots, so those parts can run
on the rows of the agents that can be valid and scatter the results back (zeros elsewhere). On a CPU, a
row's result is the same bits whatever the number of rows as long as the row count avoids the small-count
code paths of the kernels (a matrix-vector product for fewer than 4 rows, a short tail block of the
attention kernel), which a multiple of ``ROW_BLOCK`` rows does. Attention over agents must still see every
agent slot as a key: callers scatter the rows back before it (see ``layers.interact``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ROW_BLOCK = 8
"""Row-count granularity (see the module docstring)."""


@dataclass
class AgentRows:
    """Selected agents of each scene, in slot order, padded to a multiple of ``ROW_BLOCK`` rows."""

    read: Tensor   # [B, R] agent slot of each row (padding rows: an unselected agent)
    slot: Tensor   # [B, R] where each row's result goes: its agent slot, A for padding

    @staticmethod
    def of(selected: Tensor) -> "AgentRows | None":
        """Rows for ``selected`` [B, A] bool, or None when they would cover every agent slot anyway."""
        n_agent = selected.shape[1]
        n_rows = max(-(-int(selected.sum(1).max()) // ROW_BLOCK) * ROW_BLOCK, ROW_BLOCK)
        if n_rows >= n_agent:
            return None
        read = torch.argsort((~selected).to(torch.uint8), dim=1, stable=True)[:, :n_rows]
        return AgentRows(read=read, slot=torch.where(torch.gather(selected, 1, read), read, n_agent))

    def pick(self, x: Tensor, agent_dim: int = 1) -> Tensor:
        """The rows of per-agent ``x`` [B, ..., A, ...] (agent axis ``agent_dim``) -> [B, ..., R, ...]."""
        index = self.read.view(self.read.shape[:1] + (1,) * (agent_dim - 1) + self.read.shape[1:])
        index = index.view(index.shape + (1,) * (x.ndim - agent_dim - 1))
        return torch.take_along_dim(x, index, dim=agent_dim)

    def scatter(self, values: Tensor, n_agent: int) -> Tensor:
        """Per-row ``values`` [B, R, ...] -> per-agent [B, A, ...], zero for the other agents."""
        out = values.new_zeros((values.shape[0], n_agent + 1) + values.shape[2:])
        out[torch.arange(values.shape[0], device=values.device).unsqueeze(1), self.slot] = values
        return out[:, :n_agent]
