"""Text overlays: the heads-up display panel, labels and the scale bar (pygame, no window needed)."""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402

from trafficbots_gym.rendering import colors  # noqa: E402


@lru_cache(maxsize=8)
def font(size_px: int) -> pygame.font.Font:
    """pygame's default font at ``size_px`` (cached; initialises pygame.font, which needs no display)."""
    if not pygame.font.get_init():
        pygame.font.init()
    return pygame.font.Font(None, size_px)


def format_value(value: float | int | str) -> str:
    """A compact HUD representation: strings as is, integers plainly, floats with 3 significant digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int)) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{float(value):.3g}"


def draw_panel(surface: pygame.Surface, lines: list[str], topleft: tuple[int, int], size_px: int) -> pygame.Rect:
    """Draw ``lines`` on a translucent dark panel at ``topleft``; return the panel rectangle."""
    f = font(size_px)
    rendered = [f.render(line, True, colors.HUD_TEXT) for line in lines]
    pad = max(2, size_px // 4)
    width = max((r.get_width() for r in rendered), default=0) + 2 * pad
    height = sum(r.get_height() for r in rendered) + 2 * pad
    panel = pygame.Surface((width, height), pygame.SRCALPHA)
    panel.fill(colors.HUD_PANEL)
    y = pad
    for r in rendered:
        panel.blit(r, (pad, y))
        y += r.get_height()
    return surface.blit(panel, topleft)


def draw_scale_bar(surface: pygame.Surface, px_per_m: float, size_px: int) -> None:
    """A horizontal bar of a round length (1/2/5 x 10^k m) near the bottom-left corner, labelled."""
    target_m = surface.get_width() / 6.0 / px_per_m
    length_m = _round_length(target_m)
    length_px = int(round(length_m * px_per_m))
    x0, y0 = size_px, surface.get_height() - size_px
    pygame.draw.line(surface, colors.SCALE_BAR, (x0, y0), (x0 + length_px, y0), 3)
    for x in (x0, x0 + length_px):
        pygame.draw.line(surface, colors.SCALE_BAR, (x, y0 - size_px // 3), (x, y0), 2)
    label = font(size_px).render(f"{format_value(length_m)} m", True, colors.SCALE_BAR)
    surface.blit(label, (x0 + length_px + size_px // 3, y0 - label.get_height() + 2))


def _round_length(target_m: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``target_m`` (at least 1 m)."""
    best = 1.0
    for exponent in range(0, 5):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exponent
            if value <= target_m:
                best = value
    return best


def draw_label_array(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of the ``[H, W, 3]`` uint8 frame with ``text`` on a panel at the top centre."""
    height, width = frame.shape[:2]
    surf = pygame.image.frombuffer(np.ascontiguousarray(frame).tobytes(), (width, height), "RGB")
    size_px = max(12, height // 30)
    f = font(size_px)
    label_w, _ = f.size(text)
    draw_panel(surf, [text], (max(0, (width - label_w) // 2 - size_px // 4), size_px // 3), size_px)
    return np.frombuffer(pygame.image.tobytes(surf, "RGB"), dtype=np.uint8).reshape(height, width, 3).copy()
