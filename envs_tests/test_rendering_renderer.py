"""Specification of the top-down renderer on the reference test scenes (headless, rgb_array)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import AgentType, TLState
from trafficbots_gym.rendering import colors
from trafficbots_gym.rendering.renderer import SCENE_MARGIN_PX, TopDownRenderer
from trafficbots_gym.simulation.state import AgentState


def _pixel(frame: np.ndarray, xy: np.ndarray) -> tuple[int, int, int]:
    col, row = np.floor(np.asarray(xy)).astype(int)
    return tuple(int(c) for c in frame[row, col])


def _free_of_agents(state: AgentState, row: int, xy: np.ndarray, radius_m: float) -> bool:
    pos = state.pos[row][state.valid[row]].numpy()
    return bool(len(pos) == 0 or np.linalg.norm(pos - xy, axis=1).min() > radius_m)


def test_rgb_array_frame_has_configured_size_and_dtype_and_is_not_blank(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=320, height=240, camera="ego")
    renderer.set_scene(reference_batch, 0)
    frame = renderer.render(AgentState.from_log(reference_batch, 10), 0, step=10, ego_index=0)
    assert frame is not None and frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    distinct = np.unique(frame.reshape(-1, 3), axis=0)
    assert len(distinct) > 8
    assert (frame.reshape(-1, 3) == colors.ROAD_SURFACE).all(axis=1).mean() > 0.05


@pytest.mark.parametrize("heading_up", [True, False])
def test_ego_camera_centres_the_ego_box_in_ego_colour(reference_batch: SceneBatch, heading_up: bool) -> None:
    renderer = TopDownRenderer(width=200, height=160, px_per_m=8.0, camera="ego", heading_up=heading_up)
    renderer.set_scene(reference_batch, 1)
    state = AgentState.from_log(reference_batch, 30)
    frame = renderer.render(state, 1, step=30, ego_index=0)
    centre = renderer.world_to_screen(state.pos[1, 0].numpy())
    assert np.abs(centre - [100, 80]).max() <= 1.0
    assert _pixel(frame, centre) == colors.EGO


def test_heading_up_camera_points_the_ego_heading_to_the_top_of_the_frame(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=200, height=200, px_per_m=10.0, camera="ego", heading_up=True)
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 40)
    frame = renderer.render(state, 0, step=40, ego_index=0)
    half_length_px = float(reference_batch.agent_size[0, 0, 0]) / 2 * 10.0
    assert _pixel(frame, (100, 100 - (half_length_px - 4))) == colors.HEADING_MARK  # front of the box: up
    assert _pixel(frame, (100, 100 + (half_length_px - 4))) == colors.EGO
    yaw = float(state.yaw[0, 0])
    ahead = state.pos[0, 0].numpy() + 10.0 * np.array([np.cos(yaw), np.sin(yaw)])
    assert np.allclose(renderer.world_to_screen(ahead), (100, 0), atol=1.0)


def test_north_up_camera_keeps_world_north_at_the_top(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=200, height=200, px_per_m=4.0, camera="ego", heading_up=False)
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 40)
    renderer.render(state, 0, step=40, ego_index=0)
    ego = state.pos[0, 0].numpy()
    north, east = renderer.world_to_screen(ego + [0.0, 10.0]), renderer.world_to_screen(ego + [10.0, 0.0])
    assert np.allclose(north - renderer.world_to_screen(ego), (0, -40), atol=1e-6)
    assert np.allclose(east - renderer.world_to_screen(ego), (40, 0), atol=1e-6)


def test_scene_camera_frames_the_whole_map(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=300, height=200, camera="scene")
    renderer.set_scene(reference_batch, 0)
    frame = renderer.render(AgentState.from_log(reference_batch, 0), 0, step=0, ego_index=0)
    nodes = renderer.world_to_screen(reference_batch.map_pos[0][reference_batch.map_valid[0]].numpy())
    assert nodes[:, 0].min() >= SCENE_MARGIN_PX - 1 and nodes[:, 0].max() <= 300 - SCENE_MARGIN_PX + 1
    assert nodes[:, 1].min() >= SCENE_MARGIN_PX - 1 and nodes[:, 1].max() <= 200 - SCENE_MARGIN_PX + 1
    span = nodes.max(axis=0) - nodes.min(axis=0)
    assert span[1] >= 200 - 2 * SCENE_MARGIN_PX - 2  # the tighter axis fills the frame
    assert frame.shape == (200, 300, 3)


def _visible_tl_pixels(renderer: TopDownRenderer, batch: SceneBatch, state: AgentState,
                       step: int) -> list[tuple[int, tuple[int, int, int], np.ndarray]]:
    """(TL index, expected colour, pixel) of valid stop points away from agents and overlays."""
    out = []
    for k in np.flatnonzero(batch.tl_valid[0, step].numpy()):
        xy = batch.tl_pos[0, step, k].numpy()
        px = renderer.world_to_screen(xy)
        away_from_overlays = 0.2 * renderer.height < px[1] < 0.85 * renderer.height
        if away_from_overlays and _free_of_agents(state, 0, xy, 4.0):
            state_idx = int(batch.tl_state[0, step, k].numpy().argmax())
            out.append((int(k), colors.TL_COLORS[TLState(state_idx)], px))
    return out


def test_traffic_light_stop_points_are_coloured_by_their_state(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=600, height=600, camera="scene")
    renderer.set_scene(reference_batch, 0)
    checked = set()
    for step in (12, 13, 70, 85):
        state = AgentState.from_log(reference_batch, step)
        frame = renderer.render(state, 0, step=step, ego_index=0)
        for k, color, px in _visible_tl_pixels(renderer, reference_batch, state, step):
            assert _pixel(frame, px) == color, f"TL {k} at step {step}"
            checked.add(color)
    assert len(checked) >= 3  # several states were seen, e.g. stop, go and flashing


def test_traffic_lights_after_the_last_logged_step_keep_the_last_state(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=400, height=400, camera="scene")
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 90)
    last = renderer.render(state, 0, step=90, ego_index=0)
    beyond = renderer.render(state, 0, step=150, ego_index=0)
    for _, color, px in _visible_tl_pixels(renderer, reference_batch, state, 90):
        assert _pixel(last, px) == _pixel(beyond, px) == color


def test_agents_are_filled_by_type(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=600, height=600, px_per_m=8.0, camera="ego", heading_up=False)
    renderer.set_scene(reference_batch, 0)
    types = reference_batch.agent_type[0].numpy().argmax(-1)
    checked = set()
    for step in (10, 20, 30):
        state = AgentState.from_log(reference_batch, step)
        frame = renderer.render(state, 0, step=step, ego_index=0)
        others = state.pos[0][state.valid[0]].numpy()
        for i in np.flatnonzero(state.valid[0].numpy())[1:]:
            xy = state.pos[0, i].numpy()
            isolated = np.sort(np.linalg.norm(others - xy, axis=1))[1] > 3.0
            tl_far = np.linalg.norm(reference_batch.tl_pos[0, step].numpy() - xy, axis=1).min() > 3.0
            px = renderer.world_to_screen(xy)
            if isolated and tl_far and (0.2 * 600 < px).all() and (px < 0.85 * 600).all():
                expected = colors.AGENT_TYPE_COLORS[AgentType(int(types[i]))]
                assert _pixel(frame, px) == expected, f"agent {i} at step {step}"
                checked.add(int(types[i]))
    assert checked >= {AgentType.VEHICLE, AgentType.PEDESTRIAN}


def test_boxes_too_small_for_details_keep_their_type_colour(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=400, height=400, camera="scene")  # about 2 px/m
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 20)
    frame = renderer.render(state, 0, step=20, ego_index=0)
    types = reference_batch.agent_type[0].numpy().argmax(-1)
    roles = reference_batch.agent_role[0].numpy().any(-1)
    others = state.pos[0][state.valid[0]].numpy()
    checked = 0
    for i in np.flatnonzero(state.valid[0].numpy() & (types == AgentType.PEDESTRIAN) & ~roles):
        xy = state.pos[0, i].numpy()
        isolated = np.sort(np.linalg.norm(others - xy, axis=1))[1] > 6.0
        tl_far = np.linalg.norm(reference_batch.tl_pos[0, 20].numpy() - xy, axis=1).min() > 6.0
        px = renderer.world_to_screen(xy)
        if isolated and tl_far and 0.2 * 400 < px[1] < 0.85 * 400:
            assert _pixel(frame, px) == colors.AGENT_TYPE_COLORS[AgentType.PEDESTRIAN], f"agent {i}"
            checked += 1
    assert checked >= 2


def test_ego_trail_and_goal_are_drawn(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=400, height=400, px_per_m=4.0, camera="ego", heading_up=False)
    renderer.set_scene(reference_batch, 1)
    state = AgentState.from_log(reference_batch, 30)
    ego = state.pos[1, 0].numpy().astype(np.float64)
    goal = ego + np.array([20.0, -20.0])
    trail = np.stack([ego + [-30.0, 25.0], ego + [-10.0, 25.0]])
    frame = renderer.render(state, 1, step=30, ego_index=0, trail=trail, goal=goal)
    assert _free_of_agents(state, 1, goal, 3.0) and _free_of_agents(state, 1, trail.mean(0), 3.0)
    assert _pixel(frame, renderer.world_to_screen(goal)) == colors.GOAL
    assert _pixel(frame, renderer.world_to_screen(trail.mean(0))) == colors.EGO_TRAIL


def test_hud_text_changes_the_frame(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=300, height=300, camera="scene")
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 5)
    plain = renderer.render(state, 0, step=5, ego_index=0)
    with_hud = renderer.render(state, 0, step=5, ego_index=0, hud={"reward": -0.125, "mode": "test"})
    assert not np.array_equal(plain, with_hud)
    assert np.array_equal(plain[150:], with_hud[150:])  # text stays in the top-left panel


def test_rendering_is_deterministic_and_reuses_the_cached_map_layer(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=256, height=256, camera="ego")
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 50)
    first = renderer.render(state, 0, step=50, ego_index=0)
    tiles = dict(renderer._layer._tiles)  # noqa: SLF001 - the cache under test
    second = renderer.render(state, 0, step=50, ego_index=0)
    assert np.array_equal(first, second)
    assert all(renderer._layer._tiles[k] is v for k, v in tiles.items())  # noqa: SLF001


def test_invalid_ego_keeps_the_last_camera(reference_batch: SceneBatch) -> None:
    renderer = TopDownRenderer(width=128, height=128, camera="ego")
    renderer.set_scene(reference_batch, 0)
    state = AgentState.from_log(reference_batch, 10)
    renderer.render(state, 0, step=10, ego_index=0)
    camera = renderer.camera
    gone = AgentState(**{**state.__dict__, "valid": state.valid.clone().index_fill_(1, torch.tensor([0]), False)})
    frame = renderer.render(gone, 0, step=11, ego_index=0)
    assert renderer.camera == camera and frame.shape == (128, 128, 3)


def test_human_mode_without_a_display_returns_none(reference_batch: SceneBatch,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    renderer = TopDownRenderer(width=64, height=64, camera="scene", render_mode="human", fps=1000)
    renderer.set_scene(reference_batch, 0)
    assert renderer.render(AgentState.from_log(reference_batch, 0), 0, step=0, ego_index=0) is None
    renderer.close()


def test_bad_arguments_raise_clear_errors(reference_batch: SceneBatch) -> None:
    with pytest.raises(ValueError, match="camera"):
        TopDownRenderer(camera="drone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="render_mode"):
        TopDownRenderer(render_mode="ansi")  # type: ignore[arg-type]
    renderer = TopDownRenderer(width=64, height=64)
    state = AgentState.from_log(reference_batch, 0)
    with pytest.raises(RuntimeError, match="set_scene"):
        renderer.render(state, 0, step=0, ego_index=0)
    renderer.set_scene(reference_batch, 0)
    with pytest.raises(IndexError, match="ego_index"):
        renderer.render(state, 0, step=0, ego_index=64)
    with pytest.raises(IndexError, match="state row"):
        renderer.render(state, 2, step=0, ego_index=0)
    with pytest.raises(ValueError, match="trail"):
        renderer.render(state, 0, step=0, ego_index=0, trail=np.zeros((3, 3)))
    with pytest.raises(IndexError, match="scene row"):
        renderer.set_scene(reference_batch, 5)
