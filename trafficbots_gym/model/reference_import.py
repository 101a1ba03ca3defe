"""Import a reference TrafficBots checkpoint (PyTorch Lightning 1.5 ``.ckpt``) into :class:`TrafficBots`.

Loading is safe: ``torch.load(weights_only=True)`` first; checkpoints whose ``hyper_parameters`` hold
pickled OmegaConf / Lightning containers are read with a restricted unpickler that admits only tensor
rebuild functions, plain builtin containers and stand-ins for those container classes, which are then
converted to plain Python values (``${...}`` interpolations resolved). No code from the file is run.

The architecture comes from ``hyper_parameters``; settings this port does not implement are rejected with
one error naming all of them. Weights map through :data:`MODULE_TABLE` (reference module prefix -> our
module prefix, with per-kind leaf renames). Every reference key is either mapped or deliberately dropped:

* the latent encoder's copies of the shared agent-to-map / agent-to-TL transformers
  (:data:`SHARED_DUPLICATES`): asserted equal to the policy's copy;
* the pre-processing buffers (node one-hot, pose-encoding frequencies): asserted equal to ours, which are
  regenerated and not stored.

Unmapped reference keys or unfilled model keys raise one error listing both.

CLI: ``trafficbots-import-ckpt IN.ckpt OUT.safetensors``.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import collections
import os
import pickle
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trafficbots_gym.data.constants import N_AGENT_TYPE, N_PL_NODE, N_PL_TYPE, N_TL_STATE
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.encoders import harmonic_freqs, sinusoid_freqs
from trafficbots_gym.model.traffic_bots import TrafficBots


class CheckpointImportError(ValueError):
    """A reference checkpoint cannot be read or mapped; the message names the file and the offending keys."""


# --------------------------------------------------------------------------------------------- key table
TRANSFORMER, GRU, PARAM = "transformer", "gru", "param"
MLP = "mlp"

MODULE_TABLE: tuple[tuple[str, str, str], ...] = (
    # (reference prefix, our prefix, kind)
    ("model.map_encoder.input_pe_encoder.mlp", "map_encoder.input_encoder.mlp", MLP),
    ("model.map_encoder.transformer_densetnt", "map_encoder.node_transformer", TRANSFORMER),
    ("model.map_encoder.transformer_self_attn", "map_encoder.polyline_transformer", TRANSFORMER),
    ("model.tl_encoder.mlp", "tl_encoder.mlp", MLP),
    ("model.agent_encoder.mlp", "agent_encoder.mlp", MLP),
    ("model.transformer_as2pl", "as2pl", TRANSFORMER),
    ("model.transformer_as2tl", "as2tl", TRANSFORMER),
    ("model.goal_manager.goal_predictor.gru_as.rnn", "dest_predictor.gru", GRU),
    ("model.goal_manager.goal_predictor.mlp", "dest_predictor.mlp", MLP),
    ("model.latent_encoder.latent_prior_dist.mlp_mean", "latent_prior.mean", MLP),
    ("model.latent_encoder.latent_prior_dist.log_std", "latent_prior.log_std", PARAM),
    ("model.latent_encoder.latent_post_dist.mlp_mean", "latent_post.mean", MLP),
    ("model.latent_encoder.latent_post_dist.log_std", "latent_post.log_std", PARAM),
    ("model.latent_encoder.agent_temporal_prior.rnn", "latent_prior.gru", GRU),
    ("model.latent_encoder.agent_interaction_prior.transformer", "latent_prior.interaction", TRANSFORMER),
    ("model.latent_encoder.agent_temporal_post.rnn", "latent_post.gru", GRU),
    ("model.latent_encoder.agent_interaction_post.transformer", "latent_post.interaction", TRANSFORMER),
    ("model.agent_temporal.rnn", "temporal", GRU),
    ("model.agent_interaction.transformer", "interaction", TRANSFORMER),
    ("model.add_goal.mlp_in", "add_goal.mlp_in", MLP),
    ("model.add_goal.mlp_out", "add_goal.mlp_out", MLP),
    ("model.add_latent.mlp_in", "add_latent.mlp_in", MLP),
    ("model.add_latent.mlp_out", "add_latent.mlp_out", MLP),
    ("action_head.mlp_mean.0", "action_head.mean.0", MLP),
    ("action_head.mlp_mean.1", "action_head.mean.1", MLP),
    ("action_head.mlp_mean.2", "action_head.mean.2", MLP),
    ("action_head.log_std.0", "action_head.log_std.0", PARAM),
    ("action_head.log_std.1", "action_head.log_std.1", PARAM),
    ("action_head.log_std.2", "action_head.log_std.2", PARAM),
)

TRANSFORMER_LEAVES: tuple[tuple[str, str], ...] = (
    ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
    ("norm_tgt.weight", "norm_tgt.weight"), ("norm_tgt.bias", "norm_tgt.bias"),
    ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias"),
    ("attn.in_proj_weight", "in_proj_weight"), ("attn.in_proj_bias", "in_proj_bias"),
    ("attn.out_proj_weight", "out_proj.weight"), ("attn.out_proj_bias", "out_proj.bias"),
    ("linear1.weight", "linear1.weight"), ("linear1.bias", "linear1.bias"),
    ("linear2.weight", "linear2.weight"), ("linear2.bias", "linear2.bias"),
)
GRU_LEAVES: tuple[str, ...] = ("weight_ih_l{k}", "weight_hh_l{k}", "bias_ih_l{k}", "bias_hh_l{k}")

SHARED_DUPLICATES: tuple[tuple[str, str], ...] = (
    ("model.latent_encoder.transformer_as2pl.", "model.transformer_as2pl."),
    ("model.latent_encoder.transformer_as2tl.", "model.transformer_as2tl."),
)
"""The latent encoder shares the policy's transformers; the reference state_dict stores them twice."""


