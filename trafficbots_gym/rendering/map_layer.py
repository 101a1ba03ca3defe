"""The static map layer: polylines rasterised once per scene into lazily drawn, cached tiles.

A map raster at a fixed px/m covers the whole (unbounded) plane in ``tile_px`` square tiles; a tile is
drawn the first time a frame needs it and reused afterwards, so a frame only composes a few cached
tiles. Raster pixel coordinates: ``((x - x0) * scale, (y0 - y) * scale)``, y down.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pygame

from trafficbots_gym.data.constants import MapType
from trafficbots_gym.rendering import colors

LANE_WIDTH_M = 3.6
BIKE_LANE_WIDTH_M = 1.6
DASH_M = 3.0
DOUBLE_LINE_GAP_M = 0.3
TILE_PX = 256


@dataclass(frozen=True)
class _Polyline:
    points: np.ndarray  # [K, 2] raster px (float), the nodes plus the end point pos + dir of the last node
    kind: MapType
    bbox: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (raster px, padded by the stroke)


class MapLayer:
    """Map polylines of one scene rasterised at ``scale`` px/m, drawn on demand tile by tile."""

    def __init__(self, valid: np.ndarray, type_onehot: np.ndarray, pos: np.ndarray, dir_: np.ndarray,
                 scale: float, tile_px: int = TILE_PX) -> None:
        """``valid [P, N]``, ``type_onehot [P, 11]``, ``pos``/``dir_ [P, N, 2]`` of the scene frame (metres)."""
        if scale <= 0:
            raise ValueError(f"map raster scale must be positive, got {scale}")
        self.scale = float(scale)
        self.tile_px = int(tile_px)
        node_xy = pos[valid]
        self.origin = ((float(node_xy[:, 0].min()), float(node_xy[:, 1].max())) if len(node_xy)
                       else (0.0, 0.0))
        self._polylines = _build_polylines(valid, type_onehot, pos, dir_, self)
        boxes = np.array([p.bbox for p in self._polylines], dtype=np.float64).reshape(-1, 4)
        self._boxes = boxes
        self._tiles: dict[tuple[int, int], pygame.Surface | None] = {}
        self._scratch: dict[tuple[int, int], pygame.Surface] = {}

    def raster_of(self, xy: np.ndarray) -> np.ndarray:
        """World points ``[..., 2]`` (m) to raster pixels ``[..., 2]`` (float)."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] - self.origin[0]) * self.scale,
                         (self.origin[1] - xy[..., 1]) * self.scale], axis=-1)

    def world_of(self, px: np.ndarray) -> np.ndarray:
        """Raster pixels ``[..., 2]`` to world points ``[..., 2]`` (m)."""
        px = np.asarray(px, dtype=np.float64)
        return np.stack([self.origin[0] + px[..., 0] / self.scale,
                         self.origin[1] - px[..., 1] / self.scale], axis=-1)

    def window(self, left: int, top: int, width: int, height: int) -> pygame.Surface:
        """The raster rectangle at ``(left, top)`` of size ``width x height``.

        The returned surface is reused by the next call of the same size: blit or copy it first.
        """
        out = self._scratch.get((width, height))
        if out is None:
            out = self._scratch[(width, height)] = _palette_surface(width, height)
        out.fill(colors.BACKGROUND)
        t = self.tile_px
        for ty in range(math.floor(top / t), math.floor((top + height - 1) / t) + 1):
            for tx in range(math.floor(left / t), math.floor((left + width - 1) / t) + 1):
                tile = self.tile(tx, ty)
                if tile is not None:
                    out.blit(tile, (tx * t - left, ty * t - top))
        return out

    def tile(self, tx: int, ty: int) -> pygame.Surface | None:
        """The cached tile ``(tx, ty)``; ``None`` when no polyline touches it (plain background)."""
        key = (tx, ty)
        if key not in self._tiles:
            self._tiles[key] = self._draw_tile(tx, ty)
        return self._tiles[key]

    def _draw_tile(self, tx: int, ty: int) -> pygame.Surface | None:
        t = self.tile_px
        x0, y0 = tx * t, ty * t
        b = self._boxes
        hit = np.flatnonzero((b[:, 0] < x0 + t) & (b[:, 2] >= x0) & (b[:, 1] < y0 + t) & (b[:, 3] >= y0))
        if len(hit) == 0:
            return None
        surf = _palette_surface(t, t)
        surf.fill(colors.BACKGROUND)
        offset = np.array([x0, y0], dtype=np.float64)
        for kinds, draw in _PASSES:
            for i in hit:
                line = self._polylines[i]
                if line.kind in kinds:
                    draw(surf, line.points - offset, line.kind, self.scale)
        return surf


PALETTE: tuple[colors.RGB, ...] = (colors.BACKGROUND, colors.ROAD_SURFACE, colors.BIKE_SURFACE,
                                   *colors.MAP_COLORS.values())
