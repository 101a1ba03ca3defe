"""``TrafficBots-v0``: one ego car in a logged WOMD scene among reactive learned (or scripted) agents.

The single env is the batched engine (:class:`~trafficbots_gym.env.core.EpisodeBatch`) with one row,
so it gives exactly the trajectories of :class:`~trafficbots_gym.env.vector_env.TrafficBotsVecEnv` with
``num_envs=1`` and the same seed. docs/env.md documents configuration, spaces, reward and info.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.env.actions import action_space
from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.core import EpisodeBatch, StepResult, tensors_to_numpy

RENDER_MODES: tuple[str, ...] = ("human", "rgb_array")


class TrafficBotsEnv(gym.Env):
    """Gymnasium env; ``TrafficBotsEnv(config=None, render_mode=None, **keys)`` with the keys of ``EnvConfig``."""

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 10}

    def __init__(self, config: Mapping[str, Any] | EnvConfig | None = None, *, render_mode: str | None = None,
                 **overrides: Any) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be None or one of {list(RENDER_MODES)}, got {render_mode!r}")
        self.config = EnvConfig.from_kwargs(config, **overrides)
        self.render_mode = render_mode
        self.core = EpisodeBatch(self.config, num_envs=1)
        self.observation_space = self.core.observer.space()
        self.action_space = action_space(self.config)
        self._over = True
        self._renderer: Any = None
        self._trail: list[np.ndarray] = []
        self._last_reward = 0.0

    @staticmethod
    def default_config() -> dict[str, Any]:
        """Every configuration key with its default (highway-env style)."""
        defaults = EnvConfig()
        return {key: getattr(defaults, key) for key in EnvConfig.keys()}

    # ------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode; ``options``: ``scene_index`` or ``scenario_id``, and ``ego``."""
        if seed is None and self.core.rngs[0] is None:
            seed = self.config.seed
        super().reset(seed=seed)
        if self.core.rngs[0] is not self.np_random:
            self.core.seed_row(0, self.np_random, seed_torch=True)
        self.core.reset(None, [options])
        self._over = False
        self._last_reward = 0.0
        info = {k: _scalar(v[0]) for k, v in self.core.row_info().items()}
        info["step"] = STEP_CURRENT
        if self.render_mode is not None:
            self._start_rendering()
        return self._observation(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._over:
            raise RuntimeError("the episode is over (or was never started): call reset() before step()")
        actions = np.asarray(action)
        actions = actions.reshape(1) if self.config.action_mode == "discrete" else actions.reshape(1, -1)
        with self._step_mode():
            result = self.core.step(actions)
            info = self._info(result)
            obs = self._observation()
        terminated, truncated = bool(info.pop("terminated")), bool(info.pop("truncated"))
        reward = float(info.pop("reward"))
        self._over = terminated or truncated
        self._last_reward = reward
        if self.render_mode is not None:
            # copy: on CPU .numpy() is a view of the simulator state, which is updated in place
            self._trail.append(self.core.sim.state.pos[0, self.core.sim.ego_index[0]].cpu().numpy().copy())
            if self.render_mode == "human":
                self.render()
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """An RGB frame ([H, W, 3] uint8) in ``rgb_array`` mode; draws the window in ``human`` mode."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        if self._renderer is None:
            raise RuntimeError("call reset() before render()")
        sim = self.core.sim
        ego = int(sim.ego_index[0])
        goal = sim.batch.agent_goal[0, ego, :2].cpu().numpy()
        hud = {"scenario": self.core.scenario_ids[0], "reward": self._last_reward}
        return self._renderer.render(sim.state, 0, step=int(sim.step_index[0]), ego_index=ego,
                                     trail=np.asarray(self._trail), goal=goal, hud=hud)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.core.close()

    # -------------------------------------------------------------------------------------------- helpers
    def _step_mode(self) -> torch.inference_mode | contextlib.nullcontext[None]:
        """``torch.inference_mode`` for an eager step: fewer per-operator costs (no autograd or version-counter
        bookkeeping of the step's new tensors), and they only leave the env as numpy arrays. The engine's
        persistent buffers stay normal tensors (allocated at reset, written in place). A step replayed from
        a CUDA graph runs as captured."""
        return contextlib.nullcontext() if self.core.cuda_graphs else torch.inference_mode()

    def _observation(self) -> Any:
        obs = self.core.format_obs(self.core.observe())
        if isinstance(obs, torch.Tensor):
            return obs[0].cpu().numpy()
        return {k: v[0].cpu().numpy() for k, v in obs.items()}

    def _info(self, result: StepResult) -> dict[str, Any]:
        """The step's info (plus reward / terminated / truncated) as Python values (one transfer from a GPU)."""
        done = bool((result.terminated | result.truncated)[0])
        values = {**result.info, "reward": result.reward, "terminated": result.terminated,
                  "truncated": result.truncated, **{f"rewards/{k}": v for k, v in result.rewards.items()}}
        if done:
            values.update({f"episode/{k}": v for k, v in result.episode.items()})
        if self.core.device.type == "cpu":   # one element each: straight to Python scalars
            host = {k: v.item() for k, v in values.items()}
        else:
            host = {k: _scalar(v[0]) for k, v in tensors_to_numpy(values).items()}
        info: dict[str, Any] = {k: _scalar(v[0]) for k, v in self.core.row_info().items()}
        info["rewards"] = {}
        for key, value in host.items():
            group, _, name = key.partition("/")
            if name:
                info.setdefault(group, {})[name] = value
            else:
                info[key] = value
        return info

    def _start_rendering(self) -> None:
        from trafficbots_gym.rendering.renderer import TopDownRenderer
        cfg = self.config
        if self._renderer is None:
            self._renderer = TopDownRenderer(width=cfg.render_width, height=cfg.render_height,
                                             px_per_m=cfg.render_px_per_m, camera=cfg.render_camera,
                                             render_mode=self.render_mode)  # type: ignore[arg-type]
        sim = self.core.sim
        self._renderer.set_scene(sim.batch, 0)
        ego = int(sim.ego_index[0])
        valid = sim.batch.agent_valid[0, :STEP_CURRENT + 1, ego].cpu().numpy()
        self._trail = list(sim.batch.agent_pos[0, :STEP_CURRENT + 1, ego].cpu().numpy()[valid])
        if self.render_mode == "human":
            self.render()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_renderer"] = None
        return state


def _scalar(value: Any) -> Any:
    """numpy scalar -> Python scalar (objects such as strings pass through)."""
    return value.item() if isinstance(value, np.generic) else value
