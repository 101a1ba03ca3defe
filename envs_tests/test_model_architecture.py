"""Specification of the TrafficBots network building blocks (trafficbots_gym.model)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from trafficbots_gym.data.constants import AgentType, MapType
from trafficbots_gym.model.action_head import ActionHead
from trafficbots_gym.model.config import TrafficBotsConfig
from trafficbots_gym.model.destination import destination_mask
from trafficbots_gym.model.distributions import DiagGaussian, categorical_sample
from trafficbots_gym.model.encoders import MapEncoder, PosePE
from trafficbots_gym.model.layers import (MLP, CrossAttentionLayer, TransformerBlock, attention_mask, interact,
                                         last_valid, max_valid)
from trafficbots_gym.model.traffic_bots import TrafficBots

SMALL = TrafficBotsConfig(hidden_dim=32, n_head=2, d_feedforward=32, pe_dim=16, map_node_layers=1, dropout=0.0)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_model_has_the_reference_parameter_counts():
    model = TrafficBots()
    assert model.num_parameters() == 3_395_949
    assert count(model.map_encoder) == 401_440
    assert count(model.as2pl) == count(model.as2tl) == 299_520
    assert count(model.dest_predictor) == 347_265
    assert count(model.latent_prior) + count(model.latent_post) == 1_230_656
    assert count(model.temporal) == 297_216 and count(model.interaction) == 299_520
    assert count(model.add_goal) == 99_712 and count(model.add_latent) == 68_096
    assert count(model.action_head) == 50_316


def test_config_round_trips_through_json_and_rejects_unknown_or_inconsistent_values():
    cfg = TrafficBotsConfig(reference_compat=True, latent_dim=8)
    assert TrafficBotsConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="hidden_size"):
        TrafficBotsConfig.from_dict({"hidden_size": 64})
    with pytest.raises(ValueError, match="n_head"):
        TrafficBotsConfig(hidden_dim=30, n_head=4)
    with pytest.raises(ValueError, match="latent_down_sample"):
        TrafficBotsConfig(latent_down_sample=3)


def test_pose_encoding_is_sinusoids_of_xy_and_harmonics_of_yaw():
    pe = PosePE(16, 1000.0)
    xy, yaw = torch.tensor([[3.0, -7.0]]), torch.tensor([0.4])
    out = pe(xy, yaw)[0]
    f = torch.tensor([1000.0 ** (-k / 2) for k in range(2)])
    expected = torch.cat([torch.cos(3 * f), torch.sin(3 * f), torch.cos(-7 * f), torch.sin(-7 * f),
                          torch.cos(0.4 * torch.arange(1, 5)), torch.sin(0.4 * torch.arange(1, 5))])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(pe(xy, yaw + 2 * math.pi), pe(xy, yaw), atol=1e-5, rtol=0)


def test_mlp_zeroes_invalid_rows_and_ends_without_activation_when_asked():
    torch.manual_seed(0)
    mlp = MLP([4, 8, 3], layernorm=True, end_activation=False)
    x = torch.randn(64, 4)
    valid = torch.arange(64) % 3 != 1
    out = mlp(x, valid)
    assert not out[~valid].any()
    assert (out[valid] < 0).any()   # no final ReLU


def test_a_query_without_any_valid_key_gets_no_attention_update():
    layer = CrossAttentionLayer(16, 2, 16, dropout=0.0).eval()
    src, tgt = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    key_valid = torch.tensor([[True, True, False, False, False]])
    forbidden = torch.zeros(3, 5, dtype=torch.bool)
    forbidden[1] = True                                   # query 1 may not attend to any key
    out = layer(src, None, layer.project_kv(tgt), attention_mask(key_valid, forbidden))
    ff_only = src[:, 1] + layer.linear2(torch.relu(layer.linear1(layer.norm2(src[:, 1]))))
    torch.testing.assert_close(out[:, 1], ff_only)
    assert torch.isfinite(out).all()


def test_cached_keys_values_equal_recomputing_them():
    block = TransformerBlock(2, 16, 2, 16, dropout=0.0).eval()
    src, tgt = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    valid = torch.rand(2, 6) > 0.3
    torch.testing.assert_close(block(src, None, tgt, valid), block.forward_kv(src, None, block.project_kv(tgt), valid))


def test_interaction_excludes_self_and_passes_single_agents_through():
    block = TransformerBlock(1, 16, 2, 16, dropout=0.0).eval()
    layer = block.layers[0]
    x = torch.randn(2, 3, 16)
    valid = torch.tensor([[True, False, False], [True, True, False]])
    x = x.masked_fill(~valid.unsqueeze(-1), 0)
    out = interact(block, x, valid)
    torch.testing.assert_close(out[0], x[0])            # only one valid agent: unchanged
    assert not out[1, 2].any()                           # invalid agent stays zero
    # with two valid agents, agent 0 attends only to agent 1: attention output = out_proj(value of agent 1)
    _, v = layer.project_kv(x[1:])
    attended = x[1, 0] + layer.out_proj(v[0, :, 1].flatten())
    expected = attended + layer.linear2(torch.relu(layer.linear1(layer.norm2(attended))))
    torch.testing.assert_close(out[1, 0], expected)


def test_temporal_pooling_helpers():
    x = torch.arange(12.0).view(1, 3, 2, 2)              # [B, T, A, d]
    valid = torch.tensor([[[True, False], [True, False], [False, False]]])
    torch.testing.assert_close(max_valid(x, valid)[0], torch.tensor([[4.0, 5.0], [0.0, 0.0]]))
    torch.testing.assert_close(last_valid(x, valid)[0], torch.tensor([[4.0, 5.0], [0.0, 0.0]]))


def test_map_encoder_is_equivariant_to_polyline_order_and_zero_for_padding():
    enc = MapEncoder(SMALL).eval()
    valid = torch.rand(1, 6, 20) > 0.3
    valid[0, 5] = False
    attr, pe = torch.randn(1, 6, 20, SMALL.map_attr_dim), torch.randn(1, 6, 20, 16)
    feature, pl_valid = enc(valid, attr, pe)
    assert not feature[0, 5].any() and not pl_valid[0, 5]
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted, _ = enc(valid[:, perm], attr[:, perm], pe[:, perm])
    torch.testing.assert_close(permuted, feature[:, perm], atol=1e-5, rtol=1e-5)


def test_destination_candidates_depend_on_the_agent_type():
    classes = [MapType.FREEWAY, MapType.BIKE_LANE, MapType.ROAD_EDGE_BOUNDARY, MapType.CROSSWALK]
    map_type = torch.nn.functional.one_hot(torch.tensor([classes]), 11).bool()
    map_valid = torch.ones(1, 4, dtype=torch.bool)
    agent_type = torch.nn.functional.one_hot(torch.tensor([[AgentType.VEHICLE, AgentType.PEDESTRIAN,
                                                            AgentType.CYCLIST]]), 3).bool()
    allowed = ~destination_mask(agent_type, map_type, map_valid)[0]
    assert allowed.tolist() == [[True, False, True, False],    # vehicle: lanes and road edges
                                [False, False, True, False],   # pedestrian: road edges only
                                [False, True, True, False]]    # cyclist: bike lanes and road edges


def test_action_head_selects_the_type_branch_and_gives_unit_std_to_untyped_agents():
    head = ActionHead(8, -2.0)
    x = torch.randn(1, 3, 8)
    agent_type = torch.tensor([[[False, True, False], [False, False, False], [True, False, False]]])
    dist = head(x, torch.tensor([[True, True, False]]), agent_type)
    torch.testing.assert_close(dist.mean[0, 0], head.mean[1](x[0, 0]))
    assert not dist.mean[0, 1:].any()
    torch.testing.assert_close(dist.std[0], torch.tensor([[math.exp(-2.0)] * 2, [1.0, 1.0], [1.0, 1.0]]))


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    p = DiagGaussian(torch.randn(4, 3), torch.randn(4, 3) * 0.3)
    q = DiagGaussian(torch.randn(4, 3), torch.randn(3) * 0.3)
    x = torch.randn(4, 3)
    tp = Independent(Normal(p.mean, p.std), 1)
    tq = Independent(Normal(q.mean, q.std), 1)
    torch.testing.assert_close(p.log_prob(x), tp.log_prob(x))
    torch.testing.assert_close(p.kl(q), kl_divergence(tp, tq))


def test_categorical_sampling_follows_the_logits_and_never_picks_impossible_classes():
    logits = torch.log(torch.tensor([[0.7, 0.3, 0.0]])).expand(20000, 3)
    draws = categorical_sample(logits, torch.Generator().manual_seed(0))
    assert not (draws == 2).any()
    assert abs((draws == 0).float().mean().item() - 0.7) < 0.02
