"""Activation memory of a TrafficBots training pass: the bytes autograd saves for the backward pass.

    python -m trafficbots_gym.benchmarks.saved_memory --batch 2
    python -m trafficbots_gym.benchmarks.saved_memory --batch 2 --selective-checkpointing

One training rollout (90 steps, full-size model, the benchmark's reference scenes) and its losses run
forward under bfloat16 autocast without the weight-cast cache, as in the CUDA-graph training step. Every
distinct storage saved for backward (``torch.autograd.graph.saved_tensors_hooks``), parameters and batch
tensors left out, is counted once and attributed to the one-off scene encoding (map, traffic lights, agent
history, latent and destination heads), the closed-loop steps or the losses, and to the model's top-level
modules. Bfloat16 copies of the weights count apart: they are made once per batch, the rest per scene.

A CPU saves more than CUDA's kernels for attention (the attention probabilities) and dropout (a mask of
the input's dtype). ``--cuda-kernels`` (the default) counts what the fused attention kernels save instead
(queries, keys, values, bias, output in the kernel's layout and the log-sum-exp) and a boolean dropout
mask, so that the totals follow a GPU's; the pass then cannot run backward.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trafficbots_gym.benchmarks.model_speed import SCENES, _batch
from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.closed_loop import transition
from trafficbots_gym.model.losses import training_losses
from trafficbots_gym.model.rollout import rollout
from trafficbots_gym.model.traffic_bots import TrafficBots

MIB = 2**20
PHASES: dict[CodeType, str] = {transition.__code__: "steps", training_losses.__code__: "losses"}
"""Functions whose callees' saves count for a phase other than the scene encoding."""


class SavedTensors:
    """Context manager counting the distinct storages saved for backward while it is active.

    ``exclude``: tensors whose storages are not counted (parameters, inputs). ``model``: the saves made in
    a call of one of its modules are labelled with the top-level module's name (code that calls no module,
    e.g. the GRU steps, is "(no module)"). ``total``, ``by_phase``, ``by_module``: bytes.
    """

    def __init__(self, exclude: Iterable[Tensor] = (), model: nn.Module | None = None) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: dict[int, torch.UntypedStorage] = {}
        self._modules: list[str] = []
        self._model = model
        self.by_phase: Counter[str] = Counter()
        self.by_module: Counter[str] = Counter()
        self._stack = contextlib.ExitStack()

    @property
    def total(self) -> int:
        return sum(self.by_phase.values())

    def __enter__(self) -> "SavedTensors":
        if self._model is not None:
            for name, module in self._model.named_modules():
                top = name.split(".")[0] or "(model)"
                pre = module.register_forward_pre_hook(lambda *_, top=top: self._modules.append(top))
                post = module.register_forward_hook(lambda *_: self._modules.pop() and None)
                self._stack.callback(pre.remove)
                self._stack.callback(post.remove)
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._excluded or ptr in self._seen or storage.nbytes() == 0:
            return t
        self._seen[ptr] = storage  # kept alive, so that its address is not reused while counting
        phase = _phase(sys._getframe(1))
        if _is_weight_copy(t):
            phase += " (weight copies)"
        self.by_phase[phase] += storage.nbytes()
        self.by_module[self._modules[-1] if self._modules else "(no module)"] += storage.nbytes()
        return t


def _phase(frame: FrameType | None) -> str:
    while frame is not None:
        if frame.f_code in PHASES:
            return PHASES[frame.f_code]
        frame = frame.f_back
    return "scene encoding"


def _is_weight_copy(t: Tensor) -> bool:
    """``t`` is a cast (or a cast view) of a parameter, e.g. autocast's bfloat16 weight."""
    fn = t.grad_fn
    casts = 0
    while fn is not None and type(fn).__name__ != "AccumulateGrad":
        parents = [f for f, _ in fn.next_functions if f is not None]
        if len(parents) != 1 or type(fn).__name__ not in ("ToCopyBackward0", "SliceBackward0", "TBackward0"):
            return False
        casts += type(fn).__name__ == "ToCopyBackward0"
        fn = parents[0]
    return fn is not None and casts > 0


class _FusedAttentionSaves(torch.autograd.Function):
    """Attention that saves what CUDA's fused kernels save (forward only)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float) -> Tensor:  # noqa: ANN001
        out = _SDPA(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        out = out.transpose(1, 2).contiguous().transpose(1, 2)  # the kernels write [N, L, H, d]
        ctx.save_for_backward(q, k, v, bias, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, *grads: Tensor) -> None:  # noqa: ANN001
        raise RuntimeError("the --cuda-kernels stand-in for attention only counts memory; it has no backward")


_SDPA = F.scaled_dot_product_attention


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                     dropout_p: float = 0.0) -> Tensor:
    return _FusedAttentionSaves.apply(q, k, v, attn_mask, dropout_p)


def _mask_dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    return torch.native_dropout(x, p, training)[0] if training and p > 0 else x


@contextlib.contextmanager
def cuda_kernel_saves() -> Iterator[None]:
    """Attention and dropout save what their CUDA kernels save (see the module docstring)."""
    with mock.patch.object(F, "scaled_dot_product_attention", _fused_attention), \
            mock.patch.object(F, "dropout", _mask_dropout):
        yield


def measure(model: TrafficBots, batch: SceneBatch, *, n_steps: int = 90, cuda_kernels: bool = True) -> SavedTensors:
    """Saved-for-backward bytes of one bfloat16 training rollout of ``model`` (in training mode) on
    ``batch`` and its losses."""
    inputs = [t for t in vars(batch).values() if isinstance(t, Tensor)]
    kernels = cuda_kernel_saves() if cuda_kernels else contextlib.nullcontext()
    with kernels, SavedTensors(exclude=[*model.parameters(), *model.buffers(), *inputs], model=model) as saved, \
            torch.autocast(batch.device.type, dtype=torch.bfloat16, cache_enabled=False):
        out = rollout(model, batch, procedure="training", autocast_dtype=torch.bfloat16, n_steps=n_steps,
                      check_destinations=False)
        training_losses(out, batch)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trafficbots_gym.benchmarks.saved_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--selective-checkpointing", action="store_true",
                        help="recompute the RNG-free parts in backward (TrafficBots.selective_checkpointing)")
    parser.add_argument("--cuda-kernels", action=argparse.BooleanOptionalAction, default=True,
                        help="count what CUDA's attention / dropout kernels save (default: on)")
    parser.add_argument("--scenes", type=Path, default=SCENES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TrafficBots().train()
    model.selective_checkpointing = args.selective_checkpointing
    saved = measure(model, _batch(args.scenes, args.batch, torch.device("cpu")), n_steps=args.steps,
                    cuda_kernels=args.cuda_kernels)
    b = args.batch
    copies = sum(v for k, v in saved.by_phase.items() if k.endswith("(weight copies)"))
    print(f"saved for backward, batch {b}, {args.steps} steps, selective checkpointing "
          f"{'on' if args.selective_checkpointing else 'off'}: {saved.total / MIB:.1f} MiB, "
          f"{(saved.total - copies) / b / MIB:.1f} MiB per scene + {copies / MIB:.1f} MiB of weight copies per batch")
    for title, counts in (("phase", saved.by_phase), ("module", saved.by_module)):
        print(f"\n| {title} | MiB per batch | MiB per scene |\n|---|---|---|")
        for key, value in counts.most_common():
            print(f"| {key} | {value / MIB:.1f} | {value / b / MIB:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
