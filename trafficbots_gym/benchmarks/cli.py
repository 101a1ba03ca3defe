"""Options, checks and scene selection shared by the benchmark command lines."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from trafficbots_gym.env.config import resolve_device
from trafficbots_gym.env.scenes import SceneSource


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Stop with a message naming the option when one of the integer options ``names`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def add_scene_options(p: argparse.ArgumentParser, num_scenes: int) -> None:
    """``--scenes``, ``--split`` and ``--num-scenes`` (default ``num_scenes``) of the benchmarks that need the
    logged future of held-out scenes."""
    p.add_argument("--scenes", default=None, help="H5 file or folder of shards (default: embedded scenes of --split)")
    p.add_argument("--split", default="validation",
                   help="embedded split with logged futures (default: validation; testing-split files hold only "
                        "the 11-step history)")
    p.add_argument("--num-scenes", type=int, default=num_scenes,
                   help=f"first N scenes of the source (default {num_scenes})")


def held_out_scenes(args: argparse.Namespace) -> tuple[SceneSource, list[int]]:
    """The scene source of ``add_scene_options`` and the indices of its first ``--num-scenes`` scenes."""
    source = SceneSource(args.scenes, split=args.split)
    return source, list(range(min(args.num_scenes, len(source))))


def parse_scene_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None, positive: Sequence[str]
                        ) -> tuple[argparse.Namespace, torch.device, SceneSource, list[int]]:
    """Parse ``argv`` (options of ``add_scene_options`` and ``--device``), check the ``positive`` options and
    return the arguments, the device, the scene source and the indices of the scenes to use."""
    args = parser.parse_args(argv)
    require_positive(args, *positive)
    source, indices = held_out_scenes(args)
    return args, resolve_device(args.device), source, indices
