"""Destination predictor: a categorical over the map polylines for every agent.

Agent history tokens and map features are detached (the predictor is trained only by its own NLL). The
history goes through a GRU with a residual connection, the token of each agent's last valid step is
paired with every polyline and scored by an MLP. Polylines that are invalid, of a class other than 0-4,
or not allowed for the agent's type get logit ``-inf``: vehicles may not target bike lanes, pedestrians
only road-edge boundaries, cyclists no vehicle lanes. Agents without valid history get all-zero logits.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from trafficbots_gym.data.constants import AgentType, MapType
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.layers import MLP, gru_sequence, last_valid, make_gru, recompute

N_DEST_TYPES = MapType.ROAD_EDGE_BOUNDARY + 1
"""Destination candidates are polylines of classes 0..4 (lanes, bike lanes, road-edge boundaries)."""


def destination_mask(agent_type: Tensor, map_type: Tensor, map_valid: Tensor) -> Tensor:
    """[B, A, P] bool, True where polyline p is a forbidden destination for agent a."""
    lane = map_type[:, :, :MapType.BIKE_LANE].any(-1)                      # 0..2 vehicle lanes
    bike = map_type[:, :, MapType.BIKE_LANE]
    candidate = map_valid & map_type[:, :, :N_DEST_TYPES].any(-1)
    veh = agent_type[:, :, AgentType.VEHICLE, None] & bike.unsqueeze(1)
    ped = agent_type[:, :, AgentType.PEDESTRIAN, None] & (lane | bike).unsqueeze(1)
    cyc = agent_type[:, :, AgentType.CYCLIST, None] & lane.unsqueeze(1)
    return veh | ped | cyc | ~candidate.unsqueeze(1)


class DestPredictor(nn.Module):
    """History tokens [B, T, A, D] + polyline features [B, P, D] -> destination logits [B, A, P].

    ``recompute``: recompute the (agent, polyline) pair scorer's activations in the backward pass instead of
    saving them (the scorer has no dropout; see :func:`~trafficbots_gym.model.layers.recompute`).
    """

    def __init__(self, cfg: TrafficBotsConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.gru = make_gru(d, cfg.dest_gru_layers, cfg.dropout)
        self.mlp = MLP([2 * d, d, d, 1], layernorm=True, end_activation=False)
        self.recompute = False

    def forward(self, agent_tokens: Tensor, agent_valid: Tensor, agent_type: Tensor, map_feature: Tensor,
                map_valid: Tensor, map_type: Tensor, *, agent_chunk: int | None = None) -> Tensor:
        """Logits [B, A, P]; ``agent_chunk``: score that many agents at a time (the pairs' activations of a
        chunk stay in the CPU caches; the same values)."""
        agent_tokens, map_feature = agent_tokens.detach(), map_feature.detach()
        x = gru_sequence(self.gru, agent_tokens, agent_valid) + agent_tokens
        agent = last_valid(x, agent_valid)                                   # [B, A, D]
        # First Linear of MLP(concat(map, agent)) split into its map and agent halves.
        first = self.mlp.linears[0]
        d = map_feature.shape[-1]
        h_map = nn.functional.linear(map_feature, first.weight[:, :d]).unsqueeze(1)   # [B, 1, P, H]
        h_agent = nn.functional.linear(agent, first.weight[:, d:], first.bias).unsqueeze(2)  # [B, A, 1, H]
        chunk = h_agent.shape[1] if agent_chunk is None else agent_chunk
        checkpointed = self.recompute and torch.is_grad_enabled()
        logits = torch.cat([recompute(self._score, h_map, part) if checkpointed else self._score(h_map, part)
                            for part in h_agent.split(chunk, dim=1)], dim=1)
        logits = logits.float().masked_fill(destination_mask(agent_type, map_type, map_valid), float("-inf"))
        has_history = agent_valid.any(1)
        logits = logits.masked_fill(~has_history.unsqueeze(-1), 0.0)
        return logits.masked_fill(torch.isneginf(logits).all(-1, keepdim=True), 0.0)

    def _score(self, h_map: Tensor, h_agent: Tensor) -> Tensor:
        """Pair logits [B, A', P] from the first layer's map [B, 1, P, H] and agent [B, A', 1, H] halves."""
        return self.mlp.forward_from(h_map + h_agent).squeeze(-1)
