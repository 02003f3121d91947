"""FP8 math equals its loaders' own: compressed-tensors bit for bit, fbgemm's documented per-row rule."""

import pytest
import torch

from llama4ctl.quant.fp8 import (FBGEMM_MIN_SCALE, ct_block, ct_channel, dequantize_block, dequantize_rowwise,
                                 fbgemm_rowwise, relative_error)


def _ct_reference(w, scheme):
    pytest.importorskip("llmcompressor")
    from compressed_tensors.compressors import compress_module
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.entrypoints.model_free.lifecycle import calibrate_weight, initialize_quantized_linear

    m = initialize_quantized_linear(w, preset_name_to_scheme(scheme, ["Linear"]), "cpu")
    calibrate_weight(m)
    compress_module(m)
    sd = m.state_dict()
    return sd["weight"], sd["weight_scale"]


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(48, 64), (257, 129)])
def test_compressed_tensors_math_is_bit_identical_to_the_library(dtype, shape):
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(shape, generator=g) * torch.logspace(-4, 1, shape[0])[:, None]).to(dtype)
    w[3] = 0  # an all-zero row takes the dtype's eps as scale
    w[5, 7] = 1e4
    for scheme, fn in (("FP8_DYNAMIC", ct_channel), ("FP8_BLOCK", ct_block)):
        q, s = fn(w)
        rq, rs = _ct_reference(w, scheme)
        assert q.dtype == torch.float8_e4m3fn and s.dtype == rs.dtype == dtype
        assert s.shape == rs.shape
        assert torch.equal(_bits(q), _bits(rq)) and torch.equal(_bits(s), _bits(rs)), scheme


def test_fbgemm_rowwise_follows_the_kernel_rule():
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(64, 96, generator=g) * 0.02).to(torch.bfloat16)
    w[0] = 0
    q, s = fbgemm_rowwise(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (64,)
    expected = (w.float().abs().amax(1) / 448).clamp(min=FBGEMM_MIN_SCALE)
    assert torch.equal(s, expected)
    assert q.float().abs().amax(1)[1:].eq(448).all()  # each row's absmax maps to the FP8 maximum
    assert relative_error(w, dequantize_rowwise(q, s)) < 0.04


def test_block_dequantization_inverts_quantization():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 200, generator=g).to(torch.bfloat16)
    q, s = ct_block(w)
    assert s.shape == (3, 2)
    assert relative_error(w, dequantize_block(q, s)) < 0.04
