"""Render one scene closed-loop twice, side by side: log-replay background | TrafficBots background.

    python examples/render_episode.py --out side_by_side.mp4 [--ego route|ppo|ppo_route|ppo_route_ttc|ppo_route_guard|PATH.zip] [--scene-index 0]
                                      [--seed 0] [--device auto]

Both runs use the same scene, seed and ego controller (``--ego`` as in ``run_episode.py``: its route
follower by default, ``ppo`` for the shipped PPO policy, or a Stable-Baselines3 model .zip), so
the only difference is the background: on the left the other agents replay their log and ignore the
ego; on the right the learned TrafficBots policy drives them and reacts to it. The shorter episode
holds its last frame. Prints both runs' metrics.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from run_episode import Episode, add_common_args, drive, load_policy, make_controller, make_env_for, summary_table

from trafficbots_gym.rendering.video import hstack_frames, write_video

LEFT, RIGHT = "log_replay", "trafficbots"
LABELS = ("log replay", "TrafficBots")


def run(background: str, args: argparse.Namespace, policy: Any | None) -> tuple[Episode, int]:
    """One rendered episode with ``background`` and the ego ``policy`` (None: route follower), and the fps."""
    env = make_env_for(policy, args, background)
    try:
        episode = drive(env, args.scene_index, args.seed, desc=background, controller=make_controller(env, policy))
        return episode, env.metadata.get("render_fps", 10)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("side_by_side.mp4"), help="video file (.mp4 or .gif)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    policy = load_policy(args.ego)
    left, fps = run(LEFT, args, policy)
    right, _ = run(RIGHT, args, policy)
    n = max(len(left.frames), len(right.frames))
    frames = (hstack_frames(left.frames[min(k, len(left.frames) - 1)], right.frames[min(k, len(right.frames) - 1)],
                            LABELS) for k in range(n))
    path = write_video(frames, args.out, fps=fps)
    print(summary_table({LABELS[0]: left, LABELS[1]: right}))
    print(f"{n} frames -> {path}")


if __name__ == "__main__":
    main()
