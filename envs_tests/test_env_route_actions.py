"""Route-relative ego actions (``action_mode="route"``): acceleration plus a lateral offset from the logged
route, steered along it by pure pursuit; and the env settings stored with a trained policy."""
from __future__ import annotations

import importlib.util
import math
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import trafficbots_gym
from trafficbots_gym.benchmarks.ego_controllers import make_controller
from trafficbots_gym.data.constants import N_STEP, STEP_CURRENT
from trafficbots_gym.env.actions import ActionMapper, EgoOnRoute, action_space
from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.route import Route
from trafficbots_gym.env.sb3 import POLICY_ENV_MEMBER, read_policy_env_settings, write_policy_env_settings
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
from trafficbots_gym.simulation.dynamics import unicycle_step
from trafficbots_gym.simulation.metrics import LoggedPath

from conftest import NO_TERMINATION, REFERENCE_SCENES

ROOT = Path(__file__).resolve().parent.parent
VEHICLE = torch.tensor([[1.0, 0.0, 0.0]])
PEDESTRIAN = torch.tensor([[0.0, 1.0, 0.0]])


def _straight_route(length: float = 50.0, rows: int = 1) -> Route:
    """``rows`` rows whose logged ego drives from (0, 0) to (length, 0) along +x over the logged future."""
    x = torch.zeros(N_STEP)
    x[STEP_CURRENT:] = torch.linspace(0.0, length, N_STEP - STEP_CURRENT)
    pos = torch.stack([x, torch.zeros_like(x)], -1).view(1, N_STEP, 1, 2).expand(rows, -1, -1, -1)
    return Route(LoggedPath.from_log(pos, torch.zeros(rows, N_STEP, 1), torch.ones(rows, N_STEP, 1, dtype=torch.bool),
                                     start=STEP_CURRENT))


def _ego(route: Route, x: float, y: float, yaw: float, spd: float, rows: int = 1) -> EgoOnRoute:
    pos = torch.tensor([[x, y]]).expand(rows, 2)
    return EgoOnRoute(pos=pos, yaw=torch.full((rows,), yaw), spd=torch.full((rows,), spd), route=route,
                      where=route.locate(pos))


def _route_mapper(**overrides) -> ActionMapper:
    return ActionMapper(EnvConfig.from_kwargs(action_mode="route", **overrides), torch.device("cpu"))


def _hold(action_mode: str, action: tuple[float, float], scene_index: list[int], **overrides) -> dict[str, np.ndarray]:
    """Per-step info [80, B] of full log-replay episodes on embedded validation scenes holding ``action``."""
    n = len(scene_index)
    env = TrafficBotsVecEnv(n, split="validation", background="log_replay", action_mode=action_mode,
                            device="cpu", termination=NO_TERMINATION, prefetch=False, **overrides)
    try:
        env.reset(seed=0, options={"scene_index": scene_index})
        steps = []
        for _ in range(80):
            *_, info = env.step(np.tile(np.float32(action), (n, 1)))
            steps.append({k: np.asarray(info[k]) for k in ("lateral_offset", "offroad", "acc")})
    finally:
        env.close()
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


# ------------------------------------------------------------------------------------------- space
def test_route_action_space_is_the_unit_box_and_the_env_checkers_pass():
    assert action_space(EnvConfig(action_mode="route")) == spaces.Box(-1.0, 1.0, (2,), np.float32)
    kwargs = {"scenes": REFERENCE_SCENES, "background": "log_replay", "action_mode": "route"}
    env = gym.make("TrafficBots-v0", **kwargs)
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    check_env(env.unwrapped, skip_render_check=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Your observation .* unconventional shape")
        sb3_check_env(gym.make("TrafficBots-v0", **kwargs))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "2"])
def test_route_offset_range_must_be_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match=r"route_offset_range must be .*> 0, got"):
        EnvConfig.from_kwargs(action_mode="route", route_offset_range=bad)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, True, "4"])
def test_route_curve_accel_must_be_a_finite_number_at_least_zero(bad):
    with pytest.raises(ValueError, match=r"route_curve_accel must be .*>= 0, got"):
        EnvConfig.from_kwargs(action_mode="route", route_curve_accel=bad)


# -------------------------------------------------------------------------------------- mapping
@pytest.mark.parametrize("ego_type", [VEHICLE, PEDESTRIAN])
def test_acceleration_channel_is_scaled_exactly_as_in_continuous_mode(ego_type):
    normalised = torch.tensor([[-1.0, 0.3], [-0.4, -1.0], [0.0, 0.0], [0.7, 1.0]])
    types = ego_type.expand(4, 3)
    ego = _ego(_straight_route(rows=4), 5.0, 1.0, 0.1, 8.0, rows=4)
    continuous = ActionMapper(EnvConfig(), torch.device("cpu")).physical(normalised, types)
    route_physical = _route_mapper().physical(normalised, types, ego)
    torch.testing.assert_close(route_physical[:, 0], continuous[:, 0])


