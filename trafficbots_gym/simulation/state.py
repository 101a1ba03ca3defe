"""``AgentState``: the kinematic state of every agent of every scene at one step, ``[B, A, ...]``."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.simulation.dynamics import unicycle_step


@dataclass
class AgentState:
    """Per-step agent state; invalid agents carry zeros."""

    valid: torch.Tensor     # [B, A] bool
    pos: torch.Tensor       # [B, A, 2] m
    yaw: torch.Tensor       # [B, A] rad (unwrapped)
    spd: torch.Tensor       # [B, A] signed speed m/s
    vel: torch.Tensor       # [B, A, 2] m/s
    acc: torch.Tensor       # [B, A] m/s^2
    yaw_rate: torch.Tensor  # [B, A] rad/s

    @staticmethod
    def from_log(batch: SceneBatch, step: int) -> "AgentState":
        """The logged state of step ``step``."""
        return AgentState(valid=batch.agent_valid[:, step], pos=batch.agent_pos[:, step],
                          yaw=batch.agent_yaw[:, step], spd=batch.agent_spd[:, step],
                          vel=batch.agent_vel[:, step], acc=batch.agent_acc[:, step],
                          yaw_rate=batch.agent_yaw_rate[:, step])

    def where(self, mask: torch.Tensor, other: "AgentState") -> "AgentState":
        """Take ``other``'s entries where ``mask`` [B, A] is true, ours elsewhere."""
        mask_xy = mask.unsqueeze(-1)
        return AgentState(valid=torch.where(mask, other.valid, self.valid),
                          pos=torch.where(mask_xy, other.pos, self.pos), yaw=torch.where(mask, other.yaw, self.yaw),
                          spd=torch.where(mask, other.spd, self.spd), vel=torch.where(mask_xy, other.vel, self.vel),
                          acc=torch.where(mask, other.acc, self.acc),
                          yaw_rate=torch.where(mask, other.yaw_rate, self.yaw_rate))

    def masked(self) -> "AgentState":
        """Zero the entries of invalid agents."""
        invalid = ~self.valid
        invalid_xy = invalid.unsqueeze(-1)
        return AgentState(valid=self.valid.clone(), pos=self.pos.masked_fill(invalid_xy, 0.0),
                          yaw=self.yaw.masked_fill(invalid, 0.0), spd=self.spd.masked_fill(invalid, 0.0),
                          vel=self.vel.masked_fill(invalid_xy, 0.0), acc=self.acc.masked_fill(invalid, 0.0),
                          yaw_rate=self.yaw_rate.masked_fill(invalid, 0.0))

    def step(self, acc: torch.Tensor, yaw_rate: torch.Tensor, dt: float = 0.1) -> "AgentState":
        """Integrate the unicycle with physical actions [B, A]; invalid agents stay zero."""
        pos, yaw, spd, vel = unicycle_step(self.pos, self.yaw, self.spd, acc, yaw_rate, dt)
        return AgentState(valid=self.valid, pos=pos, yaw=yaw, spd=spd, vel=vel, acc=acc,
                          yaw_rate=yaw_rate).masked()

    def index(self, rows: torch.Tensor) -> "AgentState":
        return AgentState(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def clone(self) -> "AgentState":
        return AgentState(**{f.name: getattr(self, f.name).clone() for f in fields(self)})
