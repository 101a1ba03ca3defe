"""Train an ego planner on TrafficBots-v0 with Stable-Baselines3 (PPO, or SAC), then benchmark it.

    python examples/train_ppo.py [--algo ppo|sac] [--timesteps 1000000] [--max-minutes M] [--num-envs 16]
        [--seed 0] [--device auto] [--background trafficbots] [--scenes PATH] [--eval-scenes PATH]
        [--checkpoint PATH] [--reward TERM=WEIGHT ...] [--action-mode continuous|discrete|route]
        [--route-offset-range 2.0] [--route-curve-accel 0] [--net-arch 256,256] [--out runs/ppo]

    # CPU smoke run (under a minute; add --checkpoint PATH to train / benchmark against learned agents):
    python examples/train_ppo.py --timesteps 2048 --num-envs 4 --background log_replay \
        --bench-backgrounds log_replay constant_velocity

    # GPU run (8 minutes of training on one H100 80GB: goal rate 0.82 on held-out scenes under learned
    # traffic; docs/benchmarks.md, run D; with --max-minutes 7 it made the shipped policy, controller "ppo"):
    python examples/train_ppo.py --timesteps 50000000 --max-minutes 8 --num-envs 1024 --n-steps 32 --batch-size 8192 \
        --n-epochs 4 --net-arch 256,256 --device cuda --policy-precision bf16 --reset-pool 1024 \
        --reward log_tracking=0.1 collision=-5 offroad=-5 goal_reached=5 --eval-freq 100000000 \
        --eval-episodes 100 --eval-num-envs 100 --bench-episodes 100

    # the same with route-relative actions and a speed penalty (7.5 minutes on one H200: goal 0.72, collision
    # 0.12, off-road 0.01 under learned traffic; run I1, the shipped policy of controller "ppo_route"):
    #   add --action-mode route and the term overspeed=-0.05 to --reward, with --max-minutes 7.5
    # ... plus time_to_collision=-0.2 and 2,160 training scenes (trafficbots-synth cut, --scenes DIR
    # --scene-cache-mb 8000 --encoding-cache-mb 20000), 6.5 minutes on one H200: goal 0.85, collision 0.16,
    # off-road 0.04 (run M3, the shipped policy of controller "ppo_route_ttc"; command in its policy card)
    # ... or on the embedded split under the ego collision guard (--ego-guard), against the raw learned model
    # (--no-background-guard), 5.3 minutes on one H200: goal 0.82, collision 0.00, off-road 0.04 under the
    # collision-guarded background (run N3, controller "ppo_route_guard"; command in its policy card)

The training envs are one batched simulator (``trafficbots_gym.make_sb3_vec_env``) on the training
scenes; an ``EvalCallback`` scores the policy on held-out scenes every ``--eval-freq`` steps and keeps
the best model. ``--sync-episodes`` lets no training episode end early (collision, off-road, goal and
map-exit penalties and rewards still apply), so every env resets at the horizon together: the learned
background then encodes and warm-starts all new scenes in one batch per episode instead of a few rows at
almost every step, which is what bounds the collection speed on a GPU. Evaluation keeps the default
termination. ``--max-minutes`` stops training after that much wall time (the evaluation and benchmark
after it are not counted). ``--reward`` overrides reward weights of the training and evaluation envs (e.g.
``--reward log_deviation=-0.02``). ``--action-mode route`` trains route-relative actions (acceleration and
a lateral offset from the logged route, steered by the env; docs/env.md, "Actions"). ``--ego-guard`` trains
the ego under the collision guard (stored with the policy, so it is benchmarked under it too);
``--no-background-guard`` trains against the learned background without its guards. ``--init-policy
PATH.zip`` continues a saved model (e.g. a shipped policy, to adapt it to other traffic) with this run's
learning rate, batch and rollout sizes; its stored env settings must be this run's. Writes TensorBoard
logs (``OUT/tb``; besides SB3's scalars, ``episodes/goal_rate``, ``collision_rate``, ``offroad_rate``,
``route_completion`` of the training episodes finished in each rollout), periodic checkpoints
(``OUT/checkpoints``), the final policy (``OUT/policy.zip``, without the optimizer's moments and the last
collected batch), ``OUT/progress.csv`` (those episode rates per rollout, with env steps and wall time),
then benchmarks the policy with ``trafficbots-bench`` code against the ``--bench-backgrounds`` (goal,
collision, off-road, ... in ``OUT/bench``). The policy, the best model and the checkpoints of the run
carry the env settings they were trained with (action and observation modes, ``route_offset_range``,
observation sizes) as the archive member ``trafficbots_env.json``, from which ``trafficbots-bench`` builds
the env to benchmark them in.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from tqdm import tqdm

import trafficbots_gym
from trafficbots_gym.benchmarks.controllers import display_rows, format_markdown, run_benchmark, write_csv
from trafficbots_gym.env.config import ACTION_MODES, BACKGROUNDS, LOG_HORIZON, NO_TERMINATION, EnvConfig, resolve_device
from trafficbots_gym.env.sb3 import policy_env_settings, read_policy_env_settings, write_policy_env_settings
from trafficbots_gym.simulation.background import BACKGROUND_SPECS, LEARNED_BACKGROUNDS, split_guard


class TqdmCallback(BaseCallback):
    """A tqdm progress bar over the environment steps of ``learn``."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, unit="step", desc="training")

    def _on_step(self) -> bool:
        assert self.bar is not None
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TimeLimitCallback(BaseCallback):
    """Stops ``learn`` once ``seconds`` of wall time have passed since training started."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.start = 0.0

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        return time.perf_counter() - self.start < self.seconds


EPISODE_RATES = {"goal_rate": "goal_reached", "collision_rate": "collided", "offroad_rate": "offroad",
                 "route_completion": "route_completion"}
"""Logged episode statistic -> key of the env's ``info["episode"]`` summary."""


