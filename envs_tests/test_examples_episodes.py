"""Smoke specification of examples/run_episode.py and examples/render_episode.py: an ego (route follower,
a shipped PPO policy or a model file) drives a rendered episode and the metrics are printed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import render_episode  # noqa: E402
import run_episode  # noqa: E402

GIF_MAGIC = b"GIF89a"


@pytest.mark.parametrize("ego", ["route", "ppo", "ppo_route", "ppo_route_ttc", "ppo_route_guard"])
def test_run_episode_renders_the_ego_and_prints_its_metrics(tmp_path, capsys, ego) -> None:
    out = tmp_path / "episode.gif"
    run_episode.main(["--ego", ego, "--background", "log_replay", "--steps", "4", "--device", "cpu",
                      "--out", str(out)])
    assert out.read_bytes()[:6] == GIF_MAGIC
    printed = capsys.readouterr().out
    assert "goal reached" in printed and "log_replay" in printed and "frames ->" in printed


def test_run_episode_refuses_an_unknown_ego_by_name(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--ego 'mpc'"):
        run_episode.main(["--ego", "mpc", "--out", str(tmp_path / "x.gif")])
    with pytest.raises(SystemExit, match="missing.zip"):
        run_episode.main(["--ego", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "x.gif")])


def test_render_episode_puts_log_replay_and_learned_traffic_side_by_side(tmp_path, capsys) -> None:
    out = tmp_path / "side_by_side.gif"
    render_episode.main(["--ego", "ppo", "--steps", "3", "--device", "cpu", "--out", str(out)])
    assert out.read_bytes()[:6] == GIF_MAGIC
    printed = capsys.readouterr().out
    assert "log replay" in printed and "TrafficBots" in printed and "4 frames" in printed
