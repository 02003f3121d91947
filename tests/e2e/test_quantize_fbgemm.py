"""`quantize --fp8 --backend fbgemm`: exactly the tensors transformers' FbgemmFp8 modules expect, right math.

Loading an fbgemm_fp8 checkpoint needs CUDA (compute capability >= 9.0); on CPU the expected state dict is
taken from transformers' own module replacement run on the meta device.
"""

import json

import pytest
import torch

from llama4ctl.jobs import execute_plan, plan_quantize, plan_shard, quantize
from llama4ctl.quant.fp8 import dequantize_rowwise, fbgemm_rowwise, relative_error
from tests.e2e._load import bits, tensors


def expected_state_dict(path, modules_to_not_convert):
    """name -> (shape, dtype) of transformers' pre-quantized fbgemm_fp8 model, built on the meta device."""
    import transformers
    import transformers.integrations.fbgemm_fp8 as fb
    from transformers import AutoConfig, FbgemmFp8Config
    from transformers.quantizers.quantizer_fbgemm_fp8 import FbgemmFp8HfQuantizer

    config = AutoConfig.from_pretrained(path)
    config.quantization_config = None
    cls = getattr(transformers, config.architectures[0])
    original = fb.get_quantize_fp8_per_row
    fb.get_quantize_fp8_per_row = lambda: None  # the op is only looked up, not called, when building modules
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = cls(config)
            quantizer = FbgemmFp8HfQuantizer(FbgemmFp8Config(modules_to_not_convert=modules_to_not_convert),
                                             pre_quantized=True)
            quantizer.preprocess_model(model)
    finally:
        torch.set_default_dtype(old)
        fb.get_quantize_fp8_per_row = original
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fixture", ["scout_dir", "maverick_dir", "text_only_dir"])
def test_names_shapes_dtypes_are_what_transformers_fbgemm_modules_expect(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    quantize(plan_quantize(src, backend="fbgemm", max_shard_size="200KB"), tmp_path / "q", device="cpu")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fbgemm_fp8" and qc["activation_scale_ub"] == 1200.0
    got = {k: (tuple(v.shape), v.dtype) for k, v in tensors(tmp_path / "q").items()}
    assert got == expected_state_dict(tmp_path / "q", qc["modules_to_not_convert"])
    assert any(v[1] == torch.float8_e4m3fn and k.endswith("experts.gate_up_proj") for k, v in got.items())


def test_values_follow_the_reference_math_and_experts_dequantize_to_the_originals(maverick_dir, tmp_path):
    quantize(plan_quantize(maverick_dir, backend="fbgemm"), tmp_path / "q", device="cpu")
    a, q = tensors(maverick_dir), tensors(tmp_path / "q")
    for name, t in a.items():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            w, s = q[name], q[name + "_scale"]
            for e in range(t.shape[0]):
                ref_q, ref_s = fbgemm_rowwise(t[e].T)  # per output channel, as transformers quantizes
                assert torch.equal(bits(w[e].T.contiguous()), bits(ref_q)) and torch.equal(s[e].flatten(), ref_s)
                assert relative_error(t[e].T, dequantize_rowwise(w[e].T, s[e].flatten())) < 0.04
        elif name.endswith("_proj.weight") and "vision" not in name and "projector" not in name:
            ref_q, ref_s = fbgemm_rowwise(t)
            assert torch.equal(bits(q[name]), bits(ref_q)) and torch.equal(q[name + "_scale"].flatten(), ref_s)
        else:
            assert torch.equal(bits(q[name]), bits(t)), name  # kept modules are copied bit for bit


def test_per_expert_input_is_fused_back_to_the_same_output(scout_dir, tmp_path):
    execute_plan(plan_shard(scout_dir, experts="unfused"), tmp_path / "unf")
    quantize(plan_quantize(scout_dir, backend="fbgemm"), tmp_path / "a", device="cpu")
    quantize(plan_quantize(tmp_path / "unf", backend="fbgemm"), tmp_path / "b", device="cpu")
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_the_cpu_reference(scout_dir, tmp_path):
    quantize(plan_quantize(scout_dir, backend="fbgemm"), tmp_path / "cpu", device="cpu")
    quantize(plan_quantize(scout_dir, backend="fbgemm"), tmp_path / "gpu", device="cuda")
    a, b = tensors(tmp_path / "cpu"), tensors(tmp_path / "gpu")
    for k in a:
        if a[k].dtype == torch.float32:
            assert torch.allclose(a[k], b[k], rtol=1e-6, atol=0), k
        elif a[k].dtype == torch.float8_e4m3fn:
            differ = (bits(a[k]) != bits(b[k])).float().mean().item()
            assert differ < 1e-3, (k, differ)
        else:
            assert torch.equal(bits(a[k]), bits(b[k])), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="fbgemm_fp8 needs a CUDA GPU with compute capability >= 9.0")
def test_fbgemm_output_loads_and_generates_on_the_gpu(maverick_dir, tmp_path):
    pytest.importorskip("fbgemm_gpu")
    from llama4ctl.generate import compare_logits

    quantize(plan_quantize(maverick_dir, backend="fbgemm"), tmp_path / "q", device="cuda")
    result = compare_logits(maverick_dir, tmp_path / "q", device="cuda")
    assert "skipped" not in result, result
    assert result["rel_error"] < 0.15