def _reference_buffers(pe_dim: int, theta_xy: float) -> dict[str, Tensor]:
    """The reference pre-processing buffers, regenerated exactly."""
    out: dict[str, Tensor] = {}
    for view in ("input", "latent"):
        out[f"pre_processing.{view}.pl_node_ohe"] = torch.eye(N_PL_NODE)
        for kind in ("agent", "map", "tl"):
            out[f"pre_processing.{view}.pose_pe_{kind}.pe_xy.freqs"] = sinusoid_freqs(pe_dim // 8, theta_xy)
            out[f"pre_processing.{view}.pose_pe_{kind}.pe_yaw.freqs"] = harmonic_freqs(pe_dim // 4)
    return out


def _mlp_leaves(model: TrafficBots, our_prefix: str) -> list[tuple[str, str]]:
    """Reference ``fc_layers.<i>`` indices of one of our MLPs (every Linear, LayerNorm, Dropout and ReLU
    takes one index in the reference ``nn.Sequential``; the final activation is not part of it)."""
    mlp = model.get_submodule(our_prefix)
    n_linear = len(mlp.linears)
    pairs, idx = [], 0
    for i in range(n_linear):
        pairs += [(f"fc_layers.{idx}.weight", f"linears.{i}.weight"), (f"fc_layers.{idx}.bias", f"linears.{i}.bias")]
        idx += 1
        if i < mlp.n_act:
            if mlp.norms is not None:
                pairs += [(f"fc_layers.{idx}.weight", f"norms.{i}.weight"),
                          (f"fc_layers.{idx}.bias", f"norms.{i}.bias")]
                idx += 1
            idx += mlp.dropout is not None
            idx += i < n_linear - 1          # ReLU module between layers
    return pairs


def key_table(model: TrafficBots) -> dict[str, str]:
    """Reference state_dict key -> our state_dict key, for every parameter of ``model``."""
    table: dict[str, str] = {}
    for ref_prefix, our_prefix, kind in MODULE_TABLE:
        if kind == PARAM:
            leaves = [("", "")]
        elif kind == MLP:
            leaves = _mlp_leaves(model, our_prefix)
        elif kind == GRU:
            n_layer = model.get_submodule(our_prefix).num_layers
            leaves = [(leaf.format(k=k), leaf.format(k=k)) for k in range(n_layer) for leaf in GRU_LEAVES]
        else:
            n_layer = len(model.get_submodule(our_prefix).layers)
            leaves = [(f"layers.{i}.{r}", f"layers.{i}.{o}") for i in range(n_layer) for r, o in TRANSFORMER_LEAVES]
        for ref_leaf, our_leaf in leaves:
            table[".".join(filter(None, (ref_prefix, ref_leaf)))] = ".".join(filter(None, (our_prefix, our_leaf)))
    return table


# ------------------------------------------------------------------------------------ safe checkpoint load
class _StandIn:
    """Placeholder for an OmegaConf / Lightning container object: records constructor args and state."""

    _name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StandIn":
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        obj.list_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)


_STANDINS: dict[str, type[_StandIn]] = {}
_STANDIN_MODULES = ("omegaconf.", "pytorch_lightning.utilities.parsing.", "lightning.pytorch.utilities.parsing.",
                    "lightning_fabric.utilities.data.")
_SAFE_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict, "collections.defaultdict": collections.defaultdict,
    "builtins.dict": dict, "builtins.list": list, "builtins.set": set, "builtins.tuple": tuple,
    "builtins.int": int, "builtins.float": float, "builtins.str": str, "builtins.bool": bool,
    "builtins.complex": complex, "builtins.bytes": bytes, "builtins.bytearray": bytearray,
    "builtins.object": object, "typing.Any": typing.Any,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.Size": torch.Size, "torch.device": torch.device,
}