class EpisodeStatsCallback(BaseCallback):
    """Goal / collision / off-road rates and route completion of the training episodes that ended during
    each rollout: logged as ``episodes/*`` (TensorBoard) and appended to ``csv_path``."""

    def __init__(self, csv_path: Path) -> None:
        super().__init__()
        self.csv_path = csv_path
        self.sums = dict.fromkeys(EPISODE_RATES, 0.0)
        self.episodes = 0
        self.start = 0.0
        self.history: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self.episodes += 1
                for name, key in EPISODE_RATES.items():
                    self.sums[name] += float(episode[key])
        return True

    def _on_rollout_end(self) -> None:
        if not self.episodes:
            return
        row = {"timesteps": float(self.num_timesteps), "wall_s": time.perf_counter() - self.start,
               "episodes": float(self.episodes)}
        row.update({name: total / self.episodes for name, total in self.sums.items()})
        for name in EPISODE_RATES:
            self.logger.record(f"episodes/{name}", row[name])
        self.history.append(row)
        write_csv(self.csv_path, self.history)
        self.sums = dict.fromkeys(EPISODE_RATES, 0.0)
        self.episodes = 0


def reward_overrides(items: Sequence[str]) -> dict[str, float]:
    """``["log_deviation=-0.02", ...]`` -> ``{"log_deviation": -0.02}`` (names checked by the env)."""
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise SystemExit(f"--reward takes TERM=WEIGHT items, got {item!r}")
    return weights


GPU_ENCODING_CACHE_MB = 1024.0
"""Default encoding cache on a GPU: about 200 scenes of the full-size model, the whole embedded training
split, so that resets after the first pass skip the map encoding."""


def env_kwargs(args: argparse.Namespace, scenes: str | None, split: str) -> dict[str, Any]:
    """``gym.make("TrafficBots-v0", ...)`` keys shared by the training and evaluation envs."""
    device = resolve_device(args.device)
    kwargs = {"scenes": scenes, "split": split, "background": args.background, "checkpoint": args.checkpoint,
              "device": str(device), "horizon": args.horizon, "policy_precision": args.policy_precision,
              "action_mode": args.action_mode, "route_offset_range": args.route_offset_range,
              "route_curve_accel": args.route_curve_accel,
              "background_guard": not args.no_background_guard, "ego_guard": args.ego_guard}
    if args.reward:
        kwargs["reward"] = reward_overrides(args.reward)
    cache_mb = args.encoding_cache_mb
    if cache_mb is None and device.type == "cuda":
        cache_mb = GPU_ENCODING_CACHE_MB
    if cache_mb is not None:
        kwargs["encoding_cache_mb"] = cache_mb
    return kwargs


