"""Write rendered frames to MP4 (ffmpeg via imageio-ffmpeg) or GIF (imageio/Pillow), atomically."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from trafficbots_gym.rendering.hud import draw_label_array

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".gif")
SEPARATOR_PX = 4


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int = 10) -> Path:
    """Encode ``[H, W, 3]`` uint8 frames to ``path`` (.mp4 or .gif by suffix) and return the path.

    The file is written to a temporary name next to ``path`` and renamed, so a reader never sees a
    partial video. MP4 uses H.264 (yuv420p; odd frame sizes are padded by one edge pixel).
    """
    final = Path(path)
    suffix = final.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{final}: unknown video extension {final.suffix!r}; use one of {VIDEO_SUFFIXES}")
    if fps <= 0:
        raise ValueError(f"{final}: fps must be positive, got {fps}")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        count = _write_mp4(frames, tmp, fps) if suffix == ".mp4" else _write_gif(frames, tmp, fps)
        if count == 0:
            raise ValueError(f"{final}: no frames to write")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def hstack_frames(a: np.ndarray, b: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
    """Two frames side by side (a left, b right) split by a thin white bar, each optionally labelled.

    Frames of different heights are bottom-padded with black to the taller one.
    """
    left, right = _check_frame(a, 0), _check_frame(b, 1)
    if labels is not None:
        if len(labels) != 2:
            raise ValueError(f"hstack_frames needs two labels, got {len(labels)}")
        left, right = draw_label_array(left, labels[0]), draw_label_array(right, labels[1])
    height = max(left.shape[0], right.shape[0])
    left, right = _pad_to_height(left, height), _pad_to_height(right, height)
    bar = np.full((height, SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([left, bar, right], axis=1)


def _check_frame(frame: np.ndarray, index: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected an [H, W, 3] uint8 RGB array, got {frame.shape} {frame.dtype}")
    return frame


def _pad_to_height(frame: np.ndarray, height: int) -> np.ndarray:
    if frame.shape[0] == height:
        return frame
    return np.pad(frame, ((0, height - frame.shape[0]), (0, 0), (0, 0)))


def _checked_frames(frames: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """Yield validated frames, all of the first frame's size."""
    shape = None
    for i, frame in enumerate(frames):
        frame = _check_frame(frame, i)
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise ValueError(f"frame {i}: size {frame.shape} differs from the first frame's {shape}")
        yield frame


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: int) -> int:
    import imageio.v2 as imageio

    count = 0
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, quality=7)
    try:  # imageio's context manager skips close() on errors; ffmpeg must exit before the cleanup
        for frame in _checked_frames(frames):
            pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            writer.append_data(frame)
            count += 1
    finally:
        writer.close()
    return count


def _write_gif(frames: Iterable[np.ndarray], path: Path, fps: int) -> int:
    import imageio.v3 as iio

    stack = list(_checked_frames(frames))
    if stack:
        iio.imwrite(path, np.stack(stack), extension=".gif", duration=1000.0 / fps, loop=0)
    return len(stack)
