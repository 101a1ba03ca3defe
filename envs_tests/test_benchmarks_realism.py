"""Specification of the WOSAC-style realism likelihoods."""
import math

import torch

from trafficbots_gym.benchmarks.realism import (
    WOSAC_2025, HistogramSpec, RealismInputs, bernoulli_log_likelihood, central_diff, histogram_log_likelihood,
    kinematic_features, realism_scores,
)


def test_2025_weights_sum_to_one():
    assert math.isclose(sum(f.weight for f in WOSAC_2025), 1.0)


def test_central_difference_of_a_constant_speed_track_is_that_speed_with_undefined_ends():
    t = torch.arange(10.0)
    pos = torch.stack([2.0 * t * 0.1, torch.zeros(10)], -1)[:, None]  # [T, A=1, 2] at 2 m/s
    speed = kinematic_features(pos, torch.zeros(10, 1))["linear_speed"]
    assert torch.isnan(speed[0]).all() and torch.isnan(speed[-1]).all()
    assert torch.allclose(speed[1:-1], torch.full_like(speed[1:-1], 2.0))


def test_angular_speed_wraps_heading_jumps():
    yaw = torch.tensor([3.1, -3.1, -3.0])[:, None]
    d = central_diff(yaw, 0.1, dim=-2, wrap=True)
    assert abs(d[1, 0].item() - (2 * math.pi - 6.1) / 0.2) < 1e-4


def test_histogram_likelihood_is_higher_for_values_the_simulation_produces():
    spec = HistogramSpec(0.0, 10.0, 10)
    sim = torch.full((1, 8, 5, 1), 2.5)  # every rollout at 2.5
    valid = torch.ones_like(sim, dtype=torch.bool)
    near = histogram_log_likelihood(sim, valid, torch.full((1, 5, 1), 2.6), spec)
    far = histogram_log_likelihood(sim, valid, torch.full((1, 5, 1), 8.0), spec)
    assert (near > far).all()
    assert torch.allclose(near.exp(), torch.tensor((40 + 0.1) / (40 + 1.0)))


def test_bernoulli_likelihood_penalises_simulated_events_the_log_does_not_have():
    sim_collides = torch.ones(1, 32, 1, dtype=torch.bool)
    sim_clean = torch.zeros(1, 32, 1, dtype=torch.bool)
    log_clean = torch.zeros(1, 1, dtype=torch.bool)
    assert bernoulli_log_likelihood(sim_collides, log_clean) < bernoulli_log_likelihood(sim_clean, log_clean)


def _inputs(sim_speed: float, log_speed: float) -> RealismInputs:
    s, k, t, a = 1, 4, 6, 2
    names = [f.name for f in WOSAC_2025]
    sim = {n: torch.zeros(s, k, t, a) for n in names}
    log = {n: torch.zeros(s, t, a) for n in names}
    sim["linear_speed"] += sim_speed
    log["linear_speed"] += log_speed
    ones_sim = {n: torch.ones(s, k, t, a, dtype=torch.bool) for n in names}
    ones_log = {n: torch.ones(s, t, a, dtype=torch.bool) for n in names}
    return RealismInputs(sim, ones_sim, log, ones_log, torch.ones(s, a, dtype=torch.bool),
                         torch.ones(s, a, dtype=torch.bool))


def test_meta_metric_prefers_a_simulation_that_matches_the_log():
    good = realism_scores(_inputs(5.0, 5.0))["realism_meta_metric"]
    bad = realism_scores(_inputs(20.0, 5.0))["realism_meta_metric"]
    assert good.item() > bad.item()
    assert 0.0 < bad.item() < good.item() <= 1.0
