"""The CPU fast paths of the single env give the values of the plain computation: trimmed attention keys of a
single-scene policy step, the packed node encoder, chunked destination scoring, the observation's rotation,
and eager env steps under ``torch.inference_mode`` that leave the engine's buffers normal tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.env.observation import EgoFrame
from trafficbots_gym.env.traffic_bots_env import TrafficBotsEnv
from trafficbots_gym.model.destination import DestPredictor
from trafficbots_gym.model.layers import TransformerBlock, fixed_key_mask
from trafficbots_gym.model.policy import TrafficBotsPolicy
from trafficbots_gym.model.step_keys import KEY_BLOCK
from trafficbots_gym.simulation.buffers import clone_tree, object_tensors

from conftest import NO_TERMINATION, REFERENCE_SCENES, tiny_model

MODEL = dict(gru_layers=2, map_node_layers=2, as2pl_layers=2, as2tl_layers=2, interaction_layers=2)
"""Tiny TrafficBots with more than one layer in every attention block."""


@pytest.fixture(scope="module")
def few_polylines(reference_batch: SceneBatch) -> SceneBatch:
    """Reference scene 0 with 300 valid polylines (fewer than one attention key block) and its traffic lights
    switched off from step 13 on."""
    scene = clone_tree(reference_batch.index(torch.tensor([0])))
    scene.map_valid[:, 300:] = False
    scene.tl_valid[:, 13:] = False
    assert bool(scene.tl_valid[:, 10].any())
    return scene


def _episode(policy: TrafficBotsPolicy, scene: SceneBatch, n_step: int = 8) -> list[torch.Tensor]:
    policy.reset(scene, generator=torch.Generator().manual_seed(4), destination="argmax")
    state, out = policy.warm_start_state, []
    for t in range(11, 11 + n_step):
        action = policy.act(state, torch.tensor([t]))
        state = state.step(action[..., 0], action[..., 1])
        out += [action, policy._loop.hidden.clone()]
    return out


def test_trimmed_keys_of_a_single_scene_step_give_the_actions_of_the_full_keys(few_polylines):
    model = tiny_model(**MODEL).eval()
    trimmed, full = TrafficBotsPolicy(model, compact_step=True), TrafficBotsPolicy(model, compact_step=False)
    runs = [_episode(trimmed, few_polylines), _episode(full, few_polylines)]
    keys = trimmed._keys
    assert full._keys is None and keys is not None
    assert keys.map_kv[0][0].shape[2] == KEY_BLOCK < few_polylines.map_valid.shape[1]
    assert keys.tl_masks[10] is not None and keys.tl_masks[14] is None   # steps with and without a light
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_trimmed_keys_are_made_for_one_scene_on_a_cpu_only(reference_batch):
    policy = TrafficBotsPolicy(tiny_model(), compact_step=True)
    policy.reset(reference_batch, destination="argmax")
    assert policy._keys is None                              # two scenes: the batched step
    policy.reset(reference_batch.index(torch.tensor([1])), destination="argmax")
    assert policy._keys is not None


def test_fixed_key_mask_drops_what_changes_nothing():
    every = fixed_key_mask(torch.ones(2, 5, dtype=torch.bool))
    assert every.bias is None and every.no_key is None
    some = fixed_key_mask(torch.tensor([[True, False, True], [False, True, False]]))
    assert some.bias is not None and some.no_key is None
    assert torch.isneginf(some.bias[0, 0, 0, 1]) and some.bias[0, 0, 0, 0] == 0
    empty_row = fixed_key_mask(torch.tensor([[True, False], [False, False]]))
    assert empty_row.no_key is not None and empty_row.no_key.flatten().tolist() == [False, True]


def test_packed_self_attention_equals_the_padded_block_on_valid_tokens():
    torch.manual_seed(0)
    block = TransformerBlock(2, 32, 2, 32, dropout=0.0).eval()
    valid = torch.rand(9, 20) < 0.7
    valid[:, 0] = True
    valid[3, 1:] = False                                     # a group with one valid token
    x = torch.randn(9, 20, 32) * valid.unsqueeze(-1)
    with torch.no_grad():
        padded = block(x, valid, x, valid)
        packed = block.forward_packed(x[valid], valid)
    assert torch.equal(packed, padded[valid])
    block.train()
    with pytest.raises(RuntimeError, match="inference"):
        block.forward_packed(x[valid], valid)


def test_node_encoder_chunks_give_the_values_of_one_pass(few_polylines):
    model = tiny_model(**MODEL).eval()
    b = few_polylines
    with torch.no_grad():
        dense = model.encode_map(b.map_valid, b.map_type, b.map_pos, b.map_dir)
        valid = b.map_valid[0, :300]
        nodes = valid.flatten().nonzero().squeeze(1)
        attr, pe = model._map_node_inputs(b.map_type[0, :300].unsqueeze(1).expand(-1, valid.shape[1], -1),
                                          b.map_pos[0, :300], b.map_dir[0, :300])
        pooled = [model.map_encoder.encode_valid_nodes(valid, attr.flatten(0, 1)[nodes], pe.flatten(0, 1)[nodes],
                                                       chunk=c) for c in (7, 10**6)]
        reference = model.map_encoder.encode_polylines(valid, attr, pe)
    assert torch.equal(pooled[0], pooled[1]) and torch.equal(pooled[0], reference)
    assert dense.valid[0, :300].all()


def test_chunked_destination_scoring_gives_the_logits_of_one_pass():
    model = tiny_model()
    predictor = DestPredictor(model.cfg).eval()
    torch.manual_seed(1)
    tokens, valid = torch.randn(1, 11, 7, 32), torch.rand(1, 11, 7) < 0.8
    agent_type = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 7)), 3).bool()
    feature, map_valid = torch.randn(1, 48, 32), torch.rand(1, 48) < 0.9
    map_type = torch.nn.functional.one_hot(torch.randint(0, 5, (1, 48)), 11).bool()
    with torch.no_grad():
        whole = predictor(tokens, valid, agent_type, feature, map_valid, map_type)
        chunked = predictor(tokens, valid, agent_type, feature, map_valid, map_type, agent_chunk=2)
    assert torch.equal(whole, chunked)


def test_frame_rotation_is_the_sum_of_the_two_products():
    torch.manual_seed(2)
    yaw, xy = torch.randn(3), torch.randn(3, 5, 2) * 40
    frame = EgoFrame.of(torch.zeros(3, 2), yaw)
    c, s = torch.cos(-yaw)[:, None], torch.sin(-yaw)[:, None]
    x, y = xy[..., 0], xy[..., 1]
    assert torch.equal(frame.rotate(xy), torch.stack([c * x - s * y, s * x + c * y], dim=-1))


def test_eager_steps_leave_normal_tensors_and_python_infos(tiny_checkpoint):
    env = TrafficBotsEnv(scenes=REFERENCE_SCENES, checkpoint=tiny_checkpoint, device="cpu",
                         termination=NO_TERMINATION)
    env.reset(seed=0)
    for _ in range(3):
        obs, reward, _, _, info = env.step(np.array([0.2, 0.0], np.float32))
    inference = [path for path, t in object_tensors(env.core).items() if t.is_inference()]
    assert inference == []
    assert isinstance(reward, float) and isinstance(info["collided"], bool) and isinstance(info["step"], int)
    assert isinstance(info["rewards"]["progress"], float) and obs.dtype == np.float32
    env.reset(options={"scene_index": 1})                     # resets write the buffers in place
    env.step(np.array([0.0, 0.1], np.float32))
    env.close()
