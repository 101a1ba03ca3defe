"""``StepKeys``: the attention keys of a single-scene policy step on a CPU, trimmed without changing a bit.

Every step, each agent attends to the P map polylines of its scene (masked to the valid ones) and to the
traffic lights of the step. PyTorch's CPU attention kernel goes over the keys in blocks of ``KEY_BLOCK``;
a block whose keys are all masked adds exactly nothing (zero weights, an unchanged running maximum and
sums), so the step may leave out the blocks after the one holding the last valid polyline, and needs no
mask when every key it keeps is valid (a zero additive mask changes no bit). At a step whose lights are all
invalid, every agent's light-attention output is zero: the agent-to-light block then runs its
feed-forward halves only. The kept keys are views of the episode's buffers; masks are made once per
episode (one per distinct set of valid lights). Only for float32 (the block size is that of the float32
kernel).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from trafficbots_gym.model.closed_loop import EpisodeContext
from trafficbots_gym.model.layers import AttentionMask, KeyValue, fixed_key_mask
from trafficbots_gym.model.traffic_bots import TrafficBots

KEY_BLOCK = 512
"""Keys per block of PyTorch's CPU attention kernel (float32)."""


@dataclass
class StepKeys:
    """Keys, values and masks of the map and light attention of one scene's steps."""

    map_kv: list[KeyValue]       # per agent-to-map layer: the kept keys / values [1, H, M, d]
    map_mask: AttentionMask      # of the kept polylines
    tl_kv: list[KeyValue]        # per agent-to-light layer: every light step's keys / values [1, T, H, S, d]
    tl_last: int                 # last light step the policy may see
    tl_masks: list[AttentionMask | None]   # per light step up to ``tl_last``: its mask, None without valid lights

    @staticmethod
    def of(ctx: EpisodeContext) -> "StepKeys":
        """The keys of the single scene of ``ctx`` (host reads of its validity: call at reset)."""
        valid = ctx.map.valid
        n_pl = valid.shape[-1]
        last = int(valid[0].nonzero().max()) + 1 if bool(valid.any()) else 1
        kept = min(n_pl, -(-last // KEY_BLOCK) * KEY_BLOCK)
        map_kv = [(k[:, :, :kept], v[:, :, :kept]) for k, v in ctx.map.kv]
        tl_last = int(ctx.tl_last[0])
        lights = ctx.tl_valid[:, :tl_last + 1]                                 # [1, T', S]
        masks: dict[tuple[bool, ...], AttentionMask | None] = {}
        tl_masks = []
        for step, pattern in enumerate(map(tuple, lights[0].tolist())):
            if pattern not in masks:
                masks[pattern] = fixed_key_mask(lights[:, step]) if any(pattern) else None
            tl_masks.append(masks[pattern])
        return StepKeys(map_kv=map_kv, map_mask=fixed_key_mask(valid[:, :kept]), tl_kv=ctx.tl_kv, tl_last=tl_last,
                        tl_masks=tl_masks)

    def context(self, model: TrafficBots, tokens: Tensor, valid: Tensor, step: int) -> Tensor:
        """``TrafficBots.policy_context`` of agent tokens [1, Q, D] (validity [1, Q]) moving to ``step``:
        the map attention, then that of the lights of step ``min(step - 1, tl_last)`` -> [1, Q, D]."""
        x = model.as2pl.forward_masked(tokens, valid, self.map_kv, self.map_mask)
        light = max(min(step - 1, self.tl_last), 0)
        mask = self.tl_masks[light]
        if mask is None:
            return model.as2tl.feed_forward(x, valid)
        return model.as2tl.forward_masked(x, valid, [(k[:, light], v[:, light]) for k, v in self.tl_kv], mask)