def test_acceleration_reported_by_the_env_matches_continuous_mode():
    route = _hold("route", (0.6, 0.0), [8])
    continuous = _hold("continuous", (0.6, 0.0), [8])
    np.testing.assert_allclose(route["acc"][:5], 3.0)
    np.testing.assert_allclose(route["acc"], continuous["acc"])


def _quarter_circle_route(radius: float = 10.0) -> Route:
    """A route that runs 10 m straight along +x, then turns left on a circle of ``radius`` m."""
    n = N_STEP - STEP_CURRENT
    s = torch.linspace(0.0, 10.0 + 0.5 * math.pi * radius, n)
    turn = (s - 10.0).clamp(min=0.0) / radius
    x = torch.where(s < 10.0, s, 10.0 + radius * torch.sin(turn))
    y = torch.where(s < 10.0, torch.zeros_like(s), radius * (1.0 - torch.cos(turn)))
    pos = torch.zeros(N_STEP, 2)
    pos[STEP_CURRENT:] = torch.stack([x, y], -1)
    yaw = torch.zeros(N_STEP)
    yaw[STEP_CURRENT:] = turn
    return Route(LoggedPath.from_log(pos.view(1, N_STEP, 1, 2), yaw.view(1, N_STEP, 1),
                                     torch.ones(1, N_STEP, 1, dtype=torch.bool), start=STEP_CURRENT))


def test_the_curve_speed_cap_slows_the_ego_before_a_curve_and_leaves_it_alone_on_a_straight():
    full_throttle = torch.tensor([[1.0, 0.0]])
    capped = _route_mapper(route_curve_accel=4.0)
    on_straight = _route_mapper(route_curve_accel=4.0).physical(full_throttle, VEHICLE,
                                                                 _ego(_straight_route(), 5.0, 0.0, 0.0, 10.0))
    assert on_straight[0, 0].item() == pytest.approx(5.0)            # no curve ahead: the policy's choice
    before_curve = _ego(_quarter_circle_route(10.0), 2.0, 0.0, 0.0, 10.0)
    assert _route_mapper().physical(full_throttle, VEHICLE, before_curve)[0, 0].item() == pytest.approx(5.0)
    assert capped.physical(full_throttle, VEHICLE, before_curve)[0, 0].item() == pytest.approx(-5.0)  # brake
    near_limit = _ego(_quarter_circle_route(10.0), 2.0, 0.0, 0.0, 6.2)    # just below sqrt(4 * 10) = 6.32 m/s:
    assert capped.physical(full_throttle, VEHICLE, near_limit)[0, 0].item() == pytest.approx(1.25, abs=0.05)


def test_route_actions_need_the_egos_route_state():
    with pytest.raises(ValueError, match="route actions need"):
        _route_mapper().physical(torch.zeros(1, 2), VEHICLE)


def test_steering_turns_towards_the_route_is_zero_at_standstill_and_clipped_to_the_type_limit():
    route = _straight_route()
    mapper = _route_mapper()
    right_of_route = _ego(route, 10.0, -1.0, 0.0, 10.0)
    assert mapper.physical(torch.zeros(1, 2), VEHICLE, right_of_route)[0, 1] > 0.1        # turns left, back on
    assert mapper.physical(torch.tensor([[0.0, -0.5]]), VEHICLE, right_of_route)[0, 1].abs() < 1e-4  # at -1 m
    assert mapper.physical(torch.zeros(1, 2), VEHICLE, _ego(route, 10.0, -1.0, 0.0, 0.0))[0, 1] == 0.0
    sharp = mapper.physical(torch.tensor([[0.0, 1.0]]), VEHICLE, _ego(route, 10.0, -1.0, -1.0, 10.0))
    assert sharp[0, 1] == pytest.approx(1.5)                                               # vehicle limit


def test_route_runs_on_straight_beyond_both_ends_and_offsets_go_left():
    route = _straight_route(50.0)
    ahead, behind = torch.tensor([4.0]), torch.tensor([-4.0])
    past_end = torch.tensor([[60.0, 0.0]])
    torch.testing.assert_close(route.point_ahead(past_end, route.locate(past_end).s, ahead, torch.tensor([1.0])),
                               torch.tensor([[64.0, 1.0]]))
    before_start = torch.tensor([[-5.0, 0.5]])
    torch.testing.assert_close(route.point_ahead(before_start, route.locate(before_start).s, behind,
                                                 torch.tensor([-2.0])), torch.tensor([[-9.0, -2.0]]))


