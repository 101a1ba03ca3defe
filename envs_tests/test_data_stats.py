"""``trafficbots-stats``: geometric log checks on tiny synthetic cases, and the command on a small H5."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trafficbots_gym.data import stats
from trafficbots_gym.data.constants import N_PL_TYPE, N_TL_STATE, AgentType, MapType, TLState
from trafficbots_gym.simulation.metrics import MapGeometry

from conftest import REFERENCE_SCENES


def _types(*kinds: AgentType) -> torch.Tensor:
    onehot = torch.zeros(len(kinds), 3, dtype=torch.bool)
    for i, k in enumerate(kinds):
        onehot[i, k] = True
    return onehot


def _one_step(*poses: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """valid [1, A], pos [1, A, 2], yaw [1, A] of boxes at (x, y, yaw)."""
    p = torch.tensor(poses, dtype=torch.float32)
    return torch.ones(1, len(poses), dtype=torch.bool), p[None, :, :2], p[None, :, 2]


CAR = torch.tensor([4.0, 2.0, 1.5])


def test_overlap_check_flags_two_overlapping_boxes_and_not_two_separated_ones() -> None:
    size = CAR.expand(2, 3)
    types = _types(AgentType.VEHICLE, AgentType.VEHICLE)
    # Rotated 45 deg, corner reaching into the other box.
    valid, pos, yaw = _one_step((0.0, 0.0, 0.0), (3.2, 0.5, math.pi / 4))
    assert stats.overlap_flags(valid, pos, yaw, size, types).tolist() == [[True, True]]
    # The rotated box's axis-aligned bounding box overlaps the first box, the box itself does not.
    valid, pos, yaw = _one_step((0.0, 0.0, 0.0), (3.5, 2.5, math.pi / 4))
    assert stats.overlap_flags(valid, pos, yaw, size, types).tolist() == [[False, False]]
    valid, pos, yaw = _one_step((0.0, 0.0, 0.0), (10.0, 0.0, 0.0))
    assert stats.overlap_flags(valid, pos, yaw, size, types).tolist() == [[False, False]]


def test_overlap_check_ignores_pedestrian_pairs_and_invalid_agents() -> None:
    size = torch.tensor([[0.8, 0.8, 1.8]] * 2 + [[4.0, 2.0, 1.5]])
    types = _types(AgentType.PEDESTRIAN, AgentType.PEDESTRIAN, AgentType.VEHICLE)
    valid, pos, yaw = _one_step((0.0, 0.0, 0.0), (0.3, 0.0, 0.0), (30.0, 0.0, 0.0))
    assert stats.overlap_flags(valid, pos, yaw, size, types).tolist() == [[False, False, False]]
    valid, pos, yaw = _one_step((0.0, 0.0, 0.0), (0.3, 0.0, 0.0), (0.5, 0.0, 0.0))
    assert stats.overlap_flags(valid, pos, yaw, size, types).tolist() == [[True, True, True]]
    valid[0, 2] = False
    assert stats.overlap_flags(valid, pos, yaw, size, types).tolist() == [[False, False, False]]


def _straight_lane_geometry(length: int = 19) -> MapGeometry:
    """One surface-street lane along the x axis from 0 to ``length`` m, nodes 1 m apart."""
    n_pl, n_node = 2, 20
    pos = torch.zeros(1, n_pl, n_node, 2)
    dirs = torch.zeros(1, n_pl, n_node, 2)
    valid = torch.zeros(1, n_pl, n_node, dtype=torch.bool)
    pos[0, 0, :length, 0] = torch.arange(length, dtype=torch.float32)
    dirs[0, 0, :length, 0] = 1.0
    valid[0, 0, :length] = True
    map_type = torch.zeros(1, n_pl, N_PL_TYPE, dtype=torch.bool)
    map_type[0, 0, MapType.SURFACE_STREET] = True
    batch = SimpleNamespace(map_pos=pos, map_dir=dirs, map_valid=valid, map_type=map_type,
                            map_boundary=torch.tensor([[0.0, float(length), -1.0, 1.0]]))
    return MapGeometry.from_batch(batch)  # type: ignore[arg-type]


def test_offroad_flags_vehicles_far_from_every_lane_but_not_pedestrians() -> None:
    geom = _straight_lane_geometry()
    size = torch.tensor([[4.0, 2.0, 1.5], [4.0, 2.0, 1.5], [0.8, 0.8, 1.8]])
    types = _types(AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN)
    valid, pos, yaw = _one_step((8.0, 1.0, 0.0), (8.0, 6.0, 0.0), (8.0, 9.0, 0.0))
    off, off_lane = stats.offroad_flags(valid, pos, yaw, size, types, geom)
    assert off.tolist() == [[False, True, False]]
    assert off_lane.tolist() == [[False, True, False]]


def test_red_light_flags_a_vehicle_passing_a_red_stop_point_in_its_direction_only() -> None:
    # Vehicle 0 drives +x over the stop point at x = 10; vehicle 1 does the same on a green lane
    # (light 1 at y = 20); vehicle 2 stops before the red point of light 2 (y = 40).
    pos = torch.tensor([[[9.0, 0.0], [9.0, 20.0], [8.0, 40.0]],
                        [[11.0, 0.0], [11.0, 20.0], [9.5, 40.0]]])
    yaw = torch.zeros(2, 3)
    valid = torch.ones(2, 3, dtype=torch.bool)
    types = _types(AgentType.VEHICLE, AgentType.VEHICLE, AgentType.VEHICLE)
    tl_pos = torch.tensor([[10.0, 0.0], [10.0, 20.0], [10.0, 40.0]]).expand(2, 3, 2)
    tl_dir = torch.tensor([[1.0, 0.0]] * 3).expand(2, 3, 2)
    tl_state = torch.zeros(2, 3, N_TL_STATE, dtype=torch.bool)
    tl_state[:, [0, 2], TLState.STOP] = True
    tl_state[:, 1, TLState.GO] = True
    tl_valid = torch.ones(2, 3, dtype=torch.bool)
    flags = stats.red_light_flags(valid, pos, yaw, types, tl_valid, tl_state, tl_pos, tl_dir)
    assert flags.tolist() == [[True, False, False]]
    # Crossing against the lane direction is not a violation of that light.
    flags = stats.red_light_flags(valid, pos, yaw, types, tl_valid, tl_state, tl_pos, -tl_dir)
    assert flags.tolist() == [[False, False, False]]


def test_histogram_percentiles_match_numpy_within_one_bin() -> None:
    values = np.random.default_rng(0).normal(5.0, 2.0, 20_000)
    hist = stats.Histogram(-5.0, 15.0)
    hist.update(values[:7000])
    hist.update(values[7000:])
    width = 20.0 / stats.FINE_BINS
    for q in (1, 25, 50, 95, 99):
        assert abs(hist.percentile(q) - np.percentile(values, q)) <= width
    assert hist.n == values.size and hist.min == values.min() and hist.max == values.max()
    edges, counts = hist.coarse()
    assert len(edges) == stats.PLOT_BINS + 1 and counts.sum() == values.size


def test_count_histograms_report_exact_integer_percentiles_and_keep_every_count() -> None:
    hist = stats.Histogram(0.0, 65.0, 65, discrete=True)
    values = np.array([3, 3, 10, 47, 64, 64, 64])
    hist.update(values)
    for q in (1, 25, 50, 75, 99):
        assert hist.percentile(q) == np.percentile(values, q, method="inverted_cdf")
    edges, counts = hist.coarse()
    assert edges[-1] == 65.0 and counts.sum() == values.size and counts[-1] == 3


def test_stats_command_reports_two_datasets_side_by_side_with_json_and_png(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "copy.h5"
    shutil.copy(REFERENCE_SCENES, other)
    out_json, out_png = tmp_path / "report" / "stats.json", tmp_path / "stats.png"
    assert stats.main([str(REFERENCE_SCENES), str(other), "--max-scenes", "1", "--json", str(out_json),
                       "--png", str(out_png)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert "reference_scenes.h5" in header and "copy.h5" in header
    assert "rate overlap (per agent-step)" in table
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out_json.read_text())
    assert set(report["definitions"]) == set(stats.RATES)
    first, second = report["datasets"]
    assert first["num_scenes"] == 1 and first["name"] == "reference_scenes.h5"
    assert set(first) >= {"distributions", "map_polylines_per_scene", "tl_state_share", "rates"}
    assert set(first["distributions"]) >= {"speed_vehicle", "acc_vehicle", "yaw_rate_vehicle", "agents_per_scene"}
    speed = first["distributions"]["speed_vehicle"]
    assert set(speed["percentiles"]) == {f"p{q}" for q in stats.PERCENTILES}
    assert speed["count"] > 0 and len(speed["histogram"]["counts"]) == stats.PLOT_BINS
    assert set(first["map_polylines_per_scene"]) == {t.name for t in MapType}
    assert math.isclose(sum(first["tl_state_share"].values()), 1.0, rel_tol=1e-9)
    for name in stats.RATES:
        rate = first["rates"][name]
        assert 0 <= rate["events"] <= rate["opportunities"] and rate["opportunities"] > 0
    # Same scene in both columns -> identical numbers.
    assert first["rates"] == second["rates"] and first["distributions"] == second["distributions"]
