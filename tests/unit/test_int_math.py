"""int4/int8 math equals its loaders' own: compressed-tensors bit for bit (pack-quantized W4A16/W8A16), and
bitsandbytes' serialization exactly as Linear4bit / Linear8bitLt write it."""

import json

import pytest
import torch

from llama4ctl.quant.bnb import dequantize_4bit, layout4, quantize_4bit, quantize_int8
from llama4ctl.quant.int4 import dequantize, num_groups, pack_int32, quantize, quantize_packed, unpack_int32


def _ct_reference(w, bits, group_size):
    pytest.importorskip("llmcompressor")
    from compressed_tensors.compressors import compress_module
    from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme
    from llmcompressor.entrypoints.model_free.lifecycle import calibrate_weight, initialize_quantized_linear

    scheme = preset_name_to_scheme(f"W{bits}A16", ["Linear"])
    if group_size != 128:
        scheme.weights = QuantizationArgs(num_bits=bits, type="int", symmetric=True, group_size=group_size,
                                          strategy="group" if group_size > 0 else "channel")
    m = initialize_quantized_linear(w, scheme, "cpu")
    calibrate_weight(m)
    compress_module(m)
    return m.state_dict()


def _bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t


def _weight(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * torch.logspace(-4, 1, shape[0])[:, None]).to(dtype)
    w[3] = 0  # an all-zero row (and group) takes the dtype's eps as scale
    w[5, 7] = 1e4  # one outlier dominates its group
    w[6, : min(128, shape[1])] = 0
    return w


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [4, 8])
def test_group_quantization_is_bit_identical_to_compressed_tensors(bits, dtype):
    for shape, group_sizes in (((48, 256), (128, 32, -1)), ((257, 384), (128, -1)), ((40, 100), (-1,))):
        w = _weight(shape, dtype)
        for gs in group_sizes:
            ref = _ct_reference(w, bits, gs)
            assert set(ref) == {"weight_packed", "weight_scale", "weight_shape"}  # symmetric: no zero point
            q, s = quantize(w, bits, gs)
            packed = pack_int32(q, bits)
            assert s.dtype == ref["weight_scale"].dtype == dtype and s.shape == ref["weight_scale"].shape
            assert packed.dtype == torch.int32 and packed.shape == ref["weight_packed"].shape
            assert torch.equal(packed, ref["weight_packed"]), (shape, gs)
            assert torch.equal(_bits(s), _bits(ref["weight_scale"])), (shape, gs)
            assert ref["weight_shape"].tolist() == list(shape)


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip_and_dequantization_error(bits):
    w = _weight((64, 256), torch.bfloat16, seed=2)[8:]  # rows without the planted zeros/outlier
    q, s = quantize(w, bits, 128)
    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    assert q.dtype == torch.int8 and int(q.min()) >= lo and int(q.max()) <= hi
    packed = pack_int32(q, bits)
    assert packed.shape == (56, 256 * bits // 32)
    assert torch.equal(unpack_int32(packed, bits, 256), q)
    restored = dequantize(q, s)
    # round to nearest: every weight is within half a step (plus the scale's BF16 rounding) of the original
    step = s.float().repeat_interleave(128, dim=1)
    assert ((restored - w.float()).abs() <= step * 0.5 + step * 2**-7 * abs(hi) + 1e-12).all()
    _, _, err2, norm2 = quantize_packed(w, bits, 128)
    assert (err2 / norm2) ** 0.5 < (0.12 if bits == 4 else 0.01)


def test_int4_packing_is_low_nibble_first():
    q = torch.tensor([[-8, -7, 0, 1, 2, 3, 6, 7]], dtype=torch.int8)
    (word,) = pack_int32(q, 4)[0].tolist()
    assert word & 0xFFFFFFFF == 0xFEBA9810  # codes q + 8 = 0, 1, 8, 9, 10, 11, 14, 15, lowest nibble first


def test_a_group_size_that_does_not_divide_the_input_features_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        num_groups(100, 128)
    with pytest.raises(ValueError, match="does not divide"):
        quantize(torch.zeros(4, 96), 4, 64)
    assert num_groups(100, -1) == 1


@pytest.mark.parametrize("double_quant", [True, False])
def test_bnb_4bit_tensors_equal_what_linear4bit_saves(double_quant):
    bnb = pytest.importorskip("bitsandbytes")
    for shape in ((256, 384), (48, 64)):
        w = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.bfloat16)
        lin = bnb.nn.Linear4bit(shape[1], shape[0], bias=False, compute_dtype=torch.bfloat16,
                                compress_statistics=double_quant, quant_type="nf4", quant_storage=torch.uint8)
        lin.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, compress_statistics=double_quant,
                                       quant_type="nf4", quant_storage=torch.uint8, module=lin)
        ref = lin.to("cpu").state_dict()
        layout = layout4(shape, "BF16", "nf4", double_quant)
        mine = quantize_4bit(w, "nf4", double_quant)
        assert [f"weight{s}" for s, _, _ in layout] == list(ref)  # same keys, same order
        for (suffix, dtype, planned), t in zip(layout, mine, strict=True):
            r = ref[f"weight{suffix}"]
            assert tuple(t.shape) == planned and str(t.dtype) == str(r.dtype)
            if suffix.startswith(".quant_state"):
                raw, ref_raw = bytes(t.numpy()), bytes(r.numpy())
                assert raw.rstrip(b" ") == ref_raw and (raw == ref_raw) == (not double_quant)
                assert json.loads(raw) == json.loads(ref_raw)
            else:
                assert tuple(t.shape) == tuple(r.shape) and torch.equal(t, r), suffix
        restored = dequantize_4bit({f"weight{s}": t for (s, _, _), t in zip(layout, mine, strict=True)})
        assert restored.shape == shape and ((restored.float() - w.float()).norm() / w.float().norm()) < 0.12


def test_bnb_int8_equals_int8params():
    bnb = pytest.importorskip("bitsandbytes")
    w = (torch.randn(96, 64, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    lin = bnb.nn.Linear8bitLt(64, 96, bias=False, has_fp16_weights=False)
    lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    ref = lin.to("cpu").state_dict()
    cb, scb = quantize_int8(w)
    assert list(ref) == ["weight", "SCB", "weight_format"] and int(ref["weight_format"]) == 0
    assert torch.equal(cb, ref["weight"]) and torch.equal(scb, ref["SCB"]) and scb.dtype == torch.float32
