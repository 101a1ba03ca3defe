"""Training / evaluation throughput of the TrafficBots pipeline: ``python -m training.benchmark``.

For every (batch size, precision) it times full training iterations (90-step differentiable rollout,
losses, backward, Adam step) and no-grad evaluation rollouts on real scenes, and prints one table:
ms per iteration, scenes per second and peak accelerator memory. Device-agnostic (``--device cpu|cuda``).

Example (one GPU): ``python -m training.benchmark --device cuda --batch-sizes 1 4 8 --precision fp32 bf16``
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from trafficbots_gym.data.batch import SceneBatch, collate_arrays
from trafficbots_gym.model.losses import training_losses
from training.datamodule import SceneArraysDataset, default_source
from training.lightning_module import TrafficBotsModule

TINY = dict(hidden_dim=32, n_head=2, d_feedforward=32, dropout=0.0, pe_dim=16, map_node_layers=1, as2pl_layers=1,
            as2tl_layers=1, interaction_layers=1, gru_layers=1, dest_gru_layers=1)
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def make_batch(data: Path, batch_size: int, device: torch.device) -> SceneBatch:
    """``batch_size`` scenes of ``data`` (cycled when it holds fewer) on ``device``."""
    ds = SceneArraysDataset(data)
    return collate_arrays([ds[i % len(ds)] for i in range(batch_size)]).to(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def bench_one(module: TrafficBotsModule, batch: SceneBatch, device: torch.device, repeats: int) -> dict[str, float]:
    """Training-iteration and evaluation-rollout timings of ``module`` on ``batch``."""
    opt = module.configure_optimizers()["optimizer"]

    def train_iter() -> None:
        opt.zero_grad(set_to_none=True)
        training_losses(module.run_rollout(batch, "training"), batch, module.loss_cfg)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        opt.step()

    def eval_rollout() -> None:
        with torch.no_grad():
            module.run_rollout(batch, "reactive_replay")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    module.train()
    t_train = timed(train_iter, device, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    module.eval()
    t_eval = timed(eval_rollout, device, repeats)
    return {"train_ms": 1e3 * t_train, "train_scenes_s": batch.batch_size / t_train, "train_peak_gib": peak,
            "eval_ms": 1e3 * t_eval, "eval_scenes_s": batch.batch_size / t_eval}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """Plain-text table of ``rows`` (same keys in every row)."""
    keys = list(rows[0])
    cells = [[_cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every configuration, print the table."""
    p = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="H5 scenes (file or shard folder); default: the embedded validation scenes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--precision", choices=sorted(PRECISIONS), nargs="+", default=["fp32"])
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per configuration (after 1 warm-up)")
    p.add_argument("--rollout-steps", type=int, default=90)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--tiny", action="store_true", help="the small smoke-test network instead of the reference one")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # fair fp32 numbers: no TF32 rounding
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    data = args.data if args.data is not None else default_source("validation")
    rows = []
    configs = [(b, prec) for b in args.batch_sizes for prec in args.precision]
    for batch_size, prec in tqdm(configs, desc="configurations"):
        torch.manual_seed(0)
        module = TrafficBotsModule(model=TINY if args.tiny else None, n_rollout_steps=args.rollout_steps,
                                   activation_checkpointing=args.activation_checkpointing,
                                   autocast_dtype=PRECISIONS[prec]).to(device)
        batch = make_batch(data, batch_size, device)
        rows.append({"device": str(device), "params": module.model.num_parameters(), "batch": batch_size,
                     "precision": prec, **bench_one(module, batch, device, args.repeats)})
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
