"""Specification of video writing (GIF / MP4) and side-by-side frames."""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest

from trafficbots_gym.rendering.video import SEPARATOR_PX, hstack_frames, write_video


def _frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Distinct frames: a bright square moving across a dark background."""
    out = []
    for i in range(n):
        frame = np.full((height, width, 3), 30, dtype=np.uint8)
        frame[10:20, 4 * i:4 * i + 10] = (250, 200, 0)
        out.append(frame)
    return out


def test_gif_round_trips_frame_count_size_and_frame_duration(tmp_path: Path) -> None:
    path = write_video(_frames(9), tmp_path / "episode.gif", fps=10)
    frames = iio.imread(path, index=None)
    assert frames.shape == (9, 48, 64, 3)
    assert iio.immeta(path)["duration"] == 100
    assert np.abs(frames[3].astype(int) - _frames(9)[3]).max() <= 8


def test_mp4_is_readable_with_the_right_frame_count_and_fps(tmp_path: Path) -> None:
    path = write_video(iter(_frames(12)), tmp_path / "episode.mp4", fps=10)
    reader = imageio_v2.get_reader(path, format="FFMPEG")
    try:
        assert reader.count_frames() == 12
        assert reader.get_meta_data()["fps"] == 10
        first = reader.get_data(0)
    finally:
        reader.close()
    assert first.shape == (48, 64, 3)
    assert np.abs(first.astype(int) - _frames(1)[0]).mean() < 6


def test_mp4_accepts_odd_frame_sizes(tmp_path: Path) -> None:
    path = write_video(_frames(3, height=41, width=57), tmp_path / "odd.mp4", fps=5)
    reader = imageio_v2.get_reader(path, format="FFMPEG")
    try:
        assert reader.count_frames() == 3
    finally:
        reader.close()


def test_unknown_extension_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown video extension '\.avi'"):
        write_video(_frames(2), tmp_path / "episode.avi")
    assert list(tmp_path.iterdir()) == []


def test_failed_writes_leave_no_partial_or_temporary_file(tmp_path: Path) -> None:
    frames = _frames(2) + [np.zeros((10, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 2: size"):
        write_video(frames, tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.gif")
    with pytest.raises(ValueError, match=r"frame 0: expected an \[H, W, 3\] uint8"):
        write_video([np.zeros((8, 8), np.float32)], tmp_path / "gray.gif")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_video_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "episode.gif"
    write_video(_frames(2), path)
    write_video(_frames(5), path)
    assert iio.imread(path, index=None).shape[0] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["episode.gif"]


def test_hstack_puts_frames_side_by_side_with_a_separator_and_labels() -> None:
    left, right = _frames(1, 48, 64)[0], np.zeros((60, 80, 3), np.uint8)
    plain = hstack_frames(left, right)
    assert plain.shape == (60, 64 + SEPARATOR_PX + 80, 3)
    assert np.array_equal(plain[:48, :64], left) and (plain[48:, :64] == 0).all()
    assert (plain[:, 64:64 + SEPARATOR_PX] == 255).all()
    labelled = hstack_frames(left, right, ["log replay", "TrafficBots"])
    assert labelled.shape == plain.shape
    assert not np.array_equal(labelled[:, :64], plain[:, :64])
    assert not np.array_equal(labelled[:, 64 + SEPARATOR_PX:], plain[:, 64 + SEPARATOR_PX:])


def test_hstack_rejects_a_wrong_number_of_labels() -> None:
    frame = _frames(1)[0]
    with pytest.raises(ValueError, match="two labels"):
        hstack_frames(frame, frame, ["only one"])
