"""Llama 4 name grammar, components and config derivations."""

import pytest

from llama4ctl.checkpoint.layout import (component, is_aux_tensor, module_name, normalize_config,
                                         parse_fused_expert, parse_per_expert, parse_text_config, to_text_only_name)

L = "language_model.model.layers.3."


@pytest.mark.parametrize("name, comp", [
    ("vision_model.model.layers.0.mlp.fc1.weight", "vision"),
    ("multi_modal_projector.linear_1.weight", "projector"),
    ("language_model.model.embed_tokens.weight", "embed"),
    ("model.embed_tokens.weight", "embed"),
    (L + "self_attn.q_proj.weight", "attention"),
    (L + "feed_forward.gate_proj.weight", "dense_mlp"),
    (L + "feed_forward.shared_expert.down_proj.weight", "shared_expert"),
    (L + "feed_forward.experts.gate_up_proj", "routed_experts"),
    (L + "feed_forward.experts.7.up_proj.weight_scale", "routed_experts"),
    (L + "feed_forward.router.weight", "router"),
    (L + "input_layernorm.weight", "norm"),
    ("model.layers.0.post_attention_layernorm.weight", "norm"),
    ("language_model.model.norm.weight", "norm"),
    ("language_model.lm_head.weight", "lm_head"),
    ("lm_head.weight", "lm_head"),
])
def test_every_llama4_tensor_has_a_component(name, comp):
    assert component(name) == comp


def test_fused_and_per_expert_names():
    f = parse_fused_expert(L + "feed_forward.experts.gate_up_proj")
    assert f.proj == "gate_up_proj"
    assert f.per_expert_weight_names(2) == (L + "feed_forward.experts.2.gate_proj.weight",
                                            L + "feed_forward.experts.2.up_proj.weight")
    assert parse_fused_expert(L + "feed_forward.experts.gate_up_proj_scale") is None
    pe = parse_per_expert(L + "feed_forward.experts.11.down_proj.weight")
    assert (pe.expert, pe.proj, pe.leaf) == (11, "down_proj", "weight")
    assert module_name(L + "feed_forward.experts.down_proj") == L + "feed_forward.experts"
    assert module_name(L + "feed_forward.experts.11.down_proj.weight") == L + "feed_forward.experts.11.down_proj"
    assert module_name(L + "self_attn.q_proj.weight") == L + "self_attn.q_proj"


def test_aux_tensors_are_not_parameters():
    assert is_aux_tensor(L + "self_attn.q_proj.weight_scale")
    assert is_aux_tensor(L + "feed_forward.experts.gate_up_proj_scale")
    assert not is_aux_tensor(L + "self_attn.q_proj.weight")


def test_text_only_names():
    assert to_text_only_name("language_model.model.norm.weight") == "model.norm.weight"
    assert to_text_only_name("language_model.lm_head.weight") == "lm_head.weight"
    assert to_text_only_name("vision_model.class_embedding") is None


def test_maverick_and_scout_layer_patterns_derive_like_transformers():
    base = {"hidden_size": 5120, "intermediate_size": 8192, "num_hidden_layers": 48, "vocab_size": 202048}
    scout = parse_text_config({"text_config": {**base, "num_local_experts": 16, "interleave_moe_layer_step": 1}})
    mav = parse_text_config({"text_config": {**base, "num_local_experts": 128, "interleave_moe_layer_step": 2}})
    assert scout.family == "scout" and scout.moe_layers == tuple(range(48)) and scout.moe_pattern == "every-layer"
    assert mav.family == "maverick" and mav.moe_layers == tuple(range(1, 48, 2)) and mav.moe_pattern == "interleaved"
    assert scout.nope_layers == tuple(range(3, 48, 4))


def test_normalize_config_leaves_bools_alone():
    cfg, notes = normalize_config({"text_config": {"attn_temperature_tuning": True}})
    assert cfg["text_config"]["attn_temperature_tuning"] is True and notes == []
