"""Dense FP8 Linears (fbgemm_fp8 and compressed-tensors layouts) become BF16 Linears computing the dequantized
weight; experts, BF16 layers and unknown scale layouts are left alone or refused."""

import pytest
import torch
from torch import nn

from llama4ctl.dense_fp8 import dense_to_bf16, dequantize_part, is_fp8_dense
from llama4ctl.quant.fp8 import ct_block, ct_channel, fbgemm_rowwise


def _fbgemm_linear(w, bias):
    from transformers.integrations.fbgemm_fp8 import FbgemmFp8Linear

    m = FbgemmFp8Linear(w.shape[1], w.shape[0], bias=bias is not None)
    q, s = fbgemm_rowwise(w)
    m.weight, m.weight_scale = nn.Parameter(q, requires_grad=False), nn.Parameter(s[:, None], requires_grad=False)
    if bias is not None:
        m.bias = nn.Parameter(bias.float(), requires_grad=False)
    return m, q.float() * s[:, None]


def _ct_linear(w, block):
    q, s = ct_block(w) if block else ct_channel(w)
    m = nn.Linear(w.shape[1], w.shape[0], bias=False)
    m.weight = nn.Parameter(q, requires_grad=False)
    m.weight_scale = nn.Parameter(s, requires_grad=False)
    full = s.float().repeat_interleave(128, 0).repeat_interleave(128, 1)[: w.shape[0], : w.shape[1]] if block \
        else s.float()
    return m, q.float() * full


def test_fp8_dense_layers_become_bf16_linears_with_the_dequantized_weight():
    torch.manual_seed(0)
    w1, w2, w3 = torch.randn(48, 40), torch.randn(200, 136).bfloat16(), torch.randn(24, 48).bfloat16()
    bias = torch.randn(48)
    fb, fb_ref = _fbgemm_linear(w1, bias)
    ch, ch_ref = _ct_linear(w3, block=False)
    bl, bl_ref = _ct_linear(w2, block=True)
    kept = nn.Linear(8, 8).bfloat16()
    model = nn.ModuleDict({"fb": fb, "ch": ch, "bl": bl, "kept": kept})
    assert [is_fp8_dense(m) for m in (fb, ch, bl, kept)] == [True, True, True, False]

    info = dense_to_bf16(model)
    assert info["layers"] == 3 and info["bytes_added"] > 0
    assert model["kept"] is kept
    for name, ref, b in (("fb", fb_ref, bias), ("ch", ch_ref, None), ("bl", bl_ref, None)):
        m = model[name]
        assert type(m) is nn.Linear and m.weight.dtype == torch.bfloat16 and not hasattr(m, "weight_scale")
        assert torch.equal(m.weight, ref.bfloat16())
        x = torch.randn(3, m.in_features, dtype=torch.bfloat16)
        expected = x.float() @ ref.bfloat16().float().T + (0 if b is None else b.bfloat16().float())
        assert torch.allclose(m(x).float(), expected, rtol=2e-2, atol=2e-2)


def test_an_unknown_scale_layout_is_refused():
    m = nn.Linear(64, 32, bias=False)
    m.weight = nn.Parameter(torch.zeros(32, 64).to(torch.float8_e4m3fn), requires_grad=False)
    m.weight_scale = nn.Parameter(torch.ones(32, 2), requires_grad=False)  # group-wise: not a known layout
    with pytest.raises(ValueError, match="scale shape"):
        dense_to_bf16(nn.ModuleDict({"m": m}))


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("split", ["rows", "cols"])
def test_a_tensor_parallel_shard_dequantizes_like_its_part_of_the_whole_weight(block, split):
    """Each rank dequantizes only its shard with the whole weight's scale (per row, or 128x128 blocks that a
    shard boundary may cut through): the shards put back together equal the whole weight dequantized."""
    torch.manual_seed(1)
    w = torch.randn(300, 200)
    _, whole = _ct_linear(w, block=block)
    q, s = ct_block(w) if block else ct_channel(w)
    dim = 0 if split == "rows" else 1
    parts = []
    for start, size in ((0, 100), (100, 90), (190, q.shape[dim] - 190)):  # uneven, not on block boundaries
        part = q.narrow(dim, start, size)
        offsets = (start, 0) if dim == 0 else (0, start)
        parts.append(dequantize_part(part, s, offsets, tuple(q.shape)))
    assert torch.equal(torch.cat(parts, dim), whole.bfloat16())
