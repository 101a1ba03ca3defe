"""Rendering speed benchmark: per-frame cost of each camera and the cost of encoding the frames.

    python -m trafficbots_gym.rendering.benchmark --scenes scenes.h5 [--frames 91] [--size 800]

Replays the logged states of one scene (``AgentState.from_log``) through ``TopDownRenderer`` and prints
a table: map-layer set-up, first frame (draws the visible map tiles), steady-state median / p95 frame
time, frames per second and median process CPU time per frame (less sensitive to other load on a
shared machine), then MP4 and GIF encoding time per frame.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.rendering.renderer import TopDownRenderer
from trafficbots_gym.rendering.video import write_video
from trafficbots_gym.simulation.state import AgentState

CAMERAS: tuple[tuple[str, str, bool], ...] = (
    ("ego, heading up", "ego", True),
    ("ego, north up", "ego", False),
    ("scene", "scene", False),
)


def time_camera(batch: SceneBatch, camera: str, heading_up: bool, frames: int, size: int,
                px_per_m: float) -> tuple[dict[str, float], list[np.ndarray]]:
    """Timings (ms) of one camera over ``frames`` logged steps, and the frames."""
    renderer = TopDownRenderer(width=size, height=size, px_per_m=px_per_m, camera=camera,  # type: ignore[arg-type]
                               heading_up=heading_up)
    t0 = time.perf_counter()
    renderer.set_scene(batch, 0)
    setup = time.perf_counter() - t0
    times, cpu_times, out = [], [], []
    n_step = batch.num_steps
    for k in tqdm(range(frames), desc=camera + (" heading-up" if heading_up else ""), leave=False):
        step = k % n_step
        state = AgentState.from_log(batch, step)
        trail = batch.agent_pos[0, max(0, step - 30):step + 1, 0].numpy()
        t, c = time.perf_counter(), time.process_time()
        frame = renderer.render(state, 0, step=step, ego_index=0, trail=trail,
                                goal=batch.agent_goal[0, 0, :2].numpy(), hud={"reward": 0.0})
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        out.append(frame)
    renderer.close()
    steady = np.array(times[1:] or times) * 1e3
    return {"setup": setup * 1e3, "first": times[0] * 1e3, "median": float(np.median(steady)),
            "p95": float(np.percentile(steady, 95)),
            "cpu": float(np.median(np.array(cpu_times[1:] or cpu_times) * 1e3))}, out


def time_encoding(frames: list[np.ndarray], suffix: str) -> float:
    """Milliseconds per frame to encode ``frames`` to a ``suffix`` video."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_video(frames, Path(tmp) / f"bench{suffix}", fps=10)
        return (time.perf_counter() - t) * 1e3 / len(frames)


def main(argv: list[str] | None = None) -> None:
    """Print the rendering benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=Path, required=True, help="H5 scene file (scene 0 is rendered)")
    parser.add_argument("--frames", type=int, default=91)
    parser.add_argument("--size", type=int, default=800, help="frame width = height (px)")
    parser.add_argument("--px-per-m", type=float, default=5.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch = SceneBatch.from_scenes([SceneReader(args.scenes)[0]])
    print(f"{args.size}x{args.size} px, {args.px_per_m} px/m, {args.frames} frames of scene 0 of {args.scenes}")
    print(f"{'camera':<18}{'set_scene ms':>14}{'first ms':>10}{'median ms':>11}{'p95 ms':>9}{'fps':>8}"
          f"{'median CPU ms':>15}")
    frames: list[np.ndarray] = []
    for name, camera, heading_up in CAMERAS:
        t, frames = time_camera(batch, camera, heading_up, args.frames, args.size, args.px_per_m)
        print(f"{name:<18}{t['setup']:>14.1f}{t['first']:>10.1f}{t['median']:>11.2f}{t['p95']:>9.2f}"
              f"{1e3 / t['median']:>8.0f}{t['cpu']:>15.2f}")
    for suffix in (".mp4", ".gif"):
        print(f"encode {suffix:<11}{time_encoding(frames, suffix):>35.2f} ms/frame")


if __name__ == "__main__":
    main()