def _standin(full_name: str) -> type[_StandIn]:
    if full_name not in _STANDINS:
        _STANDINS[full_name] = type(full_name.rsplit(".", 1)[-1], (_StandIn,), {"_name": full_name})
    return _STANDINS[full_name]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[full]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if full.startswith(_STANDIN_MODULES):
            return _standin(full)
        raise pickle.UnpicklingError(f"global {full!r} is not allowed in a checkpoint")


class _RestrictedPickleModule:
    """``pickle_module`` for ``torch.load`` whose Unpickler only admits :data:`_SAFE_GLOBALS` + stand-ins."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _plain(obj: Any, where: str) -> Any:
    """Convert stand-ins (OmegaConf DictConfig/ListConfig/nodes, AttributeDict) to plain containers."""
    if isinstance(obj, _StandIn):
        name = obj._name
        state = obj.state if isinstance(obj.state, dict) else {}
        if name.endswith("DictConfig"):
            content = state.get("_content")
            return None if content is None or isinstance(content, str) else \
                {k: _plain(v, f"{where}.{k}") for k, v in content.items()}
        if name.endswith("ListConfig"):
            content = state.get("_content")
            return None if content is None or isinstance(content, str) else \
                [_plain(v, f"{where}[{i}]") for i, v in enumerate(content)]
        if "_val" in state:
            return _plain(state["_val"], where)
        if obj.items or name.endswith("AttributeDict"):
            return {k: _plain(v, f"{where}.{k}") for k, v in obj.items.items()}
        if obj.list_items:
            return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj.list_items)]
        raise CheckpointImportError(f"hyper_parameters{where}: unsupported pickled object {name}")
    if isinstance(obj, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def _resolve(value: Any, root: dict[str, Any], where: str, depth: int = 0) -> Any:
    """Resolve absolute ``${a.b}`` interpolations of plain hyper-parameters."""
    if isinstance(value, dict):
        return {k: _resolve(v, root, f"{where}.{k}", depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        match = _INTERPOLATION.match(value)
        if match is None or depth > 16:
            raise CheckpointImportError(f"hyper_parameters{where}: cannot resolve interpolation {value!r}")
        target: Any = root
        for part in match.group(1).split("."):
            if not isinstance(target, dict) or part not in target:
                raise CheckpointImportError(f"hyper_parameters{where}: interpolation {value!r} points nowhere")
            target = target[part]
        return _resolve(target, root, where, depth + 1)
    return value


def load_reference_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning checkpoint safely; ``hyper_parameters`` come back as plain, resolved containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as weights_only_error:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
        except pickle.UnpicklingError as error:
            raise CheckpointImportError(f"{path}: not a loadable checkpoint ({error}); "
                                        f"weights-only load said: {weights_only_error}") from error
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointImportError(f"{path}: expected a Lightning checkpoint with 'state_dict' and "
                                    f"'hyper_parameters', found {keys}")
    hparams = _plain(ckpt["hyper_parameters"], "")
    ckpt = dict(ckpt)
    ckpt["hyper_parameters"] = _resolve(hparams, hparams, "")
    return ckpt


# ------------------------------------------------------------------------------------ architecture check
def _get(hp: Mapping[str, Any], dotted: str) -> Any:
    node: Any = hp
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()

_REQUIRED: tuple[tuple[str, Any], ...] = (
    # settings of the reference that this port implements only in their default form
    ("model.tf_cfg.norm_first", True), ("model.tf_cfg.bias", True), ("model.tf_cfg.activation", "relu"),
    ("model.tf_cfg.out_layernorm", False),
    ("model.input_pe_encoder.pe_mode", "cat"), ("model.input_pe_encoder.mlp_use_layernorm", False),
    ("model.map_encoder.densetnt_vectornet", True), ("model.map_encoder.pool_mode", "max"),
    ("model.goal_manager.goal_attr_mode", "dest"), ("model.goal_manager.goal_predictor.mode", "mlp"),
    ("model.goal_manager.goal_predictor.use_layernorm", True),
    ("model.goal_manager.goal_predictor.res_add_gru", True),
    ("model.goal_manager.goal_predictor.detach_features", True),
    ("model.goal_manager.disable_if_reached", True), ("model.goal_manager.dest_detach_map_feature", False),
    ("model.latent_encoder.shared_transformer_as", True), ("model.latent_encoder.shared_post_prior_net", False),
    ("model.latent_encoder.latent_prior.dist_type", "diag_gaus"),
    ("model.latent_encoder.latent_post.dist_type", "diag_gaus"),
    ("model.latent_encoder.latent_prior.use_layernorm", False),
    ("model.latent_encoder.latent_post.use_layernorm", False),
    ("model.temporal_aggregate.mode", "max_valid"),
    ("model.agent_interaction.mask_self_agent", True), ("model.agent_interaction.detach_tgt", False),
    ("model.agent_interaction.attn_to_map_aware_feature", True),
    ("model.add_latent.mode", "cat"), ("model.add_latent.res_add", True), ("model.add_latent.res_cat", False),
    ("model.add_latent.n_layer_mlp_out", 2), ("model.add_latent.mlp_in_cfg.use_layernorm", False),
    ("model.add_latent.mlp_out_cfg.use_layernorm", False),
    ("model.add_goal.mode", "cat"), ("model.add_goal.res_add", True), ("model.add_goal.res_cat", False),
    ("model.add_goal.n_layer_mlp_out", 2), ("model.add_goal.mlp_out_cfg.use_layernorm", False),
    ("model.interaction_first", True), ("model.add_goal_latent_first", False), ("model.resample_latent", False),
    ("action_head.branch_type", True), ("action_head.use_layernorm", False),
    ("dynamics.use_veh_dynamics_for_all", False),
    ("pre_processing.input.pose_pe.map", "pe_xy_yaw"), ("pre_processing.input.pose_pe.tl", "pe_xy_yaw"),
    ("pre_processing.input.pose_pe.agent", "pe_xy_yaw"), ("detach_state_policy", True),
)


def config_from_hparams(hp: Mapping[str, Any], source: str = "hyper_parameters") -> TrafficBotsConfig:
    """The :class:`TrafficBotsConfig` of a reference checkpoint (``reference_compat=True``)."""
    problems = [f"{key}={_get(hp, key)!r} (supported: {want!r})" for key, want in _REQUIRED
                if _get(hp, key) != want]
    n_layer_final = _get(hp, "model.n_layer_final_mlp")
    if n_layer_final is not _MISSING and n_layer_final > 0:
        problems.append(f"model.n_layer_final_mlp={n_layer_final!r} (supported: <= 0)")
    for kind in ("veh", "ped", "cyc"):
        target = _get(hp, f"dynamics.{kind}._target_")
        if target is not _MISSING and not str(target).endswith("MultiPathPP"):
            problems.append(f"dynamics.{kind}._target_={target!r} (supported: MultiPathPP)")
        if _get(hp, f"dynamics.{kind}.disable_neg_spd") not in (_MISSING, False):
            problems.append(f"dynamics.{kind}.disable_neg_spd=True (supported: False)")
    hidden = _get(hp, "model.hidden_dim")
    if _get(hp, "model.tf_cfg.d_model") != hidden:
        problems.append(f"model.tf_cfg.d_model={_get(hp, 'model.tf_cfg.d_model')!r} != hidden_dim={hidden!r}")
    sizes = {"map/valid": N_PL_NODE, "map/type": N_PL_TYPE, "tl_stop/state": N_TL_STATE, "agent/type": N_AGENT_TYPE}
    for key, want in sizes.items():
        shape = _get(hp, "data_size").get(key) if isinstance(_get(hp, "data_size"), Mapping) else None
        if shape is not None and shape[-1] != want:
            problems.append(f"data_size[{key!r}][-1]={shape[-1]} (supported: {want})")
    if problems:
        raise CheckpointImportError(f"{source}: reference settings not supported by this port: " + "; ".join(problems))
    try:
        return TrafficBotsConfig(
            hidden_dim=int(hidden), n_head=int(_get(hp, "model.tf_cfg.n_head")),
            d_feedforward=int(_get(hp, "model.tf_cfg.d_feedforward")),
            dropout=float(_get(hp, "model.tf_cfg.dropout_p")), pe_dim=int(_get(hp, "pre_processing.input.pe_dim")),
            input_mlp_layers=int(_get(hp, "model.input_pe_encoder.n_layer")),
            map_node_layers=int(_get(hp, "model.map_encoder.n_layer")), map_polyline_layers=1,
            as2pl_layers=int(_get(hp, "model.n_layer_tf_as2pl")), as2tl_layers=int(_get(hp, "model.n_layer_tf_as2tl")),
            interaction_layers=int(_get(hp, "model.agent_interaction.n_layer")),
            gru_layers=int(_get(hp, "model.agent_temporal.num_layers")),
            latent_dim=int(_get(hp, "model.latent_encoder.latent_dim")),
            latent_down_sample=int(_get(hp, "model.latent_encoder.temporal_down_sample_rate")),
            latent_log_std_init=float(_get(hp, "model.latent_encoder.latent_prior.log_std")),
            dest_gru_layers=int(_get(hp, "model.goal_manager.goal_predictor.n_layer_gru")),
            add_goal_mlp_in_layers=int(_get(hp, "model.add_goal.n_layer_mlp_in")),
            add_goal_layernorm=bool(_get(hp, "model.add_goal.mlp_in_cfg.use_layernorm")),
            add_latent_mlp_in_layers=int(_get(hp, "model.add_latent.n_layer_mlp_in")),
            action_log_std_init=float(_get(hp, "action_head.log_std")),
            action_limits=[[float(_get(hp, f"dynamics.{k}.max_acc")), float(_get(hp, f"dynamics.{k}.max_yaw_rate"))]
                           for k in ("veh", "ped", "cyc")],
            n_step_history=int(_get(hp, "time_step_current")) + 1, reference_compat=True)
    except (TypeError, ValueError) as error:
        raise CheckpointImportError(f"{source}: incomplete or invalid architecture settings: {error}") from error


# ------------------------------------------------------------------------------------------ weight import
def convert_state_dict(ref: Mapping[str, Tensor], model: TrafficBots, source: str = "state_dict") -> dict[str, Tensor]:
    """Map a reference state_dict onto ``model``'s keys; verify duplicates and buffers.

    Raises :class:`CheckpointImportError` listing unexpected and missing keys, shape mismatches,
    unequal shared copies or buffers that differ from the regenerated ones.
    """
    table = key_table(model)
    ours = model.state_dict()
    buffers = _reference_buffers(model.cfg.pe_dim, model.cfg.pe_theta_xy)
    out: dict[str, Tensor] = {}
    unexpected, problems = [], []
    for key, value in ref.items():
        if key in table:
            target = table[key]
            if tuple(value.shape) != tuple(ours[target].shape):
                problems.append(f"{key}: shape {tuple(value.shape)} != {tuple(ours[target].shape)} of {target}")
            out[target] = value.detach().to(torch.float32).clone()
        elif key in buffers:
            if value.shape != buffers[key].shape or not torch.equal(value.float(), buffers[key]):
                problems.append(f"{key}: buffer differs from the regenerated constant")
        elif any(key.startswith(dup) for dup, _ in SHARED_DUPLICATES):
            dup, orig = next((d, o) for d, o in SHARED_DUPLICATES if key.startswith(d))
            original = ref.get(orig + key[len(dup):])
            if original is None or original.shape != value.shape or not torch.equal(original, value):
                problems.append(f"{key}: shared copy differs from {orig + key[len(dup):]}")
        else:
            unexpected.append(key)
    missing = sorted(set(ours) - set(out))
    if unexpected or missing:
        raise CheckpointImportError(f"{source}: unexpected keys {sorted(unexpected)}; missing keys {missing}")
    if problems:
        raise CheckpointImportError(f"{source}: " + "; ".join(problems))
    return out


def import_reference_checkpoint(path: str | os.PathLike) -> tuple[TrafficBots, dict[str, Any]]:
    """Build a :class:`TrafficBots` (``reference_compat=True``, eval mode) from a reference ``.ckpt``.

    Returns the model and an info dict: ``source``, ``pytorch_lightning_version``, ``epoch``,
    ``global_step``, counts of mapped / duplicate / buffer keys and ``num_parameters``.
    """
    ckpt = load_reference_checkpoint(path)
    cfg = config_from_hparams(ckpt["hyper_parameters"], f"{path}: hyper_parameters")
    model = TrafficBots(cfg)
    ref = ckpt["state_dict"]
    weights = convert_state_dict(ref, model, f"{path}: state_dict")
    model.load_state_dict(weights, strict=True)
    model.eval()
    n_dup = sum(any(k.startswith(d) for d, _ in SHARED_DUPLICATES) for k in ref)
    info = {"source": str(path), "pytorch_lightning_version": ckpt.get("pytorch-lightning_version"),
            "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"), "mapped_keys": len(weights),
            "dropped_duplicate_keys": n_dup, "dropped_buffer_keys": len(ref) - len(weights) - n_dup,
            "num_parameters": model.num_parameters()}
    return model, info


def main(argv: list[str] | None = None) -> int:
    """``trafficbots-import-ckpt IN.ckpt OUT.safetensors``: convert a reference checkpoint."""
    from trafficbots_gym.model.checkpoint import save_checkpoint

    parser = argparse.ArgumentParser(prog="trafficbots-import-ckpt", description=main.__doc__)
    parser.add_argument("ckpt", type=Path, help="reference PyTorch Lightning checkpoint (.ckpt)")
    parser.add_argument("out", type=Path, help="output .safetensors file")
    args = parser.parse_args(argv)
    try:
        model, info = import_reference_checkpoint(args.ckpt)
    except (CheckpointImportError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    save_checkpoint(args.out, model, {"imported_from": args.ckpt.name,
                                      "pytorch_lightning_version": str(info["pytorch_lightning_version"]),
                                      "epoch": str(info["epoch"]), "global_step": str(info["global_step"])})
    print(f"{args.ckpt} -> {args.out}: {info['mapped_keys']} tensors, {info['num_parameters']:,} parameters "
          f"(dropped {info['dropped_duplicate_keys']} shared duplicates, {info['dropped_buffer_keys']} buffers)")
    return 0
