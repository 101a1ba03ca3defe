"""World (scene frame, metres, y up) to screen (pixels, y down) transforms of the top-down view."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """Similarity transform: ``center`` (world m) lands on ``anchor`` (screen px), then a visual rotation.

    ``angle_deg`` rotates the picture counter-clockwise (pygame's convention); for a heading-up view
    it is ``90 - degrees(ego_yaw)``, for a north-up view 0.
    """

    center: tuple[float, float]
    scale: float
    angle_deg: float
    anchor: tuple[float, float]

    def world_to_screen(self, xy: np.ndarray) -> np.ndarray:
        """Map world points ``[..., 2]`` to screen pixels ``[..., 2]`` (float, x right, y down)."""
        xy = np.asarray(xy, dtype=np.float64)
        u = (xy[..., 0] - self.center[0]) * self.scale
        v = -(xy[..., 1] - self.center[1]) * self.scale
        a = math.radians(self.angle_deg)
        ca, sa = math.cos(a), math.sin(a)
        return np.stack([self.anchor[0] + u * ca + v * sa, self.anchor[1] - u * sa + v * ca], axis=-1)


def heading_up_angle(yaw: float) -> float:
    """The camera angle (degrees) that turns a heading ``yaw`` (rad, world) to point up on screen."""
    return 90.0 - math.degrees(yaw)


def fit_scale(bounds: np.ndarray, width: int, height: int, margin_px: int) -> float:
    """Largest px/m at which the box ``[xmin, xmax, ymin, ymax]`` fits the screen inside ``margin_px``."""
    span_x = max(float(bounds[1] - bounds[0]), 1.0)
    span_y = max(float(bounds[3] - bounds[2]), 1.0)
    return min((width - 2 * margin_px) / span_x, (height - 2 * margin_px) / span_y)
