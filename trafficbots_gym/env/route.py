"""The ego's logged route: its logged path from the current step (10) on, measured by arc length.

A thin per-ego view of ``simulation.metrics.LoggedPath`` (the metric definition of progress), adding
what the environment needs each step: where the ego projects on its route (arc length, signed lateral
offset, route heading), waypoints ahead of it, and the steering targets of the ``route`` action mode
(:meth:`Route.point_ahead`, which runs on straight beyond the route ends). Batched over ``[B]`` rows, on the
batch's device.
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

    def logged_arc(self, step: torch.Tensor) -> torch.Tensor:
        """[B] arc length the logged ego had covered at absolute log steps ``step`` [B] (from step 10; held
        over steps where the log lacks the ego, and at the route length past the log end)."""
        k = (step - STEP_CURRENT).clamp(0, self.path.arc.shape[-1] - 1)
        return self.path.arc[:, 0].gather(-1, k.unsqueeze(-1)).squeeze(-1)

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

    def point_ahead(self, pos: torch.Tensor, s: torch.Tensor, ahead: torch.Tensor,
                    lateral: torch.Tensor) -> torch.Tensor:
        """[B, 2] the route point ``ahead`` [B] m of arc length beyond the ego at ``pos`` [B, 2] (projected at
        arc length ``s`` [B]; negative ``ahead``: behind it), shifted ``lateral`` [B] m to the left of the route.

        Beyond either end the route runs on straight along its first / last logged heading; an ego beyond
        an end (where its projection stops) is placed on that extension by its distance along it.
        """
        length = self.length
        first_pos, first_dir = self.path.points[:, 0, 0], _heading(self.path.yaw[:, 0, 0])
        last_pos, last_dir = self.path.points[:, 0, -1], _heading(self.path.yaw[:, 0, -1])
        zero = torch.zeros_like(s)
        past_end = ((pos - last_pos) * last_dir).sum(-1).clamp(min=0.0)
        before_start = ((pos - first_pos) * first_dir).sum(-1).clamp(max=0.0)
        s = (s + torch.where(s >= length - _END_TOLERANCE, past_end, zero)
             + torch.where(s <= _END_TOLERANCE, before_start, zero))
        target_s = s + ahead
        point, yaw = self.path.interpolate(torch.minimum(target_s.clamp(min=0.0), length).unsqueeze(1))
        point, yaw = point[:, 0], yaw[:, 0]
        point = (point + (target_s - length).clamp(min=0.0).unsqueeze(-1) * last_dir
                 + target_s.clamp(max=0.0).unsqueeze(-1) * first_dir)
        return point + lateral.unsqueeze(-1) * torch.stack([-torch.sin(yaw), torch.cos(yaw)], dim=-1)

    def replace_rows(self, rows: torch.Tensor, other: "Route") -> None:
        """Overwrite rows ``rows`` with the rows of ``other`` (one per entry of ``rows``), in place."""
        for f in fields(LoggedPath):
            getattr(self.path, f.name)[rows] = getattr(other.path, f.name)


_END_TOLERANCE = 1e-2
"""m: a projection this close to a route end counts as at (or beyond) that end."""


def _heading(yaw: torch.Tensor) -> torch.Tensor:
    """[..., 2] unit vectors of the headings ``yaw`` [...]."""
    return torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=-1)


def _repeat_agent(value: torch.Tensor, count: int) -> torch.Tensor:
    return value.expand(value.shape[0], count, *value.shape[2:])