"""Every colour of the map layer; tiles are 8-bit palette surfaces (rotating them is about twice as fast)."""


def _palette_surface(width: int, height: int) -> pygame.Surface:
    surf = pygame.Surface((width, height), depth=8)
    surf.set_palette(list(PALETTE) + [colors.BACKGROUND] * (256 - len(PALETTE)))
    return surf


def _build_polylines(valid: np.ndarray, type_onehot: np.ndarray, pos: np.ndarray, dir_: np.ndarray,
                     layer: MapLayer) -> list[_Polyline]:
    pad = 0.5 * LANE_WIDTH_M * layer.scale + 2.0
    out = []
    for p in np.flatnonzero(valid.any(axis=1) & type_onehot.any(axis=1)):
        idx = np.flatnonzero(valid[p])
        world = np.concatenate([pos[p, idx], pos[p, idx[-1:]] + dir_[p, idx[-1:]]], axis=0)
        pts = layer.raster_of(world)
        lo, hi = pts.min(axis=0) - pad, pts.max(axis=0) + pad
        out.append(_Polyline(pts, MapType(int(np.argmax(type_onehot[p]))), (lo[0], lo[1], hi[0], hi[1])))
    return out


def _stroke(width_m: float, scale: float, min_px: int) -> int:
    return max(min_px, int(round(width_m * scale)))


def _normals(pts: np.ndarray) -> np.ndarray:
    """Unit left normals ``[K, 2]`` of a polyline (central differences)."""
    tangent = np.gradient(pts, axis=0) if len(pts) > 1 else np.array([[1.0, 0.0]])
    norm = np.linalg.norm(tangent, axis=1, keepdims=True)
    tangent = tangent / np.maximum(norm, 1e-9)
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _draw_band(surf: pygame.Surface, pts: np.ndarray, kind: MapType, scale: float) -> None:
    width = (BIKE_LANE_WIDTH_M if kind == MapType.BIKE_LANE else LANE_WIDTH_M) * scale
    color = colors.BIKE_SURFACE if kind == MapType.BIKE_LANE else colors.ROAD_SURFACE
    offset = _normals(pts) * (0.5 * width)
    outline = np.concatenate([pts + offset, (pts - offset)[::-1]], axis=0)
    pygame.draw.polygon(surf, color, outline.tolist())
    for end in (pts[0], pts[-1]):
        pygame.draw.circle(surf, color, end.tolist(), 0.5 * width)


def _draw_solid(surf: pygame.Surface, pts: np.ndarray, kind: MapType, scale: float) -> None:
    widths = {MapType.ROAD_EDGE_BOUNDARY: (0.35, 2), MapType.ROAD_EDGE_MEDIAN: (0.35, 2),
              MapType.SPEED_BUMP: (0.5, 2), MapType.CROSSWALK: (0.5, 2)}
    width_m, min_px = widths.get(kind, (0.15, 1))
    pygame.draw.lines(surf, colors.MAP_COLORS[kind], False, pts.tolist(), _stroke(width_m, scale, min_px))


def _draw_broken(surf: pygame.Surface, pts: np.ndarray, kind: MapType, scale: float) -> None:
    seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    start = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
    on = (np.floor(start / (DASH_M * scale)) % 2) == 0
    width = _stroke(0.15, scale, 1)
    k = 0
    while k < len(on):
        if not on[k]:
            k += 1
            continue
        end = k
        while end < len(on) and on[end]:
            end += 1
        pygame.draw.lines(surf, colors.MAP_COLORS[kind], False, pts[k:end + 1].tolist(), width)
        k = end


def _draw_double(surf: pygame.Surface, pts: np.ndarray, kind: MapType, scale: float) -> None:
    offset = _normals(pts) * (0.5 * DOUBLE_LINE_GAP_M * scale)
    width = _stroke(0.12, scale, 1)
    for side in (pts + offset, pts - offset):
        pygame.draw.lines(surf, colors.MAP_COLORS[kind], False, side.tolist(), width)


_Draw = Callable[[pygame.Surface, np.ndarray, MapType, float], None]
_LANES = frozenset({MapType.FREEWAY, MapType.SURFACE_STREET, MapType.STOP_SIGN, MapType.BIKE_LANE})
_PASSES: tuple[tuple[frozenset[MapType], _Draw], ...] = (
    (_LANES, _draw_band),
    (frozenset({MapType.CROSSWALK, MapType.SPEED_BUMP}), _draw_solid),
    (_LANES, _draw_solid),
    (frozenset({MapType.BROKEN}), _draw_broken),
    (frozenset({MapType.SOLID_SINGLE}), _draw_solid),
    (frozenset({MapType.DOUBLE}), _draw_double),
    (frozenset({MapType.ROAD_EDGE_BOUNDARY, MapType.ROAD_EDGE_MEDIAN}), _draw_solid),
)
"""Draw order: road surface, crosswalks and bumps, lane centrelines, markings, road edges."""
