"""Building blocks: masked MLP and the pre-norm cross-attention transformer of TrafficBots.

Every transformer layer attends from ``src`` tokens to a *fixed* set of ``tgt`` tokens (the block input
for the map encoder and the agent interaction, map / traffic-light tokens otherwise). Because ``tgt`` never
changes inside a block, each layer's normalised and projected keys/values can be computed once and reused:
:meth:`TransformerBlock.project_kv` returns them and :meth:`TransformerBlock.forward_kv` consumes them, so
static map tokens are projected once per episode instead of once per simulation step.

Selective activation checkpointing (``recompute`` of :class:`CrossAttentionLayer` and :class:`GRU`, set for a
whole network by ``TrafficBots.selective_checkpointing``): each layer norm with the projection that follows it
and each GRU cell are recomputed in the backward pass from their inputs instead of saving their intermediate
results. These parts draw no random numbers, so no RNG state is involved and the pass may be captured in a
CUDA graph.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

KeyValue = tuple[Tensor, Tensor]
"""Per-layer keys and values ``[N, heads, L_tgt, d_head]``."""


class AttentionMask(NamedTuple):
    """Attention mask prepared once per block call (shared by its layers)."""

    bias: Tensor | None    # [N, 1, 1|Lq, Lk] additive: 0 where the query may attend, -inf elsewhere (rows
                           # without any allowed key are all 0); what SDPA derives from a boolean mask.
                           # None: every key is allowed (the same result as an all-zero bias)
    no_key: Tensor | None  # [N, 1|Lq, 1] True: the query has no allowed key, its attention output is zero.
                           # None: every query has an allowed key


def attention_mask(tgt_valid: Tensor, pair_mask: Tensor | None = None, dtype: torch.dtype = torch.float32
                   ) -> AttentionMask:
    """Mask from key validity ``tgt_valid`` [N, Lk] and forbidden pairs ``pair_mask`` [(N,) Lq, Lk]; the
    additive bias has the queries' ``dtype``."""
    allowed = tgt_valid.unsqueeze(-2)
    if pair_mask is not None:
        allowed = allowed & ~pair_mask
    no_key = ~allowed.any(-1, keepdim=True)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~(allowed | no_key),
                                                                                        float("-inf"))
    return AttentionMask(bias.unsqueeze(1), no_key)


def fixed_key_mask(tgt_valid: Tensor, dtype: torch.dtype = torch.float32) -> AttentionMask:
    """:func:`attention_mask` of key validity ``tgt_valid`` [N, Lk] that stays fixed over many calls, checked
    on the host once: no bias when every key is valid, no zeroing when every row has a valid key (the same
    attention outputs with fewer operations)."""
    if bool(tgt_valid.all()):
        return AttentionMask(None, None)
    mask = attention_mask(tgt_valid, dtype=dtype)
    return AttentionMask(mask.bias, mask.no_key if bool(mask.no_key.any()) else None)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``norm(x)`` without the module call (the layers below call it many times per simulation step)."""
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def recompute(fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``fn(*args)`` with its intermediate results recomputed in the backward pass instead of saved for it
    (the same values and gradients). ``fn`` must not draw random numbers: the RNG state is not restored for
    the recomputation (which is what keeps it capturable in a CUDA graph)."""
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


