"""TrafficBots model speed: training step and closed-loop inference, on any device.

    python -m trafficbots_gym.benchmarks.model_speed --device cuda
    python -m trafficbots_gym.benchmarks.model_speed --device cpu --train-batches 1 --infer-batches 1 --dtypes fp32

Training: one optimisation step = 90-step differentiable training rollout (warm start 1..10, free
11..90), the training losses, backward and Adam, at each ``--train-batches`` size, under fp16 (with a
GradScaler) or bf16 autocast (fp32 on CPU), eagerly and (on CUDA, fp32 / bf16) with the forward +
backward pass replayed from a CUDA graph (``GraphedLossBackward``, what ``model.cuda_graph=true`` trains
with). Reported: samples/s and peak GPU memory per sample.

Inference: ``TrafficBotsPolicy.act`` for every agent of B scenes (64 agents each), after ``reset``
(encoding + warm start, timed separately). Reported: ms per simulation step and agent-steps/s, for
fp32 and bf16 autocast, at each ``--infer-batches`` size, eagerly and (on CUDA) replayed from a CUDA
graph (``StepGraph``, what the env's graphed step runs; one launch per step). Wall time is the
headline; the process CPU time column shows the work itself when other jobs share the CPU.

Scenes are the full-size reference test scenes (64 agents, 1024 polylines, 91 steps), repeated to the
batch size, or ``--scenes FILE.h5``. Weights are random unless ``--checkpoint`` is given (speed does not
depend on them). The baseline rows are the reference implementation's numbers (not measured here).
"""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.model.checkpoint import load_model
from trafficbots_gym.model.graphed_training import GraphedLossBackward
from trafficbots_gym.model.losses import training_losses
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.model.rollout import rollout
from trafficbots_gym.model.traffic_bots import TrafficBots
from trafficbots_gym.simulation.graphed import StepGraph
from trafficbots_gym.simulation.state import AgentState

SCENES = (Path(__file__).resolve().parents[2] / "envs_tests" / "fixtures" / "reference_vectors"
          / "reference_scenes.h5")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
REFERENCE_INFERENCE = [  # (label, batch, ms/step, agent-steps/s)
    ("reference TrafficBots, H100", 1, 15.5, None),
    ("reference TrafficBots, H100", 128, None, 342_000),
    ("reference TrafficBots, 2-core CPU", 1, 14.6, None),
]
REFERENCE_TRAINING = [("reference TrafficBots, H100 (fp16)", 8, 1.37, 2.26)]  # (label, batch, samples/s, GiB/sample)
TRAINING_COLUMNS = ("implementation", "mode", "precision", "batch", "s/step", "CPU s/step", "samples/s", "GiB/sample")
INFERENCE_COLUMNS = ("implementation", "mode", "precision", "batch", "ms/step", "CPU ms/step", "agent-steps/s", "reset ms")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(scene_file: Path, n: int, device: torch.device) -> SceneBatch:
    reader = SceneReader(scene_file)
    scenes = [reader[i % len(reader)] for i in range(n)]
    return SceneBatch.from_scenes(scenes).to(device)