def training_env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The training envs' keys: ``env_kwargs`` plus ``--reset-pool`` and the horizon-only termination of
    ``--sync-episodes``."""
    kwargs = env_kwargs(args, args.scenes, "training")
    if args.reset_pool:
        kwargs["reset_pool"] = args.reset_pool
    if args.scene_cache_mb is not None:
        kwargs["scene_cache_mb"] = args.scene_cache_mb
    if args.sync_episodes:
        kwargs["termination"] = NO_TERMINATION
    return kwargs


def policy_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The env settings the policy is trained with (``POLICY_ENV_KEYS``), stored in its archives."""
    kwargs = training_env_kwargs(args)
    return policy_env_settings(EnvConfig.from_kwargs(**{k: v for k, v in kwargs.items() if k in EnvConfig.keys()}))


def build_model(args: argparse.Namespace, env: Any) -> BaseAlgorithm:
    """PPO or SAC with an MLP policy on the flat observations, logging to ``OUT/tb``; with ``--init-policy``
    the saved model, its hyperparameters replaced by this run's (learning rate, batch and rollout sizes)."""
    common: dict[str, Any] = {"seed": args.seed, "device": args.device, "verbose": 0,
                              "tensorboard_log": str(Path(args.out) / "tb")}
    if args.init_policy:
        return load_initial_policy(args, env, common)
    if args.net_arch:
        common["policy_kwargs"] = {"net_arch": [int(n) for n in args.net_arch.split(",")]}
    if args.algo == "sac":
        return SAC("MlpPolicy", env, learning_starts=min(args.learning_starts, args.timesteps // 2),
                   buffer_size=args.buffer_size, batch_size=args.batch_size, train_freq=1,
                   gradient_steps=1, **common)
    rollout = args.n_steps * args.num_envs
    return PPO("MlpPolicy", env, n_steps=args.n_steps, batch_size=min(args.batch_size, rollout),
               n_epochs=args.n_epochs, learning_rate=args.learning_rate, gamma=args.gamma,
               ent_coef=args.ent_coef, **common)


def load_initial_policy(args: argparse.Namespace, env: Any, common: dict[str, Any]) -> BaseAlgorithm:
    """The model saved at ``--init-policy`` bound to ``env`` (whose spaces must be the model's) to train on."""
    path = Path(args.init_policy)
    if not path.is_file():
        raise SystemExit(f"--init-policy {path}: no such file")
    stored, ours = read_policy_env_settings(path) or {}, policy_settings(args)
    differ = {key: (stored[key], ours[key]) for key in stored if key in ours and stored[key] != ours[key]}
    if differ:
        raise SystemExit(f"--init-policy {path}: cannot continue it in this env: its settings differ "
                         f"(archive, this run): {differ}")
    algo = SAC if args.algo == "sac" else PPO
    overrides: dict[str, Any] = {"learning_rate": args.learning_rate, "batch_size": args.batch_size,
                                 "gamma": args.gamma}
    if args.algo == "ppo":
        overrides.update(n_steps=args.n_steps, n_epochs=args.n_epochs, ent_coef=args.ent_coef)
    try:
        return algo.load(path, env=env, custom_objects=overrides, **common)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"--init-policy {path}: cannot continue it in this env ({e}); train it with the env "
                         "settings stored in the archive (action mode, ego guard, observation sizes)") from e


