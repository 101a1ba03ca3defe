"""Synthetic scenes from SUMO runs: SUMO conventions, packing, determinism and log quality."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from trafficbots_gym.data.constants import N_STEP, AgentRole, AgentType
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.synth.generate import GenerationConfig, generate_scenes, run_scenes, run_seeds
from trafficbots_gym.synth.simulate import SimulationStalled, _tracks_from_samples, run_watched

pytest.importorskip("libsumo", reason="libsumo is not installed")

CONFIG = GenerationConfig(split="training", scenes_per_run=3, duration=30.0)
SEED = 5


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return list(generate_scenes(6, SEED, CONFIG))


def test_sumo_angles_and_front_bumpers_become_ccw_headings_and_box_centres() -> None:
    # SUMO: angle 0 = north, 90 = east (clockwise); position = front bumper.
    samples = {"vA": [(0, 10.0, 20.0, 0.0, 5.0), (1, 10.0, 20.5, 0.0, 5.0)],
               "vB": [(0, 0.0, 0.0, 90.0, 3.0)]}
    static = {"vA": (int(AgentType.VEHICLE), 4.0, 1.8, 1.5), "vB": (int(AgentType.CYCLIST), 2.0, 0.6, 1.7)}
    tracks = _tracks_from_samples(samples, static)
    assert np.allclose(tracks.yaw[:2], np.pi / 2) and np.allclose(tracks.xy[0], [10.0, 18.0])
    assert np.isclose(tracks.yaw[2], 0.0) and np.allclose(tracks.xy[2], [-1.0, 0.0])
    assert tracks.type.tolist() == [AgentType.VEHICLE, AgentType.CYCLIST]


def test_tracks_are_split_at_teleports_and_missing_steps() -> None:
    samples = {"v": [(0, 0.0, 0.0, 90.0, 1.0), (1, 0.1, 0.0, 90.0, 1.0), (2, 80.0, 0.0, 90.0, 1.0),
                     (3, 80.1, 0.0, 90.0, 1.0), (5, 80.3, 0.0, 90.0, 1.0)]}
    tracks = _tracks_from_samples(samples, {"v": (0, 4.0, 1.8, 1.5)})
    assert tracks.start.tolist() == [0, 2, 5] and tracks.length.tolist() == [2, 2, 1]
    assert len(set(tracks.object_id.tolist())) == 3


def _count_to(n: int, progress: Any) -> int:
    for _ in range(n):
        progress.value += 1
    return n


def _hang(progress: Any) -> None:
    while True:
        time.sleep(0.05)


def _fail(progress: Any) -> None:
    raise ValueError("bad route file")


def test_watched_simulations_return_results_and_errors_and_stop_when_stalled() -> None:
    assert run_watched(_count_to, (1000,), stall_seconds=5.0) == 1000
    with pytest.raises(ValueError, match="bad route file"):
        run_watched(_fail, (), stall_seconds=5.0)
    start = time.monotonic()
    with pytest.raises(SimulationStalled):
        run_watched(_hang, (), stall_seconds=0.5)
    assert time.monotonic() - start < 10.0


def test_generated_scenes_validate_with_a_moving_sdc_at_index_zero(scenes: list[Scene]) -> None:
    assert len(scenes) == 6 and len({s.scenario_id for s in scenes}) == 6
    for scene in scenes:
        scene.validate()
        agent = scene.agent
        assert agent.valid[:, 0].all() and agent.role[0, AgentRole.SDC] and not agent.role[1:, AgentRole.SDC].any()
        assert agent.type[0, AgentType.VEHICLE]
        assert np.linalg.norm(agent.pos[-1, 0] - agent.pos[0, 0]) > 1.0
        assert agent.valid.any(0).sum() > 3 and scene.map.valid.any(1).sum() > 50
        assert agent.pos.shape[0] == N_STEP


def test_same_seed_gives_identical_scenes(scenes: list[Scene]) -> None:
    again = list(generate_scenes(3, SEED, CONFIG))
    for a, b in zip(scenes[:3], again):
        xa, xb = a.to_arrays(), b.to_arrays()
        assert a.scenario_id == b.scenario_id and xa.keys() == xb.keys()
        assert all(np.array_equal(xa[k], xb[k]) for k in xa)


def test_splits_and_seeds_draw_different_runs() -> None:
    train, val = run_seeds(SEED, "training", 4), run_seeds(SEED, "validation", 4)
    assert not set(train) & set(val) and run_seeds(SEED, "training", 2, start=2) == train[2:]
    assert run_seeds(SEED + 1, "training", 4) != train


def test_validation_scenes_carry_history_views() -> None:
    scenes = run_scenes(run_seeds(SEED, "validation", 1)[0], GenerationConfig("validation", 1, 30.0))
    assert scenes and scenes[0].split == "validation" and scenes[0].history_agent is not None


def test_synthetic_logs_meet_the_quality_targets(scenes: list[Scene]) -> None:
    from trafficbots_gym.data.stats import DatasetStats

    stats = DatasetStats(name="synthetic", sources=[])
    for scene in scenes:
        stats.add_scene(scene)
    report = stats.summary()
    for rate in ("overlap", "offroad", "red_light"):
        assert report["rates"][rate]["opportunities"] > 0
        assert report["rates"][rate]["rate"] < 0.01, (rate, report["rates"][rate])
    acc = report["distributions"]["acc_vehicle"]["percentiles"]
    assert -6.0 < acc["p1"] and acc["p99"] < 4.0  # IDM: comfortable accelerations, no jumps
