"""Smoke specification of examples/train_ppo.py: tiny PPO and SAC runs train, checkpoint, evaluate and benchmark."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SCENES = ROOT / "envs_tests" / "fixtures" / "reference_vectors" / "reference_scenes.h5"


def _train_ppo_module():
    spec = importlib.util.spec_from_file_location("train_ppo", ROOT / "examples" / "train_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_checkpoint(path: Path) -> Path:
    from trafficbots_gym.model.checkpoint import save_checkpoint
    from trafficbots_gym.model.config import TrafficBotsConfig
    from trafficbots_gym.model.traffic_bots import TrafficBots
    torch.manual_seed(0)
    cfg = TrafficBotsConfig(hidden_dim=32, n_head=2, d_feedforward=32, pe_dim=16, dropout=0.0, map_node_layers=1,
                            as2pl_layers=1, as2tl_layers=1, interaction_layers=1, gru_layers=1, dest_gru_layers=1)
    return save_checkpoint(path, TrafficBots(cfg))


@pytest.mark.parametrize("algo", ["ppo", pytest.param("sac", marks=pytest.mark.slow)])
def test_tiny_run_saves_policy_checkpoints_logs_and_benchmarks_it_under_two_backgrounds(tmp_path, algo):
    out = tmp_path / "run"
    policy = _train_ppo_module().main([
        "--algo", algo, "--buffer-size", "1000", "--timesteps", "96", "--num-envs", "2", "--n-steps", "16",
        "--batch-size", "16", "--n-epochs", "1",
        "--background", "log_replay", "--scenes", str(REFERENCE_SCENES), "--eval-scenes", str(REFERENCE_SCENES),
        "--horizon", "6", "--eval-episodes", "2", "--eval-num-envs", "2",
        "--bench-backgrounds", "log_replay", "trafficbots", "--bench-episodes", "2",
        "--checkpoint", str(_tiny_checkpoint(tmp_path / "tiny.safetensors")), "--device", "cpu", "--out", str(out)])
    assert policy == out / "policy.zip" and policy.is_file()
    assert list((out / "checkpoints").glob(f"{algo}_*_steps.zip"))
    assert (out / "eval" / "evaluations.npz").is_file() and (out / "best" / "best_model.zip").is_file()
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    with open(out / "bench" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["background"] for r in rows) == ["log_replay", "trafficbots"]
    assert all(r["controller"] == "policy.zip" and r["episodes"] == "2" for r in rows)
