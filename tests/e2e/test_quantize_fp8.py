"""`quantize --fp8`: compressed-tensors loads and runs in transformers, experts are right, kept modules exact."""

import json

import pytest
import torch

from llama4ctl.jobs import plan_quantize, quantize
from llama4ctl.quant.fp8 import dequantize_block, dequantize_rowwise, relative_error
from tests.e2e._load import assert_loaded_cleanly, bits, load, logits, tensors

KEPT_MARKERS = ("router", "vision_model", "multi_modal_projector", "lm_head", "embed_tokens", "norm")


def _quantize(src, dst, **kw):
    return quantize(plan_quantize(src, **{"max_shard_size": "200KB", **kw}), dst, device="cpu", workers=2)


@pytest.mark.parametrize("fixture", ["scout_dir", "maverick_dir", "text_only_dir"])
def test_compressed_tensors_fp8_dynamic_loads_runs_and_stays_close(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    res = _quantize(src, tmp_path / "q")
    assert res["shards_written"] > 1
    ref_model, _ = load(src)
    model, info = load(tmp_path / "q")
    assert_loaded_cleanly(info)
    expert = next(m for n, m in model.named_modules() if n.endswith("experts.0.gate_proj"))
    assert expert.weight.dtype == torch.float8_e4m3fn
    ref, got = logits(ref_model), logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < 0.15
    out = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_routed_experts_dequantize_to_the_original_expert_weights(maverick_dir, tmp_path):
    _quantize(maverick_dir, tmp_path / "q")
    a, q = tensors(maverick_dir), tensors(tmp_path / "q")
    name = next(k for k in a if k.endswith("experts.gate_up_proj"))
    prefix = name[: -len("gate_up_proj")]
    gu, down = a[name], a[prefix + "down_proj"]
    inter = gu.shape[-1] // 2
    for e in range(gu.shape[0]):
        for proj, original in (("gate_proj", gu[e][:, :inter].T), ("up_proj", gu[e][:, inter:].T),
                               ("down_proj", down[e].T)):
            w, s = q[f"{prefix}{e}.{proj}.weight"], q[f"{prefix}{e}.{proj}.weight_scale"]
            assert w.shape == original.shape and s.shape == (original.shape[0], 1) and s.dtype == torch.bfloat16
            assert relative_error(original, dequantize_rowwise(w, s)) < 0.04, (e, proj)


def test_kept_modules_are_bit_identical_and_listed_in_ignore(scout_dir, tmp_path):
    _quantize(scout_dir, tmp_path / "q")
    a, q = tensors(scout_dir), tensors(tmp_path / "q")
    kept = [k for k in a if any(m in k for m in KEPT_MARKERS)]
    assert kept
    for k in kept:
        assert torch.equal(bits(a[k]), bits(q[k])), k
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"
    assert qc["quantization_status"] == "compressed"
    assert qc["config_groups"]["group_0"]["targets"] == ["Linear"]
    assert "language_model.lm_head" in qc["ignore"]
    assert any(i.startswith("re:vision_model") for i in qc["ignore"])
    assert all(f"language_model.model.layers.{i}.feed_forward.router" in qc["ignore"] for i in range(4))
    report = json.loads((tmp_path / "q" / "quantization_report.json").read_text())
    assert report["scheme"] == "FP8_DYNAMIC" and report["components"]["routed_experts"]["max_rel_error"] < 0.05
    assert set(report["components"]) == {"attention", "shared_expert", "routed_experts"}


def test_experts_only_quantizes_only_the_routed_experts(maverick_dir, tmp_path):
    _quantize(maverick_dir, tmp_path / "q", experts_only=True)
    q = tensors(tmp_path / "q")
    fp8 = {k for k, v in q.items() if v.dtype == torch.float8_e4m3fn}
    assert fp8 and all(".feed_forward.experts." in k for k in fp8)
    model, info = load(tmp_path / "q")
    assert_loaded_cleanly(info)


def test_ignore_patterns_keep_matching_modules(scout_dir, tmp_path):
    _quantize(scout_dir, tmp_path / "q", ignore=[r"re:.*layers\.0\.self_attn\..*"])
    q = tensors(tmp_path / "q")
    assert q["language_model.model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert q["language_model.model.layers.1.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    _, info = load(tmp_path / "q")
    assert_loaded_cleanly(info)


def test_splitting_a_vllm_fused_group_is_refused(scout_dir):
    from llama4ctl.errors import PlanError

    with pytest.raises(PlanError, match="quantized alike"):
        plan_quantize(scout_dir, ignore=[r"re:.*\.q_proj"])


def test_fp8_block_on_a_128_aligned_model_loads_and_runs(make_tiny_checkpoint, tmp_path):
    src = make_tiny_checkpoint(shape="scout", hidden_size=256, expert_intermediate_size=384,
                               mlp_intermediate_size=512, num_layers=2, vision=False)
    _quantize(src, tmp_path / "q", scheme="FP8_BLOCK")
    a, q = tensors(src), tensors(tmp_path / "q")
    name = next(k for k in a if k.endswith("experts.gate_up_proj"))
    prefix = name[: -len("gate_up_proj")]
    w, s = q[f"{prefix}1.up_proj.weight"], q[f"{prefix}1.up_proj.weight_scale"]
    assert s.shape == (3, 2)
    assert relative_error(a[name][1][:, 384:].T, dequantize_block(w, s)) < 0.04
    ref_model, _ = load(src)
    model, info = load(tmp_path / "q")
    assert_loaded_cleanly(info)
    ref, got = logits(ref_model), logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < 0.15


def test_workers_and_shard_sizes_do_not_change_the_tensors(scout_dir, tmp_path):
    quantize(plan_quantize(scout_dir, max_shard_size="5GB"), tmp_path / "one", device="cpu", workers=1)
    _quantize(scout_dir, tmp_path / "many")
    a, b = tensors(tmp_path / "one"), tensors(tmp_path / "many")
    assert a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)
