"""``TrafficBotsVecEnv``: N TrafficBots episodes batched in one simulator, as a Gymnasium 1.x ``VectorEnv``.

* Autoreset: ``NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED`` (``metadata["autoreset_mode"]``).
  Finished rows are reset through the simulator's ``env_ids`` without stalling the other rows; their
  next random scene is already being read on a background thread.
* Seeds: ``reset(seed=s)`` gives row i the generator of seed ``s + i`` (a list gives one seed per row),
  so row 0 reproduces ``TrafficBots-v0`` with seed ``s`` exactly.
* ``torch_output=True`` keeps observations, rewards, flags and info values as torch tensors on the
  simulation device and accepts torch actions.
* ``cuda_graphs`` (default: on for a CUDA device) replays the batched step and observation from CUDA
  graphs; ``policy_precision="bf16"`` runs the learned background's network under bfloat16 autocast.
  Per step the host receives the rewards, flags and infos in one transfer (plus the observation).
* ``reset(options=...)``: ``scene_index`` / ``scenario_id`` / ``ego`` (a scalar for every reset row or a
  sequence of ``num_envs`` values) and ``reset_mask`` (bool [N]: reset only those rows).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.env.actions import action_space
from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.core import EpisodeBatch, StepResult, tensors_to_numpy

Obs = Any  # numpy array / dict of arrays, or the torch equivalents with torch_output


class TrafficBotsVecEnv(VectorEnv):
    """``TrafficBotsVecEnv(num_envs, config=None, *, autoreset_mode, torch_output, render_mode, **keys)``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: Mapping[str, Any] | EnvConfig | None = None, *,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, torch_output: bool = False,
                 render_mode: str | None = None, cuda_graphs: bool | None = None, policy_precision: str = "fp32",
                 **overrides: Any) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"the vector env renders only 'rgb_array' frames, got render_mode={render_mode!r}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.config = EnvConfig.from_kwargs(config, **overrides)
        self.core = EpisodeBatch(self.config, num_envs, cuda_graphs=cuda_graphs, policy_precision=policy_precision)
        self.num_envs = num_envs
        self.torch_output = torch_output
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.single_observation_space = self.core.observer.space()
        self.single_action_space = action_space(self.config)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._pending = np.zeros(num_envs, bool)     # NEXT_STEP: rows to reset at the next step
        self._renderers: list[Any] = [None] * num_envs
        self._rendered_scene = [-1] * num_envs
        self._resets = np.zeros(num_envs, np.int64)  # episodes started per row (renderer cache key)

    # ----------------------------------------------------------------------------------------------- reset
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Obs, dict[str, Any]]:
        """Reset every row (or the rows of ``options["reset_mask"]``); see the module docstring."""
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        rows = list(range(self.num_envs)) if mask is None else self._mask_rows(mask)
        seeds = self._seeds(seed)
        first_seeded = True
        for r in rows:
            if seeds[r] is not None or self.core.rngs[r] is None:
                self.core.seed_row(r, seeding.np_random(seeds[r])[0], seed_torch=first_seeded)
                first_seeded = False
        self._reset_rows(rows, [self._row_options(options, r) for r in rows])
        self._pending[rows] = False
        obs = self.core.format_obs(self.core.observe())
        info = self._row_info_dict(np.isin(np.arange(self.num_envs), rows))
        return self._out_obs(obs), info

    def _reset_rows(self, rows: list[int], options: list[Mapping[str, Any] | None]) -> None:
        self.core.reset(rows, options)
        self._resets[rows] += 1

    def _mask_rows(self, mask: Any) -> list[int]:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,) or not mask.any():
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with a True entry")
        return np.flatnonzero(mask).tolist()

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"a list of seeds needs {self.num_envs} entries, got {len(seeds)}")
        return seeds

    def _row_options(self, options: Mapping[str, Any], row: int) -> dict[str, Any]:
        out = {}
        for key, value in options.items():
            if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
                if len(value) != self.num_envs:
                    raise ValueError(f"options[{key!r}] has {len(value)} entries, expected num_envs={self.num_envs}")
                value = value[row]
                value = value.item() if isinstance(value, (np.generic, torch.Tensor)) else value
            out[key] = value
        return out

    # ------------------------------------------------------------------------------------------------ step
    def step(self, actions: Any) -> tuple[Obs, Any, Any, Any, dict[str, Any]]:
        """Step every env with ``actions`` ([N, 2] continuous or [N] discrete), autoresetting finished ones."""
        pending = self._pending.copy()
        result: StepResult | None = None
        if not pending.all():
            result = self.core.step(actions)
        final: dict[str, Any] = {}
        if pending.any():
            self._reset_rows(np.flatnonzero(pending).tolist(), None)
        elif self.autoreset_mode == AutoresetMode.SAME_STEP and result is not None:
            done = (result.terminated | result.truncated).cpu().numpy()
            if done.any():
                final = {"final_obs": self.core.format_obs(self.core.observe()), "done": done}
                self._reset_rows(np.flatnonzero(done).tolist(), None)
        obs = self.core.format_obs(self.core.observe())
        reward, terminated, truncated, infos, done = self._step_outputs(result, pending, final)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._pending = done
        return self._out_obs(obs), reward, terminated, truncated, infos

    def _step_outputs(self, result: StepResult | None, pending: np.ndarray,
                      final: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any], np.ndarray]:
        """Rewards, flags, infos and the host copy of ``terminated | truncated``. ``pending`` rows (finished
        at the previous step) were reset in this call and their step results are discarded (zero reward, no
        flags, reset info); ``final["done"]`` rows finished in this step and were reset right after it (their
        step info goes to ``final_info``). One device-to-host transfer for all values."""
        n, device = self.num_envs, self.core.device
        stepped = ~pending
        reset_after = final.get("done", np.zeros(n, bool))
        if result is None:
            values: dict[str, torch.Tensor] = {}
            reward = torch.zeros(n, device=device)
            terminated = truncated = torch.zeros(n, dtype=torch.bool, device=device)
        else:
            reward, terminated, truncated = result.reward, result.terminated, result.truncated
            if pending.any():
                keep = torch.as_tensor(stepped, device=device)
                reward = torch.where(keep, reward, torch.zeros_like(reward))
                terminated, truncated = terminated & keep, truncated & keep
            values = {**result.info, **{f"rewards/{k}": v for k, v in result.rewards.items()},
                      **{f"episode/{k}": v for k, v in result.episode.items()}}
        flags = {"/reward": reward, "/terminated": terminated, "/truncated": truncated}
        if self.torch_output:
            host_flags, host = tensors_to_numpy(flags), values
        else:
            host = tensors_to_numpy({**values, **flags})
            host_flags = {k: host.pop(k) for k in flags}
        done = host_flags["/terminated"] | host_flags["/truncated"]
        live = stepped & ~reset_after
        infos = _grouped(host, {"": live, "rewards": live, "episode": live & done}, self.torch_output)
        infos.update(self._row_info_dict(np.ones(n, bool)))
        restarted = pending | reset_after
        if restarted.any():
            steps = _host(self.core.sim.step_index)
            infos["step"], infos["_step"] = self._fill(np.where(restarted, STEP_CURRENT, steps)), np.ones(n, bool)
        if reset_after.any():
            every = {"": reset_after, "rewards": reset_after, "episode": reset_after}
            infos["final_info"], infos["_final_info"] = _grouped(host, every, self.torch_output), reset_after
            infos["final_obs"], infos["_final_obs"] = self._final_obs(final["final_obs"], reset_after), reset_after
        if self.torch_output:
            return reward, terminated, truncated, infos, done
        return (host_flags["/reward"].astype(np.float64), host_flags["/terminated"], host_flags["/truncated"],
                infos, done)

    def _final_obs(self, obs: Any, rows: np.ndarray) -> Any:
        if self.torch_output:
            return obs
        host = self._out_obs(obs)
        out = np.full(self.num_envs, None, dtype=object)
        for r in np.flatnonzero(rows):
            out[r] = {k: v[r] for k, v in host.items()} if isinstance(host, dict) else host[r]
        return out

    def _fill(self, values: np.ndarray) -> Any:
        return torch.as_tensor(values, device=self.core.device) if self.torch_output else values

    def _out_obs(self, obs: Any) -> Obs:
        if self.torch_output:
            return obs
        if isinstance(obs, torch.Tensor):
            return obs.cpu().numpy()
        return {k: v.cpu().numpy() for k, v in obs.items()}

    def _row_info_dict(self, mask: np.ndarray) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for key, value in self.core.row_info().items():
            info[key], info[f"_{key}"] = value, mask.copy()
        return info

    # -------------------------------------------------------------------------------------------- render
    def render(self) -> tuple[np.ndarray, ...] | None:
        """One RGB frame per row (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            return None
        from trafficbots_gym.rendering.renderer import TopDownRenderer
        sim, cfg = self.core.sim, self.config
        frames = []
        for row in range(self.num_envs):
            if self._renderers[row] is None:
                self._renderers[row] = TopDownRenderer(width=cfg.render_width, height=cfg.render_height,
                                                       px_per_m=cfg.render_px_per_m, camera=cfg.render_camera)
            if self._rendered_scene[row] != self._resets[row]:
                self._renderers[row].set_scene(sim.batch, row)
                self._rendered_scene[row] = int(self._resets[row])
            ego = int(sim.ego_index[row])
            goal = sim.batch.agent_goal[row, ego, :2].cpu().numpy()
            frames.append(self._renderers[row].render(sim.state, row, step=int(sim.step_index[row]), ego_index=ego,
                                                      goal=goal, hud={"scenario": self.core.scenario_ids[row]}))
        return tuple(frames)

    def close_extras(self, **kwargs: Any) -> None:
        for renderer in self._renderers:
            if renderer is not None:
                renderer.close()
        self._renderers = [None] * self.num_envs
        self.core.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_renderers"] = [None] * self.num_envs
        state["_rendered_scene"] = [-1] * self.num_envs
        return state


def _host(x: Any) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _grouped(values: Mapping[str, Any], masks: Mapping[str, np.ndarray], torch_output: bool) -> dict[str, Any]:
    """Gymnasium vector infos from flat ``group/key`` values: ``{key: [N], "_key": mask}``, nested per group.

    Entries of rows outside a group's mask are zeroed; groups whose mask is all false are left out.
    """
    out: dict[str, Any] = {}
    device = next(iter(values.values())).device if torch_output and values else None
    keeps = {g: torch.as_tensor(m, device=device) for g, m in masks.items() if m.any() and not m.all()} \
        if device is not None else {}
    for key, value in values.items():
        group, _, name = key.rpartition("/")
        mask = masks[group]
        if not mask.any():
            continue
        target = out.setdefault(group, {}) if group else out
        if torch_output:
            target[name] = value if mask.all() else torch.where(keeps[group], value, torch.zeros_like(value))
        else:
            target[name] = np.where(mask, value, np.zeros_like(value))
        target[f"_{name}"] = mask
        if group:
            out[f"_{group}"] = mask
    return out
