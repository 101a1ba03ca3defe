"""WOSAC-style realism of simulated agents against the log (2025 sim-agents configuration).

Given K closed-loop rollouts of every scene and the logged future, per-object features are pooled
over rollouts and steps into a histogram (or a Bernoulli for the event features), each logged value
is scored by its log-likelihood under that histogram, averaged over valid (object, step) pairs,
exponentiated, and combined with the 2025 weights into a meta-metric. See
``docs/benchmarks.md`` for where this follows WOSAC exactly and where it approximates it
(2-D boxes, SAT separation distance instead of rounded-corner distance, unsigned road-edge
distance signed by the off-road test).

All tensors are torch ``[S, K, T, A]`` (scenes, rollouts, steps, agents) for the simulation and
``[S, T, A]`` for the log; the steps are the future steps, with the history prepended by the caller
where a central difference needs it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HistogramSpec:
    """Fixed-range histogram used to estimate a feature's distribution."""

    low: float
    high: float
    bins: int
    pseudocount: float = 0.1


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    weight: float
    histogram: HistogramSpec | None  # None -> Bernoulli event feature
    vehicles_only: bool = False


WOSAC_2025: tuple[FeatureSpec, ...] = (
    FeatureSpec("linear_speed", 0.05, HistogramSpec(0.0, 25.0, 10)),
    FeatureSpec("linear_acceleration", 0.05, HistogramSpec(-12.0, 12.0, 11)),
    FeatureSpec("angular_speed", 0.05, HistogramSpec(-0.628, 0.628, 11)),
    FeatureSpec("angular_acceleration", 0.05, HistogramSpec(-3.14, 3.14, 11)),
    FeatureSpec("distance_to_nearest_object", 0.10, HistogramSpec(-5.0, 40.0, 10)),
    FeatureSpec("collision", 0.25, None),
    FeatureSpec("time_to_collision", 0.10, HistogramSpec(0.0, 5.0, 10), vehicles_only=True),
    FeatureSpec("distance_to_road_edge", 0.05, HistogramSpec(-20.0, 40.0, 10)),
    FeatureSpec("offroad", 0.25, None),
    FeatureSpec("traffic_light_violation", 0.05, None, vehicles_only=True),
)
"""Features, weights and histogram configs of the 2025 sim-agents challenge (weights sum to 1)."""

BERNOULLI_PSEUDOCOUNT = 0.001


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles to [-pi, pi)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def central_diff(x: torch.Tensor, dt: float, dim: int = -2, wrap: bool = False) -> torch.Tensor:
    """Central difference along ``dim`` ((x[t+1] - x[t-1]) / 2dt); the two ends are NaN (undefined)."""
    x = x.movedim(dim, 0)
    d = x[2:] - x[:-2]
    if wrap:
        d = wrap_angle(d)
    out = torch.full_like(x, float("nan"))
    out[1:-1] = d / (2 * dt)
    return out.movedim(0, dim)


def kinematic_features(pos: torch.Tensor, yaw: torch.Tensor, dt: float = 0.1) -> dict[str, torch.Tensor]:
    """Linear/angular speed and acceleration from ``pos`` [..., T, A, 2] and ``yaw`` [..., T, A].

    Undefined entries (ends of the sequence) are NaN; callers mask them with validity.
    """
    vel = central_diff(pos, dt, dim=-3)
    speed = vel.norm(dim=-1)
    ang_speed = central_diff(yaw, dt, dim=-2, wrap=True)
    return {
        "linear_speed": speed,
        "linear_acceleration": central_diff(speed, dt, dim=-2),
        "angular_speed": ang_speed,
        "angular_acceleration": central_diff(ang_speed, dt, dim=-2),
    }


