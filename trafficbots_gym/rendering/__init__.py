"""Top-down rendering of scenes (pygame) and video writing (MP4 / GIF)."""
from __future__ import annotations

from trafficbots_gym.rendering.renderer import TopDownRenderer
from trafficbots_gym.rendering.video import hstack_frames, write_video

__all__ = ["TopDownRenderer", "hstack_frames", "write_video"]
