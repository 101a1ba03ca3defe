"""Specification of the training pipeline: Hydra configs, fit / validate / test, resume, export, import.

Runs on CPU on the two reference scenes with the ``model=tiny`` preset (20-step rollouts) so it stays fast.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.model.checkpoint import load_model
from trafficbots_gym.model.losses import training_losses
from training.lightning_module import MODEL_CONFIG_KEY, TrafficBotsModule
from training.run import checkpoint_kind, run

from conftest import REFERENCE_CKPT, REFERENCE_SCENES, TINY_MODEL

CONF = Path(__file__).resolve().parent.parent / "training" / "conf"
METRICS = ("ade", "fde", "collision_rate", "offroad_rate", "outside_map_rate", "dest_reached_rate", "dest_accuracy")


def make_cfg(out: Path, *overrides: str) -> DictConfig:
    """The run config on the fixture scenes, tiny model, no worker processes, no progress bar."""
    files = f"{{train: {REFERENCE_SCENES}, val: {REFERENCE_SCENES}, test: {REFERENCE_SCENES}}}"
    base = [f"output_dir={out}", "model=tiny", f"+datamodule.files={files}", "datamodule.num_workers=0",
            "datamodule.batch_size=1", "datamodule.pin_memory=false", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "trainer.log_every_n_steps=1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("run", overrides=base + list(overrides))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of a 2-step fit (one epoch of 2 batches, then validation on one batch)."""
    out = tmp_path_factory.mktemp("fit")
    metrics = run(make_cfg(out, "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"))
    assert math.isfinite(metrics["val/loss"])
    return out


def test_fast_dev_run_fit_on_two_scenes_gives_finite_losses_and_closed_loop_metrics(tmp_path: Path) -> None:
    metrics = run(make_cfg(tmp_path, "trainer.fast_dev_run=true"))
    for key in ("loss", "imitation", "kl", "dest_nll"):
        assert math.isfinite(metrics[f"train/{key}"]), key
    for proc in ("reactive_replay", "joint_future"):
        for name in METRICS:
            assert math.isfinite(metrics[f"val/{proc}/{name}"]), (proc, name)
    assert 0.0 <= metrics["val/reactive_replay/collision_rate"] <= 1.0
    assert (tmp_path / "export" / "last.safetensors").is_file()


def test_fit_with_the_collision_and_offroad_terms_logs_them(tmp_path: Path) -> None:
    metrics = run(make_cfg(tmp_path, "trainer.fast_dev_run=true", "model.loss.w_collision=1.0",
                           "model.loss.w_offroad=0.5"))
    for key in ("collision", "offroad"):
        assert math.isfinite(metrics[f"train/{key}"]) and metrics[f"train/{key}"] > 0.0, key  # a random policy errs
    parts = metrics["train/imitation"] + 0.1 * metrics["train/kl"] + metrics["train/dest_nll"]
    total = parts + metrics["train/collision"] + 0.5 * metrics["train/offroad"]
    assert metrics["train/loss"] == pytest.approx(total, rel=1e-4)


