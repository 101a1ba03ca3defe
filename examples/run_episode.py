"""Drive one TrafficBots-v0 episode with a route follower or a trained policy, render it, print its metrics.

    python examples/run_episode.py --out episode.gif [--ego route|ppo|ppo_route|ppo_route_ttc|ppo_route_guard|PATH.zip] [--scene-index 0]
                                   [--background trafficbots] [--device auto] [--seed 0] [--steps 80]
                                   [--camera ego]

``--ego route`` (the default) follows the logged route: pure pursuit on the route waypoints of the
observation for steering, and an IDM car-follower for speed, whose leader is the nearest agent on the
route ahead or a red light across it, cruising at the pace that reaches the logged goal when the log
does. ``--ego ppo`` / ``ppo_route`` / ``ppo_route_ttc`` / ``ppo_route_guard`` drive with the shipped PPO policies (``trafficbots_gym/assets/
policies``), ``--ego PATH.zip`` with any Stable-Baselines3 model trained on TrafficBots-v0 (e.g. by
``train_ppo.py``; deterministic actions, in an env with the settings stored in the archive). Every step is rendered (``render_mode="rgb_array"``) into the MP4 / GIF ``--out``.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import trafficbots_gym  # noqa: F401  (registers TrafficBots-v0)
from trafficbots_gym.benchmarks.ego_controllers import SHIPPED_POLICIES, SB3Controller
from trafficbots_gym.env.config import BACKGROUNDS, LOG_HORIZON
from trafficbots_gym.env.observation import (
    AGENT_FEATURES, EGO_FEATURES, GOAL_DISTANCE_SCALE, GOAL_FEATURES, LENGTH_SCALE, ROUTE_FEATURES,
    SPEED_SCALE, TL_FEATURES, WIDTH_SCALE,
)
from trafficbots_gym.rendering.video import write_video
from trafficbots_gym.simulation.dynamics import ACTION_LIMITS

MAX_ACC, MAX_YAW_RATE = float(ACTION_LIMITS[0, 0]), float(ACTION_LIMITS[0, 1])
STOP_STATES = ("stop", "caution")
DT = 0.1


@dataclass(frozen=True)
class IDM:
    """Intelligent Driver Model parameters (m, s, m/s^2)."""

    max_acc: float = 2.0
    comfort_dec: float = 3.0
    headway: float = 1.2
    min_gap: float = 2.5
    max_speed: float = 20.0

    def acceleration(self, speed: float, desired: float, gap: float | None, closing: float) -> float:
        """IDM acceleration at ``speed`` towards ``desired``; ``gap``/``closing`` of the leader (None = free)."""
        desired = max(desired, 0.1)
        free = 1.0 - (max(speed, 0.0) / desired) ** 4
        if gap is None:
            return self.max_acc * free
        wanted = self.min_gap + max(0.0, speed * self.headway
                                    + speed * closing / (2.0 * math.sqrt(self.max_acc * self.comfort_dec)))
        return self.max_acc * (free - (wanted / max(gap, 0.1)) ** 2)


def _col(features: tuple[str, ...], name: str) -> int:
    return features.index(name)


def lookahead_point(route_xy: np.ndarray, distance: float) -> np.ndarray | None:
    """The first point on the route polyline (ego frame, m) at ``distance`` from the ego; None if no route."""
    if len(route_xy) == 0:
        return None
    dist = np.linalg.norm(route_xy, axis=1)
    beyond = np.flatnonzero(dist >= distance)
    if len(beyond) == 0:
        return route_xy[-1]
    k = int(beyond[0])
    if k == 0:
        return route_xy[0]
    a, b = route_xy[k - 1], route_xy[k]
    da, db = dist[k - 1], dist[k]
    return a + (b - a) * (distance - da) / max(db - da, 1e-6)


def pursuit_yaw_rate(target: np.ndarray | None, speed: float) -> float:
    """Pure-pursuit yaw rate (rad/s) that drives an arc through ``target`` (ego frame) at ``speed``."""
    if target is None:
        return 0.0
    curvature = 2.0 * float(target[1]) / max(float(target @ target), 1e-3)
    return speed * curvature


def along_route(points: np.ndarray, route_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length along the route (from the ego, m) and distance to it (m) of ``points`` [N, 2] (ego frame)."""
    poly = np.concatenate([np.zeros((1, 2)), route_xy], axis=0)
    seg = np.diff(poly, axis=0)
    seg_len = np.maximum(np.linalg.norm(seg, axis=1), 1e-6)
    start_s = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
    rel = points[:, None, :] - poly[None, :-1, :]
    t = np.clip((rel * seg[None]).sum(-1) / seg_len ** 2, 0.0, 1.0)
    foot = poly[None, :-1, :] + t[..., None] * seg[None]
    dist = np.linalg.norm(points[:, None, :] - foot, axis=-1)
    best = dist.argmin(axis=1)
    rows = np.arange(len(points))
    return start_s[best] + t[rows, best] * seg_len[best], dist[rows, best]


