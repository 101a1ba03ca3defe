"""The ego's logged route: its logged path from the current step (10) on, measured by arc length.

A thin per-ego view of ``simulation.metrics.LoggedPath`` (the metric definition of progress), adding
what the environment needs each step: where the ego projects on its route (arc length, signed lateral
offset, route heading) and waypoints ahead of it. Batched over ``[B]`` rows, on the batch's device.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.simulation.metrics import LoggedPath


@dataclass
class RoutePosition:
    """Projection of each row's ego on its route, [B] each."""

    s: torch.Tensor        # arc length of the nearest route point (m)
    lateral: torch.Tensor  # signed offset from the route, positive = left of it (m)
    yaw: torch.Tensor      # route heading there (rad)


@dataclass
class Route:
    """Each row's ego route: a ``LoggedPath`` with a singleton agent axis ([B, 1, K, ...])."""

    path: LoggedPath

    @staticmethod
    def from_log(batch: SceneBatch, ego_index: torch.Tensor) -> "Route":
        """The logged path of agent ``ego_index[b]`` of each scene b, from step 10 on."""
        rows = torch.arange(batch.batch_size, device=batch.device)
        path = LoggedPath.from_log(batch.agent_pos[rows, :, ego_index].unsqueeze(2),
                                   batch.agent_yaw[rows, :, ego_index].unsqueeze(2),
                                   batch.agent_valid[rows, :, ego_index].unsqueeze(2), start=STEP_CURRENT)
        return Route(path)

    @property
    def length(self) -> torch.Tensor:
        """[B] logged route length (m)."""
        return self.path.length[:, 0]

    def locate(self, pos: torch.Tensor, s: torch.Tensor | None = None) -> RoutePosition:
        """Project ego positions ``pos`` [B, 2] onto the route (``s`` [B]: their known arc lengths)."""
        s = self.path.project(pos[:, None, None, :])[0][:, :, 0] if s is None else s.unsqueeze(1)  # [B, 1]
        foot, yaw = self.path.interpolate(s)
        offset = pos - foot[:, 0]
        yaw = yaw[:, 0]
        lateral = torch.cos(yaw) * offset[:, 1] - torch.sin(yaw) * offset[:, 0]
        return RoutePosition(s=s[:, 0], lateral=lateral, yaw=yaw)

    def waypoints(self, s: torch.Tensor, count: int, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Route points at arc lengths ``s + spacing * (1..count)``: positions [B, count, 2], valid [B, count].

        Points past the route end are invalid (and placed at the end).
        """
        ahead = s.unsqueeze(1) + spacing * torch.arange(1, count + 1, device=s.device, dtype=s.dtype)
        valid = ahead <= self.length.unsqueeze(1)
        repeated = LoggedPath(**{f.name: _repeat_agent(getattr(self.path, f.name), count)
                                 for f in fields(LoggedPath)})
        points, _ = repeated.interpolate(ahead)
        return points, valid

    def replace_rows(self, rows: torch.Tensor, other: "Route") -> None:
        """Overwrite rows ``rows`` with the rows of ``other`` (one per entry of ``rows``), in place."""
        for f in fields(LoggedPath):
            getattr(self.path, f.name)[rows] = getattr(other.path, f.name)


def _repeat_agent(value: torch.Tensor, count: int) -> torch.Tensor:
    return value.expand(value.shape[0], count, *value.shape[2:])