def test_loss_decreases_when_overfitting_one_repeated_batch(reference_scenes: list[Scene]) -> None:
    torch.manual_seed(0)
    batch = SceneBatch.from_scenes(reference_scenes[1:])
    module = TrafficBotsModule(model=dict(TINY_MODEL),
                               optimizer=dict(lr=1e-2, lr_goal=1e-2), p_training_rollout_prior=0.0, n_rollout_steps=20)
    opt = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = training_losses(module.run_rollout(batch, "training"), batch, module.loss_cfg)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_fit_logs_throughput_to_the_csv_log(fitted: Path) -> None:
    header = (fitted / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/samples", "train/time"} <= set(header)


def test_fit_writes_best_and_last_checkpoints_with_the_model_config_and_exports_safetensors(fitted: Path) -> None:
    last = torch.load(fitted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 and last[MODEL_CONFIG_KEY]["hidden_dim"] == 32
    for name in ("best", "last"):
        model = load_model(fitted / "export" / f"{name}.safetensors")
        assert model.cfg.hidden_dim == 32
    assert (fitted / "csv" / "metrics.csv").is_file() and any((fitted / "tensorboard").iterdir())


def test_fit_resumes_from_a_checkpoint_and_continues_the_step_count(fitted: Path, tmp_path: Path) -> None:
    ckpt = fitted / "checkpoints" / "last.ckpt"
    assert checkpoint_kind(ckpt) == "lightning"
    run(make_cfg(tmp_path, f"ckpt_path={ckpt}", "trainer.max_steps=3", "trainer.limit_train_batches=2",
                 "trainer.limit_val_batches=1"))
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 3
    assert resumed["optimizer_states"][0]["state"], "optimizer state restored and updated"


def test_validate_action_evaluates_a_checkpoint_and_reports_the_metrics(fitted: Path, tmp_path: Path) -> None:
    metrics = run(make_cfg(tmp_path, "action=validate", f"ckpt_path={fitted / 'checkpoints' / 'last.ckpt'}",
                           "trainer.limit_val_batches=1"))
    assert math.isfinite(metrics["val/loss"])
    assert all(f"val/joint_future/{m}" in metrics for m in METRICS)


def test_exported_safetensors_weights_can_be_evaluated(fitted: Path, tmp_path: Path) -> None:
    weights = fitted / "export" / "best.safetensors"
    assert checkpoint_kind(weights) == "safetensors"
    metrics = run(make_cfg(tmp_path, "action=validate", f"ckpt_path={weights}", "trainer.limit_val_batches=1",
                           "model.val_procedures=[reactive_replay]"))
    assert math.isfinite(metrics["val/reactive_replay/fde"])


def test_a_missing_checkpoint_is_reported_by_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        run(make_cfg(tmp_path, f"ckpt_path={tmp_path / 'nowhere.ckpt'}"))


def test_a_file_that_is_no_checkpoint_is_rejected_by_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        run(make_cfg(tmp_path, "action=validate", f"ckpt_path={junk}"))


def test_test_action_runs_joint_future_prediction(tmp_path: Path) -> None:
    metrics = run(make_cfg(tmp_path, "action=test", "trainer.limit_test_batches=1"))
    assert math.isfinite(metrics["test/joint_future/ade"]) and "test/reactive_replay/ade" not in metrics


def test_test_action_on_history_only_scenes_reports_the_rule_metrics(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "action=test", "trainer.limit_test_batches=1")
    del cfg.datamodule.files  # the embedded synthetic testing split: 11 logged steps per scene
    metrics = run(cfg)
    assert math.isfinite(metrics["test/joint_future/collision_rate"])
    assert math.isfinite(metrics["test/joint_future/offroad_rate"])
    assert "test/joint_future/ade" not in metrics and "test/loss" not in metrics


def test_reference_checkpoint_is_converted_and_evaluated(tmp_path: Path) -> None:
    assert checkpoint_kind(REFERENCE_CKPT) == "reference"
    metrics = run(make_cfg(tmp_path, "action=validate", f"ckpt_path={REFERENCE_CKPT}", "trainer.limit_val_batches=1",
                           "model.val_procedures=[joint_future]"))
    assert math.isfinite(metrics["val/joint_future/ade"])


def test_unknown_action_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="predict"):
        run(make_cfg(tmp_path, "action=predict"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(model=dict(hiden_dim=32)), "hiden_dim"),
    (dict(val_procedures=["training"]), "val_procedures"),
    (dict(p_training_rollout_prior=2.0), "p_training_rollout_prior"),
    (dict(optimizer=dict(lr=0.0)), "lr"),
    (dict(loss=dict(w_dest=-1.0)), "w_dest"),
])
def test_module_settings_are_validated_with_the_offending_key_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficBotsModule(**kwargs)


def test_destination_predictor_trains_in_its_own_parameter_group_and_action_log_stds_are_frozen() -> None:
    module = TrafficBotsModule(model=dict(hidden_dim=32, n_head=2, pe_dim=16), optimizer=dict(lr=1e-3, lr_goal=5e-4))
    model_group, goal_group = module.configure_optimizers()["optimizer"].param_groups
    goal_ids = {id(p) for p in module.model.dest_predictor.parameters()}
    assert goal_group["lr"] == 5e-4 and {id(p) for p in goal_group["params"]} == goal_ids
    assert model_group["lr"] == 1e-3 and not goal_ids & {id(p) for p in model_group["params"]}
    frozen = {id(p) for p in module.model.action_head.log_std.parameters()}
    assert not frozen & {id(p) for p in model_group["params"]}