class RouteFollower:
    """Pure pursuit + IDM on the ``obs_mode="dict"`` observation of TrafficBots-v0; returns [-1, 1]^2 actions."""

    def __init__(self, obs_range: float, horizon: int, idm: IDM = IDM(), corridor: float = 1.0) -> None:
        self.obs_range, self.horizon, self.idm, self.corridor = obs_range, horizon, idm, corridor

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        ego = obs["ego"]
        speed = float(ego[_col(EGO_FEATURES, "speed")]) * SPEED_SCALE
        length = float(ego[_col(EGO_FEATURES, "length")]) * LENGTH_SCALE
        width = float(ego[_col(EGO_FEATURES, "width")]) * WIDTH_SCALE
        route = obs["route"]
        route_xy = route[route[:, _col(ROUTE_FEATURES, "valid")] > 0.5, :2] * self.obs_range
        lookahead = float(np.clip(3.0 + 0.5 * speed, 5.0, 20.0))
        yaw_rate = pursuit_yaw_rate(lookahead_point(route_xy, lookahead), speed)
        gap, closing = self._leader(obs, route_xy, speed, length, width)
        if len(route_xy) == 0:  # the logged route is used up: come to a comfortable stop
            acc = -min(self.idm.comfort_dec, speed / DT)
        else:
            acc = self.idm.acceleration(speed, self._cruise_speed(obs), gap, closing)
        acc = max(acc, -speed / DT)  # brake to a standstill, never into reverse
        return np.array([np.clip(acc / MAX_ACC, -1, 1), np.clip(yaw_rate / MAX_YAW_RATE, -1, 1)], np.float32)

    def _cruise_speed(self, obs: Mapping[str, np.ndarray]) -> float:
        """The pace that reaches the logged goal when the log does (at least 2 m/s)."""
        remaining = float(obs["goal"][_col(GOAL_FEATURES, "distance")]) * GOAL_DISTANCE_SCALE
        elapsed = (1.0 - float(obs["ego"][_col(EGO_FEATURES, "time_left")])) * self.horizon
        log_time_left = (LOG_HORIZON - elapsed) * DT
        return float(np.clip(remaining / max(log_time_left, 1.0), 2.0, self.idm.max_speed))

    def _leader(self, obs: Mapping[str, np.ndarray], route_xy: np.ndarray, speed: float, length: float,
                width: float) -> tuple[float | None, float]:
        """Gap (m) and closing speed (m/s) to the nearest obstacle on the route ahead, or (None, 0)."""
        if len(route_xy) == 0:
            return None, 0.0
        gaps: list[tuple[float, float]] = []
        agents = obs["agents"][obs["agents"][:, _col(AGENT_FEATURES, "valid")] > 0.5]
        if len(agents):
            s, d = along_route(agents[:, :2] * self.obs_range, route_xy)
            half_len = agents[:, _col(AGENT_FEATURES, "length")] * LENGTH_SCALE / 2
            half_wid = agents[:, _col(AGENT_FEATURES, "width")] * WIDTH_SCALE / 2
            on_route = (s > 0) & (d < width / 2 + half_wid + self.corridor) & (agents[:, 0] > 0)
            rel_vx = agents[:, _col(AGENT_FEATURES, "vx")] * SPEED_SCALE
            for k in np.flatnonzero(on_route):
                gaps.append((float(s[k] - length / 2 - half_len[k]), float(-rel_vx[k])))
        lights = obs["traffic_lights"][obs["traffic_lights"][:, _col(TL_FEATURES, "valid")] > 0.5]
        if len(lights):
            red = np.zeros(len(lights), bool)
            for state in STOP_STATES:
                red |= lights[:, _col(TL_FEATURES, state)] > 0.5
            facing = lights[:, _col(TL_FEATURES, "dir_cos")] > 0.5
            s, d = along_route(lights[:, :2] * self.obs_range, route_xy)
            stop_gap = s - length / 2 - 1.0
            can_stop = stop_gap > speed ** 2 / (2 * MAX_ACC)  # never brake harder than the car can
            for k in np.flatnonzero(red & facing & (d < 2.5) & (lights[:, 0] > 0) & can_stop):
                gaps.append((float(stop_gap[k]), speed))
        if not gaps:
            return None, 0.0
        return min(gaps)


@dataclass
class Episode:
    """What one driven episode produced."""

    frames: list[np.ndarray]
    metrics: dict[str, Any]
    steps: int
    wall_s: float


Controller = Callable[[Any], np.ndarray]
"""Maps one observation of the env to its action."""


def load_policy(ego: str) -> SB3Controller | None:
    """The Stable-Baselines3 policy of ``--ego`` (a shipped one by name, or a .zip path) with the env settings
    it needs; None for the route follower."""
    if ego == "route":
        return None
    path = SHIPPED_POLICIES.get(ego, Path(ego))
    if path.suffix != ".zip" or not path.is_file():
        raise SystemExit(f"--ego {ego!r}: expected 'route', one of {', '.join(SHIPPED_POLICIES)} or an existing "
                         "Stable-Baselines3 model .zip")
    return SB3Controller(path, device="cpu", name=ego)


