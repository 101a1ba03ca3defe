"""Shared test constants and fixtures: fixture file paths, the two reference scenes, tiny TrafficBots
models and checkpoints, the real WOMD scenario packed as a scene, and one torch thread for every test.

Test modules import the constants with ``from conftest import ...`` (pytest puts this folder on the path).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import N_STEP, MapType
from trafficbots_gym.data.h5io import SceneReader, write_scenes
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.traffic_bots import TrafficBots
from trafficbots_gym.simulation.dynamics import unicycle_step

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_VECTORS = FIXTURES / "reference_vectors"
REFERENCE_SCENES = REFERENCE_VECTORS / "reference_scenes.h5"
REFERENCE_CKPT = REFERENCE_VECTORS / "reference_random_init.ckpt"
REAL_WOMD = FIXTURES / "real_womd"
WOMD_TFRECORD = REAL_WOMD / "motion_data_one_scenario.tfrecord"
GPUDRIVE_JSON = REAL_WOMD / "gpudrive_test_scene.json"
SCENARIONET_PKL = REAL_WOMD / "scenarionet" / "sd_training.tfrecord-00000-of-01000_2a1e44d405a6833f.pkl"

WOMD_EGO = {"track_id": 1645}
"""Ego choice of a vehicle of the real WOMD scene that drives ~80 m on the road."""
NO_TERMINATION = {"collision": False, "offroad": False, "goal_reached": False, "outside_map": False}
"""Env ``termination`` keywords that end episodes only at the horizon."""
TINY_MODEL: dict[str, Any] = dict(hidden_dim=32, n_head=2, d_feedforward=32, pe_dim=16, dropout=0.0, map_node_layers=1,
                                  as2pl_layers=1, as2tl_layers=1, interaction_layers=1, gru_layers=1, dest_gru_layers=1)
"""``TrafficBotsConfig`` keywords of a tiny TrafficBots: random behaviour, real wiring, fast on a CPU."""


def tiny_model(seed: int = 0, **overrides: Any) -> TrafficBots:
    """A random-init tiny TrafficBots (``TINY_MODEL`` with ``overrides``), its weights drawn after seeding torch."""
    torch.manual_seed(seed)
    return TrafficBots(TrafficBotsConfig(**{**TINY_MODEL, **overrides}))


def save_tiny_checkpoint(path: Path, **overrides: Any) -> Path:
    """Save ``tiny_model(**overrides)`` (seed 0) as a checkpoint at ``path``; return the path."""
    from trafficbots_gym.model.checkpoint import save_checkpoint
    return save_checkpoint(path, tiny_model(**overrides))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for every test and fixture: small tensors gain nothing from threads, a busy
    2-core CPU loses a lot to them (10x and more), and the reference vectors were made so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_scenes() -> list[Scene]:
    """The two reference test scenes (validation layout, 64 agents, 91 steps)."""
    reader = SceneReader(REFERENCE_SCENES)
    return [reader[0], reader[1]]


@pytest.fixture(scope="module")
def reference_batch(reference_scenes: list[Scene]) -> SceneBatch:
    """The two reference scenes as one batch, built per test module so an in-place edit stays in its module."""
    return SceneBatch.from_scenes(reference_scenes)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny TrafficBots (``TINY_MODEL``)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny TrafficBots with one-layer goal and latent input MLPs."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.safetensors", add_goal_mlp_in_layers=1,
                                add_latent_mlp_in_layers=1)


@pytest.fixture(scope="session")
def womd_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H5 file holding the real WOMD fixture scenario packed as a validation scene."""
    from trafficbots_gym.data.packing import pack_scenario
    from trafficbots_gym.data.womd import iter_scenarios
    raw = next(iter(iter_scenarios(WOMD_TFRECORD)))
    path = tmp_path_factory.mktemp("womd") / "womd.h5"
    write_scenes(path, [pack_scenario(raw, "validation", rng=np.random.default_rng(0))])
    return path


