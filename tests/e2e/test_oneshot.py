"""`quantize --recipe`: llm-compressor oneshot with the shipped recipes, written atomically."""

import json

import pytest
import torch

from llama4ctl.jobs import plan_quantize, quantize
from llama4ctl.oneshot import resolve_recipe, run_oneshot, shipped_recipes
from tests.e2e._load import assert_loaded_cleanly, bits, load, logits, tensors


def test_shipped_recipes_resolve_by_name_and_path():
    assert set(shipped_recipes()) == {"maverick-fp8-dynamic", "scout-fp8-block", "scout-w4a16-gptq"}
    assert resolve_recipe("recipes/scout-w4a16-gptq.yaml").name == "scout-w4a16-gptq.yaml"
    from llama4ctl.errors import PlanError

    with pytest.raises(PlanError, match="shipped recipes"):
        resolve_recipe("nope")


def test_fp8_recipe_gives_the_same_tensors_as_the_streaming_path(maverick_dir, tmp_path):
    run_oneshot(maverick_dir, tmp_path / "oneshot", "maverick-fp8-dynamic")
    quantize(plan_quantize(maverick_dir), tmp_path / "stream", device="cpu")
    a, b = tensors(tmp_path / "oneshot"), tensors(tmp_path / "stream")
    assert a.keys() == b.keys()
    assert all(torch.equal(bits(a[k]), bits(b[k])) for k in a)
    assert json.loads((tmp_path / "oneshot" / "llama4ctl.json").read_text())["complete"]
    assert not (tmp_path / ".oneshot.partial").exists()


def test_gptq_recipe_calibrates_and_loads(make_tiny_checkpoint, tmp_path):
    src = make_tiny_checkpoint(shape="scout", hidden_size=256, expert_intermediate_size=384,
                               mlp_intermediate_size=512, num_layers=1)
    res = run_oneshot(src, tmp_path / "gptq", "scout-w4a16-gptq", num_samples=8, max_seq_length=64)
    assert res["calibrated"]
    qc = json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized"
    assert any(k.endswith("experts.0.gate_proj.weight_packed") for k in tensors(tmp_path / "gptq"))
    ref_model, _ = load(src)
    model, info = load(tmp_path / "gptq")
    assert_loaded_cleanly(info)
    ref, got = logits(ref_model), logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < 0.3


def test_text_only_checkpoints_are_refused_with_a_reason(text_only_dir, tmp_path):
    from llama4ctl.errors import PlanError

    with pytest.raises(PlanError, match="text-only"):
        run_oneshot(text_only_dir, tmp_path / "x", "maverick-fp8-dynamic")
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()
