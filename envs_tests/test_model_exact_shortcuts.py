"""The inference shortcuts of the policy compute exactly what the plain path computes: sparse map encoding,
destination scoring on candidate polylines only, the batched warm-start prefix (fast reset) and the
simulator step with per-episode head inputs. Compared bit for bit (the shortcuts only drop rows or batch
independent rows, which on a CPU gives the same floating-point results)."""
from __future__ import annotations

import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import MapType
from trafficbots_gym.model.closed_loop import encode_episode, policy_step
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.model.warm_start import log_exact_steps
from trafficbots_gym.simulation.buffers import clone_tree

from conftest import tiny_model

MODEL = dict(gru_layers=2, map_node_layers=2, as2pl_layers=2, add_goal_mlp_in_layers=2)
"""Tiny TrafficBots with more than one layer where the shortcuts restructure the computation."""


@pytest.fixture(scope="module")
def vanishing_batch(reference_batch: SceneBatch) -> SceneBatch:
    """The reference scenes, with agents of scene 0 leaving the log during the history (steps 6 and 9),
    and some polylines of scene 1 invalid and an agent without history."""
    batch = clone_tree(reference_batch)
    agents = torch.nonzero(batch.agent_valid[0, :11].all(0)).squeeze(1)
    batch.agent_valid[0, 6:11, agents[1]] = False
    batch.agent_valid[0, 9:11, agents[2]] = False
    batch.map_valid[1, 100:300] = False
    batch.agent_valid[1, :11, 5] = False
    return batch


def _assert_trees_equal(a, b) -> None:
    from trafficbots_gym.simulation.buffers import tree_leaves
    for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True):
        assert torch.equal(x, y)


def test_sparse_map_encoding_equals_the_dense_one(vanishing_batch):
    model = tiny_model(**MODEL).eval()
    b = vanishing_batch
    with torch.no_grad():
        dense = model.encode_map(b.map_valid, b.map_type, b.map_pos, b.map_dir)
        sparse = model.encode_map(b.map_valid, b.map_type, b.map_pos, b.map_dir, sparse=True)
    _assert_trees_equal(dense, sparse)


def test_sparse_destination_logits_equal_the_dense_ones(vanishing_batch):
    model = tiny_model(**MODEL).eval()
    b = clone_tree(vanishing_batch)
    b.agent_type[1, 3] = torch.tensor([False, True, False])                    # a pedestrian
    b.map_type[1, :, MapType.ROAD_EDGE_BOUNDARY] = False                        # ... without a target
    with torch.no_grad():
        enc = encode_episode(model, b, full_log=False)
        args = (enc.history_tokens, enc.history_valid, b.agent_type, enc.map, b.map_type)
        dense, sparse = model.destination_logits(*args), model.destination_logits(*args, sparse=True)
    assert torch.equal(dense, sparse)
    assert (dense[1, 5] == 0).all() and (dense[1, 3] == 0).all()               # zero rows kept zero
    assert torch.isneginf(dense).any()


def test_log_exact_steps_count_the_transitions_before_an_agent_leaves_the_log():
    valid = torch.ones(3, 91, 4, dtype=torch.bool)
    valid[0, :3, 0] = False                    # appears at step 3: still exact
    valid[1, 4:, 1] = False                    # gone at step 4: inputs 0..3 exact
    valid[2, 0:, 2] = False
    valid[2, 1, 2] = True                      # valid only at step 1: gone at step 2
    assert log_exact_steps(valid, 11).tolist() == [10, 4, 2]


@pytest.fixture(scope="module")
def sparse_batch(vanishing_batch: SceneBatch) -> SceneBatch:
    """``vanishing_batch`` with 20 and 12 agent slots in use (the warm-start prefix runs on their rows)."""
    batch = clone_tree(vanishing_batch)
    batch.agent_valid[0, :, 20:] = False
    batch.agent_valid[1, :, 12:] = False
    return batch


@pytest.mark.parametrize("mode", [dict(deterministic_action=True, destination="argmax"),
                                  dict(deterministic_action=False, destination="sample"),
                                  dict(deterministic_action=False, latent="posterior", destination="logged")])
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("scenes", ["vanishing_batch", "sparse_batch"])
def test_fast_reset_gives_the_episode_of_the_plain_reset(scenes, mode, compat, request):
    batch = request.getfixturevalue(scenes)
    model = tiny_model(**MODEL, reference_compat=compat).eval()
    runs = []
    for fast in (False, True):
        policy = TrafficBotsPolicy(model, fast_reset=fast)
        policy.reset(batch, generator=torch.Generator().manual_seed(3), **mode)
        state = policy.warm_start_state
        run = [state, policy.destinations, policy._loop.hidden.clone(), policy.goal_valid,
               clone_tree(policy._ctx.tl_kv), clone_tree(policy._ctx.map)]
        for t in range(11, 15):
            action = policy.act(state, torch.full((2,), t))
            state = state.step(action[..., 0], action[..., 1])
            run.append(action)
        runs.append(run)
    _assert_trees_equal(runs[0], runs[1])


def test_policy_act_equals_the_closed_loop_policy_step(reference_batch):
    model = tiny_model(**MODEL).eval()
    policy = TrafficBotsPolicy(model)
    policy.reset(reference_batch, destination="argmax", deterministic_latent=True)
    state, step = policy.warm_start_state, torch.full((2,), 11)
    ctx, loop = policy._ctx, policy._loop
    reached = loop.dest_reached | ctx.dest.reached(state.valid, state.pos, state.yaw)
    goal_valid = loop.goal_valid & state.valid & ~reached
    with torch.no_grad():
        expected = policy_step(model, ctx, state, step, goal_valid, loop.hidden.clone(), deterministic=True)
    action = policy.act(state, step)
    assert torch.equal(action, expected.physical)
    assert torch.equal(policy._loop.hidden, expected.hidden)


def _few_agents(batch: SceneBatch) -> SceneBatch:
    """Scene 0 with 20 agent slots in use; slot 19 appears in the log only at step 15 (a spawn)."""
    scene = clone_tree(batch.index(torch.tensor([0])))
    scene.agent_valid[:, :, 20:] = False
    scene.agent_valid[:, :15, 19] = False
    return scene


@pytest.mark.parametrize("background,deterministic", [("trafficbots", True), ("trafficbots", False),
                                                      ("mixed", True)])
def test_compact_simulator_step_gives_the_episode_of_the_full_step(reference_batch, background, deterministic):
    from trafficbots_gym.simulation.simulator import BatchedSimulator
    scene, ego = _few_agents(reference_batch), torch.tensor([0])
    model = tiny_model(**MODEL).eval()
    runs = []
    for compact in (False, True):
        policy = TrafficBotsPolicy(model, compact_step=compact)
        sim = BatchedSimulator(background=background, policy=policy, deterministic_action=deterministic,
                               mixed_radius=40.0)
        sim.reset(scene, ego, generator=torch.Generator().manual_seed(1))
        assert (policy._active is not None) == compact
        g = torch.Generator().manual_seed(2)
        runs.append([sim.step(torch.randn(1, 2, generator=g)).state for _ in range(8)])
    _assert_trees_equal(runs[0], runs[1])
    assert bool(runs[1][-1].valid[0, 19]) and runs[1][-1].valid[0].sum() > 10    # spawned, many agents moved
