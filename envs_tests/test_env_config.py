"""Environment configuration, action mapping and reward terms (no simulator needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficbots_gym.env.actions import ActionMapper, action_space, discrete_grid
from trafficbots_gym.env.config import EnvConfig, RewardConfig, TerminationConfig, ego_spec, resolve_device
from trafficbots_gym.env.reward import StepEvents, terminated, total_reward, weighted_terms


def test_defaults_match_the_documented_episode():
    cfg = EnvConfig()
    assert (cfg.background, cfg.ego, cfg.obs_mode, cfg.action_mode, cfg.horizon) == (
        "trafficbots", "sdc", "flat", "continuous", 80)
    assert cfg.termination == TerminationConfig()
    assert (cfg.background_guard, cfg.ego_guard) == (True, False)   # learned traffic guarded, the ego free


@pytest.mark.parametrize("key", ["background_guard", "ego_guard"])
def test_guard_switches_must_be_booleans(key):
    with pytest.raises(ValueError, match=f"{key} must be True or False, got 'yes'"):
        EnvConfig.from_kwargs(**{key: "yes"})


def test_reward_dict_overrides_only_the_given_weights():
    cfg = EnvConfig.from_kwargs(reward={"collision": -5.0})
    assert cfg.reward.collision == -5.0
    assert cfg.reward.progress == RewardConfig().progress


def test_unknown_reward_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown reward keys \\['colision'\\].*progress"):
        EnvConfig.from_kwargs(reward={"colision": -1.0})


def test_unknown_termination_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown termination keys.*goal_reached"):
        EnvConfig.from_kwargs(termination={"crash": True})


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown environment config keys \\['horizn'\\].*horizon"):
        EnvConfig.from_kwargs(horizn=10)


def test_config_dict_and_keywords_merge_but_not_twice():
    cfg = EnvConfig.from_kwargs({"horizon": 20}, obs_mode="dict")
    assert (cfg.horizon, cfg.obs_mode) == (20, "dict")
    with pytest.raises(ValueError, match="both"):
        EnvConfig.from_kwargs({"horizon": 20}, horizon=30)


def test_bad_background_lists_choices():
    with pytest.raises(ValueError, match="log_replay"):
        EnvConfig.from_kwargs(background="replay")


def test_horizon_past_the_log_needs_a_reactive_background():
    assert EnvConfig.from_kwargs(horizon=120, background="trafficbots").horizon == 120
    with pytest.raises(ValueError, match="past the log end"):
        EnvConfig.from_kwargs(horizon=120, background="log_replay")


@pytest.mark.parametrize("ego,expected", [("sdc", ("sdc", 0)), (3, ("index", 3)),
                                          ({"track_id": 42}, ("track_id", 42))])
def test_ego_spec_forms(ego, expected):
    assert ego_spec(ego) == expected


@pytest.mark.parametrize("ego", ["car", -1, {"id": 3}, True, 2.5])
def test_bad_ego_spec_is_rejected(ego):
    with pytest.raises(ValueError, match="ego"):
        ego_spec(ego)


def test_auto_device_is_cpu_without_cuda():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_continuous_actions_are_clipped_and_scaled_by_vehicle_limits():
    mapper = ActionMapper(EnvConfig(), torch.device("cpu"))
    a = mapper.normalised(np.array([[2.0, -0.5]], np.float32), 1)
    vehicle = torch.tensor([[True, False, False]])
    assert torch.allclose(mapper.physical(a, vehicle), torch.tensor([[5.0, -0.75]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_raise(bad):
    mapper = ActionMapper(EnvConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="finite"):
        mapper.normalised(np.array([[0.0, bad]], np.float32), 1)


def test_discrete_grid_is_acceleration_major_and_spans_the_limits():
    grid = discrete_grid(3, 5)
    assert grid.shape == (15, 2)
    assert grid[0].tolist() == [-1.0, -1.0] and grid[4].tolist() == [-1.0, 1.0]
    assert grid[7].tolist() == [0.0, 0.0] and grid[14].tolist() == [1.0, 1.0]
    cfg = EnvConfig.from_kwargs(action_mode="discrete", n_acc=3, n_yaw_rate=5)
    assert action_space(cfg).n == 15
    mapper = ActionMapper(cfg, torch.device("cpu"))
    assert mapper.normalised(np.array([7]), 1).tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="discrete"):
        mapper.normalised(np.array([15]), 1)


def _events(n: int = 2, **overrides) -> StepEvents:
    base = {name: torch.zeros(n) for name in ("progress", "acc_magnitude", "jerk", "log_deviation")}
    base["time_to_collision"] = torch.full((n,), 5.0)
    base["overspeed"] = torch.zeros(n)
    base["ahead_of_log"] = torch.zeros(n)
    base.update({name: torch.zeros(n, dtype=torch.bool)
                 for name in ("goal_reached", "collided", "offroad", "red_light", "outside_map", "log_valid")})
    base.update(overrides)
    return StepEvents(**base)


def test_reward_is_the_weighted_sum_of_terms():
    events = _events(progress=torch.tensor([2.0, 0.0]), collided=torch.tensor([False, True]),
                     acc_magnitude=torch.tensor([1.0, 0.0]))
    cfg = RewardConfig()
    terms = weighted_terms(events, cfg)
    expected = torch.tensor([2.0 * cfg.progress + cfg.comfort_acc, cfg.collision])
    assert torch.allclose(total_reward(terms), expected)
    assert set(terms) == {"progress", "goal_reached", "collision", "offroad", "red_light", "comfort_acc",
                          "comfort_jerk", "log_deviation", "log_tracking", "time_to_collision", "overspeed",
                          "ahead_of_log"}


def test_log_tracking_bonus_falls_linearly_to_zero_at_five_metres_and_is_zero_without_a_log():
    events = _events(5, log_deviation=torch.tensor([0.0, 2.0, 5.0, 9.0, 1.0]),
                     log_valid=torch.tensor([True, True, True, True, False]))
    terms = weighted_terms(events, RewardConfig(log_tracking=0.5, comfort_acc=0.0, comfort_jerk=0.0))
    assert terms["log_tracking"].tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0, 0.0])
    assert weighted_terms(events, RewardConfig())["log_tracking"].abs().sum() == 0     # off by default


def test_time_to_collision_penalty_grows_as_the_leader_gets_closer_in_time_and_is_off_by_default():
    events = _events(4, time_to_collision=torch.tensor([5.0, 3.0, 1.5, 0.0]))
    terms = weighted_terms(events, RewardConfig(time_to_collision=-1.0, comfort_acc=0.0, comfort_jerk=0.0))
    assert terms["time_to_collision"].tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])
    assert weighted_terms(events, RewardConfig())["time_to_collision"].abs().sum() == 0


def test_ahead_of_log_penalty_is_per_metre_ahead_of_the_logged_driver_and_off_by_default():
    events = _events(3, ahead_of_log=torch.tensor([0.0, 2.0, 10.0]))
    terms = weighted_terms(events, RewardConfig(ahead_of_log=-0.05))
    assert terms["ahead_of_log"].tolist() == pytest.approx([0.0, -0.1, -0.5])
    assert weighted_terms(events, RewardConfig())["ahead_of_log"].abs().sum() == 0


def test_overspeed_penalty_is_per_metre_per_second_above_the_logged_top_speed_and_off_by_default():
    events = _events(3, overspeed=torch.tensor([0.0, 0.5, 4.0]))
    terms = weighted_terms(events, RewardConfig(overspeed=-0.2, comfort_acc=0.0, comfort_jerk=0.0))
    assert terms["overspeed"].tolist() == pytest.approx([0.0, -0.1, -0.8])
    assert weighted_terms(events, RewardConfig())["overspeed"].abs().sum() == 0


def test_termination_events_are_switchable():
    events = _events(collided=torch.tensor([True, False]), offroad=torch.tensor([False, True]))
    never = torch.zeros(2, dtype=torch.bool)
    assert terminated(events, never, TerminationConfig()).tolist() == [True, True]
    assert terminated(events, never, TerminationConfig(collision=False)).tolist() == [False, True]
    assert terminated(events, torch.tensor([True, False]),
                      TerminationConfig(collision=False, offroad=False)).tolist() == [True, False]
