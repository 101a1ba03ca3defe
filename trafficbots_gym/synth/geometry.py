"""Planar polyline helpers: arc-length resampling, lateral offsets and rounded corners."""
from __future__ import annotations

import numpy as np


def polyline_length(points: np.ndarray) -> float:
    """Total length (m) of a [P, 2] polyline."""
    return float(np.linalg.norm(np.diff(points, axis=0), axis=-1).sum()) if len(points) > 1 else 0.0


def resample(points: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Points at (nearly) equal arc-length ``spacing`` from the first to the last point, both kept."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=-1)
    keep = np.concatenate([[True], seg > 1e-6])
    points, cum = points[keep], np.concatenate([[0.0], np.cumsum(seg[seg > 1e-6])])
    if len(points) < 2:
        return points
    n = max(2, int(round(cum[-1] / spacing)) + 1)
    s = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(s, cum, points[:, k]) for k in range(points.shape[1])], axis=-1)


def offset(points: np.ndarray, distance: float) -> np.ndarray:
    """The polyline shifted sideways by ``distance`` (m, positive = left of the travel direction).

    Vertex normals are the mitred average of the adjacent segment normals, so parallel offsets of
    a lane centreline give its boundaries.
    """
    d = np.diff(points, axis=0)
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    n_seg = np.stack([-d[:, 1], d[:, 0]], axis=-1)
    n_vtx = np.concatenate([n_seg[:1], n_seg[:-1] + n_seg[1:], n_seg[-1:]], axis=0)
    n_vtx /= np.maximum(np.linalg.norm(n_vtx, axis=-1, keepdims=True), 1e-9)
    # Mitre: scale so the offset is ``distance`` from both adjacent segments (capped at sharp bends).
    cos_half = np.ones(len(points))
    cos_half[1:-1] = np.clip(np.sum(n_vtx[1:-1] * n_seg[:-1], axis=-1), 0.5, 1.0)
    return points + n_vtx * (distance / cos_half)[:, None]


def rounded_corner(p0: np.ndarray, u0: np.ndarray, p1: np.ndarray, u1: np.ndarray,
                   max_reach: float = 40.0) -> np.ndarray:
    """Curb from ``p0`` to ``p1`` for two roads leaving a junction along unit directions ``u0``, ``u1``.

    A quadratic Bezier whose control point is where the two curb lines meet behind both points
    (a rounded street corner); a straight segment when the lines are parallel or meet elsewhere.
    """
    a = np.stack([u0, -u1], axis=-1)
    if abs(np.linalg.det(a)) > 1e-3:
        s, t = np.linalg.solve(a, p1 - p0)
        if -max_reach < s <= 0.0 and -max_reach < t <= 0.0:
            q = p0 + s * u0
            w = np.linspace(0.0, 1.0, 16)[:, None]
            return (1 - w) ** 2 * p0 + 2 * w * (1 - w) * q + w ** 2 * p1
    return np.stack([p0, p1])
