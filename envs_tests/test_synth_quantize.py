"""Snapping synthetic scenes to dyadic grids: bounded errors, consistent derivatives, smaller files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trafficbots_gym.data.constants import DT
from trafficbots_gym.data.h5io import write_scenes
from trafficbots_gym.data.scene import Scene
from trafficbots_gym.synth.quantize import STEPS, quantize_scene, snap

GRID = {"pos": "position", "z": "position", "dir": "position", "boundary": "position",
        "vel": "speed", "spd": "speed", "yaw_bbox": "heading", "acc": "acceleration", "yaw_rate": "yaw_rate"}
"""Grid of each float dataset (by its last key part); agent goal columns are checked separately."""


def _float_arrays(scene: Scene) -> dict[str, np.ndarray]:
    return {k: v for k, v in scene.to_arrays().items() if v.dtype == np.float32 and not k.endswith("size")}


def test_snap_rounds_to_the_nearest_multiple_without_negative_zeros() -> None:
    out = snap(np.array([0.3, -0.001, 2.0**-9 * 3, -7.0]), 2.0**-8)
    assert out.dtype == np.float32 and out.tolist() == [77 * 2.0**-8, 0.0, 2 * 2.0**-8, -7.0]
    assert not np.signbit(out[1])


def test_every_float_array_lies_on_its_grid_and_keeps_the_layout(reference_scenes: list[Scene]) -> None:
    for scene in reference_scenes:
        q = quantize_scene(scene).validate()
        before, after = scene.to_arrays(), q.to_arrays()
        assert before.keys() == after.keys()
        assert all(after[k].shape == v.shape and after[k].dtype == v.dtype for k, v in before.items())
        for key, value in _float_arrays(q).items():
            if key.endswith("goal"):
                continue
            step = STEPS[GRID[key.split("/")[-1]]]
            assert np.array_equal(value / step, np.round(value / step)), key
            assert not np.signbit(value[value == 0]).any(), key


def test_states_move_by_at_most_half_a_grid_step(reference_scenes: list[Scene]) -> None:
    scene = reference_scenes[0]
    before, after = _float_arrays(scene), _float_arrays(quantize_scene(scene))
    for key in before:
        name = key.split("/")[-1]
        if name in ("acc", "yaw_rate", "goal"):
            continue
        assert np.abs(after[key] - before[key]).max() <= STEPS[GRID[name]] / 2 + 1e-6, key
    goal_err = np.abs(after["agent/goal"] - before["agent/goal"]).max(0)
    half = np.array([STEPS["position"], STEPS["position"], STEPS["heading"], STEPS["speed"]]) / 2
    assert (goal_err <= half + 1e-6).all()


def test_acc_and_yaw_rate_are_the_differences_of_the_stored_speeds_and_headings(
        reference_scenes: list[Scene]) -> None:
    q = quantize_scene(reference_scenes[1])
    for agents in (q.agent, q.history_agent):
        pair = (agents.valid[1:] & agents.valid[:-1])[..., None]
        for rate, series, grid in ((agents.acc, agents.spd, "acceleration"),
                                   (agents.yaw_rate, agents.yaw_bbox, "yaw_rate")):
            diff = np.diff(series.astype(np.float64), axis=0) / DT
            assert np.abs(np.where(pair, rate[1:] - diff, 0.0)).max() <= STEPS[grid] / 2 + 1e-4
            assert not rate[1:][~pair].any() and not rate[0].any()


def test_copies_made_by_the_packer_stay_exact(reference_scenes: list[Scene]) -> None:
    q = quantize_scene(reference_scenes[0])
    nodes = q.map.pos[q.map.valid]
    assert q.map.boundary.tolist() == [nodes[:, 0].min(), nodes[:, 0].max(), nodes[:, 1].min(), nodes[:, 1].max()]
    lane_dirs = {tuple(d) for d in q.map.dir[:, 0][q.map.valid[:, 0]].tolist()}
    stop_dirs = {tuple(d) for d in q.tl_stop.dir[q.tl_stop.valid].tolist()}
    assert stop_dirs and stop_dirs <= lane_dirs


def test_snapped_scenes_compress_to_well_under_the_float_noise_size(reference_scenes: list[Scene],
                                                                     tmp_path: Path) -> None:
    write_scenes(tmp_path / "raw.h5", reference_scenes)
    write_scenes(tmp_path / "snapped.h5", [quantize_scene(s) for s in reference_scenes])
    assert (tmp_path / "snapped.h5").stat().st_size < 0.75 * (tmp_path / "raw.h5").stat().st_size
