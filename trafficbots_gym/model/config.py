"""``TrafficBotsConfig``: the architecture and behaviour switches of the TrafficBots model.

The defaults are the reference configuration (``configs/model/traffic_bots.yaml`` of the reference
implementation): hidden size 128, 4 heads, a 96-d pose encoding, 3+1 map-encoder layers, 3 agent-to-map,
3 agent-to-traffic-light and 3 agent-interaction layers, a 3-layer GRU, a 16-d Gaussian personality latent,
a destination predictor and a per-type Gaussian action head. The config is JSON-serialisable
(:meth:`to_dict` / :meth:`from_dict`) so that it can travel inside a checkpoint's metadata.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from trafficbots_gym.data.constants import N_AGENT_TYPE, N_PL_NODE, N_PL_TYPE, N_TL_STATE, STEP_CURRENT


@dataclass
class TrafficBotsConfig:
    """Hyper-parameters of :class:`~trafficbots_gym.model.traffic_bots.TrafficBots`.

    ``reference_compat`` selects the behaviour of the closed-loop policy:

    * ``False`` (fixed mode, default): during free rollout the kinematic policy inputs (velocity,
      acceleration, yaw rate) follow the simulated state, the traffic-light tokens are those of the current
      step (the last logged step is held beyond the log) and headings are wrapped to [-pi, pi) before they
      are encoded.
    * ``True``: reproduces the reference numerics exactly, including its stale kinematic inputs and the
      traffic lights frozen at the last history step (see ``docs/model.md``).
    """

    hidden_dim: int = 128
    n_head: int = 4
    d_feedforward: int = 128
    dropout: float = 0.1
    pe_dim: int = 96
    pe_theta_xy: float = 1000.0
    input_mlp_layers: int = 2
    map_node_layers: int = 3
    map_polyline_layers: int = 1
    as2pl_layers: int = 3
    as2tl_layers: int = 3
    interaction_layers: int = 3
    gru_layers: int = 3
    latent_dim: int = 16
    latent_down_sample: int = 5
    latent_log_std_init: float = -1.0
    dest_gru_layers: int = 3
    add_goal_mlp_in_layers: int = 3
    add_goal_layernorm: bool = True
    add_latent_mlp_in_layers: int = 2
    action_log_std_init: float = -2.0
    action_limits: list[list[float]] = field(default_factory=lambda: [[5.0, 1.5], [7.0, 7.0], [6.0, 3.0]])
    n_step_history: int = STEP_CURRENT + 1
    reference_compat: bool = False

    def __post_init__(self) -> None:
        if self.hidden_dim % self.n_head:
            raise ValueError(f"hidden_dim={self.hidden_dim} is not divisible by n_head={self.n_head}")
        if self.pe_dim % 4:
            raise ValueError(f"pe_dim={self.pe_dim} must be divisible by 4 (x, y, yaw blocks)")
        if self.hidden_dim - self.pe_dim < 1:
            raise ValueError(f"pe_dim={self.pe_dim} leaves no room for attributes in hidden_dim={self.hidden_dim}")
        if (self.n_step_history - 1) % self.latent_down_sample:
            raise ValueError(f"latent_down_sample={self.latent_down_sample} does not divide "
                             f"n_step_history-1={self.n_step_history - 1}")
        if len(self.action_limits) != N_AGENT_TYPE or any(len(r) != 2 for r in self.action_limits):
            raise ValueError(f"action_limits must be [{N_AGENT_TYPE}][2], got {self.action_limits}")

    @property
    def attr_embed_dim(self) -> int:
        """Width of the attribute embedding that is concatenated with the pose encoding."""
        return self.hidden_dim - self.pe_dim

    @property
    def agent_attr_dim(self) -> int:
        """vel (2) + speed + yaw rate + acceleration + size (3) + type one-hot (3)."""
        return 2 + 1 + 1 + 1 + 3 + N_AGENT_TYPE

    @property
    def map_attr_dim(self) -> int:
        """Polyline type one-hot + node-index one-hot."""
        return N_PL_TYPE + N_PL_NODE

    @property
    def tl_attr_dim(self) -> int:
        return N_TL_STATE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrafficBotsConfig":
        """Build from a dict; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrafficBotsConfig keys: {unknown}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "TrafficBotsConfig":
        return cls.from_dict(json.loads(text))
