"""Batched, on-device driving metrics over ``[B, A]`` agents: collisions, time to collision, off-road, red
lights, map exit, destinations, progress along a logged path, ADE/FDE.

Everything is vectorised torch with fixed shapes (no host syncs, no Python loops over scenes or agents),
so it runs every simulator step on CPU or GPU. Static per-scene geometry is precomputed once per reset
with :meth:`MapGeometry.from_batch`.

Definitions (the reference TrafficBots rule checker, spec §6.4, unless stated):

* **collision**: oriented boxes (logged length x width, optionally scaled) overlap, by the separating
  axis theorem; self pairs, invalid agents and pedestrian-pedestrian pairs are excluded.
* **time to collision** (WOSAC): gap to the followed box ahead over the closing speed, capped at 5 s.
* **off-road** (vehicles only; our definition, works for WOMD and SUMO maps alike): the vehicle box
  touches a road-edge segment (classes ROAD_EDGE_BOUNDARY / ROAD_EDGE_MEDIAN; as WOSAC, any part of
  the box past the edge), or its centre is farther than ``max_lane_distance`` (3.5 m: half a wide lane
  plus about half a car width) from every vehicle-lane centreline segment (catches a vehicle that left
  the road entirely, also on maps without road edges). Scenes without vehicle lanes only use the edge test.
* **red light**: a vehicle's centre passes a STOP stop point between two steps: the point is ahead of
  the centre (along the heading) before and not ahead after, with a lateral offset under
  ``lateral_tolerance`` and, when the lane direction is known, a heading within 60 deg of it.
* **outside map**: the centre is outside the ``map/boundary`` rectangle.
* **destination reached**: lane destination - some node within 50 m and some node direction within
  30 deg of the heading; road-edge destination - some node within 10 m (reference values).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import (ROAD_EDGE_TYPES, STEP_CURRENT, VEHICLE_LANE_TYPES, AgentType,
                                            TLState)
from trafficbots_gym.simulation.dynamics import wrap_angle
from trafficbots_gym.simulation.state import AgentState

MAX_LANE_DISTANCE = 3.5
"""Off-road if a vehicle centre is farther than this (m) from every vehicle-lane centreline."""
LANE_CANDIDATES = 8
"""Lane polylines examined exactly per agent (the nearest by an oriented-box lower bound)."""
EDGE_CANDIDATES = 8
"""Road-edge polylines examined exactly per agent."""
DEST_LANE_DISTANCE = 50.0
DEST_LANE_ANGLE = math.radians(30.0)
DEST_EDGE_DISTANCE = 10.0
RED_LIGHT_LATERAL_TOLERANCE = 2.0
RED_LIGHT_MAX_ANGLE = math.radians(60.0)
GRID_CELLS = 24
"""Cells per side of the square grid over each scene's polylines that lists the polylines near each cell."""
GRID_CANDIDATES = 24
"""Polylines listed per grid cell (the nearest to its centre by the oriented-box lower bound)."""
MIN_PRODUCT_ROWS = 8
"""Row count from which a CPU matrix product gives each row the bits it gets among more rows."""


MAX_TIME_TO_COLLISION = 5.0
"""s: the time to collision reported without a closing leader (WOSAC's cap)."""
TTC_MAX_HEADING_DIFF = math.radians(75.0)
TTC_SMALL_OVERLAP = 0.5
TTC_SMALL_OVERLAP_HEADING_DIFF = math.radians(10.0)


# ----------------------------------------------------------------------------------------------------
# Oriented boxes
# ----------------------------------------------------------------------------------------------------

