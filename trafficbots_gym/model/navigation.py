"""Navigator checks of the closed loop: leaving the map rectangle and reaching the destination.

A lane destination (classes 0-3) is reached when some node of the destination polyline lies within 50 m
and some node direction is within 30 degrees of the agent heading; a road-edge destination (class 4)
within 10 m. These are the two rule-checker items the reference rollout always evaluates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trafficbots_gym.data.constants import MapType

DEST_LANE_RADIUS = 50.0
DEST_EDGE_RADIUS_FACTOR = 0.2
"""Road-edge radius = 50 m * (1 - 0.8) as in the reference."""
DEST_MAX_HEADING_ERROR = math.radians(30.0)


def outside_map(valid: Tensor, pos: Tensor, boundary: Tensor) -> Tensor:
    """[B, A] bool: valid agents outside ``boundary`` [B, 4] = (xmin, xmax, ymin, ymax)."""
    x, y = pos[..., 0], pos[..., 1]
    out = (x > boundary[:, 1:2]) | (x < boundary[:, 0:1]) | (y > boundary[:, 3:4]) | (y < boundary[:, 2:3])
    return out & valid


@dataclass
class DestinationGeometry:
    """Nodes of each agent's destination polyline, gathered once per episode."""

    node_valid: Tensor   # [B, A, N]
    node_pos: Tensor     # [B, A, N, 2]
    node_dir: Tensor     # [B, A, N, 2] unit vectors (0 where invalid)
    is_lane: Tensor      # [B, A] classes 0..3
    is_edge: Tensor      # [B, A] class 4
    radius: Tensor       # [B, A] m

    @staticmethod
    def gather(dest: Tensor, map_valid: Tensor, map_type: Tensor, map_pos: Tensor,
               map_dir: Tensor) -> "DestinationGeometry":
        """Destination polylines ``dest`` [B, A] of a map (``map_*`` [B, P, ...])."""
        rows = torch.arange(dest.shape[0], device=dest.device).unsqueeze(1)
        node_valid = map_valid[rows, dest]
        node_type = map_type[rows, dest]
        direction = map_dir[rows, dest]
        unit = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
        unit = torch.where(node_valid.unsqueeze(-1), unit, torch.zeros_like(unit))
        is_edge = node_type[..., MapType.ROAD_EDGE_BOUNDARY]
        radius = DEST_LANE_RADIUS * (1 - is_edge.to(map_pos.dtype) * (1 - DEST_EDGE_RADIUS_FACTOR))
        return DestinationGeometry(node_valid, map_pos[rows, dest], unit,
                                   node_type[..., :MapType.ROAD_EDGE_BOUNDARY].any(-1), is_edge, radius)

    def reached(self, valid: Tensor, pos: Tensor, yaw: Tensor) -> Tensor:
        """[B, A] bool: valid agents at ``pos`` [B, A, 2] / ``yaw`` [B, A] that satisfy the criterion."""
        dist = torch.linalg.vector_norm(pos.unsqueeze(2) - self.node_pos, dim=-1)
        near = ((dist < self.radius.unsqueeze(-1)) & self.node_valid).any(-1)
        heading = torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=-1).unsqueeze(2)
        cos = (heading * self.node_dir).sum(-1).masked_fill(~self.node_valid, 0.0)
        aligned = (cos > math.cos(DEST_MAX_HEADING_ERROR)).any(-1)
        return valid & ((self.is_lane & near & aligned) | (self.is_edge & near))

    def index(self, rows: Tensor) -> "DestinationGeometry":
        return DestinationGeometry(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))
