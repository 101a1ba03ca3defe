"""Smoke specification of examples/train_ppo.py: tiny PPO and SAC runs train, checkpoint, evaluate and benchmark."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import REFERENCE_SCENES

ROOT = Path(__file__).resolve().parent.parent


def _train_ppo_module():
    spec = importlib.util.spec_from_file_location("train_ppo", ROOT / "examples" / "train_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_inference_only_save(policy: Path, algo: str) -> None:
    """The final policy loads and acts, without the optimizers' moments or the last collected batch."""
    from stable_baselines3 import PPO, SAC
    model = {"ppo": PPO, "sac": SAC}[algo].load(policy, device="cpu")
    assert model._last_obs is None
    optimizers = [m.optimizer for m in model.policy.modules() if isinstance(getattr(m, "optimizer", None),
                                                                             torch.optim.Optimizer)]
    assert optimizers and all(len(o.state) == 0 for o in optimizers)
    action, _ = model.predict(model.observation_space.sample(), deterministic=True)
    assert model.action_space.contains(action)


@pytest.mark.parametrize("algo", ["ppo", pytest.param("sac", marks=pytest.mark.slow)])
def test_tiny_run_saves_policy_checkpoints_logs_and_benchmarks_it_under_two_backgrounds(tmp_path, algo,
                                                                                        tiny_checkpoint):
    out = tmp_path / "run"
    policy = _train_ppo_module().main([
        "--algo", algo, "--buffer-size", "1000", "--timesteps", "96", "--num-envs", "2", "--n-steps", "16",
        "--batch-size", "16", "--n-epochs", "1",
        "--background", "log_replay", "--scenes", str(REFERENCE_SCENES), "--eval-scenes", str(REFERENCE_SCENES),
        "--horizon", "6", "--eval-episodes", "2", "--eval-num-envs", "2",
        "--bench-backgrounds", "log_replay", "trafficbots", "--bench-episodes", "2",
        "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--out", str(out)])
    assert policy == out / "policy.zip" and policy.is_file()
    _assert_inference_only_save(policy, algo)
    assert list((out / "checkpoints").glob(f"{algo}_*_steps.zip"))
    assert (out / "eval" / "evaluations.npz").is_file() and (out / "best" / "best_model.zip").is_file()
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    if algo == "ppo":  # 6-step episodes end inside every 16-step rollout
        with open(out / "progress.csv") as f:
            progress = list(csv.DictReader(f))
        assert [float(r["timesteps"]) for r in progress] == [32.0, 64.0, 96.0]
        assert all(0 <= float(r[k]) <= 1 for r in progress for k in ("goal_rate", "collision_rate", "offroad_rate"))
        assert all(float(r["episodes"]) >= 2 for r in progress)
    with open(out / "bench" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["background"] for r in rows) == ["log_replay", "trafficbots"]
    assert all(r["controller"] == "policy.zip" and r["episodes"] == "2" for r in rows)
    _assert_archives_carry_the_env_settings(out, algo, "continuous")


def _assert_archives_carry_the_env_settings(out: Path, algo: str, action_mode: str) -> None:
    """The policy, the best model and every checkpoint of the run store the env settings they trained with."""
    from trafficbots_gym.env.sb3 import read_policy_env_settings
    archives = [out / "policy.zip", out / "best" / "best_model.zip", *(out / "checkpoints").glob(f"{algo}_*.zip")]
    assert len(archives) >= 3
    for archive in archives:
        settings = read_policy_env_settings(archive)
        assert settings is not None, archive
        assert (settings["action_mode"], settings["obs_mode"], settings["route_offset_range"]) == (
            action_mode, "flat", 1.5 if action_mode == "route" else 2.0)


def test_tiny_route_action_run_stores_its_action_mode_and_ego_guard_with_the_policy(tmp_path) -> None:
    out = tmp_path / "run"
    policy = _train_ppo_module().main([
        "--action-mode", "route", "--route-offset-range", "1.5", "--ego-guard", "--timesteps", "32", "--num-envs", "2",
        "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1", "--background", "log_replay",
        "--scenes", str(REFERENCE_SCENES), "--eval-scenes", str(REFERENCE_SCENES), "--horizon", "4",
        "--eval-episodes", "1", "--eval-num-envs", "1", "--bench-backgrounds", "log_replay", "--bench-episodes", "1",
        "--device", "cpu", "--out", str(out)])
    _assert_archives_carry_the_env_settings(out, "ppo", "route")
    from trafficbots_gym.benchmarks.ego_controllers import make_controller
    overrides = make_controller(str(policy), device="cpu").env_overrides
    assert (overrides["action_mode"], overrides["ego_guard"]) == ("route", True)   # benchmarked as trained


