"""The numba CPU kernels (quant/fp8_cpu.py) equal the torch reference (quant/fp8.py) bit for bit on BF16,
including every E4M3 rounding tie and subnormal, and sum the same error statistic."""

import subprocess
import sys

import pytest
import torch

from llama4ctl.quant import fp8_cpu
from llama4ctl.quant.fp8 import ct_block, ct_channel, dequantize_block, dequantize_rowwise, fbgemm_rowwise

BF16_MAX = torch.finfo(torch.bfloat16).max


def _bits(t):
    t = t.contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _stats(w, restored):
    x = w.float()
    return float((restored - x).pow(2).sum()), float(x.pow(2).sum())


def _reference(variant, w):
    """(q, scale, err2, norm2) computed with torch as the formats' CUDA path does; q in the kernel's layout."""
    wt = w.t() if variant.endswith("_cols") else w
    if variant.startswith("fbgemm"):
        q, s = fbgemm_rowwise(wt, use_kernel=False)
        err2, norm2 = _stats(wt, dequantize_rowwise(q, s))
        return (q.t() if variant == "fbgemm_cols" else q), s, err2, norm2
    if variant.startswith("ct_channel"):
        q, s = ct_channel(wt)
        return (q, s, *_stats(wt, dequantize_rowwise(q, s)))
    q, s = ct_block(wt)
    return (q, s, *_stats(wt, dequantize_block(q, s)))


VARIANTS = ["fbgemm_rows", "fbgemm_cols", "ct_channel_rows", "ct_channel_cols", "ct_block_rows", "ct_block_cols"]


def _check(variant, w, *, stats=True):
    q, s, err2, norm2 = getattr(fp8_cpu, variant)(w)
    rq, rs, rerr2, rnorm2 = _reference(variant, w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == rq.shape, variant
    assert s.dtype == rs.dtype and s.shape == rs.shape, variant
    assert torch.equal(_bits(q), _bits(rq)), f"{variant}: {(_bits(q) != _bits(rq)).sum()} FP8 codes differ"
    assert torch.equal(_bits(s), _bits(rs)), f"{variant}: scales differ"
    if stats:  # float64 sums of the reference's float32 terms vs its float32 sums
        assert err2 == pytest.approx(rerr2, rel=1e-6, abs=1e-30), variant
        assert norm2 == pytest.approx(rnorm2, rel=1e-6, abs=1e-30), variant


def _random(rows, cols, seed):
    """Rows spanning 6 decades, with an all-zero row and column where there is room."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-4, 2, rows)[:, None]
    if rows > 2:
        w[1] = 0
    if cols > 2:
        w[:, 2] = 0
    return w.to(torch.bfloat16)


def _edge_cases():
    """Ties, subnormals, signed zeros, huge outliers and BF16 subnormals, at scale 1 (row absmax 448)."""
    w = torch.zeros(9, 24)
    ties = torch.tensor([1.0625, 1.1875, -1.0625, -1.1875, 2**-10, 3 * 2**-10, 5 * 2**-10, 2**-9 * 1.5,
                         15 * 2**-10, 0.01171875, 240.0, 464.0 / 2, -0.0, 2**-12, 2**-7 + 2**-11, 7 * 2**-10])
    w[0, : len(ties)] = ties
    w[0, -1] = 448.0  # scale exactly 1: every value above is an exact E4M3 tie or boundary
    w[1] = torch.linspace(-3, 3, 24) * 2**-10  # all E4M3 subnormals at scale 1
    w[1, 0] = 448.0
    w[2] = torch.linspace(-1, 1, 24)
    w[2, 5] = BF16_MAX  # a huge outlier: everything else underflows
    w[3] = torch.linspace(-1, 1, 24) * 1e-39  # BF16 subnormals only: subnormal scales
    w[4, 3] = -1e-40
    w[5] = -0.0  # all negative zeros
    w[6] = torch.linspace(-1, 1, 24) * 3.0e-36  # absmax / 448 rounds into BF16 subnormals
    w[7] = torch.linspace(-1, 1, 24) * 1e-3
    w[7, 0] = 448 * 3  # scale 3: BF16 rounding of x / 3 before the E4M3 rounding
    w[8] = torch.linspace(-1, 1, 24) * 5e-6  # fbgemm: the minimum scale clamps
    return w.to(torch.bfloat16)


def _all_bf16():
    """Every finite BF16 value once, [255, 256], in bit order (rows of one magnitude) and shuffled."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    w = bits.view(torch.bfloat16)
    w = w[torch.isfinite(w.float())].reshape(255, 256)
    perm = torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))
    return w, w.reshape(-1)[perm].reshape(255, 256)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (7, 13), (64, 192), (130, 257), (257, 130)])
def test_random_weights_are_bit_identical(variant, shape):
    _check(variant, _random(*shape, seed=sum(shape)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_ties_subnormals_zeros_and_outliers_are_bit_identical(variant):
    w = _edge_cases()
    _check(variant, w, stats=False)  # torch's float32 Σx² overflows on the BF16-max outlier; float64 does not
    _check(variant, w[[0, 1, 3, 4, 5, 6, 7, 8]])
    _check(variant, w.t().contiguous(), stats=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_finite_bf16_value_is_bit_identical(variant):
    for w in _all_bf16():
        _check(variant, w, stats=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_column_windows_of_a_slice_are_read_in_place(variant):
    """The experts' gate/up halves: w[:, :half] and w[:, half:] are strided views, quantized without a copy."""
    w = _random(136, 2 * 200, seed=5)
    for part in (w[:, :200], w[:, 200:], w[3:, 8:]):
        _check(variant, part)


@pytest.mark.parametrize("variant", VARIANTS)
def test_work_split_over_threads_gives_the_same_bits(variant, monkeypatch):
    monkeypatch.setattr(fp8_cpu, "MIN_TASK_ELEMENTS", 1)
    monkeypatch.setattr(fp8_cpu, "_cores", lambda: 5)
    for shape in [(300, 520), (520, 300), (64, 64), (9, 700)]:
        _check(variant, _random(*shape, seed=shape[0]))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("rows", [(64, 64), (48, 40), (13, 7)])  # 8-aligned (packed stores) and not
def test_fbgemm_rows_of_several_parts_equal_their_concatenation(transpose, rows, monkeypatch):
    monkeypatch.setattr(fp8_cpu, "MIN_TASK_ELEMENTS", 1)
    parts = [_random(r, 96, seed=r) for r in rows]
    q, s, err2, norm2 = fp8_cpu.fbgemm_rows(*parts, transpose=transpose)
    rq, rs, rerr2, rnorm2 = _reference("fbgemm_rows", torch.cat(parts))
    assert torch.equal(_bits(q), _bits(rq.t() if transpose else rq)) and torch.equal(s, rs)
    assert err2 == pytest.approx(rerr2, rel=1e-6) and norm2 == pytest.approx(rnorm2, rel=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_and_non_bf16_inputs_fall_back_to_the_reference(variant):
    w = _random(40, 24, seed=3)
    for bad in (float("inf"), float("nan")):
        v = w.clone()
        v[5, 6] = bad
        _check(variant, v, stats=False)
    _check(variant, _random(40, 24, seed=4).float())


def test_importing_the_module_does_not_import_numba():
    code = "import sys, llama4ctl.quant.fp8_cpu; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