def box_corners(pos: torch.Tensor, yaw: torch.Tensor, length: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Corners [..., 4, 2] of oriented boxes, counter-clockwise: front-left, rear-left, rear-right, front-right."""
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=-1)
    normal = torch.stack([-torch.sin(yaw), torch.cos(yaw)], dim=-1)
    sign_l = pos.new_tensor([1.0, -1.0, -1.0, 1.0])
    sign_w = pos.new_tensor([1.0, 1.0, -1.0, -1.0])
    half_l = (0.5 * length).unsqueeze(-1).unsqueeze(-1)
    half_w = (0.5 * width).unsqueeze(-1).unsqueeze(-1)
    return (pos.unsqueeze(-2) + sign_l.unsqueeze(-1) * half_l * heading.unsqueeze(-2)
            + sign_w.unsqueeze(-1) * half_w * normal.unsqueeze(-2))


def box_overlap_matrix(pos: torch.Tensor, yaw: torch.Tensor, length: torch.Tensor,
                       width: torch.Tensor) -> torch.Tensor:
    """[B, A, A] bool: boxes i and j overlap (separating axis theorem; touching counts, diagonal is true).

    ``pos`` [B, A, 2], ``yaw``/``length``/``width`` [B, A]. See :func:`box_overlap`.
    """
    return box_overlap((pos, yaw, length, width), (pos, yaw, length, width))


def box_overlap(boxes_i: tuple[torch.Tensor, ...], boxes_j: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[B, I, J] bool: box i of ``boxes_i`` overlaps box j of ``boxes_j``; each is (pos [B, n, 2], yaw,
    length, width [B, n]).

    Closed form: the four candidate axes are the two box headings and normals, and each box's projected
    half-extent follows from |cos|/|sin| of the yaw difference.
    """
    pos_i, yaw_i, length_i, width_i = boxes_i
    pos_j, yaw_j, length_j, width_j = boxes_j
    d = pos_j.unsqueeze(1) - pos_i.unsqueeze(2)                  # [B, i, j, 2] = pos_j - pos_i
    yaw_i, yaw_j = yaw_i.unsqueeze(2), yaw_j.unsqueeze(1)
    c = torch.cos(yaw_j - yaw_i).abs()
    s = torch.sin(yaw_j - yaw_i).abs()
    li, wi = 0.5 * length_i.unsqueeze(2), 0.5 * width_i.unsqueeze(2)
    lj, wj = 0.5 * length_j.unsqueeze(1), 0.5 * width_j.unsqueeze(1)
    cos_i, sin_i = torch.cos(yaw_i), torch.sin(yaw_i)
    cos_j, sin_j = torch.cos(yaw_j), torch.sin(yaw_j)
    dx, dy = d[..., 0], d[..., 1]
    sep = ((dx * cos_i + dy * sin_i).abs() > li + lj * c + wj * s)
    sep |= ((-dx * sin_i + dy * cos_i).abs() > wi + lj * s + wj * c)
    sep |= ((dx * cos_j + dy * sin_j).abs() > lj + li * c + wi * s)
    sep |= ((-dx * sin_j + dy * cos_j).abs() > wj + li * s + wi * c)
    return ~sep


def collisions(state: AgentState, size: torch.Tensor, agent_type: torch.Tensor, scale: float = 1.0, *,
               agents: torch.Tensor | None = None) -> torch.Tensor:
    """[B, A] bool: the agent's box overlaps another valid agent's box (pedestrian pairs excluded).

    ``size`` [B, A, 3] (length, width, height); ``agent_type`` [B, A, 3] one-hot; ``scale`` enlarges the
    boxes (the reference rule checker uses 1.1). ``agents`` [B, Q] long: only these agents' flags
    ([B, Q], the same values as their entries of the full result).
    """
    n = state.valid.shape[-1]
    length, width = size[..., 0], size[..., 1]
    if scale != 1.0:
        length, width = length * scale, width * scale
    boxes = (state.pos, state.yaw, length, width)
    ped = agent_type[..., AgentType.PEDESTRIAN].bool()
    slots = torch.arange(n, device=state.valid.device)
    if agents is None:
        query, valid_q, ped_q, slot_q = boxes, state.valid, ped, slots
    else:
        rows = torch.arange(agents.shape[0], device=agents.device).unsqueeze(-1)
        query = tuple(x[rows, agents] for x in boxes)
        valid_q, ped_q, slot_q = state.valid[rows, agents], ped[rows, agents], agents
    overlap = box_overlap(query, boxes)
    pair_valid = valid_q.unsqueeze(2) & state.valid.unsqueeze(1)
    ped_pair = ped_q.unsqueeze(2) & ped.unsqueeze(1)
    not_self = slot_q.unsqueeze(-1) != slots
    return (overlap & pair_valid & ~ped_pair & not_self).any(-1)


def time_to_collision(pos: torch.Tensor, yaw: torch.Tensor, size: torch.Tensor, speed: torch.Tensor,
                      pos_o: torch.Tensor, yaw_o: torch.Tensor, size_o: torch.Tensor, speed_o: torch.Tensor,
                      valid_o: torch.Tensor) -> torch.Tensor:
    """WOSAC time to collision (s) of boxes ``[..., E]`` with the box they follow among ``[..., O]``.

    The leader is the nearest box ahead of the front bumper whose heading differs by at most 75 deg, that
    overlaps the follower's straight trail laterally, and (for an overlap under 0.5 m) whose heading
    differs by at most 10 deg. TTC = gap / closing speed, capped at 5 s (5 s without a closing leader).
    """
    e = pos.unsqueeze(-2)                                       # [..., E, 1, 2]
    yaw_e, half_l, half_w = yaw.unsqueeze(-1), 0.5 * size[..., 0].unsqueeze(-1), 0.5 * size[..., 1].unsqueeze(-1)
    yaw_diff = wrap_angle(yaw_o.unsqueeze(-2) - yaw_e).abs()    # [..., E, O]
    c, s = torch.cos(yaw_diff).abs(), torch.sin(yaw_diff).abs()
    lo, wo = 0.5 * size_o[..., 0].unsqueeze(-2), 0.5 * size_o[..., 1].unsqueeze(-2)
    long_offset, lat_offset = lo * c + wo * s, lo * s + wo * c
    d = pos_o.unsqueeze(-3) - e
    ce, se = torch.cos(yaw_e), torch.sin(yaw_e)
    rel_x = d[..., 0] * ce + d[..., 1] * se
    rel_y = -d[..., 0] * se + d[..., 1] * ce
    gap = rel_x - half_l - long_offset
    lat_overlap = rel_y.abs() - half_w - lat_offset
    following = ((gap > 0) & (yaw_diff <= TTC_MAX_HEADING_DIFF) & (lat_overlap < 0)
                 & ((lat_overlap < -TTC_SMALL_OVERLAP) | (yaw_diff <= TTC_SMALL_OVERLAP_HEADING_DIFF))
                 & valid_o.unsqueeze(-2))
    gap = gap.masked_fill(~following, float("inf"))
    best, j = gap.min(-1)
    lead_speed = torch.gather(speed_o.unsqueeze(-2).expand_as(gap), -1, j.unsqueeze(-1)).squeeze(-1)
    closing = speed - lead_speed
    ttc = torch.where(torch.isfinite(best) & (closing > 0), best / closing.clamp(min=1e-6),
                      torch.full_like(best, MAX_TIME_TO_COLLISION))
    return ttc.clamp(max=MAX_TIME_TO_COLLISION)


# ----------------------------------------------------------------------------------------------------
# Static map geometry (once per reset)
# ----------------------------------------------------------------------------------------------------

_FAR = 1.0e6
"""Bounding-box centre (m) given to padding polylines so that they rank last."""


@dataclass
class PolylineSet:
    """The polylines of one class group (e.g. vehicle lanes), compacted to ``L`` slots per scene.

    Each polyline carries an oriented bounding box (axis = its chord): the distance to the box is a
    tight lower bound of the distance to its segments (the 20-node chunks are nearly straight), so only
    the few nearest polylines need an exact test. Padding slots have no valid node and a far-away box.

    A ``GRID_CELLS`` x ``GRID_CELLS`` grid over the polylines' extent lists, per cell, the
    ``GRID_CANDIDATES`` polylines nearest to its centre: :meth:`grid_candidates` ranks only those for a
    point of the cell (the per-step search of the guards), :meth:`candidates` ranks all of them (the metrics).
    """

    start: torch.Tensor   # [B, L, N, 2] node positions
    vec: torch.Tensor     # [B, L, N, 2] node -> next point
    valid: torch.Tensor   # [B, L, N] bool
    frame: torch.Tensor   # [B, 2L, 2]: rows 2l, 2l+1 = unit axis and normal of box l
    offset: torch.Tensor  # [B, 2L]: box centre projected on those rows
    half: torch.Tensor    # [B, 2L]: half extents along those rows
    grid_origin: torch.Tensor    # [B, 2]: lower-left corner of the grid
    grid_inv_cell: torch.Tensor  # [B]: 1 / cell size (1/m)
    grid_ids: torch.Tensor       # [B, GRID_CELLS², GRID_CANDIDATES] int32: the polylines listed per cell

    @staticmethod
    def select(pos: torch.Tensor, vec: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor,
               capacity: int | None = None) -> "PolylineSet":
        """The polylines of ``mask`` [B, P] first, padded to ``capacity`` (default: the largest count, which
        costs a host synchronisation; a given capacity, e.g. P, keeps the call capturable in a CUDA graph)."""
        if capacity is None:
            capacity = int(mask.sum(-1).max()) if mask.numel() else 0
        capacity = max(capacity, 1)
        order = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True)
        if order.shape[-1] < capacity:
            order = torch.cat([order, order[..., :1].expand(*order.shape[:-1], capacity - order.shape[-1])], -1)
        order = order[..., :capacity]
        rows = torch.arange(pos.shape[0], device=pos.device).unsqueeze(-1)
        keep = torch.gather(mask, -1, order)
        sel_valid = valid[rows, order] & keep.unsqueeze(-1)
        sel_pos, sel_vec = pos[rows, order], vec[rows, order]
        center, axis, half = _polyline_obbs(sel_pos, sel_vec, sel_valid)
        center = torch.where(keep.unsqueeze(-1), center, torch.full_like(center, _FAR))
        normal = torch.stack([-axis[..., 1], axis[..., 0]], dim=-1)
        frame = torch.stack([axis, normal], dim=-2).flatten(-3, -2)                 # [B, 2L, 2]
        offset = (torch.stack([(center * axis).sum(-1), (center * normal).sum(-1)], -1)).flatten(-2)
        boxes = PolylineSet(start=sel_pos, vec=sel_vec, valid=sel_valid, frame=frame, offset=offset,
                            half=half.flatten(-2), grid_origin=pos.new_zeros(pos.shape[0], 2),
                            grid_inv_cell=pos.new_ones(pos.shape[0]),
                            grid_ids=torch.zeros(pos.shape[0], 1, 1, dtype=torch.int32, device=pos.device))
        return boxes._with_grid()

    def _with_grid(self, scenes_per_chunk: int = 64) -> "PolylineSet":
        """This set with its cell grid computed (``scenes_per_chunk`` bounds the memory of the ranking)."""
        ends = torch.cat([self.start, self.start + self.vec], dim=-2)                     # [B, L, 2N, 2]
        ends_valid = torch.cat([self.valid, self.valid], dim=-1).unsqueeze(-1)
        big = torch.finfo(ends.dtype).max
        lo = torch.where(ends_valid, ends, big).flatten(1, 2).amin(1)
        hi = torch.where(ends_valid, ends, -big).flatten(1, 2).amax(1)
        empty = ~self.valid.flatten(1).any(-1, keepdim=True)
        lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 1.0, hi)
        cell = ((hi - lo).amax(-1) / GRID_CELLS).clamp(min=1.0)                          # [B] m
        steps = torch.arange(GRID_CELLS, device=lo.device, dtype=lo.dtype) + 0.5
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        unit = torch.stack([gx, gy], -1).reshape(-1, 2)                                   # [C, 2] row-major in y
        centres = lo.unsqueeze(1) + unit.unsqueeze(0) * cell.view(-1, 1, 1)              # [B, C, 2]
        k = min(GRID_CANDIDATES, self.capacity)
        ids = torch.cat([torch.topk(self.index(slice(i, i + scenes_per_chunk)).lower_bound_sq(
            centres[i:i + scenes_per_chunk]), k, dim=-1, largest=False).indices
            for i in range(0, centres.shape[0], scenes_per_chunk)])
        if k < GRID_CANDIDATES:
            ids = ids[..., torch.arange(GRID_CANDIDATES, device=ids.device) % k]
        return replace(self, grid_origin=lo, grid_inv_cell=1.0 / cell, grid_ids=ids.to(torch.int32))

    @property
    def capacity(self) -> int:
        return int(self.valid.shape[1])

    def pad_to(self, capacity: int) -> "PolylineSet":
        """The same set with ``capacity`` slots (padding appended)."""
        extra = capacity - self.capacity
        if extra <= 0:
            return self

        def pad(x: torch.Tensor, dim_scale: int, value: float) -> torch.Tensor:
            shape = list(x.shape)
            shape[1] = extra * dim_scale
            return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=1)

        frame = pad(self.frame, 2, 0.0)
        frame[:, 2 * self.capacity::2, 0] = 1.0
        frame[:, 2 * self.capacity + 1::2, 1] = 1.0
        return PolylineSet(start=pad(self.start, 1, 0.0), vec=pad(self.vec, 1, 0.0), valid=pad(self.valid, 1, False),
                           frame=frame, offset=pad(self.offset, 2, _FAR), half=pad(self.half, 2, 0.0),
                           grid_origin=self.grid_origin, grid_inv_cell=self.grid_inv_cell, grid_ids=self.grid_ids)

    def lower_bound_sq(self, points: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Q, L] squared distance from points [B, Q, 2] to every bounding box (<= the true distance²).

        ``select`` [B, Q'] long: only those points' rows ([B, Q', L]), with the bits of the full result: the
        projection is a batched matrix product, whose rounding on a CPU differs for fewer than 4 rows, so
        the selected points are repeated to ``MIN_PRODUCT_ROWS`` rows when there are fewer.
        """
        if select is not None:
            points = points.gather(1, select.unsqueeze(-1).expand(-1, -1, 2))
            n_select = points.shape[1]
            if n_select == 1:
                points = points.expand(-1, MIN_PRODUCT_ROWS, -1)
            elif n_select < MIN_PRODUCT_ROWS:
                points = points[:, torch.arange(MIN_PRODUCT_ROWS, device=points.device) % n_select]
        proj = torch.baddbmm(-self.offset.unsqueeze(1), points, self.frame.transpose(1, 2))  # [B, Q, 2L]
        if select is not None:
            proj = proj[:, :select.shape[1]]
        excess = (proj.abs() - self.half.unsqueeze(1)).clamp(min=0.0)
        sq = excess * excess
        return sq[..., 0::2] + sq[..., 1::2]

    def candidates(self, points: torch.Tensor, k: int,
                   select: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segments of the ``k`` polylines nearest to points [B, Q, 2] by the bounding-box bound:
        start [B, Q, k*N, 2], vec [B, Q, k*N, 2] and valid [B, Q, k*N]; ``select`` [B, Q'] long: only for
        those points (Q' rows equal to the full result's)."""
        k = min(k, self.capacity)
        _, idx = torch.topk(self.lower_bound_sq(points, select), k, dim=-1, largest=False)   # [B, Q, k]
        return self._segments(idx)

    def grid_candidates(self, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`candidates`, ranking only the polylines listed in each point's grid cell (points outside
        the grid use its nearest border cell): the same segments wherever the point's ``k`` nearest boxes
        are among its cell's ``GRID_CANDIDATES``, at a cost independent of the number of polylines."""
        b = points.shape[0]
        cell = ((points - self.grid_origin.unsqueeze(1)) * self.grid_inv_cell.view(-1, 1, 1)).floor()
        cell = cell.clamp(0, GRID_CELLS - 1).long()
        flat = cell[..., 1] * GRID_CELLS + cell[..., 0]                                    # [B, Q]
        ids = torch.gather(self.grid_ids, 1, flat.unsqueeze(-1).expand(-1, -1, self.grid_ids.shape[-1])).long()
        rows = torch.arange(b, device=points.device).view(-1, 1, 1)
        frame = self.frame.view(b, -1, 2, 2)[rows, ids]                                  # [B, Q, K', 2, 2]
        proj = (frame * points[:, :, None, None, :]).sum(-1) - self.offset.view(b, -1, 2)[rows, ids]
        excess = (proj.abs() - self.half.view(b, -1, 2)[rows, ids]).clamp(min=0.0)
        _, j = torch.topk((excess * excess).sum(-1), min(k, ids.shape[-1]), dim=-1, largest=False)
        return self._segments(ids.gather(-1, j))

    def _segments(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segments of the polylines ``idx`` [B, Q, k]: start, vec [B, Q, k*N, 2] and valid [B, Q, k*N]."""
        rows = torch.arange(idx.shape[0], device=idx.device).view(-1, 1, 1)
        b, q = idx.shape[:2]
        return (self.start[rows, idx].reshape(b, q, -1, 2), self.vec[rows, idx].reshape(b, q, -1, 2),
                self.valid[rows, idx].reshape(b, q, -1))

    def index(self, rows: torch.Tensor) -> "PolylineSet":
        return PolylineSet(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def replace_rows(self, rows: torch.Tensor, new: "PolylineSet") -> "PolylineSet":
        """A copy whose scenes ``rows`` come from ``new`` (capacities are padded to the larger one)."""
        capacity = max(self.capacity, new.capacity)
        old, new = self.pad_to(capacity), new.pad_to(capacity)
        return PolylineSet(**{f.name: getattr(old, f.name).index_copy(0, rows, getattr(new, f.name))
                              for f in fields(self)})


@dataclass
class MapGeometry:
    """Per-scene static map tensors for the metrics, precomputed once per reset."""

    lanes: PolylineSet        # vehicle lanes (classes 0-2)
    edges: PolylineSet        # road edges (classes 4, 5)
    map_pos: torch.Tensor     # [B, P, N, 2] every polyline, by its map index (for destinations)
    map_dir: torch.Tensor     # [B, P, N, 2]
    map_valid: torch.Tensor   # [B, P, N] bool
    has_lane: torch.Tensor    # [B] bool: the scene has vehicle lanes
    boundary: torch.Tensor    # [B, 4] xmin, xmax, ymin, ymax

    @staticmethod
    def from_batch(batch: SceneBatch) -> "MapGeometry":
        """Derive the geometry of every scene of ``batch`` (on the batch's device; one host sync)."""
        pos, vec, valid = batch.map_pos, batch.map_dir, batch.map_valid
        pl_valid = valid.any(-1)
        is_lane = batch.map_type[..., list(VEHICLE_LANE_TYPES)].any(-1) & pl_valid
        is_edge = batch.map_type[..., list(ROAD_EDGE_TYPES)].any(-1) & pl_valid
        return MapGeometry(lanes=PolylineSet.select(pos, vec, valid, is_lane),
                           edges=PolylineSet.select(pos, vec, valid, is_edge), map_pos=pos, map_dir=vec,
                           map_valid=valid, has_lane=is_lane.any(-1), boundary=batch.map_boundary)

    def index(self, rows: torch.Tensor) -> "MapGeometry":
        """The geometry of scenes ``rows``."""
        return MapGeometry(**{f.name: getattr(self, f.name).index(rows) if isinstance(getattr(self, f.name),
                                                                                       PolylineSet)
                              else getattr(self, f.name)[rows] for f in fields(self)})

    def pad_to(self, lane_capacity: int, edge_capacity: int) -> "MapGeometry":
        """The same geometry with at least these many lane / road-edge slots (padding appended)."""
        return MapGeometry(lanes=self.lanes.pad_to(lane_capacity), edges=self.edges.pad_to(edge_capacity),
                           map_pos=self.map_pos, map_dir=self.map_dir, map_valid=self.map_valid,
                           has_lane=self.has_lane, boundary=self.boundary)

    def replace_rows(self, rows: torch.Tensor, new: "MapGeometry") -> "MapGeometry":
        """A copy whose scenes ``rows`` come from ``new``."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(new, f.name)
            out[f.name] = a.replace_rows(rows, b) if isinstance(a, PolylineSet) else a.index_copy(0, rows, b)
        return MapGeometry(**out)


def _polyline_obbs(pos: torch.Tensor, vec: torch.Tensor,
                   valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Oriented bounding boxes (center, unit axis, half extents [.., 2]) of polylines incl. their end points."""
    points = torch.cat([pos, pos + vec], dim=-2)                 # [B, P, 2N, 2]
    pvalid = torch.cat([valid, valid], dim=-1)
    node = torch.arange(valid.shape[-1], device=valid.device)
    first_idx = torch.where(valid, node, valid.shape[-1]).amin(-1).clamp(max=valid.shape[-1] - 1)
    last_idx = torch.where(valid, node, -1).amax(-1).clamp(min=0)
    first = torch.gather(pos, -2, first_idx[..., None, None].expand(*first_idx.shape, 1, 2)).squeeze(-2)
    last = torch.gather(pos + vec, -2, last_idx[..., None, None].expand(*last_idx.shape, 1, 2)).squeeze(-2)
    chord = last - first
    chord_len = chord.norm(dim=-1, keepdim=True)
    x_axis = torch.stack([torch.ones_like(chord[..., 0]), torch.zeros_like(chord[..., 0])], dim=-1)
    axis = torch.where(chord_len > 1e-6, chord / chord_len.clamp(min=1e-6), x_axis)
    normal = torch.stack([-axis[..., 1], axis[..., 0]], dim=-1)
    along = (points * axis.unsqueeze(-2)).sum(-1)
    across = (points * normal.unsqueeze(-2)).sum(-1)
    big = torch.finfo(pos.dtype).max
    lo_a = torch.where(pvalid, along, big).amin(-1)
    hi_a = torch.where(pvalid, along, -big).amax(-1)
    lo_n = torch.where(pvalid, across, big).amin(-1)
    hi_n = torch.where(pvalid, across, -big).amax(-1)
    any_valid = valid.any(-1)
    mid_a = torch.where(any_valid, 0.5 * (lo_a + hi_a), 0.0)
    mid_n = torch.where(any_valid, 0.5 * (lo_n + hi_n), 0.0)
    half = torch.stack([torch.where(any_valid, 0.5 * (hi_a - lo_a), 0.0),
                        torch.where(any_valid, 0.5 * (hi_n - lo_n), 0.0)], dim=-1)
    center = mid_a.unsqueeze(-1) * axis + mid_n.unsqueeze(-1) * normal
    return center, axis, half


def point_segment_distance(points: torch.Tensor, start: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """Distance from points [..., 2] to segments ``start`` -> ``start + vec`` [..., S, 2]; returns [..., S]."""
    rel = points.unsqueeze(-2) - start
    t = ((rel * vec).sum(-1) / (vec * vec).sum(-1).clamp(min=1e-12)).clamp(0.0, 1.0)
    return (rel - t.unsqueeze(-1) * vec).norm(dim=-1)


def lane_distance(points: torch.Tensor, geom: MapGeometry, k: int = LANE_CANDIDATES,
                  select: torch.Tensor | None = None) -> torch.Tensor:
    """[B, Q] distance from points [B, Q, 2] to the nearest vehicle-lane centreline (inf without lanes);
    ``select`` [B, Q'] long: only for those points ([B, Q'])."""
    start, vec, valid = geom.lanes.candidates(points, k, select)
    if select is not None:
        points = points.gather(1, select.unsqueeze(-1).expand(-1, -1, 2))
    dist = point_segment_distance(points, start, vec).masked_fill(~valid, float("inf"))
    return dist.amin(-1)


def box_touches_segments(pos: torch.Tensor, yaw: torch.Tensor, length: torch.Tensor, width: torch.Tensor,
                         start: torch.Tensor, vec: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, Q] bool: box (pos [B,Q,2], yaw/length/width [B,Q]) meets any valid segment [B, Q, S, 2].

    Segments are taken into the box frame and tested against the axis-aligned box by the separating
    axis theorem (box axes plus the segment normal); a segment inside the box counts.
    """
    c, s = torch.cos(yaw).unsqueeze(-1), torch.sin(yaw).unsqueeze(-1)
    rel = start - pos.unsqueeze(-2)
    ax = rel[..., 0] * c + rel[..., 1] * s
    ay = -rel[..., 0] * s + rel[..., 1] * c
    vx = vec[..., 0] * c + vec[..., 1] * s
    vy = -vec[..., 0] * s + vec[..., 1] * c
    bx, by = ax + vx, ay + vy
    hl, hw = (0.5 * length).unsqueeze(-1), (0.5 * width).unsqueeze(-1)
    sep = (torch.minimum(ax, bx) > hl) | (torch.maximum(ax, bx) < -hl)
    sep |= (torch.minimum(ay, by) > hw) | (torch.maximum(ay, by) < -hw)
    # segment normal n = (-vy, vx): the box projects to [-r, r], the segment to the point n . a
    sep |= (ax * -vy + ay * vx).abs() > hl * vy.abs() + hw * vx.abs()
    return (~sep & valid).any(-1)


def offroad(state: AgentState, size: torch.Tensor, agent_type: torch.Tensor, geom: MapGeometry, *,
            max_lane_distance: float = MAX_LANE_DISTANCE, agents: torch.Tensor | None = None) -> torch.Tensor:
    """[B, A] bool: valid vehicles off the road (box touches a road edge, or centre far from every lane).
    ``agents`` [B, Q] long: only these agents' flags ([B, Q], equal to their entries of the full result)."""
    edges = geom.edges.candidates(state.pos, EDGE_CANDIDATES, agents)
    far = (lane_distance(state.pos, geom, select=agents) > max_lane_distance) & geom.has_lane.unsqueeze(-1)
    pos, yaw, valid, vehicle = state.pos, state.yaw, state.valid, agent_type[..., AgentType.VEHICLE]
    if agents is not None:
        pos, yaw, size, valid, vehicle = _rows((pos, yaw, size, valid, vehicle), agents)
    on_edge = box_touches_segments(pos, yaw, size[..., 0], size[..., 1], *edges)
    return (on_edge | far) & vehicle.bool() & valid


# ----------------------------------------------------------------------------------------------------
# Traffic lights, map boundary, destinations
# ----------------------------------------------------------------------------------------------------

def red_light_violation(prev_state: AgentState, state: AgentState, tl_valid: torch.Tensor, tl_state: torch.Tensor,
                        tl_pos: torch.Tensor, agent_type: torch.Tensor, *, tl_dir: torch.Tensor | None = None,
                        lateral_tolerance: float = RED_LIGHT_LATERAL_TOLERANCE,
                        agents: torch.Tensor | None = None) -> torch.Tensor:
    """[B, A] bool: a vehicle's centre passes a STOP stop point between ``prev_state`` and ``state``.

    ``tl_valid`` [B, S], ``tl_state`` [B, S, 5] one-hot, ``tl_pos``/``tl_dir`` [B, S, 2] are the lights of
    the step entered. With ``tl_dir`` (lane direction at the stop point) the vehicle heading must be
    within 60 deg of it, so cross traffic passing near a stop point is not flagged. ``agents`` [B, Q]
    long: only these agents' flags ([B, Q]).
    """
    prev_pos, prev_yaw, prev_valid, pos, yaw, valid = (prev_state.pos, prev_state.yaw, prev_state.valid, state.pos,
                                                       state.yaw, state.valid)
    if agents is not None:
        prev_pos, prev_yaw, prev_valid, pos, yaw, valid, agent_type = _rows(
            (prev_pos, prev_yaw, prev_valid, pos, yaw, valid, agent_type), agents)
    red = tl_valid & tl_state[..., TLState.STOP].bool()                      # [B, S]
    rel_prev = tl_pos.unsqueeze(1) - prev_pos.unsqueeze(2)                   # [B, A, S, 2]
    rel_now = tl_pos.unsqueeze(1) - pos.unsqueeze(2)
    h_prev = torch.stack([torch.cos(prev_yaw), torch.sin(prev_yaw)], -1).unsqueeze(2)
    h_now = torch.stack([torch.cos(yaw), torch.sin(yaw)], -1).unsqueeze(2)
    ahead_prev = (rel_prev * h_prev).sum(-1)
    ahead_now = (rel_now * h_now).sum(-1)
    lateral = (rel_now[..., 1] * h_now[..., 0] - rel_now[..., 0] * h_now[..., 1]).abs()
    crossed = (ahead_prev > 0) & (ahead_now <= 0) & (lateral < lateral_tolerance)
    if tl_dir is not None:
        d = tl_dir.unsqueeze(1)
        cos = (d * h_now).sum(-1) / d.norm(dim=-1).clamp(min=1e-6)
        crossed &= cos > math.cos(RED_LIGHT_MAX_ANGLE)
    vehicle = agent_type[..., AgentType.VEHICLE].bool()
    return (crossed & red.unsqueeze(1)).any(-1) & vehicle & prev_valid & valid


def _rows(values: tuple[torch.Tensor, ...], agents: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Entries ``agents`` [B, Q] of per-agent tensors ``values`` [B, A, ...] -> [B, Q, ...] each."""
    rows = torch.arange(agents.shape[0], device=agents.device).unsqueeze(-1)
    return tuple(x[rows, agents] for x in values)


def outside_map(state: AgentState, boundary: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """[B, A] bool: valid agents whose centre is outside ``boundary`` [B, 4] (xmin, xmax, ymin, ymax) + margin."""
    b = boundary.unsqueeze(1)
    low, high = b[..., 0::2], b[..., 1::2]                                   # [B, 1, 2]: (x, y) minima / maxima
    if margin:
        low, high = low - margin, high + margin
    return ((state.pos < low) | (state.pos > high)).any(-1) & state.valid


def destination_reached(state: AgentState, dest: torch.Tensor, geom: MapGeometry, map_type: torch.Tensor,
                        dest_valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, A] bool: the agent reached its destination polyline ``dest`` [B, A].

    Lane destination: some node within 50 m and some node direction within 30 deg of the heading;
    road-edge destination (classes 4, 5): some node within 10 m. ``map_type`` [B, P, 11] one-hot.
    """
    target = DestinationNodes.of(dest, geom.map_pos, geom.map_dir, geom.map_valid, map_type)
    return target.reached(state, dest_valid)


@dataclass
class DestinationNodes:
    """The nodes of each agent's destination polyline, gathered once (destinations are fixed for an episode)."""

    pos: torch.Tensor       # [B, A, N, 2]
    dir: torch.Tensor       # [B, A, N, 2]
    dir_len: torch.Tensor   # [B, A, N] length of ``dir`` (at least 1e-6)
    valid: torch.Tensor     # [B, A, N]
    is_edge: torch.Tensor   # [B, A] road-edge destination (classes 4, 5)

    @staticmethod
    def of(dest: torch.Tensor, map_pos: torch.Tensor, map_dir: torch.Tensor, map_valid: torch.Tensor,
           map_type: torch.Tensor) -> "DestinationNodes":
        """The destination polylines ``dest`` [B, A] of the maps ``map_*`` [B, P, ...]."""
        rows = torch.arange(dest.shape[0], device=dest.device).unsqueeze(-1)
        direction = map_dir[rows, dest]
        return DestinationNodes(pos=map_pos[rows, dest], dir=direction, dir_len=direction.norm(dim=-1).clamp(min=1e-6),
                                valid=map_valid[rows, dest], is_edge=any_class(map_type[rows, dest], ROAD_EDGE_TYPES))

    def reached(self, state: AgentState, dest_valid: torch.Tensor | None = None) -> torch.Tensor:
        """[B, A] bool: :func:`destination_reached` for agents in ``state`` [B, A]."""
        dist = (self.pos - state.pos.unsqueeze(-2)).norm(dim=-1)
        heading = torch.stack([torch.cos(state.yaw), torch.sin(state.yaw)], -1).unsqueeze(-2)
        cos = (self.dir * heading).sum(-1) / self.dir_len
        near_lane = ((dist < DEST_LANE_DISTANCE) & self.valid).any(-1)
        aligned = ((cos > math.cos(DEST_LANE_ANGLE)) & self.valid).any(-1)
        near_edge = ((dist < DEST_EDGE_DISTANCE) & self.valid).any(-1)
        reached = torch.where(self.is_edge, near_edge, near_lane & aligned) & state.valid
        return reached if dest_valid is None else reached & dest_valid


def any_class(onehot: torch.Tensor, classes: tuple[int, ...] | list[int]) -> torch.Tensor:
    """[...] bool: the one-hot ``onehot`` [..., C] is one of ``classes`` (no index tensor from host data,
    so it can run inside a CUDA graph)."""
    out = onehot[..., classes[0]].bool()
    for c in classes[1:]:
        out = out | onehot[..., c].bool()
    return out


# ----------------------------------------------------------------------------------------------------
# Logged paths and progress
# ----------------------------------------------------------------------------------------------------

@dataclass
class LoggedPath:
    """Each agent's logged path from a start step on, as a polyline with cumulative arc length.

    Steps before the agent's first valid step repeat its first valid point and steps after its last
    valid step repeat the last one (zero-length segments), so every agent has the same point count;
    an optional straight extension along the final logged heading is appended.
    """

    points: torch.Tensor  # [B, A, K, 2]
    yaw: torch.Tensor     # [B, A, K] logged heading at each point (unwrapped)
    arc: torch.Tensor     # [B, A, K] cumulative length, arc[..., 0] = 0
    length: torch.Tensor  # [B, A] logged length (without the extension)
    valid: torch.Tensor   # [B, A] the agent has at least one valid logged step from the start step on

    @staticmethod
    def from_log(pos: torch.Tensor, yaw: torch.Tensor, valid: torch.Tensor, start: int = STEP_CURRENT,
                 extension: float = 0.0) -> "LoggedPath":
        """Paths from logged ``pos`` [B, T, A, 2], ``yaw``/``valid`` [B, T, A] (SceneBatch layout)."""
        pos, yaw, valid = pos[:, start:].transpose(1, 2), yaw[:, start:].transpose(1, 2), valid[:, start:].transpose(1, 2)
        n = valid.shape[-1]
        steps = torch.arange(n, device=valid.device).expand_as(valid)
        last_seen = torch.cummax(torch.where(valid, steps, -1), dim=-1).values
        first = torch.argmax(valid.to(torch.uint8), dim=-1, keepdim=True).expand_as(last_seen)
        src = torch.where(last_seen >= 0, last_seen, first)
        points = torch.gather(pos, -2, src.unsqueeze(-1).expand(*src.shape, 2))
        yaws = torch.gather(yaw, -1, src)
        seg = (points[..., 1:, :] - points[..., :-1, :]).norm(dim=-1)
        arc = torch.cat([torch.zeros_like(seg[..., :1]), torch.cumsum(seg, -1)], dim=-1)
        length = arc[..., -1]
        if extension > 0:
            end_dir = torch.stack([torch.cos(yaws[..., -1]), torch.sin(yaws[..., -1])], -1)
            points = torch.cat([points, (points[..., -1, :] + extension * end_dir).unsqueeze(-2)], dim=-2)
            yaws = torch.cat([yaws, yaws[..., -1:]], dim=-1)
            arc = torch.cat([arc, (length + extension).unsqueeze(-1)], dim=-1)
        return LoggedPath(points=points, yaw=yaws, arc=arc, length=length, valid=valid.any(-1))

    @staticmethod
    def from_batch(batch: SceneBatch, start: int = STEP_CURRENT, extension: float = 0.0) -> "LoggedPath":
        """Every agent's logged path of ``batch`` from ``start`` on."""
        return LoggedPath.from_log(batch.agent_pos, batch.agent_yaw, batch.agent_valid, start, extension)

    def index(self, rows: torch.Tensor) -> "LoggedPath":
        return LoggedPath(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def select_agent(self, agent: torch.Tensor) -> "LoggedPath":
        """The path of one agent per scene (``agent`` [B] long) with a singleton agent axis [B, 1, ...]."""
        rows = torch.arange(agent.shape[0], device=agent.device)
        return LoggedPath(**{f.name: getattr(self, f.name)[rows, agent].unsqueeze(1) for f in fields(self)})

    def interpolate(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Position [B, A, (Q,) 2] and heading [B, A, (Q)] at arc lengths ``s`` [B, A] or [B, A, Q] (clamped)."""
        single = s.ndim == self.arc.ndim - 1
        q = s.unsqueeze(-1) if single else s
        k = self.arc.shape[-1]
        i = torch.searchsorted(self.arc.contiguous(), q.contiguous(), right=True)
        i = (i - 1).clamp(0, max(k - 2, 0))
        j = (i + 1).clamp(max=k - 1)
        a0, a1 = torch.gather(self.arc, -1, i), torch.gather(self.arc, -1, j)
        w = ((q - a0) / (a1 - a0).clamp(min=1e-6)).clamp(0.0, 1.0)
        p0 = torch.gather(self.points, -2, i.unsqueeze(-1).expand(*i.shape, 2))
        p1 = torch.gather(self.points, -2, j.unsqueeze(-1).expand(*j.shape, 2))
        y0, y1 = torch.gather(self.yaw, -1, i), torch.gather(self.yaw, -1, j)
        pos, yaw = p0 + w.unsqueeze(-1) * (p1 - p0), y0 + w * (y1 - y0)
        return (pos.squeeze(-2), yaw.squeeze(-1)) if single else (pos, yaw)

    def window(self, s: torch.Tensor, n_points: int, spacing: float) -> "LoggedPath":
        """The path ahead of arc length ``s`` [B, A], resampled at ``n_points`` points ``spacing`` m apart.

        The window's arc length is measured from ``s``; positions beyond the path's end are clamped to it.
        """
        offsets = spacing * torch.arange(n_points, device=s.device, dtype=s.dtype)
        points, yaw = self.interpolate(s.unsqueeze(-1) + offsets)
        arc = offsets.expand(*s.shape, n_points)
        return LoggedPath(points=points, yaw=yaw, arc=arc, length=arc[..., -1], valid=self.valid)

    def segments(self) -> "PathSegments":
        """The path's segments in the frame of its first point (what :meth:`project` needs; compute once for
        a path that many projections use)."""
        origin = self.points[..., :1, :]                                      # [B, A, 1, 2]
        start = self.points[..., :-1, :] - origin                             # [B, A, K-1, 2]
        vec = self.points[..., 1:, :] - self.points[..., :-1, :]
        len2 = (vec * vec).sum(-1).unsqueeze(-2)                              # [B, A, 1, K-1]
        return PathSegments(origin=origin, start=start, vec=vec, len2=len2,
                            start_dot_vec=(start * vec).sum(-1).unsqueeze(-2),
                            start_sq=(start * start).sum(-1).unsqueeze(-2), seg_len=len2.squeeze(-2).sqrt(),
                            arc0=self.arc[..., :-1])

    def project(self, points: torch.Tensor,
                segments: "PathSegments | None" = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project points [B, A, Q, 2] onto each agent's path (``segments``: :meth:`segments` of the path,
        made here when not given).

        Returns (arc length of the nearest path point [B, A, Q], distance to it [B, A, Q], index of its
        segment [B, A, Q]). The nearest segment is found with batched matmuls in a frame centred on
        the path's first point; the returned distance is then computed exactly for that segment.
        """
        g = self.segments() if segments is None else segments
        p = points - g.origin
        rel_v = p @ g.vec.transpose(-1, -2) - g.start_dot_vec                # (p - s) . v
        t = (rel_v / g.len2.clamp(min=1e-12)).clamp(0.0, 1.0)
        rel2 = ((p * p).sum(-1, keepdim=True) - 2.0 * (p @ g.start.transpose(-1, -2)) + g.start_sq)  # |p - s|^2
        seg = (rel2 - 2.0 * t * rel_v + t * t * g.len2).argmin(-1)            # [B, A, Q]
        t_best = torch.gather(t, -1, seg.unsqueeze(-1)).squeeze(-1)
        seg_xy = seg.unsqueeze(-1).expand(*seg.shape, 2)
        foot = (torch.gather(g.start, -2, seg_xy) + t_best.unsqueeze(-1) * torch.gather(g.vec, -2, seg_xy))
        dist = (p - foot).norm(dim=-1)
        arc0 = torch.gather(g.arc0, -1, seg)
        seg_len = torch.gather(g.seg_len, -1, seg)
        return arc0 + t_best * seg_len, dist, seg


@dataclass
class PathSegments:
    """A ``LoggedPath``'s segments in the frame of its first point (see :meth:`LoggedPath.segments`)."""

    origin: torch.Tensor          # [B, A, 1, 2] first path point
    start: torch.Tensor           # [B, A, K-1, 2] segment starts relative to ``origin``
    vec: torch.Tensor             # [B, A, K-1, 2] segment vectors
    len2: torch.Tensor            # [B, A, 1, K-1] squared segment lengths
    start_dot_vec: torch.Tensor   # [B, A, 1, K-1]
    start_sq: torch.Tensor        # [B, A, 1, K-1] squared norm of ``start``
    seg_len: torch.Tensor         # [B, A, K-1] segment lengths
    arc0: torch.Tensor            # [B, A, K-1] arc length at each segment start


def path_progress(pos: torch.Tensor, path: LoggedPath, segments: PathSegments | None = None) -> torch.Tensor:
    """[B, A] arc length (m) along each agent's path of the path point nearest to ``pos`` [B, A, 2]
    (``segments``: the path's :meth:`LoggedPath.segments`, when kept)."""
    arc, _, _ = path.project(pos.unsqueeze(-2), segments)
    return arc.squeeze(-1)


# ----------------------------------------------------------------------------------------------------
# Displacement errors
# ----------------------------------------------------------------------------------------------------

def displacement(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean distance [..., T, A] between predicted and target positions [..., T, A, 2]."""
    return (pred - target).norm(dim=-1)


def ade(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, A] average displacement over steps where ``valid`` [B, T, A] (0 for never-valid agents)."""
    err = displacement(pred, target) * valid
    return err.sum(-2) / valid.sum(-2).clamp(min=1)


def fde(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, A] displacement at each agent's last valid step (0 for never-valid agents)."""
    t = valid.shape[-2]
    steps = torch.arange(t, device=valid.device).view(1, t, 1)
    last = torch.where(valid, steps, -1).amax(-2)                                  # [B, A]
    err = displacement(pred, target)
    at_last = torch.gather(err, -2, last.clamp(min=0).unsqueeze(-2)).squeeze(-2)
    return torch.where(last >= 0, at_last, torch.zeros_like(at_last))
