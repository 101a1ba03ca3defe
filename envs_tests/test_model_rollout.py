"""Specification of the closed-loop rollouts (trafficbots_gym.model.rollout)."""
from __future__ import annotations

import pytest
import torch

from trafficbots_gym.benchmarks.saved_memory import measure
from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.model.losses import training_losses
from trafficbots_gym.model.rollout import rollout
from trafficbots_gym.model.traffic_bots import TrafficBots

from conftest import tiny_model

MODEL = dict(dropout=0.1, gru_layers=2, add_goal_mlp_in_layers=1)
"""Overrides of the tiny TrafficBots configuration used here (training-mode tests see dropout)."""


def _model(compat: bool = False) -> TrafficBots:
    return tiny_model(**MODEL, reference_compat=compat)


def test_training_rollout_shapes_and_layout(reference_batch):
    out = rollout(_model().train(), reference_batch, procedure="training", generator=torch.Generator().manual_seed(0),
                  n_steps=12)
    b, a = reference_batch.batch_size, reference_batch.agent_valid.shape[-1]
    assert out.steps.tolist() == list(range(1, 13))
    assert out.pred_pos.shape == (b, 12, a, 2) and out.pred_yaw.shape == (b, 12, a)
    assert out.action_mean.shape == (b, 12, a, 2) and out.dest_logits.shape == (b, a, 1024)
    assert out.latent_post.mean.shape == (b, a, 16) and out.latent_prior.valid.shape == (b, a)
    # warm start: every logged agent is overridden at steps 1..10 only
    assert torch.equal(out.override[:, :10], reference_batch.agent_valid[:, 1:11])
    assert not out.override[:, 10:].any()
    assert torch.equal(out.pred_valid[:, 0], reference_batch.agent_valid[:, 0])
    assert not out.pred_pos[~out.pred_valid].any()


def test_training_rollout_is_differentiable_end_to_end(reference_batch):
    model = _model().train()
    out = rollout(model, reference_batch, procedure="training", generator=torch.Generator().manual_seed(1), n_steps=14)
    valid = out.pred_valid[:, 10:] & reference_batch.agent_valid[:, 11:15]
    imitation = (out.pred_pos[:, 10:] - reference_batch.agent_pos[:, 11:15]).norm(dim=-1)[valid].mean()
    kl = out.latent_post.kl(out.latent_prior)[out.latent_post.valid].mean()
    logp = torch.log_softmax(out.dest_logits, -1).gather(-1, reference_batch.agent_dest.unsqueeze(-1)).squeeze(-1)
    nll = -logp[out.dest_valid].mean()
    (imitation + kl + nll).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for block in ("map_encoder.", "as2pl.", "as2tl.", "interaction.", "temporal.", "add_goal.", "add_latent.",
                  "action_head.mean.0.", "latent_post.", "latent_prior.", "dest_predictor.", "agent_encoder.",
                  "tl_encoder."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(block)), block
    # deterministic actions: the action log-std never enters the loss
    assert all(grads[f"action_head.log_std.{i}"] is None for i in range(3))


def test_rollouts_are_deterministic_given_the_generator(reference_batch):
    model = _model().train()

    def run(seed: int):
        torch.manual_seed(1234)  # dropout masks
        return rollout(model, reference_batch, procedure="training", generator=torch.Generator().manual_seed(seed),
                       n_steps=12, deterministic_action=False)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.pred_pos, b.pred_pos) and torch.equal(a.latent_sample, b.latent_sample)
    assert not torch.equal(a.latent_sample, c.latent_sample)


def test_prior_probability_one_rolls_out_the_prior(reference_batch):
    out = rollout(_model().eval(), reference_batch, procedure="training", p_prior=1.0, n_steps=11,
                  generator=torch.Generator().manual_seed(0))
    assert out.latent_from_prior.all()
    expected = out.latent_prior.log_prob(out.latent_sample)
    torch.testing.assert_close(out.latent_logp, expected)


def test_fixed_mode_feeds_simulated_kinematics_back_compat_mode_keeps_them_stale(reference_batch):
    fixed, compat = _model(compat=False), _model(compat=True)
    compat.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        a = rollout(fixed.eval(), reference_batch, procedure="joint_future", n_steps=14)
        b = rollout(compat.eval(), reference_batch, procedure="joint_future", n_steps=14)
    # identical through the first free step (its inputs are the logged state of step 10) ...
    torch.testing.assert_close(a.pred_pos[:, :11], b.pred_pos[:, :11], atol=1e-5, rtol=0)
    # ... then the inputs differ (updated vs stale velocity / acceleration / yaw rate)
    assert (a.pred_pos[:, 12:] - b.pred_pos[:, 12:]).abs().max() > 1e-4


