"""Input encoders: pose encoding, attribute+pose token encoder and the polyline map encoder."""
from __future__ import annotations


import torch
from torch import Tensor, nn

from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.layers import MLP, TransformerBlock, keep_rows


def sinusoid_freqs(n_freq: int, theta: float) -> Tensor:
    """``theta^(-k/n_freq)`` for k = 0..n_freq-1, each repeated twice (the reference buffer layout)."""
    dim = 2 * n_freq
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[:n_freq].float() / dim))
    return freqs.repeat_interleave(2, 0)


def harmonic_freqs(n_freq: int) -> Tensor:
    """Integer harmonics 1..n_freq, each repeated twice (the reference buffer layout)."""
    return (torch.arange(0, n_freq) + 1.0).repeat_interleave(2, 0)


class PosePE(nn.Module):
    """Pose encoding ``pe_xy_yaw``: [cos(x f), sin(x f) | cos(y f), sin(y f) | cos(k yaw), sin(k yaw)].

    x and y use ``pe_dim/8`` geometric frequencies ``theta^(-k/n)``, yaw uses ``pe_dim/4`` integer
    harmonics. The frequency buffers are regenerated (not saved in checkpoints).
    """

    def __init__(self, pe_dim: int, theta_xy: float) -> None:
        super().__init__()
        self.out_dim = pe_dim
        self.register_buffer("freqs_xy", sinusoid_freqs(pe_dim // 8, theta_xy), persistent=False)
        self.register_buffer("freqs_yaw", harmonic_freqs(pe_dim // 4), persistent=False)

    @staticmethod
    def _encode(x: Tensor, freqs: Tensor) -> Tensor:
        arg = x.unsqueeze(-1) * freqs
        return torch.cat([torch.cos(arg[..., ::2]), torch.sin(arg[..., 1::2])], dim=-1)

    def forward(self, xy: Tensor, yaw: Tensor) -> Tensor:
        """``xy`` [..., 2], ``yaw`` [...] (rad) -> [..., pe_dim]."""
        return torch.cat([self._encode(xy[..., 0], self.freqs_xy), self._encode(xy[..., 1], self.freqs_xy),
                          self._encode(yaw, self.freqs_yaw)], dim=-1)


class InputPeEncoder(nn.Module):
    """Token = concat(MLP(attributes), pose encoding); zero for invalid tokens."""

    def __init__(self, attr_dim: int, cfg: TrafficBotsConfig) -> None:
        super().__init__()
        width = cfg.attr_embed_dim
        self.mlp = MLP([attr_dim] + [width] * cfg.input_mlp_layers, dropout=cfg.dropout, end_activation=False)

    def forward(self, valid: Tensor, attr: Tensor, pe: Tensor) -> Tensor:
        x = torch.cat([self.mlp(attr), pe.to(attr.dtype)], dim=-1)
        return keep_rows(x, valid.unsqueeze(-1))


POLYLINE_CHUNK = 64
"""Polylines per chunk of the sparse node encoder (about 1,000 node rows: activations that stay in the caches)."""


class MapEncoder(nn.Module):
    """Polyline encoder: node tokens -> node transformer -> max-pool -> polyline transformer.

    Polylines are encoded independently of each other up to the max-pool (:meth:`encode_polylines`), so
    any subset of them (e.g. only the valid ones) can go through that part; :meth:`aggregate` then runs
    the polyline transformer over all polylines of each scene.
    """

    def __init__(self, cfg: TrafficBotsConfig) -> None:
        super().__init__()
        tf = dict(d_model=cfg.hidden_dim, n_head=cfg.n_head, d_feedforward=cfg.d_feedforward, dropout=cfg.dropout)
        self.input_encoder = InputPeEncoder(cfg.map_attr_dim, cfg)
        self.node_transformer = TransformerBlock(cfg.map_node_layers, **tf)
        self.polyline_transformer = TransformerBlock(cfg.map_polyline_layers, **tf)

    def forward(self, node_valid: Tensor, node_attr: Tensor, node_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``node_valid`` [B, P, N], ``node_attr`` [B, P, N, attr], ``node_pe`` [B, P, N, pe]
        -> polyline features [B, P, D] and polyline validity [B, P]."""
        n_scene, n_pl = node_valid.shape[:2]
        pl = self.encode_polylines(node_valid.flatten(0, 1), node_attr.flatten(0, 1), node_pe.flatten(0, 1))
        pl_valid = node_valid.any(-1)
        return self.aggregate(pl.view(n_scene, n_pl, -1), pl_valid), pl_valid

    def encode_polylines(self, node_valid: Tensor, node_attr: Tensor, node_pe: Tensor) -> Tensor:
        """Max-pooled node features [R, D] of R independent polylines (``node_valid`` [R, N], ``node_attr``
        [R, N, attr], ``node_pe`` [R, N, pe]); zero for polylines without a valid node."""
        nodes = self.input_encoder(node_valid, node_attr, node_pe)
        nodes = self.node_transformer(nodes, node_valid, nodes, node_valid)
        pooled = nodes.masked_fill(~node_valid.unsqueeze(-1), float("-inf")).amax(dim=1)
        return pooled.masked_fill(~node_valid.any(-1, keepdim=True), 0.0)

    def encode_valid_nodes(self, node_valid: Tensor, node_attr: Tensor, node_pe: Tensor,
                           chunk: int = POLYLINE_CHUNK) -> Tensor:
        """:meth:`encode_polylines` of R polylines that each have a valid node, computed on their valid nodes
        only: ``node_attr`` [V, attr] / ``node_pe`` [V, pe] of the V valid nodes of ``node_valid`` [R, N] in
        row-major order -> max-pooled features [R, D], the same values (inference only; see
        :meth:`TransformerBlock.forward_packed`). Polylines go through in chunks of ``chunk``, whose
        activations stay in the CPU caches."""
        counts = node_valid.sum(-1).tolist()
        ends = torch.tensor(counts).cumsum(0).tolist()
        pooled = []
        for first in range(0, len(counts), chunk):
            last = min(first + chunk, len(counts))
            start, stop = ends[first] - counts[first], ends[last - 1]
            valid = node_valid[first:last]
            nodes = self.input_encoder(node_attr.new_ones(stop - start, dtype=torch.bool), node_attr[start:stop],
                                       node_pe[start:stop])
            nodes = self.node_transformer.forward_packed(nodes, valid)
            padded = nodes.new_full((valid.numel(), nodes.shape[-1]), float("-inf"))
            padded.index_copy_(0, valid.flatten().nonzero().squeeze(1), nodes)
            pooled.append(padded.view(*valid.shape, -1).amax(dim=1))
        return torch.cat(pooled)

    def aggregate(self, pl: Tensor, pl_valid: Tensor) -> Tensor:
        """Polyline transformer over the pooled features ``pl`` [B, P, D] with validity ``pl_valid`` [B, P]."""
        return self.polyline_transformer(pl, pl_valid, pl, pl_valid)
