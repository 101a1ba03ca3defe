"""Reward terms and termination of the ego, batched over envs (highway-env style weighted terms).

reward = sum over terms of ``RewardConfig.<term> * term value``. Term values (per step, per row):

* ``progress``: metres advanced along the logged ego route this step (negative when going back)
* ``goal_reached``: 1 on the step the logged goal is first reached, else 0
* ``collision`` / ``offroad`` / ``red_light``: 1 on each step the ego overlaps another agent / is off the
  drivable area / crosses a red light, else 0
* ``comfort_acc``: acceleration magnitude sqrt(acc^2 + (speed * yaw_rate)^2) in m/s^2
* ``comfort_jerk``: |acc - previous acc| / dt in m/s^3
* ``log_deviation``: distance to the logged ego position of this step in m (0 past the log or where the
  log is invalid)
* ``log_tracking``: max(0, 1 - that distance / ``LOG_TRACKING_SCALE``) where the log has the ego, else 0
* ``time_to_collision``: max(0, 1 - the ego's time to collision / ``TTC_SCALE``): 0 with no closing leader
  or one at least ``TTC_SCALE`` away, 1 at contact (the time to collision follows WOSAC's leader rule,
  :func:`~trafficbots_gym.simulation.metrics.time_to_collision`)
* ``overspeed``: max(0, ego speed - the top speed of the ego's log) in m/s
* ``ahead_of_log``: max(0, ego arc length - the logged ego's arc length at this step) along the route, in m
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from trafficbots_gym.env.config import RewardConfig, TerminationConfig

REWARD_TERMS: tuple[str, ...] = tuple(f.name for f in fields(RewardConfig))
TERMINATION_EVENTS: tuple[str, ...] = tuple(f.name for f in fields(TerminationConfig))
LOG_TRACKING_SCALE = 5.0
"""m: distance to the logged ego position at which the ``log_tracking`` bonus reaches zero."""
TTC_SCALE = 3.0
"""s: time to collision at which the ``time_to_collision`` term reaches zero."""


@dataclass
class StepEvents:
    """What happened to each row's ego in one step, [B] each."""

    progress: torch.Tensor       # m along the route
    goal_reached: torch.Tensor   # bool: reached this step for the first time
    collided: torch.Tensor       # bool
    offroad: torch.Tensor        # bool
    red_light: torch.Tensor      # bool: crossed a red light this step
    outside_map: torch.Tensor    # bool
    acc_magnitude: torch.Tensor  # m/s^2
    jerk: torch.Tensor           # m/s^3 (absolute)
    log_deviation: torch.Tensor  # m (0 where the log has no ego position)
    log_valid: torch.Tensor      # bool: the log has the ego's position at this step
    time_to_collision: torch.Tensor  # s to the box the ego follows (capped at 5 s)
    overspeed: torch.Tensor      # m/s above the top speed of the ego's log (0 below it)
    ahead_of_log: torch.Tensor   # m of route the ego is ahead of its logged driver (0 when level or behind)


def term_values(events: StepEvents) -> dict[str, torch.Tensor]:
    """Unweighted value of every reward term, float [B]."""
    values = {
        "progress": events.progress,
        "goal_reached": events.goal_reached,
        "collision": events.collided,
        "offroad": events.offroad,
        "red_light": events.red_light,
        "comfort_acc": events.acc_magnitude,
        "comfort_jerk": events.jerk,
        "log_deviation": events.log_deviation,
        "log_tracking": (1.0 - events.log_deviation / LOG_TRACKING_SCALE).clamp(min=0.0) * events.log_valid,
        "time_to_collision": (1.0 - events.time_to_collision / TTC_SCALE).clamp(min=0.0),
        "overspeed": events.overspeed,
        "ahead_of_log": events.ahead_of_log,
    }
    return {k: v.float() for k, v in values.items()}


def weighted_terms(events: StepEvents, config: RewardConfig) -> dict[str, torch.Tensor]:
    """Each term times its weight, float [B]; their sum is the reward."""
    return {k: getattr(config, k) * v for k, v in term_values(events).items()}


def total_reward(weighted: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] sum of the weighted terms."""
    return torch.stack(list(weighted.values())).sum(0)


def terminated(events: StepEvents, goal_reached_ever: torch.Tensor, config: TerminationConfig) -> torch.Tensor:
    """[B] bool: an event switched on in ``config`` happened this step (goal: reached at any time)."""
    flags = {"collision": events.collided, "offroad": events.offroad, "goal_reached": goal_reached_ever,
             "red_light": events.red_light, "outside_map": events.outside_map}
    out = torch.zeros_like(events.collided, dtype=torch.bool)
    for name in TERMINATION_EVENTS:
        if getattr(config, name):
            out = out | flags[name]
    return out