def road_batch(agents: list[tuple[float, float, float, float]], *, sizes: list[tuple[float, float]] | None = None,
                light: tuple[float, int] | None = None) -> SceneBatch:
    """One synthetic 91-step scene: a straight vehicle lane along y = 0 and one along y = 50 (x in
    [-40, 360]), road edges 2 m either side of each, agents (x, y, yaw, speed) driving at constant speed
    in the log, and optionally one traffic light (stop point at x on the y = 0 lane, constant state)."""
    T, A, P, N = N_STEP, len(agents), 8, 20
    pos = torch.zeros(1, T, A, 2)
    yaw = torch.zeros(1, T, A)
    spd = torch.zeros(1, T, A)
    vel = torch.zeros(1, T, A, 2)
    for a, (x, y, heading, speed) in enumerate(agents):
        p, h, v = torch.tensor([x, y]), torch.tensor(heading), torch.tensor(speed)
        for t in range(T):
            pos[0, t, a], yaw[0, t, a], spd[0, t, a] = p, h, v
            vel[0, t, a] = torch.stack([torch.cos(h), torch.sin(h)]) * v
            p, h, v, _ = unicycle_step(p, h, v, torch.tensor(0.0), torch.tensor(0.0))
    map_pos = torch.zeros(1, P, N, 2)
    map_dir = torch.zeros(1, P, N, 2)
    map_valid = torch.zeros(1, P, N, dtype=torch.bool)
    map_type = torch.zeros(1, P, 11, dtype=torch.bool)
    lines = [(0.0, MapType.SURFACE_STREET), (2.0, MapType.ROAD_EDGE_BOUNDARY), (-2.0, MapType.ROAD_EDGE_BOUNDARY),
             (50.0, MapType.SURFACE_STREET), (52.0, MapType.ROAD_EDGE_BOUNDARY), (48.0, MapType.ROAD_EDGE_BOUNDARY)]
    for p, (y, cls) in enumerate(lines):
        map_pos[0, p, :, 0] = -40.0 + torch.arange(N) * 20.0
        map_pos[0, p, :, 1] = y
        map_dir[0, p, :, 0] = 20.0
        map_valid[0, p] = True
        map_type[0, p, cls] = True
    tl_valid = torch.zeros(1, T, 1, dtype=torch.bool)
    tl_state = torch.zeros(1, T, 1, 5, dtype=torch.bool)
    tl_pos = torch.zeros(1, T, 1, 2)
    tl_dir = torch.zeros(1, T, 1, 2)
    if light is not None:
        tl_valid[:] = True
        tl_state[..., light[1]] = True
        tl_pos[..., 0] = light[0]
        tl_dir[..., 0] = 1.0
    size = torch.tensor([[[*(s if sizes else (4.5, 2.0)), 1.5] for s in (sizes or [None] * A)]])
    return SceneBatch(
        agent_valid=torch.ones(1, T, A, dtype=torch.bool), agent_pos=pos, agent_vel=vel, agent_spd=spd,
        agent_acc=torch.zeros(1, T, A), agent_yaw=yaw, agent_yaw_rate=torch.zeros(1, T, A),
        agent_type=torch.tensor([[[True, False, False]] * A]), agent_role=torch.zeros(1, A, 3, dtype=torch.bool),
        agent_size=size, agent_object_id=torch.arange(A).unsqueeze(0), agent_goal=torch.cat(
            [pos[:, -1], yaw[:, -1, :, None], spd[:, -1, :, None]], -1),
        agent_dest=torch.zeros(1, A, dtype=torch.long), agent_dest_known=torch.tensor([True]),
        map_valid=map_valid, map_type=map_type, map_pos=map_pos, map_dir=map_dir,
        map_boundary=torch.tensor([[-40.0, 360.0, -10.0, 60.0]]), tl_valid=tl_valid, tl_state=tl_state,
        tl_pos=tl_pos, tl_dir=tl_dir)
