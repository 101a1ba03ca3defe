"""Specification of the collision breakdown: each evaluated agent's first contact, classified."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from trafficbots_gym.benchmarks.collision_breakdown import FirstContacts, first_contacts, main, summarize_contacts
from trafficbots_gym.benchmarks.realism import Trajectories, evaluated_objects
from trafficbots_gym.data.constants import STEP_CURRENT

from conftest import REFERENCE_SCENES


def _log(batch) -> Trajectories:
    return Trajectories(pos=batch.agent_pos.clone(), yaw=batch.agent_yaw.clone(), valid=batch.agent_valid.clone())


def test_the_logged_overlap_of_reference_scene_0_is_a_contact_level_with_the_log(reference_batch):
    # the SDC (slot 0) of reference scene 0 overlaps another agent at step 11 in the log itself
    c = first_contacts(_log(reference_batch), reference_batch)
    assert ((c.row == 0) & (c.agent == 0) & (c.step == STEP_CURRENT + 1)).any()
    assert c.agents == int(evaluated_objects(reference_batch)[1].sum())
    assert np.nanmax(c.log_deviation) == pytest.approx(0.0, abs=1e-6)  # the log: no deviation
    assert np.all(c.log_gap[~np.isnan(c.log_gap)] <= 1e-4)             # overlapping boxes in the log too


def test_an_agent_moved_onto_another_one_gets_that_contact_with_its_speed_and_direction(reference_batch):
    traj = _log(reference_batch)
    logged = first_contacts(traj, reference_batch)
    index, mask = evaluated_objects(reference_batch)
    row, agent = next((r, int(a)) for r in range(2) for a in index[r][mask[r]]
                      if not ((logged.row == r) & (logged.agent == int(a))).any())  # no contact in the log
    step = 40
    others = reference_batch.agent_valid[row, step].clone()
    others[agent] = False
    partner = int(torch.nonzero(others)[0])
    traj.pos[row, step, agent] = traj.pos[row, step, partner]
    traj.yaw[row, step, agent] = traj.yaw[row, step, partner]
    c = first_contacts(traj, reference_batch)
    k = np.flatnonzero((c.row == row) & (c.agent == agent))
    assert len(k) == 1 and len(c.speed) == len(logged.speed) + 1
    k = int(k[0])
    assert c.step[k] == step
    jump = float((traj.pos[row, step, agent] - traj.pos[row, step - 1, agent]).norm() / 0.1)
    assert c.speed[k] == pytest.approx(jump, rel=1e-4)                # the speed into the contact
    assert c.heading_diff[k] == pytest.approx(0.0, abs=1e-5)          # same heading as its partner
    assert c.log_deviation[k] > 0.0


def _contacts(**values) -> FirstContacts:
    n = len(next(iter(values.values())))
    base = {"row": np.zeros(n, int), "agent": np.arange(n), "step": np.full(n, 20), "speed": np.full(n, 5.0), "partner_speed": np.full(n, 5.0), "heading_diff": np.zeros(n),
            "bearing": np.zeros(n), "log_speed": np.full(n, 5.0), "log_gap": np.full(n, 10.0),
            "log_deviation": np.ones(n)}
    base.update({k: np.asarray(v, dtype=float) for k, v in values.items()})
    return FirstContacts(**base, agents=10)


def test_summary_shares_classify_direction_place_speed_and_queues():
    c = _contacts(speed=[0.2, 1.0, 8.0, 8.0], partner_speed=[0.5, 1.5, 8.0, math.nan],
                  heading_diff=[0.1, 0.2, math.pi / 2, math.pi], bearing=[0.0, 0.2, math.pi / 2, math.pi],
                  log_speed=[0.3, 0.5, 9.0, math.nan], log_gap=[1.0, 3.0, 5.0, math.nan])
    row = summarize_contacts("x", c)
    assert row["collision_rate"] == 0.4 and row["colliding"] == 4
    assert (row["same_direction"], row["crossing"], row["opposite"]) == (0.5, 0.25, 0.25)
    assert (row["stopped"], row["ahead"], row["beside"], row["behind"]) == (0.25, 0.25, 0.25, 0.25)
    assert row["low_speed"] == 0.5 and row["queue"] == 0.25           # only the first stood close, slowly
    assert row["median_speed"] == pytest.approx(4.5)


def test_no_contacts_give_a_zero_rate_and_undefined_shares():
    row = summarize_contacts("log_replay", _contacts(speed=[]))
    assert row["collision_rate"] == 0.0 and math.isnan(row["same_direction"])


def test_cli_writes_the_table_for_each_background(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "cb"
    assert main(["--scenes", str(REFERENCE_SCENES), "--num-scenes", "2", "--backgrounds", "trafficbots",
                 "log_replay", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "collision_breakdown.csv") as f:
        rows = {r["background"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"trafficbots", "log_replay"} and int(rows["log_replay"]["colliding"]) >= 1
    assert "| log_replay |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="num-scenes"):
        main(["--num-scenes", "0", "--out", str(out)])
