"""``SceneBatch``: scenes collated into torch tensors for the model and the simulator.

Layout: batch first, then time for sequences, then entities -- ``[B, T, A, ...]`` -- so that
``x[:, t]`` is the per-step ``[B, A, ...]`` tensor the simulator and the policy work with.
Scalars per agent and step are squeezed (``agent_spd`` is ``[B, T, A]``, not ``[..., 1]``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from trafficbots_gym.data.scene import AgentTracks, Scene, TrafficLightStops


@dataclass
class SceneBatch:
    """Tensors of B scenes. Agent and TL views are the scenes' full view when present, else history."""

    agent_valid: torch.Tensor      # [B, T, A] bool
    agent_pos: torch.Tensor        # [B, T, A, 2] m
    agent_vel: torch.Tensor        # [B, T, A, 2] m/s
    agent_spd: torch.Tensor        # [B, T, A] signed m/s
    agent_acc: torch.Tensor        # [B, T, A] m/s^2
    agent_yaw: torch.Tensor        # [B, T, A] rad (unwrapped)
    agent_yaw_rate: torch.Tensor   # [B, T, A] rad/s
    agent_type: torch.Tensor       # [B, A, 3] bool one-hot (all-false for padding)
    agent_role: torch.Tensor       # [B, A, 3] bool
    agent_size: torch.Tensor       # [B, A, 3] length, width, height (m)
    agent_object_id: torch.Tensor  # [B, A] int64
    agent_goal: torch.Tensor       # [B, A, 4] x, y, yaw, spd of the last valid state (zeros if unknown)
    agent_dest: torch.Tensor       # [B, A] int64 destination polyline (0 if unknown)
    agent_dest_known: torch.Tensor  # [B] bool: the scenes carry logged destinations
    map_valid: torch.Tensor        # [B, P, N] bool
    map_type: torch.Tensor         # [B, P, 11] bool
    map_pos: torch.Tensor          # [B, P, N, 2] m
    map_dir: torch.Tensor          # [B, P, N, 2] m
    map_boundary: torch.Tensor     # [B, 4] xmin, xmax, ymin, ymax
    tl_valid: torch.Tensor         # [B, T, S] bool
    tl_state: torch.Tensor         # [B, T, S, 5] bool one-hot
    tl_pos: torch.Tensor           # [B, T, S, 2] m
    tl_dir: torch.Tensor           # [B, T, S, 2]

    @property
    def batch_size(self) -> int:
        return int(self.agent_valid.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.agent_valid.shape[1])

    @property
    def device(self) -> torch.device:
        return self.agent_valid.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SceneBatch":
        return SceneBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                             for f in fields(self)})

    def pin_memory(self) -> "SceneBatch":
        return SceneBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def index(self, rows: torch.Tensor | Sequence[int]) -> "SceneBatch":
        """The sub-batch of scenes ``rows``."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return SceneBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def from_scenes(scenes: Sequence[Scene], history_only: bool = False) -> "SceneBatch":
        """Collate scenes (all of the same view length). ``history_only`` uses the ``history/`` views."""
        return collate_arrays([scene_to_arrays(s, history_only) for s in scenes])


def scene_to_arrays(scene: Scene, history_only: bool = False) -> dict[str, np.ndarray]:
    """The per-scene numpy arrays of a ``SceneBatch`` (no batch dimension)."""
    agents: AgentTracks
    tl: TrafficLightStops
    if history_only:
        if scene.history_agent is None or scene.history_tl_stop is None:
            raise ValueError(f"scene {scene.scenario_id!r} has no history/ views")
        agents, tl = scene.history_agent, scene.history_tl_stop
    else:
        agents, tl = scene.sim_agents, scene.sim_tl_stop
    n_agent = agents.valid.shape[1]
    # Types/sizes of history views are blanked for agents unseen in history; the full view knows them.
    type_source = scene.agent if scene.agent is not None and not history_only else agents
    dest_known = agents.dest is not None
    return {
        "agent_valid": agents.valid,
        "agent_pos": agents.pos,
        "agent_vel": agents.vel,
        "agent_spd": agents.spd[..., 0],
        "agent_acc": agents.acc[..., 0],
        "agent_yaw": agents.yaw_bbox[..., 0],
        "agent_yaw_rate": agents.yaw_rate[..., 0],
        "agent_type": type_source.type,
        "agent_role": type_source.role,
        "agent_size": type_source.size,
        "agent_object_id": type_source.object_id,
        "agent_goal": agents.goal if agents.goal is not None else np.zeros((n_agent, 4), np.float32),
        "agent_dest": agents.dest if agents.dest is not None else np.zeros(n_agent, np.int64),
        "agent_dest_known": np.asarray(dest_known),
        "map_valid": scene.map.valid,
        "map_type": scene.map.type,
        "map_pos": scene.map.pos,
        "map_dir": scene.map.dir,
        "map_boundary": scene.map.boundary,
        "tl_valid": tl.valid,
        "tl_state": tl.state,
        "tl_pos": tl.pos,
        "tl_dir": tl.dir,
    }


def collate_arrays(items: Sequence[dict[str, np.ndarray]]) -> SceneBatch:
    """Stack per-scene arrays (from ``scene_to_arrays``) into a ``SceneBatch``; a DataLoader collate_fn."""
    if not items:
        raise ValueError("cannot collate an empty list of scenes")
    return SceneBatch(**{f.name: torch.from_numpy(np.stack([it[f.name] for it in items]))
                         for f in fields(SceneBatch)})