def test_future_traffic_lights_reach_the_policy_only_in_fixed_mode_with_a_full_log(reference_batch):
    changed = SceneBatch(**{**reference_batch.__dict__, "tl_state": reference_batch.tl_state.clone()})
    changed.tl_state[:, 11:] = changed.tl_state[:, 11:].roll(1, dims=-1)   # lights change from step 11 on
    for compat, procedure, sees_future in ((False, "training", True), (True, "training", False),
                                           (False, "joint_future", False)):
        model = _model(compat=compat).eval()
        with torch.no_grad():   # p_prior=1: the latent only sees the history, so only the policy can differ
            a, b = (rollout(model, x, procedure=procedure, p_prior=1.0, n_steps=14,
                            generator=torch.Generator().manual_seed(0)) for x in (reference_batch, changed))
        assert torch.equal(a.action_mean[:, :11], b.action_mean[:, :11])   # steps 1..11 see lights <= 10
        assert (not torch.equal(a.action_mean[:, 11:], b.action_mean[:, 11:])) == sees_future, (compat, procedure)


def test_activation_checkpointing_gives_the_same_gradients(reference_batch):
    model = _model().eval()  # no dropout, so both passes see the same network

    def grads(use_checkpoint: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = rollout(model, reference_batch, procedure="training", generator=torch.Generator().manual_seed(3),
                      n_steps=13, use_checkpoint=use_checkpoint)
        out.pred_pos[out.pred_valid].square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], rtol=1e-4, atol=1e-6, msg=name)


SELECTIVE = dict(dropout=0.1, gru_layers=2, dest_gru_layers=2, map_node_layers=2, interaction_layers=2)
"""A tiny model with dropout everywhere and stacked layers (layer norms, GRU cells and dropout between them)."""


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_selective_checkpointing_gives_the_same_losses_and_gradients_bit_for_bit(reference_batch, autocast_dtype):
    model = tiny_model(**SELECTIVE).train()  # dropout active: the recomputation must not move the RNG

    def losses_and_grads(selective: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        model.selective_checkpointing = selective
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # dropout masks
        out = rollout(model, reference_batch, procedure="training", generator=torch.Generator().manual_seed(3),
                      n_steps=14, autocast_dtype=autocast_dtype)
        losses = training_losses(out, reference_batch)
        losses["loss"].backward()
        return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (plain_losses, plain), (selective_losses, selective) = losses_and_grads(False), losses_and_grads(True)
    for name, value in plain_losses.items():
        assert torch.equal(selective_losses[name], value), name
    assert plain.keys() == selective.keys() and len(plain) > 100
    for name, grad in plain.items():
        assert torch.equal(selective[name], grad), name


def test_selective_checkpointing_reaches_every_recomputed_part_and_can_be_turned_off():
    model = tiny_model(**SELECTIVE)
    flags = lambda: {m.recompute for m in model.modules() if hasattr(m, "recompute")}  # noqa: E731
    assert not model.selective_checkpointing and flags() == {False}
    model.selective_checkpointing = True
    assert model.selective_checkpointing and flags() == {True}
    kinds = {type(m).__name__ for m in model.modules() if hasattr(m, "recompute")}
    assert kinds == {"CrossAttentionLayer", "GRU", "DestPredictor"}
    model.selective_checkpointing = False
    assert flags() == {False}


@pytest.mark.parametrize("cuda_kernels, at_most", [(True, 0.67), (False, 0.9)], ids=["cuda-kernels", "cpu-kernels"])
def test_selective_checkpointing_saves_less_for_backward(reference_batch, cuda_kernels, at_most):
    """A third less with what CUDA's attention / dropout kernels save (the CPU's attention saves its
    probabilities over the 1024 polylines at every step, which no recomputation here touches)."""
    model = tiny_model(**SELECTIVE).train()
    saved = {}
    for selective in (False, True):
        model.selective_checkpointing = selective
        torch.manual_seed(0)
        saved[selective] = measure(model, reference_batch, n_steps=14, cuda_kernels=cuda_kernels)
    assert saved[False].by_phase["steps"] > 0 and saved[False].by_phase["scene encoding"] > 0
    assert saved[True].total < at_most * saved[False].total
    for phase in ("scene encoding", "steps"):
        assert saved[True].by_phase[phase] < saved[False].by_phase[phase], phase


def test_bfloat16_autocast_rollout_stays_finite_and_close(reference_batch):
    model = _model().eval()
    with torch.no_grad():
        ref = rollout(model, reference_batch, procedure="joint_future", n_steps=12)
        low = rollout(model, reference_batch, procedure="joint_future", n_steps=12, autocast_dtype=torch.bfloat16)
    assert low.pred_pos.dtype == torch.float32 and torch.isfinite(low.pred_pos).all()
    assert (low.pred_pos - ref.pred_pos).abs().max() < 0.5


def test_bad_procedure_or_missing_log_is_refused(reference_scenes, reference_batch):
    model = _model().eval()
    with pytest.raises(ValueError, match="unknown procedure"):
        rollout(model, reference_batch, procedure="replay")
    history_only = SceneBatch.from_scenes(reference_scenes[:1], history_only=True)
    with pytest.raises(ValueError, match="needs the full log"):
        rollout(model, history_only, procedure="reactive_replay")
    out = rollout(model, history_only, procedure="joint_future", n_steps=12)
    assert out.pred_valid[:, 11].any()