def callbacks(args: argparse.Namespace, eval_env: Any) -> CallbackList:
    """Progress bar, periodic checkpoints and evaluation on the held-out scenes (frequencies in env steps)."""
    out = Path(args.out)
    eval_freq = args.eval_freq or max(args.timesteps // 5, 1)
    save_freq = args.save_freq or max(args.timesteps // 4, 1)
    time_limit = [TimeLimitCallback(60 * args.max_minutes)] if args.max_minutes else []
    return CallbackList([
        *time_limit,
        TqdmCallback(args.timesteps),
        EpisodeStatsCallback(out / "progress.csv"),
        CheckpointCallback(save_freq=max(save_freq // args.num_envs, 1), save_path=str(out / "checkpoints"),
                           name_prefix=args.algo),
        EvalCallback(eval_env, n_eval_episodes=args.eval_episodes, eval_freq=max(eval_freq // args.num_envs, 1),
                     best_model_save_path=str(out / "best"), log_path=str(out / "eval"), deterministic=True,
                     verbose=0),
    ])


def check_checkpoint(args: argparse.Namespace) -> None:
    """Fail before training, not after it, when a learned background has no checkpoint to load."""
    from trafficbots_gym.model.checkpoint import DEFAULT_CHECKPOINT
    learned = sorted({bg for bg in (args.background, *(split_guard(b)[0] for b in args.bench_backgrounds))
                      if bg in LEARNED_BACKGROUNDS})
    if learned and args.checkpoint is None and not DEFAULT_CHECKPOINT.is_file():
        raise SystemExit(f"backgrounds {learned} need a TrafficBots checkpoint and none is shipped at "
                         f"{DEFAULT_CHECKPOINT}: pass --checkpoint PATH, or train and benchmark without them "
                         "(e.g. --background log_replay --bench-backgrounds log_replay constant_velocity)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=("ppo", "sac"), default="ppo")
    p.add_argument("--timesteps", type=int, default=1_000_000, help="total environment steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this much wall time")
    p.add_argument("--num-envs", type=int, default=16, help="training episodes batched in one simulator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="torch device of the simulation and the policy")
    p.add_argument("--background", choices=BACKGROUNDS, default="trafficbots")
    p.add_argument("--checkpoint", default=None, help="TrafficBots checkpoint (default: the shipped one)")
    p.add_argument("--scenes", default=None, help="training scenes (default: embedded training split)")
    p.add_argument("--eval-scenes", default=None, help="held-out scenes (default: embedded --eval-split)")
    p.add_argument("--eval-split", default="validation",
                   help="embedded held-out split (default: validation; testing-split files hold only the "
                        "11-step history, the benchmark needs the logged future)")
    p.add_argument("--horizon", type=int, default=LOG_HORIZON, help="controlled steps per episode")
    p.add_argument("--reward", nargs="+", default=[], metavar="TERM=WEIGHT",
                   help="reward weight overrides of the training and evaluation envs (docs/env.md)")
    p.add_argument("--action-mode", choices=ACTION_MODES, default="continuous",
                   help="ego action space (docs/env.md, 'Actions'); route: acceleration + offset from the route")
    p.add_argument("--route-offset-range", type=float, default=EnvConfig.route_offset_range,
                   help="route actions: lateral offset (m) of a[1] = +-1")
    p.add_argument("--route-curve-accel", type=float, default=EnvConfig.route_curve_accel,
                   help="route actions: cap the speed in curves at this lateral acceleration (m/s^2; 0 = off)")
    p.add_argument("--init-policy", default=None, metavar="PATH.zip",
                   help="continue training this saved model (same algorithm and env settings) instead of a new one")
    p.add_argument("--ego-guard", action="store_true",
                   help="train (and benchmark) the ego under the collision guard (env key ego_guard)")
    p.add_argument("--no-background-guard", action="store_true",
                   help="train against the raw learned background (env key background_guard=False)")
    p.add_argument("--policy-precision", choices=("fp32", "bf16"), default="fp32",
                   help="learned background's network precision (bf16: autocast, for GPUs)")
    p.add_argument("--scene-cache-mb", type=float, default=None,
                   help="training envs' cache of read scenes (env key scene_cache_mb; default 128, about 200 "
                        "full-size scenes): raise it to hold a larger --scenes set in memory")
    p.add_argument("--encoding-cache-mb", type=float, default=None,
                   help="learned background's per-scene encoding cache (default: 1024 on a GPU, the env's on a CPU)")
    p.add_argument("--reset-pool", type=int, default=0,
                   help="spare episodes for autoresets (env key reset_pool; for GPUs, 0 = off)")
    p.add_argument("--sync-episodes", action="store_true",
                   help="training episodes end at the horizon only (batched resets; the fast mode on a GPU)")
    p.add_argument("--out", default="runs/ppo")
    p.add_argument("--eval-freq", type=int, default=None, help="env steps between evaluations (timesteps/5)")
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--eval-num-envs", type=int, default=4)
    p.add_argument("--save-freq", type=int, default=None, help="env steps between checkpoints (timesteps/4)")
    p.add_argument("--n-steps", type=int, default=256, help="PPO: steps per env per update")
    p.add_argument("--n-epochs", type=int, default=10, help="PPO: epochs per update")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--ent-coef", type=float, default=0.0, help="PPO: entropy bonus")
    p.add_argument("--net-arch", default=None, help="hidden layer sizes of policy and value nets, e.g. 256,256")
    p.add_argument("--learning-starts", type=int, default=5000, help="SAC: random steps before learning")
    p.add_argument("--buffer-size", type=int, default=50_000,
                   help="SAC: replay buffer size (flat observations are ~9.5 KB: ~1 GB per 50k transitions)")
    p.add_argument("--bench-backgrounds", nargs="+", choices=BACKGROUND_SPECS,
                   default=["trafficbots+guard", "trafficbots", "log_replay"])
    p.add_argument("--bench-episodes", type=int, default=64)
    return p


ROLLOUT_STATE = ["_last_obs", "_last_original_obs", "_last_episode_starts"]
"""Attributes of the algorithm that hold the collection's last batch (megabytes at 1,024 envs, not needed to
act or to resume: ``learn`` starts from a fresh reset); left out of the final ``policy.zip``."""


def drop_optimizer_moments(model: BaseAlgorithm) -> None:
    """Clear the optimizers' per-parameter state (Adam moments: twice the weights' size) before the final
    save, so that ``policy.zip`` holds what inference needs; resume training from ``OUT/checkpoints``."""
    optimizers = [m.optimizer for m in model.policy.modules()
                  if isinstance(getattr(m, "optimizer", None), torch.optim.Optimizer)]
    if isinstance(getattr(model, "ent_coef_optimizer", None), torch.optim.Optimizer):
        optimizers.append(model.ent_coef_optimizer)
    for optimizer in optimizers:
        optimizer.state.clear()


def save_policy(model: BaseAlgorithm, path: Path, settings: dict[str, Any]) -> Path:
    """Save ``model`` for inference at ``path`` (no optimizer moments, no collected batch) with the env
    ``settings`` it was trained with in the archive; returns ``path``."""
    drop_optimizer_moments(model)
    model.save(path, exclude=ROLLOUT_STATE)
    write_policy_env_settings(path, settings)
    return path


def run_archives(out: Path) -> dict[Path, int]:
    """The best-model and checkpoint archives under ``out``, with their modification times (ns)."""
    return {p: p.stat().st_mtime_ns for p in [*(out / "best").glob("*.zip"), *(out / "checkpoints").glob("*.zip")]}


def main(argv: Sequence[str] | None = None) -> Path:
    """Train, save ``OUT/policy.zip``, benchmark it; returns the policy path."""
    args = build_parser().parse_args(argv)
    if args.timesteps < 1 or args.num_envs < 1:
        raise SystemExit("--timesteps and --num-envs must be >= 1")
    if args.algo == "sac" and args.action_mode == "discrete":
        raise SystemExit("--algo sac needs a Box action space: --action-mode continuous or route")
    check_checkpoint(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    settings = policy_settings(args)
    env = trafficbots_gym.make_sb3_vec_env(args.num_envs, **training_env_kwargs(args))
    eval_env = trafficbots_gym.make_sb3_vec_env(args.eval_num_envs,
                                                **env_kwargs(args, args.eval_scenes, args.eval_split))
    env.seed(args.seed)
    eval_env.seed(args.seed + 10_000)
    model = build_model(args, env)
    # the SB3 adapter reports episode returns/lengths in info["episode"] itself, as a Monitor would
    warnings.filterwarnings("ignore", message="Evaluation environment is not wrapped with a ``Monitor``")
    earlier = run_archives(out)
    try:
        model.learn(total_timesteps=args.timesteps, callback=callbacks(args, eval_env), tb_log_name=args.algo)
    finally:
        env.close()
        eval_env.close()
    policy = save_policy(model, out / "policy.zip", settings)
    for archive, mtime in sorted(run_archives(out).items()):
        if earlier.get(archive) != mtime:          # written by this run
            write_policy_env_settings(archive, settings)
    print(f"saved {policy}; TensorBoard: tensorboard --logdir {out / 'tb'}")
    rows = run_benchmark([str(policy)], args.bench_backgrounds, episodes=args.bench_episodes, seed=args.seed,
                         out=out / "bench", scenes=args.eval_scenes, split=args.eval_split, device=args.device,
                         checkpoint=args.checkpoint, num_envs=min(args.bench_episodes, 64), horizon=args.horizon)
    print(format_markdown(display_rows(rows)))
    return policy


if __name__ == "__main__":
    main(sys.argv[1:])
