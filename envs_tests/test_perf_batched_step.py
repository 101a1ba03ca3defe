"""Performance contract of the batched step (docs/performance.md): no host synchronisation and no tensor
from host data inside a step, every buffer written in place by steps and resets (what a CUDA graph
replay needs), bounded-memory chunked encoding at reset, bf16 policy close to fp32, and -- on a CUDA
device -- CUDA-graph replay equal to eager execution."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.h5io import SceneReader
from trafficbots_gym.env.vector_env import TrafficBotsVecEnv
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.simulation.buffers import moved_tensors, object_tensors, storage_signature
from trafficbots_gym.simulation.graphed import StepGraph

from conftest import NO_TERMINATION, REFERENCE_SCENES, save_tiny_checkpoint, tiny_model

BACKGROUNDS = ("trafficbots", "mixed", "idm", "constant_velocity", "log_replay")
MODEL = dict(gru_layers=2, add_goal_mlp_in_layers=1, add_latent_mlp_in_layers=1)
"""Overrides of the tiny TrafficBots configuration used here."""
HOST_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "unique", "_unique2", "lift_fresh",
            "lift_fresh_copy"}
"""Ops that synchronise with the host on CUDA (scalar reads, data-dependent shapes) or copy host data to
the device (tensors made from Python values): neither may run inside a captured step."""
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class HostOps(TorchDispatchMode):
    """Records the host-bound ops dispatched inside the context, with where they were called."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func._schema.name.split("::")[-1]
        if name in HOST_OPS:
            frame = [f for f in traceback.extract_stack() if "trafficbots_gym" in f.filename][-1]
            self.found.append(f"{name} at {Path(frame.filename).name}:{frame.lineno}")
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", **MODEL)


def _vec_env(background: str, checkpoint: Path, num_envs: int = 2, **kwargs) -> TrafficBotsVecEnv:
    kwargs.setdefault("device", "cpu")
    return TrafficBotsVecEnv(num_envs, scenes=REFERENCE_SCENES, checkpoint=checkpoint, background=background,
                             termination=NO_TERMINATION, torch_output=True, prefetch=False, **kwargs)


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_step_and_observation_run_without_host_sync_or_host_data(background, checkpoint):
    env = _vec_env(background, checkpoint)
    env.reset(seed=0)
    actions = torch.zeros(2, 2)
    env.step(actions)
    with HostOps() as ops:
        env.core._advance(actions)
        env.core._build_observation()
    assert ops.found == []


@pytest.mark.parametrize("background", ["trafficbots", "log_replay"])
def test_route_action_steps_run_without_host_sync_or_host_data(background, checkpoint):
    env = _vec_env(background, checkpoint, action_mode="route")
    env.reset(seed=0)
    actions = torch.tensor([[0.5, 0.5], [-0.5, -1.0]])
    env.step(actions)
    with HostOps() as ops:
        env.core._advance(actions)
    assert ops.found == []


@pytest.mark.parametrize("background,action_mode", [(b, "continuous") for b in BACKGROUNDS]
                         + [("log_replay", "route")])
def test_steps_and_resets_write_every_buffer_in_place(background, action_mode, checkpoint):
    env = _vec_env(background, checkpoint, horizon=3, action_mode=action_mode)
    env.reset(seed=0)
    core, actions = env.core, torch.zeros(2, 2)
    env.step(actions)
    kept = object_tensors(core)      # keeps the tensors alive: a reallocation cannot reuse their addresses
    before = storage_signature(kept)
    assert len(kept) > 30
    core._advance(actions)
    core._build_observation()
    core.reset([1])
    core.reset(None, [{"scene_index": 1}, {"scene_index": 0}])
    for _ in range(5):                # crosses the horizon: autoresets of finished rows
        env.step(actions)
    assert moved_tensors(before, storage_signature(object_tensors(core))) == []


@dataclass
class _Holder:
    x: torch.Tensor


def test_step_graph_records_in_place_writes_and_refuses_a_step_that_replaces_its_state():
    holder = _Holder(torch.zeros(3))

    def in_place() -> torch.Tensor:
        holder.x.add_(1.0)
        return holder.x * 2

    graph = StepGraph(in_place, holder, name="in place")
    assert torch.equal(graph(), torch.full((3,), 2.0))
    assert graph.disabled_reason is None and graph._written == ["_Holder.x"]

    def replacing() -> torch.Tensor:
        holder.x = holder.x + 1.0
        return holder.x

    graph = StepGraph(replacing, holder, name="replacing")
    graph()
    assert "replaces tensors" in (graph.disabled_reason or "") and "_Holder.x" in graph.disabled_reason
    assert torch.equal(graph(), torch.full((3,), 3.0))          # eager from now on
    assert not graph.active


