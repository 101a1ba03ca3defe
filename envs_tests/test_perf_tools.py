"""The throughput benchmark (trafficbots-gym's vec_env_speed) and the multi-GPU rollout example, run on
the CPU at tiny sizes: they produce complete tables, CSV, plot and all-reduced results."""
from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trafficbots_gym.benchmarks import vec_env_speed

from conftest import REFERENCE_SCENES

ROOT = Path(__file__).resolve().parents[1]


def test_vec_env_speed_prints_each_row_and_writes_csv_and_plot(tmp_path, capsys):
    rows = vec_env_speed.main(["--device", "cpu", "--num-envs", "1", "2", "--backgrounds", "log_replay",
                               "--steps", "2", "--warmup", "1", "--naive-envs", "2", "--naive-steps", "1",
                               "--scenes", str(REFERENCE_SCENES), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert [(r.mode, r.num_envs) for r in rows] == [("naive-eager", 2), ("eager", 1), ("eager", 2)]
    assert all(r.status == "ok" and r.env_steps_per_s > 0 and r.peak_mem_mib > 0 for r in rows)
    assert rows[2].agent_steps_per_s == pytest.approx(64 * rows[2].env_steps_per_s)
    assert rows[0].vs_naive == 1.0
    assert rows[2].vs_naive == pytest.approx(rows[2].env_steps_per_s / rows[0].env_steps_per_s)
    assert printed.count("| log_replay |") == 3 and "env-steps/s" in printed
    with open(tmp_path / "vec_env_speed.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["num_envs"]) for r in table] == [2, 1, 2] and float(table[1]["reset_ms"]) > 0
    assert (tmp_path / "vec_env_speed.png").stat().st_size > 10_000


def test_vec_env_speed_rejects_runs_longer_than_an_episode_and_graphs_without_cuda():
    with pytest.raises(SystemExit):
        vec_env_speed.main(["--device", "cpu", "--steps", "80", "--warmup", "5"])
    with pytest.raises(SystemExit):
        vec_env_speed.main(["--device", "cpu", "--modes", "graph"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_gpu_rollout_all_reduces_two_gloo_processes(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "examples" / "multi_gpu_rollout.py"), "--device", "cpu", "--num-envs", "2", "--steps", "12",
           "--warmup", "1", "--background", "log_replay", "--scenes", str(REFERENCE_SCENES), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["env_steps"] == 2 * 2 * 12 and result["env_steps_per_s"] > 0
    assert result["episodes"] >= 4            # every row ends at least once within 12 steps (default termination)
    assert 0.0 <= result["collision_rate"] <= 1.0 and "| 2 |" in proc.stdout


def test_env_speed_autoreset_part_prints_one_row_per_pool_size(capsys, tiny_checkpoint):
    from trafficbots_gym.benchmarks import env_speed
    env_speed.main(["--device", "cpu", "--parts", "autoreset", "--num-envs", "2", "--steps", "6",
                    "--reset-pools", "0", "3", "--scenes", str(REFERENCE_SCENES), "--checkpoint", str(tiny_checkpoint)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "3"]
    assert all(float(row.split("|")[3]) > 0 for row in rows)


def test_model_speed_prints_a_row_per_inference_configuration_after_the_reference_rows(capsys):
    from trafficbots_gym.benchmarks import model_speed
    assert model_speed.main(["--device", "cpu", "--train-batches", "", "--infer-batches", "1,2", "--dtypes", "fp32",
                             "--steps", "2", "--threads", "1", "--scenes", str(REFERENCE_SCENES)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = [line.split(" | ") for line in lines if line.startswith("| trafficbots-gym")]
    assert [(row[1], row[2], row[3]) for row in ours] == [("eager", "fp32", "1"), ("eager", "fp32", "2")]
    assert all(float(row[4]) > 0 and int(row[6].replace(",", "")) > 0 for row in ours)
    assert any(line.startswith("| reference TrafficBots, H100") for line in lines)


def test_model_speed_refuses_graph_inference_without_cuda():
    from trafficbots_gym.benchmarks import model_speed
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        model_speed.main(["--device", "cpu", "--train-batches", "", "--infer-modes", "graph"])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_policy_act_replayed_from_a_cuda_graph_gives_the_eager_actions():
    import torch

    from trafficbots_gym.benchmarks.model_speed import _ActCall, _batch
    from trafficbots_gym.model.policy import TrafficBotsPolicy
    from trafficbots_gym.model.traffic_bots import TrafficBots
    from trafficbots_gym.simulation.graphed import StepGraph
    torch.manual_seed(0)
    model = TrafficBots().cuda().eval()
    batch = _batch(REFERENCE_SCENES, 2, torch.device("cuda"))
    actions = {}
    with torch.no_grad():
        for graphed in (False, True):
            policy = TrafficBotsPolicy(model, device="cuda")
            policy.reset(batch, generator=torch.Generator(device="cuda").manual_seed(0))
            call = _ActCall(policy, policy.warm_start_state)
            step = StepGraph(call, call, name="policy act") if graphed else call
            out = []
            for _ in range(5):
                out.append(step().clone())
                call.advance()
            assert not graphed or step.active
            actions[graphed] = torch.stack(out)
    torch.testing.assert_close(actions[True], actions[False], rtol=0, atol=1e-5)


def test_saved_tensors_counts_each_saved_storage_once_and_leaves_out_excluded_tensors():
    import torch

    from trafficbots_gym.benchmarks.saved_memory import SavedTensors
    weight = torch.randn(1000, requires_grad=True)
    x = torch.randn(1000)
    with SavedTensors(exclude=[weight]) as saved:
        y = (weight * x).exp()          # mul saves x (4 kB); exp saves its output y (4 kB)
        z = (y * y + weight * weight)   # y again (counted once), weight (left out)
    assert saved.total == 8000 and saved.by_phase == {"scene encoding": 8000}
    z.sum().backward()  # the counted tensors still serve the backward pass
    torch.testing.assert_close(weight.grad, 2 * x * y * y + 2 * weight)
