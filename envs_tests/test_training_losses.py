"""Specification of the TrafficBots training losses (trafficbots_gym.model.losses)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.model.losses import (LossConfig, dest_nll, imitation_loss, imitation_per_step,
                                          kl_diag_gaussian, kl_loss, starters, training_losses)


@dataclass
class Gaussian:
    mean: torch.Tensor
    log_std: torch.Tensor
    valid: torch.Tensor


@dataclass
class FakeRollout:
    pred_pos: torch.Tensor
    pred_yaw: torch.Tensor
    pred_spd: torch.Tensor
    pred_valid: torch.Tensor
    latent_post: Gaussian | None = None
    latent_prior: Gaussian | None = None
    dest_logits: torch.Tensor | None = None
    dest_valid: torch.Tensor | None = None


def log_replay(batch: SceneBatch) -> FakeRollout:
    """A rollout that reproduces the log exactly (prediction index i = step i + 1)."""
    return FakeRollout(pred_pos=batch.agent_pos[:, 1:].clone(), pred_yaw=batch.agent_yaw[:, 1:].clone(),
                       pred_spd=batch.agent_spd[:, 1:].clone(), pred_valid=batch.agent_valid[:, :-1].clone())


def test_imitation_loss_is_zero_when_prediction_equals_log(reference_batch: SceneBatch) -> None:
    assert imitation_loss(log_replay(reference_batch), reference_batch).item() == 0.0


def test_imitation_loss_matches_reference_formula_for_a_constant_offset(reference_batch: SceneBatch) -> None:
    out = log_replay(reference_batch)
    out.pred_pos = out.pred_pos + torch.tensor([0.5, -3.0])  # SmoothL1: 0.5*0.5^2 = 0.125 and 3-0.5 = 2.5
    out.pred_yaw = out.pred_yaw + math.pi / 2                 # 10 * 0.5 * (1 - cos) = 5
    out.pred_spd = out.pred_spd + 2.0                         # SmoothL1 = 1.5
    expected = 0.1 * (0.125 + 2.5) + 5.0 + 0.1 * 1.5
    assert imitation_loss(out, reference_batch).item() == pytest.approx(expected, rel=1e-5)


def test_imitation_loss_ignores_history_steps_and_invalid_predictions(reference_batch: SceneBatch) -> None:
    out = log_replay(reference_batch)
    out.pred_pos[:, :10] += 100.0          # steps 1..10 are teacher forced, never scored
    out.pred_valid[:, 50:, 3] = False
    out.pred_pos[:, 50:, 3] += 100.0       # agent 3 is not simulated after step 50
    assert imitation_loss(out, reference_batch).item() == 0.0
    out.pred_pos[:, 10] += 1.0             # step 11 is the first scored step
    assert imitation_loss(out, reference_batch).item() > 0.0


def _one_starter(batch: SceneBatch) -> SceneBatch:
    """``batch`` where agent 0 of scene 0 stands at the current step and moves afterwards, nobody else does."""
    spd = torch.zeros_like(batch.agent_spd)
    spd[0, STEP_CURRENT + 5:, 0] = 3.0
    valid = torch.zeros_like(batch.agent_valid)
    valid[:, :, :2] = True
    return replace(batch, agent_spd=spd, agent_valid=valid)


def test_starters_stand_now_and_move_later_in_the_log(reference_batch: SceneBatch) -> None:
    batch = _one_starter(reference_batch)
    expected = torch.zeros_like(batch.agent_valid[:, 0])
    expected[0, 0] = True
    assert torch.equal(starters(batch), expected)


def test_w_start_weights_only_the_starters_imitation_cost(reference_batch: SceneBatch) -> None:
    batch = _one_starter(reference_batch)
    out = log_replay(batch)
    out.pred_pos = out.pred_pos + 1.0                      # the same cost for every scored agent-step
    plain = imitation_loss(out, batch).item()
    assert imitation_loss(out, batch, LossConfig(w_start=1.0)).item() == plain
    out.pred_pos[0, :, 0] -= 1.0                           # the starter now follows its log exactly
    others = imitation_loss(out, batch).item()
    assert imitation_loss(out, batch, LossConfig(w_start=5.0)).item() == pytest.approx(others)
    out.pred_pos[0, :, 0] += 1.0
    weighted = imitation_loss(out, batch, LossConfig(w_start=5.0)).item()
    assert weighted > plain                                # the starter's cost counts five times


def test_imitation_per_step_is_differentiable_and_minimal_at_the_log() -> None:
    pos = torch.zeros(4, 2, requires_grad=True)
    cost = imitation_per_step(pos, torch.zeros(4), torch.zeros(4), torch.ones(4, 2), torch.zeros(4), torch.zeros(4))
    cost.sum().backward()
    assert pos.grad is not None and (pos.grad < 0).all()


def test_kl_of_identical_gaussians_is_zero_and_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    m_q, m_p, s_q, s_p = (torch.randn(2, 5, 16, generator=g) for _ in range(4))
    assert kl_diag_gaussian(m_q, s_q, m_q, s_q).abs().max().item() < 1e-6
    ref = torch.distributions.kl_divergence(
        torch.distributions.Independent(torch.distributions.Normal(m_q, s_q.exp()), 1),
        torch.distributions.Independent(torch.distributions.Normal(m_p, s_p.exp()), 1))
    torch.testing.assert_close(kl_diag_gaussian(m_q, s_q, m_p, s_p), ref)


def test_kl_free_nats_clamp_gives_no_gradient_below_the_threshold() -> None:
    mean = torch.zeros(1, 3, 16, requires_grad=True)
    post = Gaussian(mean, torch.full((16,), -1.0), torch.ones(1, 3, dtype=torch.bool))
    prior = Gaussian(torch.full((1, 3, 16), 1e-3), torch.full((16,), -1.0), torch.ones(1, 3, dtype=torch.bool))
    loss = kl_loss(post, prior, torch.ones(1, 3, dtype=torch.bool), free_nats=0.01)
    assert loss.item() == pytest.approx(0.01)
    loss.backward()
    assert mean.grad is not None and mean.grad.abs().max().item() == 0.0
    unclamped = kl_loss(post, prior, torch.ones(1, 3, dtype=torch.bool), free_nats=0.0)
    assert 0.0 < unclamped.item() < 0.01


def test_kl_is_averaged_over_posterior_valid_agents_with_predictions() -> None:
    post = Gaussian(torch.tensor([[[1.0], [2.0], [3.0]]]), torch.zeros(1), torch.tensor([[True, True, False]]))
    prior = Gaussian(torch.zeros(1, 3, 1), torch.zeros(1), torch.ones(1, 3, dtype=torch.bool))
    predicted = torch.tensor([[True, False, True]])
    assert kl_loss(post, prior, predicted, free_nats=0.0).item() == pytest.approx(0.5)  # only agent 0


def test_dest_nll_is_log_of_class_count_for_uniform_logits_and_skips_impossible_targets() -> None:
    logits = torch.zeros(1, 2, 8)
    logits[0, 1, 5] = -math.inf
    dest = torch.tensor([[2, 5]])
    assert dest_nll(logits, dest, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(math.log(8))
    assert dest_nll(logits, dest, torch.tensor([[False, True]])).item() == 0.0


def test_training_losses_weight_the_terms_like_the_reference(reference_batch: SceneBatch) -> None:
    out = log_replay(reference_batch)
    out.pred_spd = out.pred_spd + 2.0
    b, a = reference_batch.agent_dest.shape
    valid = torch.ones(b, a, dtype=torch.bool)
    out.latent_post = Gaussian(torch.ones(b, a, 16), torch.zeros(16), valid)
    out.latent_prior = Gaussian(torch.zeros(b, a, 16), torch.zeros(16), valid)
    out.dest_logits, out.dest_valid = torch.zeros(b, a, 1024), valid
    losses = training_losses(out, reference_batch)
    assert set(losses) == {"loss", "imitation", "kl", "dest_nll", "collision", "offroad"}
    assert losses["collision"].item() == 0.0 and losses["offroad"].item() == 0.0  # off by default
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["imitation"].item() == pytest.approx(0.15, rel=1e-5)
    assert losses["kl"].item() == pytest.approx(8.0)
    assert losses["dest_nll"].item() == pytest.approx(math.log(1024), rel=1e-6)
    assert losses["loss"].item() == pytest.approx(0.15 + 0.1 * 8.0 + math.log(1024), rel=1e-5)
    custom = training_losses(out, reference_batch, replace(LossConfig(), w_kl=0.0, w_dest=2.0))
    assert custom["loss"].item() == pytest.approx(0.15 + 2 * math.log(1024), rel=1e-5)


def test_training_losses_without_latent_or_destination_are_imitation_only(reference_batch: SceneBatch) -> None:
    losses = training_losses(log_replay(reference_batch), reference_batch)
    assert losses["kl"].item() == 0.0 and losses["dest_nll"].item() == 0.0 and losses["loss"].item() == 0.0


def test_loss_config_rejects_negative_weights() -> None:
    with pytest.raises(ValueError, match="w_start"):
        LossConfig(w_start=-1.0)
    with pytest.raises(ValueError, match="w_kl"):
        LossConfig(w_kl=-1.0)