def _timed(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def bench_training(model: TrafficBots, batch: SceneBatch, dtype_name: str, repeats: int,
                   use_checkpoint: bool, graph: bool = False) -> dict[str, float]:
    """Seconds per training step and peak memory for one batch size / precision; ``graph`` replays the
    forward + backward pass from a CUDA graph (the optimizer step stays eager)."""
    device = batch.device
    dtype = DTYPES[dtype_name]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    generator = torch.Generator(device=device).manual_seed(0)

    def losses(b: SceneBatch) -> dict[str, torch.Tensor]:
        out = rollout(model, b, procedure="training", autocast_dtype=dtype, check_destinations=False)
        return training_losses(out, b)

    graphed = GraphedLossBackward(losses, list(model.parameters()), warmup_calls=2) if graph else None

    def graph_step() -> None:
        assert graphed is not None
        graphed(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = rollout(model, batch, procedure="training", generator=generator, autocast_dtype=dtype,
                      use_checkpoint=use_checkpoint)
        loss = training_losses(out, batch)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if graph:
        seconds, cpu_seconds = _timed(graph_step, device, repeats, warmup=3)
        assert graphed is not None and graphed.captured
    else:
        seconds, cpu_seconds = _timed(step, device, repeats, warmup=1)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"s_per_step": seconds, "cpu_s_per_step": cpu_seconds, "samples_per_s": batch.batch_size / seconds,
            "gib_per_sample": peak / batch.batch_size}


class _ActCall:
    """One ``policy.act`` on persistent inputs: the state and the step counter live in buffers, so the call
    can be captured in a CUDA graph and replayed (``advance`` moves the step in place)."""

    def __init__(self, policy: TrafficBotsPolicy, state: AgentState) -> None:
        self.policy, self.state = policy, state
        self.step = torch.full((policy.batch_size,), 11, device=state.pos.device)

    def __call__(self) -> torch.Tensor:
        return self.policy.act(self.state, self.step)

    def advance(self) -> None:
        """Next simulation step (11..90, then 11 again)."""
        self.step.copy_((self.step - 10) % 80 + 11)


def bench_inference(model: TrafficBots, batch: SceneBatch, dtype_name: str, steps: int,
                    graph: bool = False) -> dict[str, float]:
    """Reset time and milliseconds per ``act`` for one batch size / precision; ``graph`` replays ``act``
    from a CUDA graph."""
    device = batch.device
    policy = TrafficBotsPolicy(model, device=device, autocast_dtype=DTYPES[dtype_name])
    generator = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    policy.reset(batch, generator=generator)
    _sync(device)
    reset_s = time.perf_counter() - start
    call = _ActCall(policy, policy.warm_start_state)
    step_fn = StepGraph(call, call, name="policy act") if graph else call

    def act() -> None:
        step_fn()
        call.advance()

    seconds, cpu_seconds = _timed(act, device, steps, warmup=3)
    if graph and not (isinstance(step_fn, StepGraph) and step_fn.active):
        raise RuntimeError(f"the policy step was not captured in a CUDA graph: {step_fn.disabled_reason}")
    n_agent = batch.agent_valid.shape[-1]
    return {"reset_ms": 1000 * reset_s, "ms_per_step": 1000 * seconds, "cpu_ms_per_step": 1000 * cpu_seconds,
            "agent_steps_per_s": batch.batch_size * n_agent / seconds}


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def _print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print a Markdown table under a blank line and its title."""
    print(f"\n{title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trafficbots_gym.benchmarks.model_speed",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-batches", default="1,2,4,8", help="comma list; empty to skip training")
    parser.add_argument("--train-dtypes", default=None, help="default: fp16,bf16 on GPU, fp32 on CPU")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing per step")
    parser.add_argument("--selective-checkpointing", action="store_true",
                        help="recompute the RNG-free parts (layer norms + projections, GRU cells, destination "
                             "scorer) in backward: less memory, graph mode too (TrafficBots.selective_checkpointing)")
    parser.add_argument("--train-modes", default=None,
                        help="comma list of eager,graph (default: both on CUDA, eager on CPU)")
    parser.add_argument("--infer-batches", default="1,8,32,128,256", help="comma list; empty to skip")
    parser.add_argument("--dtypes", default="fp32,bf16", help="inference precisions")
    parser.add_argument("--infer-modes", default=None,
                        help="comma list of eager,graph (default: both on CUDA, eager on CPU)")
    parser.add_argument("--steps", type=int, default=50, help="timed act() calls per configuration")
    parser.add_argument("--scenes", type=Path, default=SCENES)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint) if args.checkpoint else TrafficBots()
    model = model.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"parameters {model.num_parameters():,}, scenes {args.scenes.name}")

    train_batches = [int(b) for b in args.train_batches.split(",") if b]
    train_dtypes = (args.train_dtypes.split(",") if args.train_dtypes else
                    (["fp16", "bf16"] if device.type == "cuda" else ["fp32"]))
    train_modes = (args.train_modes.split(",") if args.train_modes else
                   (["eager", "graph"] if device.type == "cuda" else ["eager"]))
    if train_batches:
        model.selective_checkpointing = args.selective_checkpointing
        rows = []
        for mode in train_modes:
            for dtype_name in train_dtypes:
                if mode == "graph" and (dtype_name == "fp16" or args.checkpointing or device.type != "cuda"):
                    continue  # graphs need CUDA and take no loss scaling or activation checkpointing
                for b in tqdm(train_batches, desc=f"training {mode} {dtype_name}"):
                    rows.append((mode, dtype_name, b, bench_training(
                        model, _batch(args.scenes, b, device), dtype_name, args.train_repeats, args.checkpointing,
                        graph=mode == "graph")))
        ours = "trafficbots-gym" + (" (ckpt)" if args.checkpointing else "") + (
            " (selective ckpt)" if args.selective_checkpointing else "")
        table = [(label, "eager", "fp16", str(b), f"{b / sps:.2f}", "", f"{sps:.2f}", f"{gib:.2f}")
                 for label, b, sps, gib in REFERENCE_TRAINING]
        table += [(ours, mode, dtype_name, str(b), f"{r['s_per_step']:.2f}", f"{r['cpu_s_per_step']:.2f}",
                   f"{r['samples_per_s']:.2f}", _fmt(r["gib_per_sample"], ".2f")) for mode, dtype_name, b, r in rows]
        _print_table("Training step (90-step rollout + losses + backward + Adam)", TRAINING_COLUMNS, table)

    infer_batches = [int(b) for b in args.infer_batches.split(",") if b]
    infer_modes = (args.infer_modes.split(",") if args.infer_modes else
                   (["eager", "graph"] if device.type == "cuda" else ["eager"]))
    if "graph" in infer_modes and device.type != "cuda":
        raise SystemExit("--infer-modes graph needs a CUDA device")
    if infer_batches:
        rows = []
        model.eval()
        for mode in infer_modes:
            for dtype_name in args.dtypes.split(","):
                for b in tqdm(infer_batches, desc=f"inference {mode} {dtype_name}"):
                    # eager: inference mode, as the env's eager steps; graph: as the env's graphed step
                    with torch.inference_mode() if mode == "eager" else torch.no_grad():
                        rows.append((mode, dtype_name, b, bench_inference(
                            model, _batch(args.scenes, b, device), dtype_name, args.steps, graph=mode == "graph")))
        table = [(label, "eager", "fp32", str(b), _fmt(ms, ".1f"), "", _fmt(asps, ",.0f"), "")
                 for label, b, ms, asps in REFERENCE_INFERENCE]
        table += [("trafficbots-gym", mode, dtype_name, str(b), f"{r['ms_per_step']:.2f}",
                   f"{r['cpu_ms_per_step']:.2f}", f"{r['agent_steps_per_s']:,.0f}", f"{r['reset_ms']:.0f}")
                  for mode, dtype_name, b, r in rows]
        _print_table("Closed-loop inference (TrafficBotsPolicy.act, 64 agents per scene)", INFERENCE_COLUMNS, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
