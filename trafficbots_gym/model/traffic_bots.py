"""The TrafficBots model (Zhang et al., ICRA 2023) as a plain ``nn.Module``.

Scene-centric multi-agent policy: every agent token (kinematic attributes + pose encoding) attends to the
map polylines and the traffic-light stop points, then to the other agents, goes through a GRU over time,
receives its destination (a polyline) and its personality latent through residual MLPs, and a per-type
Gaussian head outputs unbounded (acceleration, yaw-rate) actions that ``tanh`` and the per-type limits map
to physical units for the midpoint unicycle.

The model owns the network only. Episode logic (teacher forcing, navigation, dynamics) lives in
:mod:`~trafficbots_gym.model.closed_loop`, :mod:`~trafficbots_gym.model.rollout` and
:mod:`~trafficbots_gym.model.policy`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trafficbots_gym.data.constants import N_PL_NODE
from trafficbots_gym.model.action_head import ActionHead
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.destination import N_DEST_TYPES, DestPredictor, destination_mask
from trafficbots_gym.model.distributions import DiagGaussian
from trafficbots_gym.model.encoders import InputPeEncoder, MapEncoder, PosePE
from trafficbots_gym.model.latent import LatentHead
from trafficbots_gym.model.layers import (GRU, CrossAttentionLayer, KeyValue, ResidualFusion, TransformerBlock,
                                          gru_step, interact, make_gru)
from trafficbots_gym.simulation.dynamics import wrap_angle


@dataclass
class MapContext:
    """Per-episode map encoding: polyline features, validity and the agent-to-map keys/values per layer."""

    feature: Tensor          # [B, P, D]
    valid: Tensor            # [B, P]
    kv: list[KeyValue]       # as2pl layers, each ([B, H, P, d], [B, H, P, d])

    def index(self, rows: Tensor) -> "MapContext":
        return MapContext(self.feature[rows], self.valid[rows], [(k[rows], v[rows]) for k, v in self.kv])


@dataclass
class HeadInputs:
    """Embedded destination features and personality latents of the policy head ([B, A, D] each): they
    are fixed for an episode, so a closed loop can embed them once (:meth:`TrafficBots.embed_head_inputs`)."""

    goal: Tensor
    latent: Tensor


@dataclass
class AgentKinematics:
    """Per-step kinematic state of agents, any leading shape ``[...]`` (e.g. [B, A] or [B, T, A])."""

    valid: Tensor     # [...]
    pos: Tensor       # [..., 2]
    yaw: Tensor       # [...]
    spd: Tensor       # [...]
    vel: Tensor       # [..., 2]
    acc: Tensor       # [...]
    yaw_rate: Tensor  # [...]


class TrafficBots(nn.Module):
    """TrafficBots network; see the module docstring and ``docs/model.md``."""

    def __init__(self, cfg: TrafficBotsConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else TrafficBotsConfig()
        self.cfg = cfg
        d = cfg.hidden_dim
        tf = dict(d_model=d, n_head=cfg.n_head, d_feedforward=cfg.d_feedforward, dropout=cfg.dropout)
        self.pose_pe = PosePE(cfg.pe_dim, cfg.pe_theta_xy)
        self.register_buffer("node_onehot", torch.eye(N_PL_NODE), persistent=False)
        self.map_encoder = MapEncoder(cfg)
        self.tl_encoder = InputPeEncoder(cfg.tl_attr_dim, cfg)
        self.agent_encoder = InputPeEncoder(cfg.agent_attr_dim, cfg)
        self.as2pl = TransformerBlock(cfg.as2pl_layers, **tf)
        self.as2tl = TransformerBlock(cfg.as2tl_layers, **tf)
        self.dest_predictor = DestPredictor(cfg)
        self.latent_prior = LatentHead(cfg)
        self.latent_post = LatentHead(cfg)
        self.interaction = TransformerBlock(cfg.interaction_layers, **tf)
        self.temporal = make_gru(d, cfg.gru_layers, cfg.dropout)
        self.add_goal = ResidualFusion(d, d, cfg.add_goal_mlp_in_layers, layernorm=cfg.add_goal_layernorm,
                                       dropout=cfg.dropout)
        self.add_latent = ResidualFusion(cfg.latent_dim, d, cfg.add_latent_mlp_in_layers, layernorm=False,
                                         dropout=cfg.dropout)
        self.action_head = ActionHead(d, cfg.action_log_std_init)

    # ----------------------------------------------------------------------------------------------- info
    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameter values; 3,395,949 for the default config."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def selective_checkpointing(self) -> bool:
        """Whether training passes recompute the parts of the network that draw no random numbers (every
        layer norm with the projection after it, the GRU cells, the destination pair scorer) in the backward
        pass instead of saving their activations (selective activation checkpointing): less activation
        memory, the same values and gradients, a little more compute. Unlike checkpointing whole steps it
        restores no RNG state, so it may be captured in a CUDA graph. Off by default; passes without
        gradients are unaffected."""
        return self.dest_predictor.recompute

    @selective_checkpointing.setter
    def selective_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, (CrossAttentionLayer, DestPredictor, GRU)):
                module.recompute = bool(enabled)

    def initial_hidden(self, n_batch: int, n_agent: int, like: Tensor) -> Tensor:
        """Zero GRU state [layers, B*A, D]."""
        return like.new_zeros(self.cfg.gru_layers, n_batch * n_agent, self.cfg.hidden_dim)

    # ------------------------------------------------------------------------------------------ encoders
    def _pe_yaw(self, yaw: Tensor) -> Tensor:
        return yaw if self.cfg.reference_compat else wrap_angle(yaw)

    def encode_map(self, valid: Tensor, map_type: Tensor, pos: Tensor, direction: Tensor, *,
                   sparse: bool = False) -> MapContext:
        """Polylines ``valid`` [B, P, N], ``map_type`` [B, P, 11], ``pos``/``direction`` [B, P, N, 2].

        ``sparse`` runs the per-polyline node encoder only on polylines with a valid node (the others
        pool to zero either way), and its per-node layers only on the valid nodes: the same result with
        less work, but data-dependent shapes and a host synchronisation, so it is meant for inference.
        """
        n_scene, n_pl, n_node = valid.shape
        if not sparse:
            attr, pe = self._map_node_inputs(map_type.unsqueeze(2).expand(-1, -1, n_node, -1), pos, direction)
            feature, pl_valid = self.map_encoder(valid, attr, pe)
            return MapContext(feature, pl_valid, self.as2pl.project_kv(feature))
        pl_valid = valid.any(-1)
        rows = pl_valid.flatten().nonzero().squeeze(1)
        node_valid = valid.flatten(0, 1)[rows]                                    # [R, N]
        nodes = node_valid.flatten().nonzero().squeeze(1)                         # valid nodes of those rows
        node_type = map_type.flatten(0, 1)[rows].unsqueeze(1).expand(-1, n_node, -1).flatten(0, 1)[nodes]
        onehot = self.node_onehot[:n_node, :n_node].expand(len(rows), -1, -1).flatten(0, 1)[nodes]
        attr = torch.cat([node_type, onehot], dim=-1).to(pos.dtype)
        node_pos, node_dir = pos.flatten(0, 1)[rows].flatten(0, 1)[nodes], direction.flatten(0, 1)[rows].flatten(0, 1)[nodes]
        pe = self.pose_pe(node_pos, torch.atan2(node_dir[..., 1], node_dir[..., 0]))
        pooled = self.map_encoder.encode_valid_nodes(node_valid, attr, pe)
        pl = pooled.new_zeros(n_scene * n_pl, pooled.shape[-1]).index_copy(0, rows, pooled)
        feature = self.map_encoder.aggregate(pl.view(n_scene, n_pl, -1), pl_valid)
        return MapContext(feature, pl_valid, self.as2pl.project_kv(feature))

    def _map_node_inputs(self, node_type: Tensor, pos: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
        """Node attributes (polyline type one-hot ``node_type`` [..., N, 11] + node-index one-hot) and pose
        encodings of nodes at ``pos`` / ``direction`` [..., N, 2]."""
        n_node = pos.shape[-2]
        onehot = self.node_onehot[:n_node, :n_node].expand(*node_type.shape[:-1], n_node)
        attr = torch.cat([node_type, onehot], dim=-1).to(pos.dtype)
        return attr, self.pose_pe(pos, torch.atan2(direction[..., 1], direction[..., 0]))

    def encode_traffic_lights(self, valid: Tensor, state: Tensor, pos: Tensor, direction: Tensor) -> Tensor:
        """Stop-point tokens [..., S, D] of ``valid`` [..., S], one-hot ``state`` [..., S, 5], ``pos``/``direction``."""
        pe = self.pose_pe(pos, torch.atan2(direction[..., 1], direction[..., 0]))
        return self.tl_encoder(valid, state.to(pos.dtype), pe)

    def encode_agents(self, kin: AgentKinematics, size: Tensor, agent_type: Tensor) -> Tensor:
        """Agent tokens [..., A, D]; ``size`` / ``agent_type`` [B, A, 3] broadcast over extra time dims."""
        extra = kin.valid.dim() - 2
        size = size.reshape(size.shape[:1] + (1,) * extra + size.shape[1:]).expand(*kin.valid.shape, 3)
        atype = agent_type.reshape(agent_type.shape[:1] + (1,) * extra + agent_type.shape[1:])
        atype = atype.expand(*kin.valid.shape, 3).to(kin.pos.dtype)
        attr = torch.cat([kin.vel, kin.spd.unsqueeze(-1), kin.yaw_rate.unsqueeze(-1), kin.acc.unsqueeze(-1),
                          size.to(kin.pos.dtype), atype], dim=-1)
        return self.agent_encoder(kin.valid, attr, self.pose_pe(kin.pos, self._pe_yaw(kin.yaw)))

    # -------------------------------------------------------------------------------- latent / destination
    def latent(self, tokens: Tensor, valid: Tensor, tl_tokens: Tensor, tl_valid: Tensor, map_ctx: MapContext,
               posterior: bool) -> DiagGaussian:
        """Personality distribution from agent tokens [B, T, A, D] and TL tokens [B, T, S, D] of T logged steps.

        Steps are down-sampled by ``latent_down_sample`` (T-1 must be divisible), the tokens attend to the
        map and to the TL of their own step, then go through the prior or posterior head.
        """
        rate = self.cfg.latent_down_sample
        if (valid.shape[1] - 1) % rate:
            raise ValueError(f"latent encoder needs T-1 divisible by {rate}, got T={valid.shape[1]}")
        tokens, valid = tokens[:, ::rate], valid[:, ::rate]
        tl_tokens, tl_valid = tl_tokens[:, ::rate], tl_valid[:, ::rate]
        n_batch, n_step, n_agent, dim = tokens.shape
        x = self.as2pl.forward_kv(tokens.flatten(1, 2), valid.flatten(1, 2), map_ctx.kv, map_ctx.valid)
        x = self.as2tl(x.view(n_batch * n_step, n_agent, dim), valid.flatten(0, 1), tl_tokens.flatten(0, 1),
                       tl_valid.flatten(0, 1))
        head = self.latent_post if posterior else self.latent_prior
        return head(x.view(n_batch, n_step, n_agent, dim), valid)

    def destination_logits(self, tokens: Tensor, valid: Tensor, agent_type: Tensor, map_ctx: MapContext,
                           map_type: Tensor, *, sparse: bool = False) -> Tensor:
        """Destination logits [B, A, P] from history agent tokens [B, T, A, D].

        ``sparse`` scores only each scene's candidate polylines (valid, classes 0-4; every other polyline
        gets ``-inf`` either way), scene by scene: the same logits with less work (inference).
        """
        if not sparse:
            return self.dest_predictor(tokens, valid, agent_type, map_ctx.feature, map_ctx.valid, map_type)
        candidate = map_ctx.valid & map_type[:, :, :N_DEST_TYPES].any(-1)
        return torch.cat([self._scene_destination_logits(tokens[i:i + 1], valid[i:i + 1], agent_type[i:i + 1],
                                                         map_ctx.feature[i:i + 1], map_type[i:i + 1],
                                                         candidate[i:i + 1])
                          for i in range(valid.shape[0])])

    def _scene_destination_logits(self, tokens: Tensor, valid: Tensor, agent_type: Tensor, feature: Tensor,
                                  map_type: Tensor, candidate: Tensor) -> Tensor:
        """Logits [1, A, P] of one scene with candidate polylines ``candidate`` [1, P]: the predictor on the
        candidates (and a few padding polylines) for the agents with history, ``-inf`` where the polyline is
        not allowed, zero rows where the full predictor zeroes them (no history, or no allowed polyline)."""
        has_history = valid.any(1)                                             # [1, A]
        agents = has_history[0].nonzero().squeeze(1)
        cols = _padded_columns(candidate[0])
        sub = self.dest_predictor(tokens[:, :, agents], valid[:, :, agents], agent_type[:, agents], feature[:, cols],
                                  candidate[:, cols], map_type[:, cols],
                                  agent_chunk=max(1, DEST_CHUNK_ROWS // len(cols)))
        logits = sub.new_full(valid.shape[:1] + valid.shape[2:] + feature.shape[1:2], float("-inf"))
        logits[:, agents.unsqueeze(-1), cols] = sub
        forbidden = destination_mask(agent_type, map_type, candidate)
        logits = logits.masked_fill(forbidden, float("-inf"))
        return logits.masked_fill((~has_history | forbidden.all(-1)).unsqueeze(-1), 0.0)

    # ------------------------------------------------------------------------------------------- policy
    def project_tl_kv(self, tl_tokens: Tensor) -> list[KeyValue]:
        """Agent-to-TL keys/values of every layer for TL tokens [B, T, S, D] -> each [B, T, H, S, d]."""
        return self.as2tl.project_kv(tl_tokens)

    def policy(self, tokens: Tensor, valid: Tensor, agent_type: Tensor, map_ctx: MapContext, tl_kv: list[KeyValue],
               tl_valid: Tensor, goal_feature: Tensor, goal_valid: Tensor, latent: Tensor,
               hidden: Tensor) -> tuple[DiagGaussian, Tensor]:
        """One policy step for all agents.

        ``tokens`` [B, A, D] encoded current state, ``tl_kv`` agent-to-TL keys/values of the step's lights
        (per layer [B, H, S, d], see :meth:`project_tl_kv`) with validity ``tl_valid`` [B, S],
        ``goal_feature`` [B, A, D] (feature of the destination polyline), ``latent`` [B, A, Z],
        ``hidden`` [layers, B*A, D] -> (action distribution [B, A, 2], new hidden).
        """
        x = self.policy_features(tokens.unsqueeze(1), valid.unsqueeze(1), map_ctx,
                                 [(k.unsqueeze(1), v.unsqueeze(1)) for k, v in tl_kv], tl_valid.unsqueeze(1))
        x, hidden = gru_step(self.temporal, x.squeeze(1), valid, hidden)
        return self.policy_head(x, valid, agent_type, goal_valid, self.embed_head_inputs(goal_feature, latent)), hidden

    def policy_features(self, tokens: Tensor, valid: Tensor, map_ctx: MapContext, tl_kv: list[KeyValue],
                        tl_valid: Tensor) -> Tensor:
        """The recurrent input of S policy steps at once: agent tokens [B, S, A, D] with validity [B, S, A]
        attend to the map, to the lights of their step (``tl_kv`` per layer [B, S, H, L, d], ``tl_valid``
        [B, S, L]) and to the other agents of their step -> [B, S, A, D]. Steps do not interact."""
        x = self.policy_context(tokens, valid, map_ctx, tl_kv, tl_valid)
        n_batch, n_step, n_agent, dim = x.shape
        x = interact(self.interaction, x.view(n_batch * n_step, n_agent, dim), valid.flatten(0, 1))
        return x.view(n_batch, n_step, n_agent, dim)

    def policy_context(self, tokens: Tensor, valid: Tensor, map_ctx: MapContext, tl_kv: list[KeyValue],
                       tl_valid: Tensor) -> Tensor:
        """The first part of :meth:`policy_features`: agent tokens [B, S, Q, D] (any Q agents, e.g. a subset)
        attend to the map and to the lights of their step -> [B, S, Q, D]; invalid agents give zeros."""
        n_batch, n_step, n_agent, dim = tokens.shape
        x = self.as2pl.forward_kv(tokens.flatten(1, 2), valid.flatten(1, 2), map_ctx.kv, map_ctx.valid)
        x = self.as2tl.forward_kv(x.view(n_batch * n_step, n_agent, dim), valid.flatten(0, 1),
                                  [(k.flatten(0, 1), v.flatten(0, 1)) for k, v in tl_kv], tl_valid.flatten(0, 1))
        return x.view(n_batch, n_step, n_agent, dim)

    def embed_head_inputs(self, goal_feature: Tensor, latent: Tensor) -> HeadInputs:
        """Embed the destination features [B, A, D] and latents [B, A, Z] for :meth:`policy_head` (in float32,
        the dtype of the GRU output they are fused with)."""
        return HeadInputs(self.add_goal.embed(goal_feature.float()), self.add_latent.embed(latent.float()))

    def policy_head(self, x: Tensor, valid: Tensor, agent_type: Tensor, goal_valid: Tensor,
                    head_inputs: HeadInputs) -> DiagGaussian:
        """Action distribution [B, A, 2] from the GRU output ``x`` [B, A, D] (float32), the embedded destination
        features (used where ``goal_valid``) and personality latents."""
        x = self.add_goal.fuse(x, valid, head_inputs.goal, goal_valid)
        x = self.add_latent.fuse(x, valid, head_inputs.latent, valid)
        return self.action_head(x, valid, agent_type)

    @staticmethod
    def goal_feature(map_ctx: MapContext, dest: Tensor) -> Tensor:
        """Feature of each agent's destination polyline ``dest`` [B, A] -> [B, A, D]."""
        return torch.gather(map_ctx.feature, 1, dest.unsqueeze(-1).expand(-1, -1, map_ctx.feature.shape[-1]))


DEST_ROW_BLOCK = 16
"""The pairwise scorer's last layer is a matrix-vector product whose per-row rounding on CPU (MKL) depends on
the row count modulo a small block; sparse scoring keeps its row count a multiple of this block, like the
dense one, so that both give the same bits."""


DEST_CHUNK_ROWS = 2048
"""Sparse destination scoring goes through about this many (agent, polyline) pairs at a time."""


def _padded_columns(candidate: Tensor) -> Tensor:
    """Indices of the ``True`` polylines of ``candidate`` [P], padded with non-candidates to a multiple of
    ``DEST_ROW_BLOCK`` (all polylines when there are not enough)."""
    cols = candidate.nonzero().squeeze(1)
    missing = -len(cols) % DEST_ROW_BLOCK
    others = (~candidate).nonzero().squeeze(1)
    if missing > len(others):
        return torch.arange(len(candidate), device=candidate.device)
    return torch.cat([cols, others[:missing]]).sort().values
