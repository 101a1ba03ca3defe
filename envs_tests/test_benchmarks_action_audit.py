"""Specification of the teacher-forced action audit (trafficbots_gym.benchmarks.action_audit)."""
from __future__ import annotations

import math

import torch

from trafficbots_gym.benchmarks.action_audit import action_bias, audit, log_actions, main, teacher_forced_actions
from trafficbots_gym.simulation.dynamics import unicycle_step

from conftest import REFERENCE_SCENES, tiny_model


def test_log_actions_invert_the_midpoint_unicycle():
    gen = torch.Generator().manual_seed(0)
    n_step, n_agent = 20, 5
    acc = torch.randn(n_step - 1, n_agent, generator=gen) * 2.0
    yaw_rate = torch.randn(n_step - 1, n_agent, generator=gen) * 0.3
    pos = torch.zeros(n_agent, 2)
    yaw, spd = torch.rand(n_agent, generator=gen) * 6.0, torch.rand(n_agent, generator=gen) * 10.0
    yaws, spds = [yaw], [spd]
    for t in range(n_step - 1):
        pos, yaw, spd, _ = unicycle_step(pos, yaw, spd, acc[t], yaw_rate[t])
        yaws.append(yaw)
        spds.append(spd)
    recovered = log_actions(torch.stack(spds), torch.stack(yaws))
    assert recovered.shape == (n_step - 1, n_agent, 2)
    torch.testing.assert_close(recovered[..., 0], acc, atol=1e-4, rtol=0)
    torch.testing.assert_close(recovered[..., 1], yaw_rate, atol=1e-4, rtol=0)


def test_teacher_forced_states_do_not_depend_on_the_policy_actions(reference_batch):
    """Every transition starts from the logged state: shifting the vehicles' acceleration output shifts each
    pre-tanh action by exactly that amount (in a closed loop the shifted actions would change later states)."""
    model = tiny_model().eval()
    base = teacher_forced_actions(model, reference_batch)
    shift = 0.3
    with torch.no_grad():
        model.action_head.mean[0].linears[-1].bias[0] += shift
    shifted = teacher_forced_actions(model, reference_batch)
    vehicle = reference_batch.agent_type[..., 0][:, None] & reference_batch.agent_valid[:, :-1]
    limit = model.cfg.action_limits[0][0]
    pre = torch.atanh(base[..., 0][vehicle] / limit)
    pre_shifted = torch.atanh(shifted[..., 0][vehicle] / limit)
    torch.testing.assert_close(pre_shifted - pre, torch.full_like(pre, shift), atol=2e-3, rtol=0)
    torch.testing.assert_close(shifted[..., 1], base[..., 1])
    assert not base[~reference_batch.agent_valid[:, :-1]].any()


def test_action_bias_is_the_mean_policy_minus_log_action_per_step_range():
    policy = torch.zeros(1, 4, 1, 2)
    log = torch.zeros(1, 4, 1, 2)
    policy[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0, -5.0])   # transitions to steps 1..4
    log[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([True, True, True, False]).view(1, 4, 1)
    first, second = action_bias(policy, log, mask, ranges=((1, 2), (3, 4)))
    assert first["n"] == 2 and first["acc_policy"] == 1.5 and first["acc_log"] == 0.0 and first["acc_bias"] == 1.5
    assert second["n"] == 1 and second["acc_bias"] == 2.0 and second["acc_mae"] == 2.0
    assert second["yaw_rate_bias"] == 0.0
    empty, = action_bias(policy, log, torch.zeros_like(mask), ranges=((1, 4),))
    assert empty["n"] == 0 and math.isnan(empty["acc_bias"])


def test_audit_reports_bias_restarts_and_speed_profile(reference_batch):
    model = tiny_model().eval()
    whole = audit(model, [reference_batch])
    assert [(r["first_step"], r["last_step"]) for r in whole.moving] == [(1, 10), (11, 30), (31, 60), (61, 90)]
    assert sum(r["n"] for r in whole.moving) > 0
    assert [p["step"] for p in whole.profile] == [11, 30, 60, 90]
    # scenes are scored together, however they are batched
    split = audit(model, [reference_batch.index([0]), reference_batch.index([1])])
    assert [r["n"] for r in split.moving] == [r["n"] for r in whole.moving]
    for a, b in zip(split.moving, whole.moving):
        assert abs(a["acc_bias"] - b["acc_bias"]) < 1e-4


def test_cli_prints_the_audit(tiny_checkpoint, capsys):
    assert main(["--scenes", str(REFERENCE_SCENES), "--num-scenes", "1", "--checkpoint", str(tiny_checkpoint),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "acc bias" in text and "restarts" in text and "reactive replay" in text