def make_env(background: str, device: str, camera: str, steps: int | None, scenes: str | None,
             checkpoint: str | None, overrides: Mapping[str, Any] | None = None) -> gym.Env:
    """``TrafficBots-v0`` with rgb_array rendering; ``overrides``: env keys a policy needs (default: the dict
    observations that the route follower reads)."""
    kwargs: dict[str, Any] = {"background": background, "device": device, "render_camera": camera,
                              **(overrides or {"obs_mode": "dict"})}
    if steps is not None:
        kwargs["horizon"] = steps
    if scenes is not None:
        kwargs["scenes"] = scenes
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    return gym.make("TrafficBots-v0", render_mode="rgb_array", **kwargs)


def make_env_for(policy: SB3Controller | None, args: argparse.Namespace, background: str) -> gym.Env:
    """The env of ``args`` for ``policy`` (the settings it was trained with; dict observations for the route
    follower)."""
    overrides = None if policy is None else policy.env_overrides
    return make_env(background, args.device, args.camera, args.steps, args.scenes, args.checkpoint, overrides)


def make_controller(env: gym.Env, policy: SB3Controller | None) -> Controller:
    """The route follower for ``env`` (``policy`` None), or the policy's deterministic action."""
    if policy is None:
        config = env.unwrapped.config  # type: ignore[attr-defined]
        return RouteFollower(config.obs_range, config.horizon)
    model = policy.model
    if model.observation_space != env.observation_space:
        raise SystemExit(f"the policy's observation space {model.observation_space} differs from the env's "
                         f"{env.observation_space}: run it with the env settings it was trained with")
    return lambda obs: model.predict(obs, deterministic=True)[0]


def drive(env: gym.Env, scene_index: int, seed: int, render: bool = True, desc: str = "episode",
          controller: Controller | None = None) -> Episode:
    """Run one episode of scene ``scene_index`` with ``controller`` (default: the route follower), rendering
    every step."""
    config = env.unwrapped.config  # type: ignore[attr-defined]
    controller = controller or make_controller(env, None)
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed, options={"scene_index": scene_index})
    frames = [env.render()] if render else []
    steps, done = 0, False
    with tqdm(total=config.horizon, desc=desc, unit="step") as bar:
        while not done:
            obs, _, terminated, truncated, info = env.step(controller(obs))
            if render:
                frames.append(env.render())
            steps += 1
            done = terminated or truncated
            bar.update(1)
    wall = time.perf_counter() - t0
    metrics = {"scenario": info["scenario_id"], **info["episode"],
               "ended by": "termination" if terminated else "truncation"}
    return Episode(frames=frames, metrics=metrics, steps=steps, wall_s=wall)


SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("scenario", "scenario", "{}"), ("goal reached", "goal_reached", "{}"), ("collision", "collided", "{}"),
    ("off-road", "offroad", "{}"), ("red-light violations", "red_light_violations", "{}"),
    ("progress (m)", "progress", "{:.1f}"), ("route completion", "route_completion", "{:.0%}"),
    ("ADE vs log (m)", "ade", "{:.2f}"), ("return", "r", "{:.3f}"), ("ended by", "ended by", "{}"),
)


def summary_table(columns: Mapping[str, Episode]) -> str:
    """A text table of the episode metrics, one column per episode."""
    names = list(columns)
    rows = [(label, [fmt.format(_plain(columns[n].metrics[key])) for n in names]) for label, key, fmt in SUMMARY_ROWS]
    rows.append(("steps", [str(columns[n].steps) for n in names]))
    rows.append(("wall time (s)", [f"{columns[n].wall_s:.1f}" for n in names]))
    width = max(len(cell) for cell in [*names, *(c for _, cells in rows for c in cells)]) + 2
    lines = [f"{'metric':<22}" + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{label:<22}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by the examples."""
    parser.add_argument("--scene-index", type=int, default=0, help="scene of the scene source")
    parser.add_argument("--device", default="auto", help="torch device of the simulation (auto = CUDA if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="controlled steps (default: until the log ends)")
    parser.add_argument("--camera", choices=("ego", "scene"), default="ego")
    parser.add_argument("--scenes", default=None, help="H5 file or folder (default: the embedded scenes)")
    parser.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    parser.add_argument("--ego", default="route",
                        help="route (route follower), ppo / ppo_route / ppo_route_ttc / ppo_route_guard (the shipped PPO "
                             "policies) or a "
                             "Stable-Baselines3 .zip")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("episode.gif"), help="video file (.gif or .mp4)")
    parser.add_argument("--background", choices=BACKGROUNDS, default="trafficbots")
    add_common_args(parser)
    args = parser.parse_args(argv)
    policy = load_policy(args.ego)
    env = make_env_for(policy, args, args.background)
    try:
        episode = drive(env, args.scene_index, args.seed, controller=make_controller(env, policy))
        fps = env.metadata.get("render_fps", 10)
    finally:
        env.close()
    path = write_video(episode.frames, args.out, fps=fps)
    print(summary_table({args.background: episode}))
    print(f"{len(episode.frames)} frames -> {path}")


if __name__ == "__main__":
    main()
