"""Stable-Baselines3 ``VecEnv`` adapter: N TrafficBots envs in one batched simulator, SB3 semantics.

Finished rows reset in the same step (SB3 autoreset): the returned observation is the new episode's,
``infos[i]`` is the final step's info with ``terminal_observation`` (the last observation) and
``TimeLimit.truncated`` (a horizon cut, not a termination); the new episode's reset info goes to
``reset_infos[i]``. ``infos[i]["episode"]`` carries the episode summary (incl. SB3's
``r`` / ``l`` / ``t``), so PPO logs returns without a ``VecMonitor``. All rows share one simulator:
``get_attr`` / ``set_attr`` / ``env_method`` act on it and return one entry per requested row.

A saved SB3 model archive (``.zip``) can carry the env settings its policy was trained with, as the
member ``trafficbots_env.json`` (:func:`write_policy_env_settings`; ``examples/train_ppo.py`` writes it);
the benchmark's SB3 controller builds its env with them (:func:`read_policy_env_settings`). SB3's
``load`` reads only the members ``data``, ``*.pth`` and ``system_info.txt`` and ignores this one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv


class TrafficBotsSB3VecEnv(VecEnv):
    """``TrafficBotsSB3VecEnv(num_envs, config=None, **keys)`` with the keys of ``EnvConfig``."""

    def __init__(self, num_envs: int = 1, config: Mapping[str, Any] | EnvConfig | None = None, *,
                 render_mode: str | None = None, **overrides: Any) -> None:
        self.venv = TrafficBotsVecEnv(num_envs, config, autoreset_mode=AutoresetMode.SAME_STEP,
                                      render_mode=render_mode, **overrides)
        self._actions: np.ndarray | None = None
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        obs, infos = self.venv.reset(seed=seeds, options=self._merged_options())
        self.reset_infos = row_dicts(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def _merged_options(self) -> dict[str, Any] | None:
        if not any(self._options):
            return None
        keys = set(self._options[0])
        if any(set(o) != keys for o in self._options):
            raise ValueError(f"reset options must name the same keys for every env, got {self._options}")
        return {k: [o[k] for o in self._options] for k in keys}

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_async must be called before step_wait")
        obs, reward, terminated, truncated, infos = self.venv.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        rows = row_dicts(infos, self.num_envs)
        if dones.any():
            finals = row_dicts(infos["final_info"], self.num_envs)
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = dict(rows[i])
                rows[i].update(finals[i])
                rows[i]["terminal_observation"] = infos["final_obs"][i]
                rows[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32), dones, rows

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * len(self._rows(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._rows(indices))

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._rows(indices))

    def get_images(self) -> list[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs

    def _rows(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


def make_sb3_vec_env(num_envs: int = 1, **env_kwargs: Any) -> TrafficBotsSB3VecEnv:
    """An SB3 ``VecEnv`` of ``num_envs`` TrafficBots envs in one batched simulator (keys as ``gym.make``)."""
    return TrafficBotsSB3VecEnv(num_envs, **env_kwargs)


POLICY_ENV_MEMBER = "trafficbots_env.json"
"""Member of a saved SB3 model archive holding the env settings its policy was trained with."""
POLICY_ENV_KEYS: tuple[str, ...] = ("obs_mode", "action_mode", "route_offset_range", "n_acc", "n_yaw_rate",
                                    "num_agents_obs", "num_map_points", "map_point_stride", "num_tl_obs",
                                    "num_route_points", "route_spacing", "obs_range", "ego_guard",
                                    "route_curve_accel")
"""The ``EnvConfig`` keys that shape a policy's observations and actions (stored with the policy); the ego
guard is part of the controller a policy was trained as."""


def policy_env_settings(config: EnvConfig) -> dict[str, Any]:
    """The ``POLICY_ENV_KEYS`` of ``config``: what a policy trained on it needs of an env."""
    return {key: getattr(config, key) for key in POLICY_ENV_KEYS}


def write_policy_env_settings(path: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Store ``settings`` (JSON) as the member ``trafficbots_env.json`` of the SB3 model archive at ``path``,
    replacing one already there. The archive is rewritten into a temporary file beside it, which is then
    renamed over it: ``path`` is never left half written."""
    path = Path(path)
    payload = json.dumps(dict(settings), indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(path) as src, zipfile.ZipFile(f, "w") as dst:
                for info in src.infolist():
                    if info.filename != POLICY_ENV_MEMBER:
                        dst.writestr(info, src.read(info))
                dst.writestr(POLICY_ENV_MEMBER, payload, compress_type=zipfile.ZIP_DEFLATED)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_policy_env_settings(path: str | os.PathLike) -> dict[str, Any] | None:
    """The env settings stored in the SB3 model archive at ``path`` (``trafficbots_env.json``); None when it
    has none. A member that is not a JSON object raises ``ValueError``."""
    with zipfile.ZipFile(path) as archive:
        if POLICY_ENV_MEMBER not in archive.namelist():
            return None
        raw = archive.read(POLICY_ENV_MEMBER)
    try:
        settings = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: member {POLICY_ENV_MEMBER} is not valid JSON ({e})") from e
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: member {POLICY_ENV_MEMBER} must hold a JSON object, got {type(settings).__name__}")
    return settings


def row_dicts(infos: Mapping[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium vector infos (``{key: [N], "_key": mask}``, nested) -> one plain dict per row (Python
    scalars for 1-D arrays, row arrays for wider ones). Built column by column: a few milliseconds for
    1,024 rows of the env's ~50 keys."""
    full_keys: list[str] = []
    full_columns: list[list[Any]] = []
    partial: list[tuple[str, list[Any], np.ndarray]] = []
    for key, value in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        column = row_dicts(value, num_envs) if isinstance(value, Mapping) else _column(value)
        mask = infos.get(f"_{key}")
        if mask is None or bool(np.all(mask)):
            full_keys.append(key)
            full_columns.append(column)
        else:
            partial.append((key, column, np.flatnonzero(np.asarray(mask))))
    rows = [dict(zip(full_keys, values)) for values in zip(*full_columns)] if full_keys else \
        [{} for _ in range(num_envs)]
    for key, column, where in partial:
        for i in where.tolist():
            rows[i][key] = column[i]
    return rows


def _column(value: Any) -> list[Any]:
    """A per-row info array as a list: Python scalars for 1-D arrays, row arrays for wider ones."""
    array = np.asarray(value)
    return array.tolist() if array.ndim == 1 else list(array)
