"""trafficbots-gym: closed-loop driving on WOMD-format scenes with a learned TrafficBots background.

Importing the package registers the Gymnasium id ``TrafficBots-v0`` (single env, plus a vector entry
point so ``gym.make_vec("TrafficBots-v0", num_envs=N)`` builds the batched ``TrafficBotsVecEnv``).
"""
from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_ID = "TrafficBots-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="trafficbots_gym.env.traffic_bots_env:TrafficBotsEnv",
             vector_entry_point="trafficbots_gym.env.vector_env:TrafficBotsVecEnv")


def make_sb3_vec_env(num_envs: int = 1, **env_kwargs: Any) -> Any:
    """A Stable-Baselines3 ``VecEnv`` of ``num_envs`` TrafficBots envs batched in one simulator.

    ``env_kwargs`` are the keys of ``gym.make("TrafficBots-v0", ...)``; see docs/env.md.
    """
    from trafficbots_gym.env.sb3 import make_sb3_vec_env as make
    return make(num_envs, **env_kwargs)
