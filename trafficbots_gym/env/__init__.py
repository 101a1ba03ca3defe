"""Gymnasium environments: ``TrafficBots-v0`` (single), the batched vector env and the SB3 adapter.

Classes load lazily, so ``import trafficbots_gym`` (which registers the env id) stays light.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "EnvConfig": "trafficbots_gym.env.config",
    "RewardConfig": "trafficbots_gym.env.config",
    "TerminationConfig": "trafficbots_gym.env.config",
    "TrafficBotsEnv": "trafficbots_gym.env.traffic_bots_env",
    "TrafficBotsVecEnv": "trafficbots_gym.env.vector_env",
    "TrafficBotsSB3VecEnv": "trafficbots_gym.env.sb3",
    "make_sb3_vec_env": "trafficbots_gym.env.sb3",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_EXPORTS[name]), name)
