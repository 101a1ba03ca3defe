"""Specification of the reference-checkpoint import, proven on the reference test vectors.

The vectors (``fixtures/reference_vectors``) were produced by the reference TrafficBots implementation on
two synthetic scenes; the README there defines the procedures and tolerances checked here.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.checkpoint import load_model
from trafficbots_gym.model.reference_import import (CheckpointImportError, convert_state_dict,
                                                    import_reference_checkpoint, key_table,
                                                    load_reference_checkpoint, main)
from trafficbots_gym.model.rollout import RolloutOutput, rollout, sample_destinations
from trafficbots_gym.model.traffic_bots import TrafficBots

from conftest import REFERENCE_CKPT, REFERENCE_VECTORS

ATOL = {"action0": 1e-6, "latent_mean": 1e-6, "action0_std": 1e-6, "latent_std": 1e-6, "latent_logp": 1e-5,
        "action_logp": 1e-5, "dest_logp": 1e-5, "action_mean": 1e-4, "pos": 2e-3, "yaw": 5e-4, "spd": 2e-4}
EXACT = ("valid", "override", "outside_map", "dest_reached", "steps", "latent_valid", "dest")


@pytest.fixture(scope="module")
def reference_ckpt() -> dict:
    return torch.load(REFERENCE_CKPT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imported() -> tuple[TrafficBots, dict]:
    return import_reference_checkpoint(REFERENCE_CKPT)


@pytest.fixture(scope="module")
def scenes(reference_scenes) -> tuple[SceneBatch, SceneBatch]:
    """The reference scenes with the full log, and with the history only."""
    return SceneBatch.from_scenes(reference_scenes), SceneBatch.from_scenes(reference_scenes, history_only=True)


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_VECTORS / "reference_rollouts.npz") as data:
        return {k: data[k] for k in data.files}


def run_procedure(model: TrafficBots, scenes: tuple[SceneBatch, SceneBatch], prefix: str,
                  n_steps: int = 90) -> dict[str, np.ndarray]:
    """Our rollout in the reference buffer layout ([B, A, T, ...]) and naming."""
    batch, history = scenes
    procedure = {"rr": "reactive_replay", "jfp": "joint_future"}[prefix]
    with torch.no_grad():
        out: RolloutOutput = rollout(model, batch, procedure=procedure, history=history, n_steps=n_steps)

    def agents_first(x: torch.Tensor) -> np.ndarray:
        return x.transpose(1, 2).numpy()

    latent = out.latent_post if prefix == "rr" else out.latent_prior
    arrays = {"pos": agents_first(out.pred_pos), "yaw": agents_first(out.pred_yaw),
              "spd": agents_first(out.pred_spd), "valid": agents_first(out.pred_valid),
              "override": agents_first(out.override), "outside_map": agents_first(out.outside_map),
              "dest_reached": agents_first(out.dest_reached), "action_mean": agents_first(out.action_mean),
              "action_logp": agents_first(out.action_logp), "action0": out.action_mean[:, 0].numpy(),
              "action0_std": out.action_log_std[:, 0].exp().detach().numpy(), "latent_logp": out.latent_logp.numpy(),
              "steps": out.steps.numpy(), "latent_mean": latent.mean.detach().numpy(), "latent_std": latent.std.detach().numpy(),
              "latent_valid": latent.valid.numpy(), "dest_valid": out.dest_valid.numpy()}
    if prefix == "jfp":
        dest, logp = sample_destinations(out.dest_logits, "argmax")
        arrays["dest"], arrays["dest_logp"] = dest.numpy(), logp.numpy()
    return arrays


def mismatches(ours: dict[str, np.ndarray], vectors: dict[str, np.ndarray], prefix: str,
               n_steps: int = 90) -> list[str]:
    """Every array of ``ours`` that does not match the stored vector within the README tolerance."""
    problems = []
    for name, value in ours.items():
        key = "dest_valid" if name == "dest_valid" else f"{prefix}_{name}"
        ref = vectors[key]
        if ref.ndim >= 3 and ref.shape[2] == 90 and name not in ("latent_mean", "latent_std"):
            ref = ref[:, :, :n_steps]
        if name == "steps":
            ref = ref[:n_steps]
        if value.shape != ref.shape:
            problems.append(f"{key}: shape {value.shape} != {ref.shape}")
        elif name in EXACT or name == "dest_valid":
            if not np.array_equal(value, ref):
                problems.append(f"{key}: {int((value != ref).sum())} elements differ")
        else:
            mask = vectors[f"{prefix}_latent_valid"] if name == "latent_mean" else np.ones(ref.shape[:2], bool)
            err = float(np.abs(value - ref)[mask].max())
            if err > ATOL[name]:
                problems.append(f"{key}: max abs error {err:.3g} > {ATOL[name]}")
    return problems


# ------------------------------------------------------------------------------------- checkpoint mapping
def test_import_builds_the_reference_architecture_with_every_key_accounted_for(imported, reference_ckpt):
    model, info = imported
    assert model.num_parameters() == 3_395_949
    assert model.cfg.reference_compat
    assert info["mapped_keys"] == 385 and info["dropped_duplicate_keys"] == 84 and info["dropped_buffer_keys"] == 14
    assert info["pytorch_lightning_version"] == "1.5.10"
    assert len(reference_ckpt["state_dict"]) == 483
    table = key_table(model)
    assert sorted(table.values()) == sorted(model.state_dict())
    for ref_key, our_key in table.items():
        assert torch.equal(model.state_dict()[our_key], reference_ckpt["state_dict"][ref_key]), ref_key


def test_unexpected_and_missing_keys_are_listed_together(imported, reference_ckpt):
    model, _ = imported
    ref = dict(reference_ckpt["state_dict"])
    del ref["model.agent_temporal.rnn.bias_hh_l2"]
    ref["model.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointImportError) as error:
        convert_state_dict(ref, model)
    assert "model.extra_head.weight" in str(error.value) and "temporal.bias_hh_l2" in str(error.value)


def test_shared_transformer_copies_must_be_equal(imported, reference_ckpt):
    model, _ = imported
    ref = dict(reference_ckpt["state_dict"])
    key = "model.latent_encoder.transformer_as2tl.layers.2.norm_tgt.bias"
    ref[key] = ref[key].clone()
    ref[key][0] += 1.0
    with pytest.raises(CheckpointImportError, match="shared copy differs"):
        convert_state_dict(ref, model)


def test_buffers_must_equal_the_regenerated_constants(imported, reference_ckpt):
    model, _ = imported
    ref = dict(reference_ckpt["state_dict"])
    key = "pre_processing.input.pose_pe_agent.pe_yaw.freqs"
    ref[key] = ref[key][[2, 1, 0] + list(range(3, 48))]
    with pytest.raises(CheckpointImportError, match="pe_yaw.freqs: buffer differs"):
        convert_state_dict(ref, model)


def test_unsupported_reference_settings_are_named(tmp_path, reference_ckpt):
    ckpt = dict(reference_ckpt)
    hparams = pickle.loads(pickle.dumps(ckpt["hyper_parameters"]))
    hparams["model"]["goal_manager"]["goal_attr_mode"] = "goal_xy"
    hparams["model"]["resample_latent"] = True
    ckpt["hyper_parameters"] = hparams
    path = tmp_path / "variant.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointImportError, match="goal_attr_mode='goal_xy'.*resample_latent=True"):
        import_reference_checkpoint(path)


def test_omegaconf_hyper_parameters_load_as_plain_containers_without_running_code(tmp_path, reference_ckpt):
    omegaconf = pytest.importorskip("omegaconf")
    hparams = dict(reference_ckpt["hyper_parameters"])
    hparams["model"] = dict(hparams["model"], hidden_dim="${hidden_dim}")  # an interpolation, as Hydra saves
    ckpt = dict(reference_ckpt, hyper_parameters=omegaconf.OmegaConf.create(hparams))
    path = tmp_path / "omegaconf.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    loaded = load_reference_checkpoint(path)["hyper_parameters"]
    assert type(loaded) is dict and type(loaded["model"]["tf_cfg"]) is dict
    assert loaded["model"]["hidden_dim"] == 128
    assert loaded["data_size"]["agent/valid"] == [91, 64]
    model, _ = import_reference_checkpoint(path)
    assert model.num_parameters() == 3_395_949


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_with_arbitrary_globals_are_refused(tmp_path, reference_ckpt):
    path = tmp_path / "evil.ckpt"
    torch.save(dict(reference_ckpt, hyper_parameters={"payload": _Exploit()}), path)
    with pytest.raises(CheckpointImportError, match="system"):
        load_reference_checkpoint(path)


def test_cli_converts_to_safetensors_that_load_to_the_same_weights(tmp_path, imported, capsys):
    out = tmp_path / "converted.safetensors"
    assert main([str(REFERENCE_CKPT), str(out)]) == 0
    assert "3,395,949 parameters" in capsys.readouterr().out
    loaded = load_model(out)
    assert loaded.cfg == imported[0].cfg
    for key, value in imported[0].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_cli_reports_a_missing_input(tmp_path):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "nope.ckpt"), str(tmp_path / "out.safetensors")])
    assert stop.value.code == 2


# ---------------------------------------------------------------------------------- numerical equivalence
@pytest.mark.parametrize("prefix", ["rr", "jfp"])
def test_compat_rollouts_match_every_reference_vector(prefix, imported, scenes, vectors):
    ours = run_procedure(imported[0], scenes, prefix)
    assert mismatches(ours, vectors, prefix) == []
    assert int(ours["valid"][..., -1].sum(-1)[0]) == {"rr": 64, "jfp": 61}[prefix]


SWAPS = [  # (reference key, index pair, dim): each changes the first action by far more than 1e-6
    ("action_head.mlp_mean.0.fc_layers.2.weight", (0, 1), 0),
    ("model.transformer_as2pl.layers.0.attn.in_proj_weight", (0, 128), 0),
    ("model.latent_encoder.latent_prior_dist.mlp_mean.fc_layers.2.weight", (0, 1), 0),
]


@pytest.mark.parametrize("key,pair,dim", SWAPS)
def test_a_swapped_tensor_fails_the_match(key, pair, dim, reference_ckpt, scenes, vectors):
    """Rows of the vehicle action branch, Wq/Wk of the agent-to-map attention, prior mean outputs."""
    ref = dict(reference_ckpt["state_dict"])
    tensor = ref[key].clone()
    index = torch.arange(tensor.shape[dim])
    index[list(pair)] = index[list(reversed(pair))]
    ref[key] = tensor.index_select(dim, index)
    shared_copy = key.replace("model.", "model.latent_encoder.", 1)
    if "transformer_as2" in key:
        ref[shared_copy] = ref[key]
    model, _ = import_reference_checkpoint(REFERENCE_CKPT)
    model.load_state_dict(convert_state_dict(ref, model))
    prefix = "jfp" if "prior" in key else "rr"
    ours = run_procedure(model, scenes, prefix, n_steps=2)
    assert any(p.startswith(f"{prefix}_action0") for p in mismatches(ours, vectors, prefix, n_steps=2))