def _scenes(n: int) -> SceneBatch:
    reader = SceneReader(REFERENCE_SCENES)
    return SceneBatch.from_scenes([reader[i % len(reader)] for i in range(n)])


def test_policy_reset_encodes_in_chunks_with_the_same_result_as_one_chunk():
    model = tiny_model(**MODEL)
    batch = _scenes(3)
    chunked, whole = TrafficBotsPolicy(model, encode_chunk=1), TrafficBotsPolicy(model, encode_chunk=64)
    for policy in (chunked, whole):
        policy.reset(batch, destination="argmax", deterministic_latent=True)
    torch.testing.assert_close(chunked._ctx.map.kv[0][0], whole._ctx.map.kv[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked._ctx.tl_kv[0][1], whole._ctx.tl_kv[0][1], atol=1e-5, rtol=1e-5)
    assert torch.equal(chunked.destinations, whole.destinations)
    state, step = whole.warm_start_state, torch.full((3,), 11)
    torch.testing.assert_close(chunked.act(state, step), whole.act(state, step), atol=1e-4, rtol=0)


def test_full_reset_with_the_same_batch_size_reuses_the_policy_buffers():
    policy = TrafficBotsPolicy(tiny_model(**MODEL), encode_chunk=1)
    policy.reset(_scenes(2))
    before = storage_signature(object_tensors(policy))
    policy.reset(_scenes(3).index([1, 2]))
    assert moved_tensors(before, storage_signature(object_tensors(policy))) == []
    policy.reset(_scenes(3))                                      # a new batch size reallocates
    assert moved_tensors(before, storage_signature(object_tensors(policy))) != []


def test_bf16_policy_actions_stay_close_to_fp32():
    model = tiny_model(**MODEL)
    batch = _scenes(2)
    fp32, bf16 = TrafficBotsPolicy(model), TrafficBotsPolicy(model, autocast_dtype=torch.bfloat16)
    for policy in (fp32, bf16):
        policy.reset(batch, destination="argmax", deterministic_latent=True)
    state, step = fp32.warm_start_state, torch.full((2,), 11)
    for _ in range(5):
        a, b = fp32.act(state, step), bf16.act(state, step)
        assert b.dtype == torch.float32
        diff = (a - b).abs().amax(dim=(0, 1))
        assert diff[0] < 0.05 and diff[1] < 0.03, f"acc / yaw-rate difference {diff.tolist()}"
        state, step = state.step(a[..., 0], a[..., 1]), step + 1


def test_cuda_graphs_need_a_cuda_device(checkpoint):
    with pytest.raises(ValueError, match="CUDA device"):
        _vec_env("log_replay", checkpoint, cuda_graphs=True, device="cpu")


@CUDA
@pytest.mark.parametrize("background,action_mode", [("trafficbots", "continuous"), ("idm", "continuous"),
                                                    ("log_replay", "continuous"), ("trafficbots", "route")])
def test_cuda_graph_replay_equals_eager_across_autoresets(background, action_mode, checkpoint):
    traces = []
    for graphs in (False, True):
        env = _vec_env(background, checkpoint, num_envs=3, horizon=6, device="cuda", cuda_graphs=graphs,
                       action_mode=action_mode)
        obs, _ = env.reset(seed=5)
        rng = np.random.default_rng(0)
        trace = [obs]
        for _ in range(15):
            obs, reward, _, _, _ = env.step(torch.as_tensor(rng.uniform(-1, 1, (3, 2)), dtype=torch.float32))
            trace += [obs, reward.unsqueeze(-1)]
        graph = env.core._step_graph
        assert graph.disabled_reason is None and (graph.captures >= 1) == graphs
        traces.append(torch.cat(trace, dim=-1).cpu())
        env.close()
    torch.testing.assert_close(traces[1], traces[0], atol=1e-4, rtol=1e-4)


@CUDA
def test_single_env_keeps_its_cuda_graph_across_episodes(checkpoint):
    from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=checkpoint, device="cuda", horizon=5)
    for episode in range(3):
        env.reset(seed=episode, options={"scene_index": episode % 2})
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
            done = terminated or truncated
    assert env.core.graphs_active and env.core._step_graph.captures == 1


def test_graph_step_results_are_handed_out_as_copies(checkpoint):
    from trafficbots_gym.env.core import _copy_result
    env = _vec_env("log_replay", checkpoint)
    env.reset(seed=0)
    result = env.core._advance(torch.zeros(2, 2))
    copy = _copy_result(result)
    for group in ("info", "rewards", "episode"):
        original, copied = getattr(result, group), getattr(copy, group)
        assert list(copied) == list(original)
        for key, value in original.items():
            assert torch.equal(copied[key], value) and copied[key].dtype == value.dtype
            assert copied[key].data_ptr() != value.data_ptr()
    assert torch.equal(copy.reward, result.reward) and torch.equal(copy.truncated, result.truncated)
