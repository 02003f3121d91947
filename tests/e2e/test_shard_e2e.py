"""`shard` outputs are exact and load in transformers: resharding, expert (un)fusing, casts, text-only."""

import json

import pytest
import torch

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.inspection import summarize
from llama4ctl.jobs import execute_plan, plan_shard
from tests.e2e._load import assert_loaded_cleanly, bits, load, logits, tensors


@pytest.mark.parametrize("fixture", ["scout_dir", "maverick_dir"])
def test_unfuse_then_fuse_round_trips_bit_identically(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    execute_plan(plan_shard(src, experts="unfused", max_shard_size="150KB"), tmp_path / "unf", workers=2)
    execute_plan(plan_shard(tmp_path / "unf", experts="fused"), tmp_path / "back")
    a, u, b = tensors(src), tensors(tmp_path / "unf"), tensors(tmp_path / "back")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(bits(a[k]), bits(b[k])), k
    # per-expert tensors are the nn.Linear-shaped halves of the fused ones (H=64 != 2I=96 catches axis swaps)
    name = next(k for k in a if k.endswith("experts.gate_up_proj"))
    prefix = name[: -len("gate_up_proj")]
    gu, down = a[name], a[prefix + "down_proj"]
    inter = gu.shape[-1] // 2
    for e in range(gu.shape[0]):
        assert torch.equal(u[f"{prefix}{e}.gate_proj.weight"], gu[e][:, :inter].T)
        assert torch.equal(u[f"{prefix}{e}.up_proj.weight"], gu[e][:, inter:].T)
        assert torch.equal(u[f"{prefix}{e}.down_proj.weight"], down[e].T)


def test_resharded_checkpoint_loads_with_identical_logits(maverick_dir, tmp_path):
    res = execute_plan(plan_shard(maverick_dir, max_shard_size="300KB"), tmp_path / "out")
    assert res["shards_written"] == len(Checkpoint.open(tmp_path / "out").shards) > 2
    assert (tmp_path / "out" / "tokenizer.json").exists() and (tmp_path / "out" / "chat_template.jinja").exists()
    ref, _ = load(maverick_dir)
    got, info = load(tmp_path / "out")
    assert_loaded_cleanly(info)
    assert torch.equal(logits(ref), logits(got))


def test_drop_vision_gives_a_text_only_model_with_the_same_language_logits(scout_dir, tmp_path):
    execute_plan(plan_shard(scout_dir, drop_vision=True), tmp_path / "text")
    cfg = json.loads((tmp_path / "text" / "config.json").read_text())
    assert cfg["architectures"] == ["Llama4ForCausalLM"] and cfg["model_type"] == "llama4_text"
    names = tensors(tmp_path / "text").keys()
    assert not any(n.startswith(("vision_model", "multi_modal_projector", "language_model")) for n in names)
    full, _ = load(scout_dir)
    text, info = load(tmp_path / "text")
    assert_loaded_cleanly(info)
    assert torch.equal(logits(full), logits(text))


def test_cast_to_fp32_is_exact_and_updates_the_config(maverick_dir, tmp_path):
    execute_plan(plan_shard(maverick_dir, dtype="fp32"), tmp_path / "f32")
    a, b = tensors(maverick_dir), tensors(tmp_path / "f32")
    assert all(t.dtype == torch.float32 for t in b.values())
    assert all(torch.equal(a[k].float(), b[k]) for k in a)
    cfg = json.loads((tmp_path / "f32" / "config.json").read_text())
    assert cfg.get("torch_dtype", cfg.get("dtype")) == "float32"
    _, info = load(tmp_path / "f32")
    assert_loaded_cleanly(info)


def test_legacy_config_is_normalized_so_transformers_loads_the_output(legacy_config_dir, tmp_path):
    from transformers import AutoConfig

    with pytest.raises(Exception):
        AutoConfig.from_pretrained(legacy_config_dir)
    execute_plan(plan_shard(legacy_config_dir), tmp_path / "out")
    _, info = load(tmp_path / "out")
    assert_loaded_cleanly(info)


@pytest.mark.parametrize("fixture, moe_layers", [("scout_dir", [0, 1, 2, 3]), ("maverick_dir", [1, 3]),
                                                 ("text_only_dir", [1, 3])])
def test_inspect_counts_match_transformers(fixture, moe_layers, request):
    path = request.getfixturevalue(fixture)
    doc = summarize(Checkpoint.open(path))
    model, _ = load(path)
    assert doc["num_parameters"] == model.num_parameters()
    assert doc["moe_layers"] == moe_layers and doc["num_experts"] == 4
    assert doc["parameters_by_component"]["routed_experts"] == sum(
        p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert doc["architecture"] == ("text-only" if fixture == "text_only_dir" else "multimodal")
