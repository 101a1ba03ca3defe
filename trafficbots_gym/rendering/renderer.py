"""Top-down pygame renderer of a closed-loop scene: map, traffic lights, agents, ego trail/goal and HUD.

``rgb_array`` frames are drawn on off-screen surfaces and never need a display; ``human`` opens a
window (with SDL's dummy video driver when the machine has no display) and keeps it responsive.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402

from trafficbots_gym.data.batch import SceneBatch  # noqa: E402
from trafficbots_gym.data.constants import AgentRole, AgentType, TLState  # noqa: E402
from trafficbots_gym.rendering import colors  # noqa: E402
from trafficbots_gym.rendering.camera import Camera, fit_scale, heading_up_angle  # noqa: E402
from trafficbots_gym.rendering.hud import draw_panel, draw_scale_bar, format_value  # noqa: E402
from trafficbots_gym.rendering.map_layer import MapLayer  # noqa: E402
from trafficbots_gym.simulation.state import AgentState  # noqa: E402

CameraMode = Literal["ego", "scene"]
RenderMode = Literal["rgb_array", "human"]
CAMERA_MODES: tuple[str, ...] = ("ego", "scene")
RENDER_MODES: tuple[str, ...] = ("rgb_array", "human")
SCENE_MARGIN_PX = 16
MIN_BOX_PX = 3.0
MIN_DETAILED_BOX_PX = 8.0
"""Boxes shorter than this (px) get no heading mark or outline: they would hide the fill colour."""
TL_BAR_M = 3.0
TL_RADIUS_M = 1.0


@dataclass(frozen=True)
class _SceneView:
    """The numpy arrays of one batch row that frames need (all on CPU)."""

    agent_type: np.ndarray   # [A] int, -1 for padding slots
    agent_role: np.ndarray   # [A] int lowest set role bit, -1 for none
    agent_size: np.ndarray   # [A, 2] length, width (m)
    tl_valid: np.ndarray     # [T, S] bool
    tl_state: np.ndarray     # [T, S] int TLState
    tl_pos: np.ndarray       # [T, S, 2]
    tl_dir: np.ndarray       # [T, S, 2]
    bounds: np.ndarray       # [4] xmin, xmax, ymin, ymax (m)


class TopDownRenderer:
    """Bird's-eye view of one scene of a ``SceneBatch``.

    ``camera="ego"`` follows the ego at ``px_per_m`` (ego heading up, or north up with
    ``heading_up=False``); ``camera="scene"`` frames the whole map, north up. Call :meth:`set_scene`
    once per episode, then :meth:`render` once per step.
    """

    def __init__(self, width: int = 800, height: int = 800, px_per_m: float = 5.0,
                 camera: CameraMode = "ego", render_mode: RenderMode = "rgb_array", fps: int = 10,
                 heading_up: bool = True) -> None:
        if camera not in CAMERA_MODES:
            raise ValueError(f"camera must be one of {CAMERA_MODES}, got {camera!r}")
        if render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
        if width < 16 or height < 16:
            raise ValueError(f"frame size must be at least 16x16 px, got {width}x{height}")
        if px_per_m <= 0 or fps <= 0:
            raise ValueError(f"px_per_m and fps must be positive, got {px_per_m} and {fps}")
        self.width, self.height = int(width), int(height)
        self.px_per_m = float(px_per_m)
        self.camera_mode: CameraMode = camera
        self.render_mode: RenderMode = render_mode
        self.fps = int(fps)
        self.heading_up = bool(heading_up)
        self.camera: Camera | None = None
        self._scene: _SceneView | None = None
        self._layer: MapLayer | None = None
        self._scene_background: pygame.Surface | None = None
        self._canvas = pygame.Surface((self.width, self.height))
        self._window: pygame.Surface | None = None
        self._clock: pygame.time.Clock | None = None
        self._window_closed = False
        self._text_px = max(12, self.height // 36)

    # ------------------------------------------------------------------ scene
    def set_scene(self, batch: SceneBatch, row: int) -> None:
        """Take scene ``row`` of ``batch`` and rasterise its static map layer (cached for all frames)."""
        if not 0 <= row < batch.batch_size:
            raise IndexError(f"scene row {row} out of range for a batch of {batch.batch_size}")
        view = _scene_view(batch, row)
        scale = (fit_scale(view.bounds, self.width, self.height, SCENE_MARGIN_PX)
                 if self.camera_mode == "scene" else self.px_per_m)
        self._scene = view
        self._layer = MapLayer(batch.map_valid[row].cpu().numpy(), batch.map_type[row].cpu().numpy(),
                               batch.map_pos[row].cpu().numpy().astype(np.float64),
                               batch.map_dir[row].cpu().numpy().astype(np.float64), scale)
        self.camera = None
        self._scene_background = None
        if self.camera_mode == "scene":
            center = np.array([(view.bounds[0] + view.bounds[1]) / 2, (view.bounds[2] + view.bounds[3]) / 2])
            self.camera = self._north_up_camera(center)
            self._scene_background = self._north_up_background(self.camera).copy()

    # ----------------------------------------------------------------- frames
    def render(self, state: AgentState, row: int, *, step: int, ego_index: int,
               trail: np.ndarray | None = None, goal: np.ndarray | None = None,
               hud: dict[str, float | str] | None = None) -> np.ndarray | None:
        """Draw agents of ``state`` row ``row`` at ``step``; an ``[H, W, 3]`` uint8 frame or ``None`` (human).

        ``trail`` is the ego's past xy ``[K, 2]`` (m), ``goal`` an xy (m); ``hud`` adds text lines.
        Traffic lights show the scene's state at ``min(step, T - 1)``.
        """
        if self._scene is None or self._layer is None:
            raise RuntimeError("TopDownRenderer.render called before set_scene")
        valid, pos, yaw, spd = _state_row(state, row)
        if not 0 <= ego_index < len(valid):
            raise IndexError(f"ego_index {ego_index} out of range for {len(valid)} agents")
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        trail_xy = _points(trail, "trail")
        goal_xy = None if goal is None else _points(np.asarray(goal).reshape(1, 2), "goal")[0]

        surf = self._canvas
        self._draw_background(surf, bool(valid[ego_index]), pos[ego_index], float(yaw[ego_index]))
        cam = self.camera
        assert cam is not None
        self._draw_traffic_lights(surf, cam, min(step, self._scene.tl_valid.shape[0] - 1))
        if goal_xy is not None and valid[ego_index]:
            self._draw_goal(surf, cam, goal_xy, pos[ego_index])
        if trail_xy is not None and len(trail_xy) >= 2:
            width = max(2, int(round(0.4 * cam.scale)))
            pygame.draw.lines(surf, colors.EGO_TRAIL, False, cam.world_to_screen(trail_xy).tolist(), width)
        self._draw_agents(surf, cam, valid, pos, yaw, ego_index)
        lines = [f"step {step}", f"ego speed {spd[ego_index]:.1f} m/s" if valid[ego_index] else "ego invalid"]
        lines += [f"{key}: {format_value(value)}" for key, value in (hud or {}).items()]
        draw_panel(surf, lines, (self._text_px // 2, self._text_px // 2), self._text_px)
        draw_scale_bar(surf, cam.scale, self._text_px)

        if self.render_mode == "human":
            self._show(surf)
            return None
        return np.frombuffer(pygame.image.tobytes(surf, "RGB"), dtype=np.uint8).reshape(
            self.height, self.width, 3).copy()

    def world_to_screen(self, xy: np.ndarray) -> np.ndarray:
        """Screen pixels (x right, y down) of world points ``[..., 2]`` under the last frame's camera."""
        if self.camera is None:
            raise RuntimeError("no camera yet: call set_scene (and render for the ego camera) first")
        return self.camera.world_to_screen(xy)

    def close(self) -> None:
        """Close the window (human mode) and drop the cached map layer."""
        if self._window is not None:
            pygame.display.quit()
        self._window = None
        self._clock = None
        self._layer = None
        self._scene = None
        self._scene_background = None

    # ------------------------------------------------------------ internals
    def _north_up_camera(self, center_xy: np.ndarray) -> Camera:
        assert self._layer is not None
        center_px = np.round(self._layer.raster_of(center_xy))
        center = self._layer.world_of(center_px)
        return Camera((float(center[0]), float(center[1])), self._layer.scale, 0.0,
                      (self.width // 2, self.height // 2))

    def _north_up_background(self, cam: Camera) -> pygame.Surface:
        assert self._layer is not None
        cx, cy = np.round(self._layer.raster_of(np.array(cam.center))).astype(int)
        return self._layer.window(int(cx) - self.width // 2, int(cy) - self.height // 2, self.width, self.height)

    def _draw_background(self, surf: pygame.Surface, ego_valid: bool, ego_pos: np.ndarray, ego_yaw: float) -> None:
        assert self._layer is not None
        if self.camera_mode == "scene":
            assert self._scene_background is not None
            surf.blit(self._scene_background, (0, 0))
            return
        if ego_valid or self.camera is None:
            anchor_xy = ego_pos if ego_valid else _bounds_center(self._scene.bounds)  # type: ignore[union-attr]
            cam = self._north_up_camera(anchor_xy)
            if self.heading_up and ego_valid:
                cam = Camera(cam.center, cam.scale, heading_up_angle(ego_yaw), cam.anchor)
            self.camera = cam
        cam = self.camera
        if cam.angle_deg == 0.0:
            surf.blit(self._north_up_background(cam), (0, 0))
            return
        radius = int(math.ceil(math.hypot(self.width, self.height) / 2)) + 2
        cx, cy = np.round(self._layer.raster_of(np.array(cam.center))).astype(int)
        window = self._layer.window(int(cx) - radius, int(cy) - radius, 2 * radius, 2 * radius)
        rotated = pygame.transform.rotate(window, cam.angle_deg)
        surf.blit(rotated, (cam.anchor[0] - rotated.get_width() / 2, cam.anchor[1] - rotated.get_height() / 2))

    def _draw_traffic_lights(self, surf: pygame.Surface, cam: Camera, t: int) -> None:
        scene = self._scene
        assert scene is not None
        idx = np.flatnonzero(scene.tl_valid[t])
        if len(idx) == 0:
            return
        pos, direction = scene.tl_pos[t, idx].astype(np.float64), scene.tl_dir[t, idx].astype(np.float64)
        unit = direction / np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)
        normal = np.stack([-unit[:, 1], unit[:, 0]], axis=1) * (TL_BAR_M / 2)
        bar = cam.world_to_screen(np.stack([pos - normal, pos + normal], axis=1))
        center = cam.world_to_screen(pos)
        bar_px = max(2, int(round(0.5 * cam.scale)))
        radius = max(3.0, TL_RADIUS_M * cam.scale)
        for k, i in enumerate(idx):
            color = colors.TL_COLORS[TLState(int(scene.tl_state[t, i]))]
            pygame.draw.line(surf, color, bar[k, 0].tolist(), bar[k, 1].tolist(), bar_px)
            pygame.draw.circle(surf, color, center[k].tolist(), radius)
            pygame.draw.circle(surf, colors.AGENT_OUTLINE, center[k].tolist(), radius, 1)

    def _draw_goal(self, surf: pygame.Surface, cam: Camera, goal: np.ndarray, ego_pos: np.ndarray) -> None:
        g, e = cam.world_to_screen(goal), cam.world_to_screen(ego_pos)
        pygame.draw.line(surf, colors.GOAL, e.tolist(), g.tolist(), 1)
        radius = max(6.0, 1.5 * cam.scale)
        pygame.draw.circle(surf, colors.GOAL, g.tolist(), radius, 2)
        for d in ((radius, 0.0), (0.0, radius)):
            pygame.draw.line(surf, colors.GOAL, (g[0] - d[0], g[1] - d[1]), (g[0] + d[0], g[1] + d[1]), 2)

    def _draw_agents(self, surf: pygame.Surface, cam: Camera, valid: np.ndarray, pos: np.ndarray,
                     yaw: np.ndarray, ego_index: int) -> None:
        scene = self._scene
        assert scene is not None
        size = np.maximum(scene.agent_size, MIN_BOX_PX / cam.scale)
        box, mark = _box_outlines(pos, yaw, size)
        box_px, mark_px = cam.world_to_screen(box), cam.world_to_screen(mark)
        detailed = size[:, 0] * cam.scale >= MIN_DETAILED_BOX_PX
        for i in np.flatnonzero(valid):
            if i == ego_index:
                continue
            agent_type = AgentType(scene.agent_type[i]) if scene.agent_type[i] >= 0 else AgentType.VEHICLE
            role = int(scene.agent_role[i])
            highlight = colors.ROLE_COLORS[AgentRole(role)] if role >= 0 else None
            _draw_agent(surf, box_px[i], mark_px[i], bool(detailed[i]), colors.AGENT_TYPE_COLORS[agent_type],
                        highlight)
        if valid[ego_index]:
            _draw_agent(surf, box_px[ego_index], mark_px[ego_index], bool(detailed[ego_index]), colors.EGO,
                        colors.EGO_OUTLINE)

    def _show(self, surf: pygame.Surface) -> None:
        if self._window_closed:
            return
        if self._window is None:
            _use_dummy_video_driver_without_display()
            pygame.display.init()
            self._window = pygame.display.set_mode((self.width, self.height))
            pygame.display.set_caption("TrafficBots")
            self._clock = pygame.time.Clock()
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                pygame.display.quit()
                self._window, self._window_closed = None, True
                return
        self._window.blit(surf, (0, 0))
        pygame.display.flip()
        assert self._clock is not None
        self._clock.tick(self.fps)


def _scene_view(batch: SceneBatch, row: int) -> _SceneView:
    agent_type = batch.agent_type[row].cpu().numpy()
    role = batch.agent_role[row].cpu().numpy()
    tl_state = batch.tl_state[row].cpu().numpy()
    bounds = batch.map_boundary[row].cpu().numpy().astype(np.float64)
    if not batch.map_valid[row].any() or not (bounds[1] > bounds[0] and bounds[3] > bounds[2]):
        xy = batch.agent_pos[row][batch.agent_valid[row]].cpu().numpy()
        bounds = (np.array([xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()]) if len(xy)
                  else np.array([-50.0, 50.0, -50.0, 50.0]))
    return _SceneView(
        agent_type=np.where(agent_type.any(-1), agent_type.argmax(-1), -1),
        agent_role=np.where(role.any(-1), role.argmax(-1), -1),
        agent_size=batch.agent_size[row, :, :2].cpu().numpy().astype(np.float64),
        tl_valid=batch.tl_valid[row].cpu().numpy(),
        tl_state=np.where(tl_state.any(-1), tl_state.argmax(-1), int(TLState.UNKNOWN)),
        tl_pos=batch.tl_pos[row].cpu().numpy(),
        tl_dir=batch.tl_dir[row].cpu().numpy(),
        bounds=bounds,
    )


def _state_row(state: AgentState, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_rows = int(state.valid.shape[0])
    if not 0 <= row < n_rows:
        raise IndexError(f"state row {row} out of range for a batch of {n_rows}")
    return (state.valid[row].detach().cpu().numpy().astype(bool),
            state.pos[row].detach().cpu().numpy().astype(np.float64),
            state.yaw[row].detach().cpu().numpy().astype(np.float64),
            state.spd[row].detach().cpu().numpy().astype(np.float64))


def _points(xy: np.ndarray | None, name: str) -> np.ndarray | None:
    if xy is None:
        return None
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be xy points of shape [K, 2], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite coordinates")
    return arr


def _bounds_center(bounds: np.ndarray) -> np.ndarray:
    return np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2])


def _box_outlines(pos: np.ndarray, yaw: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World corners ``[A, 4, 2]`` of the oriented boxes and of their heading triangles ``[A, 3, 2]``.

    The triangle fills the front of the box, so the box centre keeps the fill colour.
    """
    half_l, half_w = size[:, 0] / 2, size[:, 1] / 2
    depth = np.minimum(0.6 * half_l, 0.8 * half_w)
    local_box = np.stack([np.stack([half_l, half_w], -1), np.stack([half_l, -half_w], -1),
                          np.stack([-half_l, -half_w], -1), np.stack([-half_l, half_w], -1)], axis=1)
    zeros = np.zeros_like(half_l)
    local_mark = np.stack([np.stack([half_l, zeros], -1), np.stack([half_l - depth, -0.7 * half_w], -1),
                           np.stack([half_l - depth, 0.7 * half_w], -1)], axis=1)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]

    def to_world(local: np.ndarray) -> np.ndarray:
        x, y = local[..., 0], local[..., 1]
        return np.stack([c * x - s * y, s * x + c * y], axis=-1) + pos[:, None, :]

    return to_world(local_box), to_world(local_mark)


def _draw_agent(surf: pygame.Surface, box: np.ndarray, mark: np.ndarray, detailed: bool, fill: colors.RGB,
                highlight: colors.RGB | None) -> None:
    """A filled box; detailed boxes get the heading mark and an outline (2 px ``highlight`` or a thin dark
    one), small ones only a ring in ``highlight`` around them, so their fill stays visible."""
    corners = box.tolist()
    pygame.draw.polygon(surf, fill, corners)
    if detailed:
        pygame.draw.polygon(surf, colors.HEADING_MARK, mark.tolist())
        pygame.draw.polygon(surf, highlight or colors.AGENT_OUTLINE, corners, 2 if highlight else 1)
    elif highlight is not None:
        center = box.mean(axis=0)
        radius = float(np.linalg.norm(box - center, axis=1).max()) + 2.0
        pygame.draw.circle(surf, highlight, center.tolist(), radius, 1)


def _use_dummy_video_driver_without_display() -> None:
    """Select SDL's dummy video driver on a Linux machine without X11/Wayland, so no window is required."""
    no_display = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if sys.platform.startswith("linux") and no_display and "SDL_VIDEODRIVER" not in os.environ:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        warnings.warn("no display found: render_mode='human' draws into SDL's dummy video driver "
                      "(nothing is shown); use render_mode='rgb_array' to get frames", stacklevel=3)
