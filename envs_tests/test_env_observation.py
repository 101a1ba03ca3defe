"""Scene source, ego route and observation builder on the reference scenes (no simulator needed)."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from trafficbots_gym.data.batch import collate_arrays
from trafficbots_gym.data.h5io import SceneFormatError, SceneReader, write_scenes
from trafficbots_gym.env.config import EnvConfig
from trafficbots_gym.env.observation import (AGENT_FEATURES, EGO_FEATURES, SPEED_SCALE, TL_FEATURES, EgoView,
                                             ObservationBuilder)
from trafficbots_gym.env.route import Route
from trafficbots_gym.env.scenes import SceneLoader, SceneSource
from trafficbots_gym.simulation.state import AgentState

from conftest import REFERENCE_SCENES


@pytest.fixture(scope="module")
def source() -> SceneSource:
    return SceneSource(REFERENCE_SCENES)


@pytest.fixture(scope="module")
def batch(source):
    return collate_arrays([source.load(0), source.load(1)])


def _observe(batch, config: EnvConfig, step: int = 10):
    ego = torch.zeros(batch.batch_size, dtype=torch.long)
    state = AgentState.from_log(batch, step)
    route = Route.from_log(batch, ego)
    where = route.locate(state.pos[:, 0])
    builder = ObservationBuilder(config)
    builder.set_scenes(batch)
    view = EgoView(index=ego, step=torch.full_like(ego, step), elapsed=torch.zeros_like(ego), route=where)
    return builder, builder.build(batch, state, view, route), state


# ------------------------------------------------------------------------------------------ scenes
def test_scene_choice_by_index_id_or_random(source):
    rng = np.random.default_rng(0)
    assert source.choose(rng, {"scene_index": 1}) == 1
    assert source.choose(rng, {"scenario_id": source.scenario_id(1)}) == 1
    draws = [source.choose(np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1 and 0 <= draws[0] < len(source)


def test_bad_scene_choice_names_the_problem(source):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scene_index.*reference_scenes.h5"):
        source.choose(rng, {"scene_index": 2})
    with pytest.raises(KeyError, match="nope"):
        source.choose(rng, {"scenario_id": "nope"})
    with pytest.raises(ValueError, match="either"):
        source.choose(rng, {"scene_index": 0, "scenario_id": source.scenario_id(0)})


def test_loaded_scene_holds_the_full_log(source):
    arrays = source.load(0)
    full = SceneReader(REFERENCE_SCENES)[0]
    assert arrays["agent_valid"].shape == (91, 64)
    np.testing.assert_array_equal(arrays["agent_pos"], full.agent.pos)
    np.testing.assert_array_equal(arrays["map_pos"], full.map.pos)


def test_missing_scene_file_is_named(tmp_path):
    with pytest.raises(SceneFormatError, match="missing.h5"):
        SceneSource(tmp_path / "missing.h5")


def test_corrupt_scene_file_is_named(tmp_path):
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(SceneFormatError, match="corrupt.h5"):
        SceneSource(bad)


def test_history_only_scene_is_rejected_with_the_reason(tmp_path):
    scene = SceneReader(REFERENCE_SCENES)[0]
    testing = dataclasses.replace(scene, agent=None, agent_no_sim=None, tl_lane=None, tl_stop=None)
    path = tmp_path / "testing.h5"
    write_scenes(path, [testing])
    with pytest.raises(SceneFormatError, match="testing.h5.*history"):
        SceneSource(path).load(0)


def test_prefetched_scene_equals_a_direct_read_and_loader_pickles(source):
    loader = SceneLoader(source, background=True)
    loader.prefetch(1)
    prefetched = loader.load(1)
    direct = source.load(1)
    assert all(np.array_equal(prefetched[k], direct[k]) for k in direct)
    clone = pickle.loads(pickle.dumps(loader))
    assert np.array_equal(clone.load(0)["map_pos"], source.load(0)["map_pos"])
    loader.close()


# ------------------------------------------------------------------------------------------- route
def test_route_projection_is_signed_left_positive(batch):
    route = Route.from_log(batch, torch.zeros(2, dtype=torch.long))
    start = batch.agent_pos[:, 10, 0]
    yaw = batch.agent_yaw[:, 10, 0]
    left = torch.stack([-torch.sin(yaw), torch.cos(yaw)], -1)
    on = route.locate(start)
    off = route.locate(start + 1.5 * left)
    assert torch.allclose(on.s, torch.zeros(2), atol=1e-4)
    assert torch.allclose(off.lateral, torch.full((2,), 1.5), atol=0.05)


def test_route_waypoints_follow_the_log_and_stop_at_its_end(batch):
    route = Route.from_log(batch, torch.zeros(2, dtype=torch.long))
    points, valid = route.waypoints(torch.zeros(2), 40, 5.0)
    n_valid = valid.sum(1)
    assert torch.equal(n_valid, (route.length // 5.0).long())
    logged = batch.agent_pos[:, 10:, 0]                                     # [B, 81, 2]
    gap = (points[:, :, None] - logged[:, None]).norm(dim=-1).amin(-1)     # distance to the logged path
    assert (gap[valid] < 1.0).all()


# ----------------------------------------------------------------------------------- observation
def test_observation_groups_have_the_documented_sizes_and_range(batch):
    cfg = EnvConfig(num_agents_obs=5, num_map_points=7, num_tl_obs=3, num_route_points=4)
    builder, obs, _ = _observe(batch, cfg)
    assert {k: tuple(v.shape[1:]) for k, v in obs.items()} == builder.shapes
    assert builder.shapes["agents"] == (5, len(AGENT_FEATURES))
    for value in obs.values():
        assert value.dtype == torch.float32 and value.abs().max() <= 1.0
    flat = builder.flatten(obs)
    assert flat.shape == (2, builder.flat_size) and builder.space().contains(flat[0].numpy())


def test_ego_features_are_the_normalised_logged_state(batch):
    _, obs, state = _observe(batch, EnvConfig())
    speed = obs["ego"][:, EGO_FEATURES.index("speed")]
    assert torch.allclose(speed, state.spd[:, 0] / SPEED_SCALE)
    assert torch.allclose(obs["ego"][:, EGO_FEATURES.index("time_left")], torch.ones(2))


def test_agents_are_the_nearest_others_in_the_ego_frame(batch):
    cfg = EnvConfig(num_agents_obs=4)
    _, obs, state = _observe(batch, cfg)
    ego_pos, ego_yaw = state.pos[0, 0], state.yaw[0, 0]
    others = state.valid[0].clone()
    others[0] = False
    dist = (state.pos[0] - ego_pos).norm(dim=-1).masked_fill(~others, float("inf"))
    nearest = dist.argsort()[:4]
    rel = state.pos[0, nearest] - ego_pos
    c, s = torch.cos(ego_yaw), torch.sin(ego_yaw)
    local = torch.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], -1)
    got = obs["agents"][0]
    assert torch.allclose(got[:, :2] * cfg.obs_range, local, atol=1e-4)
    assert got[:, AGENT_FEATURES.index("valid")].tolist() == [1.0] * 4
    assert (got[:, 1:2].abs() <= 1).all()


def test_empty_slots_are_zero_with_valid_zero(batch):
    cfg = EnvConfig(num_agents_obs=70, num_tl_obs=40, obs_range=20.0)
    _, obs, state = _observe(batch, cfg)
    agents = obs["agents"][1]
    n_valid = int(agents[:, -1].sum())
    near = ((state.pos[1] - state.pos[1, 0]).norm(dim=-1) <= 20.0) & state.valid[1]
    assert n_valid == int(near.sum()) - 1
    assert (agents[n_valid:] == 0).all()
    assert (obs["traffic_lights"][1, int(obs["traffic_lights"][1, :, -1].sum()):] == 0).all()


def test_traffic_light_state_is_the_logged_state_of_the_step(batch):
    cfg = EnvConfig(num_tl_obs=40, obs_range=1000.0)
    _, obs, _ = _observe(batch, cfg, step=10)
    tl = obs["traffic_lights"][0]
    state_cols = slice(TL_FEATURES.index("unknown"), TL_FEATURES.index("valid"))
    n = int(tl[:, -1].sum())
    assert n == int(batch.tl_valid[0, 10].sum())
    logged = batch.tl_state[0, 10][batch.tl_valid[0, 10]].float().sum(0)
    assert torch.equal(tl[:n, state_cols].sum(0), logged)


def test_route_waypoints_lie_ahead_of_a_logged_ego(batch):
    _, obs, _ = _observe(batch, EnvConfig(num_route_points=5, route_spacing=4.0))
    route = obs["route"]
    assert (route[..., 2] == 1).all()
    assert (route[..., 0] > 0).all()                       # ahead along x of the ego frame
    assert (route[:, 1:, 0] > route[:, :-1, 0]).all()      # in order
