"""Rendering through the Gymnasium env: env.render() frames and gymnasium's RecordVideo wrapper."""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio_v2
import numpy as np
import pytest
from gymnasium.wrappers import RecordVideo

import trafficbots_gym  # noqa: F401  (registers TrafficBots-v0)
from trafficbots_gym.rendering import colors

from conftest import REFERENCE_SCENES


def _make(render_mode: str, **kwargs: object) -> gym.Env:
    return gym.make("TrafficBots-v0", render_mode=render_mode, scenes=str(REFERENCE_SCENES), background="log_replay",
                    device="cpu", horizon=3, render_width=160, render_height=120, render_px_per_m=8.0,
                    disable_env_checker=True, **kwargs)


def test_env_render_returns_frames_of_the_configured_size_centred_on_the_ego() -> None:
    env = _make("rgb_array")
    try:
        env.reset(seed=0, options={"scene_index": 1})
        first = env.render()
        env.step(np.array([0.5, 0.0], np.float32))
        second = env.render()
    finally:
        env.close()
    assert first.shape == second.shape == (120, 160, 3) and first.dtype == np.uint8
    assert tuple(int(c) for c in first[60, 80]) == colors.EGO
    assert not np.array_equal(first, second)


def test_record_video_writes_one_frame_per_reset_and_step_at_the_env_fps(tmp_path: Path) -> None:
    env = RecordVideo(_make("rgb_array"), str(tmp_path), episode_trigger=lambda episode: True,
                      disable_logger=True)
    env.reset(seed=0, options={"scene_index": 1})
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        steps, done = steps + 1, terminated or truncated
    env.close()
    videos = sorted(tmp_path.glob("*.mp4"))
    assert len(videos) == 1
    reader = imageio_v2.get_reader(videos[0], format="FFMPEG")
    try:
        assert reader.count_frames() == 1 + steps
        assert reader.get_meta_data()["fps"] == 10
    finally:
        reader.close()


def test_human_mode_draws_without_a_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = _make("human")
    try:
        env.reset(seed=0, options={"scene_index": 0})
        assert env.render() is None
        env.step(np.zeros(2, np.float32))
    finally:
        env.close()