@pytest.mark.parametrize("spd", [8.0, -4.0])
def test_steering_brings_a_forward_or_reversing_ego_back_onto_its_route(spd):
    route = _straight_route(200.0) if spd > 0 else _straight_route(50.0)
    mapper = _route_mapper()
    pos, yaw, v = torch.tensor([[40.0, -1.5]]), torch.tensor([0.2]), torch.tensor([spd])
    for _ in range(60):
        ego = EgoOnRoute(pos=pos, yaw=yaw, spd=v, route=route, where=route.locate(pos))
        acc, yaw_rate = mapper.physical(torch.zeros(1, 2), VEHICLE, ego)[0]
        pos, yaw, v, _ = unicycle_step(pos, yaw, v, acc.view(1), yaw_rate.view(1))
    assert abs(route.locate(pos).lateral.item()) < 0.1
    assert abs(math.remainder(yaw.item(), 2 * math.pi)) < 0.05


# ------------------------------------------------------------------------------------- episodes
FIRST_SCENES = list(range(16))
"""The first 16 embedded validation scenes, taken as they come (some egos stand still)."""


def test_holding_zero_keeps_the_ego_on_its_logged_route_where_continuous_actions_drift_away():
    route = _hold("route", (0.0, 0.0), FIRST_SCENES)
    continuous = _hold("continuous", (0.0, 0.0), FIRST_SCENES)
    route_drift = np.abs(route["lateral_offset"]).max(0)
    continuous_drift = np.abs(continuous["lateral_offset"]).max(0)
    assert (route_drift < 1.5).all()                       # measured: at most 0.9 m (a corner cut)
    assert (continuous_drift > 3.0).sum() >= 5             # measured: 7 of 16, up to 45 m
    route_offroad, continuous_offroad = route["offroad"].any(0).sum(), continuous["offroad"].any(0).sum()
    assert route_offroad <= 4                              # measured: 3, after driving past the route end
    assert route_offroad < continuous_offroad              # measured: 6


@pytest.mark.parametrize("a1,offset_range,target", [(0.5, 2.0, 1.0), (-0.75, 2.0, -1.5), (0.5, 3.0, 1.5)])
def test_offset_action_holds_the_ego_that_far_beside_its_route(a1, offset_range, target):
    info = _hold("route", (0.0, a1), [8, 14, 24], route_offset_range=offset_range)
    steady = info["lateral_offset"][-20:].mean(0)
    np.testing.assert_allclose(steady, target, atol=0.15)


# ------------------------------------------------------------------------------- policy settings
def _train_ppo_module():
    spec = importlib.util.spec_from_file_location("train_ppo", ROOT / "examples" / "train_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def route_model():
    env = trafficbots_gym.make_sb3_vec_env(2, scenes=REFERENCE_SCENES, background="log_replay", device="cpu",
                                           action_mode="route", horizon=3)
    yield PPO("MlpPolicy", env, n_steps=8, batch_size=8, device="cpu", seed=0)
    env.close()


def test_sb3_controller_takes_the_action_mode_stored_by_train_ppo(route_model, tmp_path):
    train_ppo = _train_ppo_module()
    args = train_ppo.build_parser().parse_args(["--action-mode", "route", "--route-offset-range", "1.5",
                                                "--route-curve-accel", "4", "--device", "cpu"])
    policy = train_ppo.save_policy(route_model, tmp_path / "policy.zip", train_ppo.policy_settings(args))
    with zipfile.ZipFile(policy) as archive:
        assert archive.testzip() is None and archive.namelist().count(POLICY_ENV_MEMBER) == 1
    PPO.load(policy, device="cpu")                                     # SB3 ignores the extra member
    controller = make_controller(str(policy), device="cpu")
    assert controller.env_overrides["action_mode"] == "route"
    assert controller.env_overrides["route_offset_range"] == 1.5
    assert controller.env_overrides["route_curve_accel"] == 4.0
    assert controller.env_overrides["obs_mode"] == "flat"


def test_archive_without_settings_falls_back_to_the_modes_of_the_models_spaces(route_model, tmp_path):
    route_model.save(tmp_path / "plain.zip")
    assert read_policy_env_settings(tmp_path / "plain.zip") is None
    assert make_controller(str(tmp_path / "plain.zip"), device="cpu").env_overrides == {
        "obs_mode": "flat", "action_mode": "continuous"}


def test_settings_are_replaced_in_place_and_a_failed_write_leaves_the_archive_untouched(route_model, tmp_path):
    path = tmp_path / "policy.zip"
    route_model.save(path)
    write_policy_env_settings(path, {"action_mode": "route"})
    write_policy_env_settings(path, {"action_mode": "continuous"})
    assert read_policy_env_settings(path) == {"action_mode": "continuous"}
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_policy_env_settings(path, {"action_mode": object()})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["policy.zip"]
