"""Specification of our checkpoint format (trafficbots_gym.model.checkpoint)."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from trafficbots_gym.model import checkpoint as ckpt_module
from trafficbots_gym.model.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.traffic_bots import TrafficBots

from conftest import REFERENCE_CKPT, TINY_MODEL

TINY = TrafficBotsConfig(**{**TINY_MODEL, "add_goal_mlp_in_layers": 1, "reference_compat": True})


def tiny() -> TrafficBots:
    torch.manual_seed(0)
    return TrafficBots(TINY)


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"dataset": "womd-v1.2", "epoch": "3"})
    meta = read_metadata(path)
    assert meta["format"] == "trafficbots-gym/1" and meta["dataset"] == "womd-v1.2"
    loaded = load_model(path)
    assert loaded.cfg == TINY and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]   # no temporary files left


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny())
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, TrafficBots(TINY))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_reserved_metadata_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "m.safetensors", tiny(), {"config": "{}"})


def test_missing_files_raise_file_not_found(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(tmp_path / "nope.safetensors")
    monkeypatch.setattr(ckpt_module, "DEFAULT_CHECKPOINT", tmp_path / "default.safetensors")
    with pytest.raises(FileNotFoundError, match="trafficbots-import-ckpt"):
        load_model(None)


def test_default_checkpoint_is_used_when_no_path_is_given(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "default.safetensors", tiny())
    monkeypatch.setattr(ckpt_module, "DEFAULT_CHECKPOINT", path)
    assert load_model(None).cfg == TINY


def test_key_and_shape_mismatches_are_listed(tmp_path):
    model = tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    del weights["temporal.bias_hh_l0"]
    weights["extra.weight"] = torch.zeros(2)
    weights["as2pl.layers.0.linear1.bias"] = torch.zeros(5)
    save_file(weights, str(path), metadata=read_metadata(path))
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert "temporal.bias_hh_l0" in message and "extra.weight" in message and "linear1.bias" in message


def test_non_finite_parameters_are_refused(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.add_goal.mlp_out.linears[0].weight[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    with pytest.raises(CheckpointError, match="add_goal.mlp_out.linears.0.weight"):
        load_model(path)


def test_foreign_safetensors_files_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="metadata format"):
        load_model(path)


def test_reference_lightning_checkpoints_are_converted_on_load(caplog):
    with caplog.at_level(logging.INFO, logger="trafficbots_gym.model.checkpoint"):
        model = load_model(REFERENCE_CKPT)
    assert model.cfg.reference_compat and model.num_parameters() == 3_395_949
    assert any("converting reference TrafficBots checkpoint" in r.getMessage() for r in caplog.records)