def keep_rows(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` with zeros where the broadcastable mask ``keep`` (bool or 0/1 float) is false: a product with
    the 0/1 mask, several times faster on a CPU than ``masked_fill`` of the same rows and the same values
    for finite ``x`` (a zero may come out as -0.0, which compares equal)."""
    return x * keep.to(x.dtype)


class MLP(nn.Module):
    """Linear layers with optional LayerNorm and dropout, ReLU between layers.

    Layer i: Linear -> [LayerNorm] -> [Dropout] -> ReLU; the last layer only gets LayerNorm/Dropout/ReLU
    when ``end_activation``. Rows where ``valid`` is false are zero.
    """

    def __init__(self, dims: Sequence[int], *, layernorm: bool = False, dropout: float | None = None,
                 end_activation: bool = True) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        n_act = len(self.linears) if end_activation else len(self.linears) - 1
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims[1:n_act + 1]) if layernorm else None
        self.dropout = nn.Dropout(dropout) if dropout is not None else None
        self.n_act = n_act

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        first = self.linears[0]
        return self.forward_from(F.linear(x, first.weight, first.bias), valid)

    def forward_from(self, h: Tensor, valid: Tensor | None = None) -> Tensor:
        """Continue from the output ``h`` of the first Linear layer (used by pairwise scorers)."""
        for i, linear in enumerate(self.linears):
            if i > 0:
                h = F.linear(h, linear.weight, linear.bias)
            if i < self.n_act:
                if self.norms is not None:
                    h = _layer_norm(self.norms[i], h)
                if self.dropout is not None and self.training:
                    h = self.dropout(h)
                h = torch.relu(h)
        if valid is not None:
            h = keep_rows(h, valid.unsqueeze(-1))
        return h


class CrossAttentionLayer(nn.Module):
    """Pre-norm transformer layer: ``src += Attn(norm1(src), norm_tgt(tgt)); src += FF(norm2(src))``.

    The attention weights are packed like ``torch.nn.MultiheadAttention`` (rows: query, key, value).
    A query whose keys are all masked gets a zero attention output; invalid ``src`` rows are zeroed.
    ``recompute``: recompute the layer norms and the projections that follow them (query, keys / values,
    first feed-forward layer + ReLU) in the backward pass (see the module docstring).
    """

    def __init__(self, d_model: int, n_head: int, d_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.d_head = n_head, d_model // n_head
        self.norm1 = nn.LayerNorm(d_model)
        self.norm_tgt = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.linear1 = nn.Linear(d_model, d_feedforward)
        self.linear2 = nn.Linear(d_feedforward, d_model)
        self.p_drop = dropout
        self.drop = nn.Dropout(dropout)
        self.recompute = False
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.n_head, self.d_head).transpose(-3, -2)

    def _checkpointed(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return recompute(fn, x) if self.recompute and torch.is_grad_enabled() else fn(x)

    def _query(self, src: Tensor) -> Tensor:
        d = src.shape[-1]
        return F.linear(_layer_norm(self.norm1, src), self.in_proj_weight[:d], self.in_proj_bias[:d])

    def _key_value(self, tgt: Tensor) -> Tensor:
        d = tgt.shape[-1]
        return F.linear(_layer_norm(self.norm_tgt, tgt), self.in_proj_weight[d:], self.in_proj_bias[d:])

    def _ff_hidden(self, src: Tensor) -> Tensor:
        return torch.relu(F.linear(_layer_norm(self.norm2, src), self.linear1.weight, self.linear1.bias))

    def project_kv(self, tgt: Tensor) -> KeyValue:
        """Keys and values ``[N, heads, L, d_head]`` of ``tgt`` ``[N, L, d]``."""
        k, v = self._checkpointed(self._key_value, tgt).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, src: Tensor, src_keep: Tensor | None, kv: KeyValue, mask: AttentionMask) -> Tensor:
        """``src`` [N, Lq, d] attends to keys/values ``kv`` under ``mask`` (see :func:`attention_mask`);
        rows where ``src_keep`` [N, Lq, 1] (bool or 0/1 float) is false are zeroed."""
        q = self._heads(self._checkpointed(self._query, src))
        k, v = kv
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        bias = mask.bias
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.p_drop if self.training else 0.0)
        attn = F.linear(attn.transpose(-3, -2).flatten(-2), self.out_proj.weight, self.out_proj.bias)
        if mask.no_key is not None:
            attn = attn.masked_fill(mask.no_key, 0.0)
        return self.feed_forward(src + self._drop(attn), src_keep)

    def feed_forward(self, src: Tensor, src_keep: Tensor | None) -> Tensor:
        """The feed-forward half of the layer (alone: the layer for queries without any key, whose attention
        output is zero)."""
        h = self._checkpointed(self._ff_hidden, src)
        src = src + self._drop(F.linear(self._drop(h), self.linear2.weight, self.linear2.bias))
        return src if src_keep is None else keep_rows(src, src_keep)

    def forward_packed(self, src: Tensor, tgt: Tensor, slots: Tensor, mask: AttentionMask,
                       padded: dict[str, Tensor]) -> Tensor:
        """The layer for valid tokens only, packed: ``src`` / ``tgt`` [V, d] sit at rows ``slots`` [V] of a
        padded layout of G groups x L tokens (``mask``: its attention mask; self-attention within each
        group, e.g. the nodes of a polyline). The per-token parts run on the V rows; queries, keys and
        values are written into padded buffers (``padded``, made on first use and shared by the layers;
        their other rows stay zero) for the attention. Every row gets what :meth:`forward` gives its token
        in the padded layout (every group must have a valid token)."""
        d = src.shape[-1]
        kv, q = self._key_value(tgt), self._query(src)
        bias = mask.bias
        if "q" not in padded:
            padded["q"] = q.new_zeros(bias.shape[0], bias.shape[-1], d)
            padded["kv"] = kv.new_zeros(bias.shape[0], bias.shape[-1], 2 * d)
        q_buf, kv_buf = padded["q"], padded["kv"]
        kv_buf.view(-1, 2 * d).index_copy_(0, slots, kv)
        q_buf.view(-1, d).index_copy_(0, slots, q)
        k, v = kv_buf.chunk(2, dim=-1)
        attn = F.scaled_dot_product_attention(self._heads(q_buf), self._heads(k), self._heads(v),
                                              attn_mask=bias.to(q_buf.dtype))
        attn = attn.transpose(-3, -2).flatten(-2).flatten(0, 1).index_select(0, slots)
        attn = F.linear(attn, self.out_proj.weight, self.out_proj.bias)
        return self.feed_forward(src + attn, None)

    def _drop(self, x: Tensor) -> Tensor:
        return self.drop(x) if self.training else x


class TransformerBlock(nn.Module):
    """A stack of :class:`CrossAttentionLayer` sharing one fixed ``tgt``."""

    def __init__(self, n_layer: int, d_model: int, n_head: int, d_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(d_model, n_head, d_feedforward, dropout)
                                    for _ in range(n_layer))

    def project_kv(self, tgt: Tensor) -> list[KeyValue]:
        """Per-layer keys/values of ``tgt`` [N, L, d]; reusable for any number of queries."""
        return [layer.project_kv(tgt) for layer in self.layers]

    def forward_kv(self, src: Tensor, src_valid: Tensor | None, kvs: Sequence[KeyValue], tgt_valid: Tensor,
                   pair_mask: Tensor | None = None) -> Tensor:
        """Attend ``src`` [N, Lq, d] to precomputed keys/values of tokens with validity ``tgt_valid`` [N, Lk].

        ``pair_mask`` [Lq, Lk] or [N, Lq, Lk] (True: forbidden pair) is combined with the key validity.
        """
        return self.forward_masked(src, src_valid, kvs, attention_mask(tgt_valid, pair_mask))

    def forward_masked(self, src: Tensor, src_valid: Tensor | None, kvs: Sequence[KeyValue],
                       mask: AttentionMask) -> Tensor:
        """:meth:`forward_kv` with a prepared ``mask`` (e.g. :func:`fixed_key_mask`)."""
        keep = None if src_valid is None else src_valid.unsqueeze(-1).to(src.dtype)
        for layer, kv in zip(self.layers, kvs, strict=True):
            src = layer(src, keep, kv, mask)
        return src

    def forward_packed(self, x: Tensor, valid: Tensor) -> Tensor:
        """:meth:`forward` with ``tgt = src`` (self-attention) over G groups of L tokens with validity ``valid``
        [G, L] (each group with a valid token), on the valid tokens only: ``x`` [V, d] are the valid tokens
        in row-major order of ``valid``; returns their outputs [V, d], the values :meth:`forward` gives them
        on the padded layout (see :meth:`CrossAttentionLayer.forward_packed`). Inference only."""
        if self.training:
            raise RuntimeError("forward_packed is an inference path; call forward in training")
        slots = valid.flatten().nonzero().squeeze(1)
        mask = attention_mask(valid, dtype=x.dtype)
        padded: dict[str, Tensor] = {}
        src = x
        for layer in self.layers:
            src = layer.forward_packed(src, x, slots, mask, padded)
        return src

    def feed_forward(self, src: Tensor, src_valid: Tensor | None) -> Tensor:
        """The block when no query has any key: every layer's attention output is zero, so only the
        feed-forward halves run."""
        keep = None if src_valid is None else src_valid.unsqueeze(-1).to(src.dtype)
        for layer in self.layers:
            src = layer.feed_forward(src, keep)
        return src

    def forward(self, src: Tensor, src_valid: Tensor | None, tgt: Tensor, tgt_valid: Tensor,
                pair_mask: Tensor | None = None) -> Tensor:
        return self.forward_kv(src, src_valid, self.project_kv(tgt), tgt_valid, pair_mask)


@functools.lru_cache(maxsize=8)
def _self_mask(n_agent: int, device: torch.device) -> Tensor:
    return torch.eye(n_agent, dtype=torch.bool, device=device)


def interact(block: TransformerBlock, x: Tensor, valid: Tensor, rows: Tensor | None = None,
             rows_valid: Tensor | None = None) -> Tensor:
    """Agent-agent attention: each valid agent attends to the other valid agents of its row.

    ``x`` [N, A, d], ``valid`` [N, A]. Rows with exactly one valid agent pass through unchanged.
    ``rows`` [N, R] long (with validity ``rows_valid`` [N, R]): only those agents' outputs [N, R, d], each
    still attending to every agent of ``x`` (the same values as those rows of the full result).
    """
    if rows is None:
        src, src_valid, pair_mask = x, valid, _self_mask(x.shape[-2], x.device)
    else:
        src = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        src_valid = rows_valid
        pair_mask = rows.unsqueeze(-1) == torch.arange(x.shape[-2], device=x.device)
    out = block(src, src_valid, x, valid, pair_mask=pair_mask)
    single = (valid.sum(-1) == 1)[:, None, None]
    return torch.where(single, src, out)


class GRU(nn.GRU):
    """``nn.GRU`` (the same parameters) that :func:`gru_step` runs one step at a time. ``recompute``: the
    cells' gate activations are recomputed in the backward pass instead of saved (a cell draws no random
    numbers; the dropout between layers stays outside the recomputation)."""

    def __init__(self, *args: int | float, **kwargs: int | float) -> None:
        super().__init__(*args, **kwargs)
        self.recompute = False


def make_gru(dim: int, n_layer: int, dropout: float) -> GRU:
    """Multi-layer GRU (dropout between layers only when there is more than one)."""
    return GRU(dim, dim, n_layer, dropout=dropout if n_layer > 1 else 0.0)


def gru_step(gru: nn.GRU, x: Tensor, valid: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """One GRU step for every agent: ``x`` [B, A, d], ``hidden`` [L, B*A, d] -> (out [B, A, d], hidden).

    Output and hidden state of invalid agents are zero. The GRU runs in float32 even under autocast.
    Computed layer by layer with ``torch.gru_cell`` (the same result as ``gru`` on a one-step sequence;
    on CUDA two GEMMs and one fused kernel per layer instead of cuDNN's sequence kernel, which is slow
    for the tens of thousands of one-step sequences of a large batch).
    """
    checkpointed = isinstance(gru, GRU) and gru.recompute and torch.is_grad_enabled()
    with torch.autocast(x.device.type, enabled=False):   # recurrent state stays float32 under autocast
        out, state = x.float().flatten(0, 1), hidden.float()
        layers = []
        for layer, weights in enumerate(gru.all_weights):
            if layer > 0 and gru.training and gru.dropout > 0:
                out = F.dropout(out, gru.dropout, training=True)
            out = (recompute(torch.gru_cell, out, state[layer], *weights) if checkpointed
                   else torch.gru_cell(out, state[layer], *weights))
            layers.append(out)
        hidden = torch.stack(layers)
    keep = valid.flatten(0, 1).unsqueeze(-1).to(out.dtype)
    return (out * keep).view(x.shape), hidden * keep


def gru_sequence(gru: nn.GRU, x: Tensor, valid: Tensor) -> Tensor:
    """Run a GRU over ``x`` [B, T, A, d] step by step from a zero state; the hidden state is reset at
    invalid steps and outputs are zero there."""
    n_batch, n_step, n_agent, dim = x.shape
    hidden = x.new_zeros(gru.num_layers, n_batch * n_agent, gru.hidden_size)
    outs = []
    for t in range(n_step):
        out, hidden = gru_step(gru, x[:, t], valid[:, t], hidden)
        outs.append(out)
    return torch.stack(outs, dim=1)


def max_valid(x: Tensor, valid: Tensor) -> Tensor:
    """Max over time of ``x`` [B, T, A, d] at valid steps (invalid steps count as -1000); zero if never valid."""
    out = x.masked_fill(~valid.unsqueeze(-1), -1e3).amax(1)
    return out.masked_fill(~valid.any(1).unsqueeze(-1), 0.0)


def last_valid(x: Tensor, valid: Tensor) -> Tensor:
    """``x`` [B, T, A, d] at each agent's last valid step; zero if never valid."""
    n_step = valid.shape[1]
    idx = n_step - 1 - valid.flip(1).int().argmax(1)                     # [B, A]
    out = torch.gather(x, 1, idx[:, None, :, None].expand(-1, 1, -1, x.shape[-1])).squeeze(1)
    return out.masked_fill(~valid.any(1).unsqueeze(-1), 0.0)


class ResidualFusion(nn.Module):
    """``x + mlp_out(concat(x, mlp_in(z)))`` where ``z`` is valid, ``x`` elsewhere; zero where ``x`` is invalid.

    Injects a destination feature or a latent sample into the per-agent policy feature. ``mlp_in(z)`` only
    depends on ``z``: :meth:`embed` computes it once for a ``z`` that stays fixed over many calls and
    :meth:`fuse` takes it in place of ``z``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, n_layer_in: int, *, layernorm: bool, dropout: float) -> None:
        super().__init__()
        self.mlp_in = MLP([in_dim] + [hidden_dim] * n_layer_in, layernorm=layernorm, dropout=dropout)
        self.mlp_out = MLP([2 * hidden_dim, hidden_dim, hidden_dim], dropout=dropout)

    def forward(self, x: Tensor, x_valid: Tensor, z: Tensor, z_valid: Tensor) -> Tensor:
        return self.fuse(x, x_valid, self.embed(z.to(x.dtype)), z_valid)

    def embed(self, z: Tensor) -> Tensor:
        """``mlp_in(z)`` [..., hidden] (``z`` in the dtype of the ``x`` it will be fused with)."""
        return self.mlp_in(z)

    def fuse(self, x: Tensor, x_valid: Tensor, z_embedded: Tensor, z_valid: Tensor) -> Tensor:
        """The forward pass from the embedding :meth:`embed` of ``z``."""
        z_keep = z_valid.unsqueeze(-1).to(x.dtype)
        h = self.mlp_out(torch.cat([x, keep_rows(z_embedded, z_keep)], dim=-1))
        return keep_rows(keep_rows(h, z_keep) + x, x_valid.unsqueeze(-1))
