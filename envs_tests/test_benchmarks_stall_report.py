"""Specification of the stall report: vehicles that stand while their log moves."""
from __future__ import annotations

import torch

from trafficbots_gym.benchmarks.stall_report import EARLY_STEPS, FREE_GAP, edit_lights, main, stall_counts
from trafficbots_gym.data.constants import STEP_CURRENT
from trafficbots_gym.simulation.guard import BACKGROUND_GUARDS
from trafficbots_gym.simulation.state import AgentState

from conftest import REFERENCE_SCENES


def _state(x: list[float], spd: list[float]) -> AgentState:
    """One scene of cars on the x axis heading +x."""
    n = len(x)
    pos = torch.tensor([[[xi, 0.0] for xi in x]])
    speed = torch.tensor([spd])
    return AgentState(valid=torch.ones(1, n, dtype=torch.bool), pos=pos, yaw=torch.zeros(1, n), spd=speed,
                      vel=torch.stack([speed, torch.zeros_like(speed)], -1), acc=torch.zeros(1, n),
                      yaw_rate=torch.zeros(1, n))


def test_a_standing_vehicle_whose_log_moves_stalls_and_its_lane_is_free_without_a_box_ahead() -> None:
    # 0: stands 5 m behind car 1 (stalled, blocked); 1: stands alone ahead (stalled, free);
    # 2: moves (not stalled); 3: stands far behind, but its log stands too (not counted)
    state = _state([0.0, 9.0, 200.0, -100.0], [0.0, 0.1, 5.0, 0.0])
    size = torch.tensor([[[4.0, 2.0, 1.5]] * 4])
    log_spd = torch.tensor([[6.0, 6.0, 6.0, 0.2]])
    last_moving = torch.tensor([[80, STEP_CURRENT, 90, 50]])      # car 1 has not moved since the start
    counts = stall_counts(state, size, log_spd, torch.ones(1, 4, dtype=torch.bool), last_moving)
    assert (counts.moving, counts.stalled, counts.free, counts.early) == (3, 2, 1, 1)
    assert 9.0 - 4.0 < FREE_GAP


def test_agents_outside_the_vehicle_mask_are_not_counted() -> None:
    state = _state([0.0], [0.0])
    counts = stall_counts(state, torch.tensor([[[1.0, 1.0, 1.8]]]), torch.tensor([[2.0]]),
                          torch.zeros(1, 1, dtype=torch.bool), torch.tensor([[-1]]))
    assert (counts.moving, counts.stalled, counts.free, counts.early) == (0, 0, 0, 0)


def test_a_stall_is_early_when_the_vehicle_last_moved_within_the_first_second() -> None:
    state = _state([0.0, 100.0], [0.0, 0.0])
    size = torch.tensor([[[4.0, 2.0, 1.5]] * 2])
    last_moving = torch.tensor([[STEP_CURRENT + EARLY_STEPS, STEP_CURRENT + EARLY_STEPS + 1]])
    counts = stall_counts(state, size, torch.tensor([[5.0, 5.0]]), torch.ones(1, 2, dtype=torch.bool), last_moving)
    assert (counts.stalled, counts.early) == (2, 1)


def test_log_replay_never_stalls_and_reports_the_log_speeds(capsys, tiny_checkpoint) -> None:
    assert main(["--scenes", str(REFERENCE_SCENES), "--num-scenes", "2", "--backgrounds", "log_replay", "trafficbots",
                 "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--scenes-per-batch", "1"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "background" not in line}
    moving, stalled, free, early, *speeds = rows["log_replay"]
    assert int(moving) > 0 and stalled.startswith("0 ") and free == "0" and early == "0"
    for cell in speeds:
        sim, log = cell.split(" / ")
        assert sim == log
    assert rows["trafficbots"][0] == moving          # the same vehicles are judged


def test_leaving_every_guard_out_of_the_guarded_background_gives_the_raw_model(capsys, tiny_checkpoint) -> None:
    common = ["--scenes", str(REFERENCE_SCENES), "--num-scenes", "2", "--checkpoint", str(tiny_checkpoint),
              "--device", "cpu"]
    assert main([*common, "--backgrounds", "trafficbots"]) == 0
    raw = capsys.readouterr().out.splitlines()[-1]
    assert main([*common, "--backgrounds", "trafficbots+guard", "--without-guards", *BACKGROUND_GUARDS]) == 0
    ablated = capsys.readouterr().out.splitlines()[-1]
    assert ablated.replace("trafficbots+guard", "trafficbots") == raw


def test_lights_can_be_turned_green_everywhere_or_removed(reference_batch) -> None:
    from trafficbots_gym.data.constants import TLState

    green = edit_lights(reference_batch, "green")
    assert green.tl_state[..., TLState.GO].all() and green.tl_state.sum(-1).eq(1).all()
    assert not edit_lights(reference_batch, "none").tl_valid.any()
    assert edit_lights(reference_batch, "logged") is reference_batch


def test_a_non_positive_count_is_rejected_by_its_option_name() -> None:
    import pytest

    with pytest.raises(SystemExit, match="--num-scenes must be >= 1, got 0"):
        main(["--num-scenes", "0"])