def test_init_policy_continues_a_saved_policy_with_this_runs_hyperparameters(tmp_path) -> None:
    module = _train_ppo_module()
    common = ["--action-mode", "route", "--ego-guard", "--num-envs", "2", "--n-steps", "16", "--batch-size", "16",
              "--n-epochs", "1", "--background", "log_replay", "--scenes", str(REFERENCE_SCENES), "--eval-scenes",
              str(REFERENCE_SCENES), "--horizon", "4", "--eval-episodes", "1", "--eval-num-envs", "1",
              "--bench-backgrounds", "log_replay", "--bench-episodes", "1", "--device", "cpu"]
    first = module.main([*common, "--timesteps", "32", "--out", str(tmp_path / "a")])
    second = module.main([*common, "--timesteps", "32", "--learning-rate", "1e-5", "--init-policy", str(first),
                          "--out", str(tmp_path / "b")])
    from stable_baselines3 import PPO
    start, continued = PPO.load(first, device="cpu"), PPO.load(second, device="cpu")
    assert continued.learning_rate == 1e-5
    assert any(not torch.equal(a, b) for a, b in zip(start.policy.parameters(), continued.policy.parameters()))
    with pytest.raises(SystemExit, match="--init-policy .*no such file"):
        module.main([*common, "--init-policy", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="settings differ .*'action_mode': \\('route', 'continuous'\\)"):
        module.main([*common[2:], "--init-policy", str(first), "--timesteps", "32", "--out", str(tmp_path / "d")])


def test_sac_refuses_discrete_actions_before_training(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--algo sac needs a Box action space"):
        _train_ppo_module().main(["--algo", "sac", "--action-mode", "discrete", "--out", str(tmp_path)])


def test_sync_episodes_end_training_episodes_only_at_the_horizon(tmp_path) -> None:
    module = _train_ppo_module()
    args = module.build_parser().parse_args(["--sync-episodes", "--background", "log_replay", "--horizon", "5",
                                             "--scenes", str(REFERENCE_SCENES), "--device", "cpu"])
    assert module.env_kwargs(args, None, "validation").get("termination") is None  # evaluation: the default
    import trafficbots_gym
    env = trafficbots_gym.make_sb3_vec_env(2, **module.training_env_kwargs(args))
    env.reset()
    lengths = []
    for _ in range(10):  # a hard-left swerve into traffic and off the road would end default episodes early
        _, _, dones, infos = env.step([[1.0, 1.0], [1.0, -1.0]])
        lengths += [info["episode"]["l"] for info, done in zip(infos, dones) if done]
    env.close()
    assert lengths == [5, 5, 5, 5]


def test_caches_and_reset_pool_reach_the_training_env_and_the_encoding_cache_defaults_up_on_a_gpu_only(monkeypatch) -> None:
    module = _train_ppo_module()
    parse = module.build_parser().parse_args
    assert "encoding_cache_mb" not in module.env_kwargs(parse(["--device", "cpu"]), None, "training")
    assert module.env_kwargs(parse(["--device", "cpu", "--encoding-cache-mb", "8"]), None, "training")[
        "encoding_cache_mb"] == 8.0
    assert module.training_env_kwargs(parse(["--device", "cpu", "--reset-pool", "4"]))["reset_pool"] == 4
    assert "reset_pool" not in module.training_env_kwargs(parse(["--device", "cpu"]))
    assert module.training_env_kwargs(parse(["--device", "cpu", "--scene-cache-mb", "4000"]))["scene_cache_mb"] == 4000
    assert "scene_cache_mb" not in module.training_env_kwargs(parse(["--device", "cpu"]))
    monkeypatch.setattr(module, "resolve_device", lambda name: torch.device("cuda"))  # no GPU needed to check
    assert module.env_kwargs(parse(["--device", "cuda"]), None, "training")["encoding_cache_mb"] == 1024.0


def test_max_minutes_stops_training_at_the_wall_time_limit(tmp_path) -> None:
    module = _train_ppo_module()
    policy = module.main([
        "--timesteps", "100000", "--max-minutes", "0.0001", "--num-envs", "2", "--n-steps", "8", "--batch-size", "16",
        "--n-epochs", "1", "--background", "log_replay", "--scenes", str(REFERENCE_SCENES), "--eval-scenes",
        str(REFERENCE_SCENES), "--horizon", "4", "--eval-episodes", "1", "--eval-num-envs", "1",
        "--bench-backgrounds", "log_replay", "--bench-episodes", "1", "--device", "cpu", "--out", str(tmp_path)])
    from stable_baselines3 import PPO
    assert PPO.load(policy, device="cpu").num_timesteps < 100


def test_reward_overrides_reach_the_env_and_malformed_items_are_refused() -> None:
    module = _train_ppo_module()
    args = module.build_parser().parse_args(["--device", "cpu", "--reward", "log_deviation=-0.02", "goal_reached=5"])
    assert module.env_kwargs(args, None, "training")["reward"] == {"log_deviation": -0.02, "goal_reached": 5.0}
    for bad in ("log_deviation", "=1", "goal_reached=fast"):
        with pytest.raises(SystemExit, match="TERM=WEIGHT"):
            module.reward_overrides([bad])