def histogram_log_likelihood(sim: torch.Tensor, sim_valid: torch.Tensor, log: torch.Tensor,
                             spec: HistogramSpec) -> torch.Tensor:
    """Per-object log-likelihood of each logged value under the histogram of pooled simulated values.

    ``sim`` [S, K, T, A] is pooled over K and T per (scene, object) (``independent_timesteps``);
    ``log`` [S, T, A] is scored bin by bin. Returns [S, T, A] log-probabilities.
    """
    edges = torch.linspace(spec.low, spec.high, spec.bins + 1, device=sim.device, dtype=sim.dtype)

    def bin_of(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(spec.low, spec.high)
        return torch.bucketize(x, edges[1:-1], right=True)

    s, k, t, a = sim.shape
    sim_bins = bin_of(torch.nan_to_num(sim))                                  # [S, K, T, A]
    onehot = torch.nn.functional.one_hot(sim_bins, spec.bins).to(sim.dtype)  # [S, K, T, A, bins]
    counts = (onehot * sim_valid.unsqueeze(-1).to(sim.dtype)).sum(dim=(1, 2))  # [S, A, bins]
    probs = (counts + spec.pseudocount) / (counts.sum(-1, keepdim=True) + spec.pseudocount * spec.bins)
    log_bins = bin_of(torch.nan_to_num(log))                                  # [S, T, A]
    logp = probs.log().unsqueeze(1).expand(s, t, a, spec.bins)
    return logp.gather(-1, log_bins.unsqueeze(-1)).squeeze(-1)


def bernoulli_log_likelihood(sim_event: torch.Tensor, log_event: torch.Tensor,
                             pseudocount: float = BERNOULLI_PSEUDOCOUNT) -> torch.Tensor:
    """Log-likelihood of each object's logged event [S, A] under the rate of its K simulated events [S, K, A]."""
    k = sim_event.shape[1]
    n_true = sim_event.to(torch.float64).sum(1)
    p_true = (n_true + pseudocount) / (k + 2 * pseudocount)
    p = torch.where(log_event, p_true, 1 - p_true)
    return p.log().to(torch.float32)


def masked_mean_exp(logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """exp(mean of ``logp`` over the valid entries) per scene (first dim); NaN where nothing is valid."""
    dims = tuple(range(1, logp.ndim))
    total = torch.where(valid, logp, torch.zeros_like(logp)).sum(dims)
    count = valid.sum(dims)
    return torch.where(count > 0, torch.exp(total / count.clamp(min=1)), torch.full_like(total, float("nan")))


@dataclass
class RealismInputs:
    """Per-step features of K rollouts and of the log for the evaluated objects.

    Time-series features are ``[S, K, T, A]`` (sim) and ``[S, T, A]`` (log) with validity masks;
    event features are per step too and are reduced with "any over time" on log-valid steps.
    """

    sim: dict[str, torch.Tensor]
    sim_valid: dict[str, torch.Tensor]
    log: dict[str, torch.Tensor]
    log_valid: dict[str, torch.Tensor]
    eval_mask: torch.Tensor      # [S, A] objects that are scored (SDC + tracks to predict, or all)
    is_vehicle: torch.Tensor     # [S, A]


def realism_scores(inputs: RealismInputs, features: tuple[FeatureSpec, ...] = WOSAC_2025) -> dict[str, torch.Tensor]:
    """Per-scene likelihood of every feature and the weighted meta-metric, each a tensor [S]."""
    out: dict[str, torch.Tensor] = {}
    meta = None
    for spec in features:
        objects = inputs.eval_mask & (inputs.is_vehicle if spec.vehicles_only else torch.ones_like(inputs.eval_mask))
        log_valid = inputs.log_valid[spec.name] & objects.unsqueeze(1)
        if spec.histogram is not None:
            logp = histogram_log_likelihood(inputs.sim[spec.name], inputs.sim_valid[spec.name],
                                            inputs.log[spec.name], spec.histogram)
            score = masked_mean_exp(logp, log_valid)
        else:
            sim_event = (inputs.sim[spec.name].bool() & inputs.log_valid[spec.name].unsqueeze(1)).any(2)  # [S,K,A]
            log_event = (inputs.log[spec.name].bool() & inputs.log_valid[spec.name]).any(1)               # [S,A]
            score = masked_mean_exp(bernoulli_log_likelihood(sim_event, log_event), objects)
        out[spec.name] = score
        term = spec.weight * torch.nan_to_num(score, nan=1.0)  # a feature with no valid object is not penalised
        meta = term if meta is None else meta + term
    assert meta is not None
    out["realism_meta_metric"] = meta
    return out
