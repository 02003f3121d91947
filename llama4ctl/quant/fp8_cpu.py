"""FP8 quantization on CPU in one pass per row: numba kernels bit-identical to llama4ctl.quant.fp8 for BF16.

The torch reference (quant/fp8.py) walks memory ~8 times per weight (float(), abs, amax, div, clamp, cast, then
dequantize, diff, square, sum for the error report). These kernels read each BF16 row once into cache, take its
absmax, then quantize it and sum the error while it is still there. They reproduce the reference exactly:

- BF16 arrives as its uint16 bits; widening to float32 is a 16-bit shift.
- fbgemm: float32 math, scale = max(absmax / 448, 1 / (448·512)), q = e4m3(clamp(x / scale, ±448)).
- compressed-tensors: BF16 math as torch does it (float32 op, then round to nearest even into BF16):
  scale = bf16(absmax / 448), 0 -> BF16 eps (2^-7); q = e4m3(clamp(bf16(x / scale), ±448)).
- float32/BF16 -> float8_e4m3fn as c10's fp8e4m3fn_from_fp32_value: round to nearest even (done by the FPU:
  (a + c) − c with c a power of two whose ulp is E4M3's), subnormals, signed zero. No integer rounding code,
  so LLVM vectorizes the whole row loop.
Non-finite inputs (and non-BF16 dtypes) fall back to the torch reference, which defines what NaN/Inf become.

Public functions (torch tensors in and out; BF16 input is read in place, no copy; q is float8_e4m3fn):

  fbgemm_rows(*parts, transpose=False) -> (q, scale f32 [R], err2, norm2)
      == fbgemm_rowwise(torch.cat(parts)); q is [R, C], or [C, R] (q.T, contiguous) with transpose=True.
  fbgemm_cols(w) -> (q [R, C], scale f32 [C], err2, norm2)
      w is an input-major [in, out] slice; == fbgemm_rowwise(w.T) with q kept in w's layout (transformers'
      fused-expert storage), so no transpose is ever made.
  ct_channel_rows(w) -> (q [R, C], scale bf16 [R, 1], err2, norm2)          == ct_channel(w)
  ct_channel_cols(w) -> (q [C, R], scale bf16 [C, 1], err2, norm2)          == ct_channel(w.T)
  ct_block_rows(w)   -> (q [R, C], scale bf16 [⌈R/128⌉, ⌈C/128⌉], ...)     == ct_block(w)
  ct_block_cols(w)   -> (q [C, R], scale bf16 [⌈C/128⌉, ⌈R/128⌉], ...)     == ct_block(w.T)
      The *_cols variants take an input-major slice (a fused expert [in, out], or a column window of one such
      as w[:, :half]) and write the transposed FP8 result directly (8 rows packed per 64-bit store).

err2 = Σ(dequant(q) − x)² and norm2 = Σx² in float64 (the reference sums the same float32 terms in float32).
Inputs must be 2-D with a unit stride along the last dimension (any row stride: column windows are free);
anything else is made contiguous first.

Large tensors are split (by rows, columns or 128-row blocks) over a shared thread pool, one thread per CPU;
the calling thread runs one piece itself. The kernels release the GIL (nogil) and are compiled on first use
(numba is imported then, not at import time; cache=True keeps the machine code between runs).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from llama4ctl.quant.fp8 import FBGEMM_MIN_SCALE

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = None  # numpy, bound by _jit(): the kernels read it as a global

BLOCK = 128
GROUP = 64  # rows quantized before a transposed write: one cache line per output row (divides BLOCK)
MIN_TASK_ELEMENTS = 1 << 18  # a piece of work worth a thread hand-off (~0.3 ms; the hand-off is ~0.03 ms)

Result = tuple["torch.Tensor", "torch.Tensor", float, float]

# ------------------------------------------------------------------------------------------------ kernels
# Plain Python until _jit() wraps them with numba.njit (all of them reference each other through these globals).

_NUMBA: dict[str, bool] = {}  # function name -> fastmath
_jit_lock = threading.Lock()
_jitted = False


def _numba(fastmath: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        _NUMBA[fn.__name__] = fastmath
        return fn

    return mark


def _jit() -> None:
    global _jitted
    with _jit_lock:
        if _jitted:
            return
        import numba
        import numpy

        g = globals()
        g["np"] = numpy
        for name, fastmath in _NUMBA.items():
            g[name] = numba.njit(nogil=True, cache=True, fastmath=fastmath, error_model="numpy")(g[name])
        _jitted = True


@_numba()
def _f32(b):  # type: ignore[no-untyped-def]
    """BF16 bits -> float32."""
    return np.uint32(np.uint32(b) << 16).view(np.float32)


@_numba()
def _bf16_round(f):  # type: ignore[no-untyped-def]
    """float32 -> nearest BF16 (ties to even), as float32: c10::round_to_nearest_even for any finite f."""
    b = np.int64(np.float32(f).view(np.uint32))
    return np.uint32((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).view(np.float32)


@_numba()
def _round_abs(a, exp_shift, c_min):  # type: ignore[no-untyped-def]
    """Non-negative float32 a rounded to fewer mantissa bits, ties to even, by the FPU: (a + c) − c, where
    c = 2^(exponent(a) + exp_shift) is a power of two whose ulp is the target's ulp at a (c_min: subnormals)."""
    c = np.uint32(max((np.float32(a).view(np.uint32) & np.uint32(0x7F800000)) + np.uint32(exp_shift),
                      np.uint32(c_min))).view(np.float32)
    return (a + c) - c


@_numba()
def _quantize_one(xb, s, ct):  # type: ignore[no-untyped-def]
    """BF16 bits xb and scale s -> (float8_e4m3fn bits of x / s, dequantized − x).

    Clamping |x / s| to 448 before rounding equals clamping after it (rounding is monotonic and 448 is exact in
    both formats) and keeps every value small enough for _round_abs. ct rounds to BF16 first, as torch's BF16
    division does. E4M3 keeps 3 mantissa bits down to 2^-6 and steps by 2^-9 below (c = 2^14). The code of a
    normal value is its float32 exponent rebiased (127 -> 7) over its top 3 mantissa bits; a subnormal's is its
    count of 2^-9 steps. Same bits as c10's fp8e4m3fn_from_fp32_value (round to nearest even, signed zero).
    """
    xf = _f32(xb)
    a = min(abs(xf / s), np.float32(448.0))
    if ct:
        a = _round_abs(a, 16 << 23, 17 << 23)  # to BF16: 7 mantissa bits; subnormal step 2^-133
    a = _round_abs(a, 20 << 23, 141 << 23)  # to E4M3: 3 mantissa bits; subnormal step 2^-9
    if a < np.float32(2.0**-6):
        code = np.uint32(a * np.float32(512.0))
    else:
        code = (np.float32(a).view(np.uint32) >> 20) - (120 << 3)
    return np.uint8(code | ((xb >> 8) & 0x80)), math.copysign(a * s, xf) - xf


@_numba()
def _fbgemm_scale(m):  # type: ignore[no-untyped-def]
    """Row absmax (BF16 bits) -> fbgemm scale, float32."""
    return max(_f32(m) / np.float32(448.0), np.float32(FBGEMM_MIN_SCALE))


@_numba()
def _ct_scale(m):  # type: ignore[no-untyped-def]
    """absmax (BF16 bits) -> compressed-tensors BF16 scale (0 -> BF16 eps), as float32."""
    s = _bf16_round(_f32(m) / np.float32(448.0))
    return s if s != 0 else np.float32(0.0078125)


@_numba()
def _absmax(x):  # type: ignore[no-untyped-def]
    m = 0
    for i in range(x.shape[0]):
        m = max(m, x[i] & 0x7FFF)
    return m


@_numba()
def _colmax(x, m):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        m[i] = max(m[i], x[i] & 0x7FFF)


@_numba()
def _quantize(x, s, ct, q, d):  # type: ignore[no-untyped-def]
    """q[i] = e4m3(x[i] / s), d[i] = dequant - x[i]; one scale (float32 value; BF16-exact when ct)."""
    for i in range(x.shape[0]):
        q[i], d[i] = _quantize_one(x[i], s, ct)


@_numba()
def _quantize_cols(x, s, ct, q, d):  # type: ignore[no-untyped-def]
    """As _quantize with one scale per element: s[i]."""
    for i in range(x.shape[0]):
        q[i], d[i] = _quantize_one(x[i], s[i], ct)


@_numba(fastmath=True)
def _sumsq(d, x):  # type: ignore[no-untyped-def]
    """(Σd², Σx²) in float64 (fastmath only reorders these sums)."""
    e = 0.0
    t = 0.0
    for i in range(d.shape[0]):
        di = np.float64(d[i])
        xi = np.float64(_f32(x[i]))
        e += di * di
        t += xi * xi
    return e, t


@_numba()
def _pack8(t0, t1, t2, t3, t4, t5, t6, t7, out):  # type: ignore[no-untyped-def]
    """out[i] = the bytes t0[i] .. t7[i] as one little-endian uint64 (8 rows of a column, ready to store)."""
    for i in range(out.shape[0]):
        out[i] = (np.uint64(t0[i]) | (np.uint64(t1[i]) << np.uint64(8)) | (np.uint64(t2[i]) << np.uint64(16))
                  | (np.uint64(t3[i]) << np.uint64(24)) | (np.uint64(t4[i]) << np.uint64(32))
                  | (np.uint64(t5[i]) << np.uint64(40)) | (np.uint64(t6[i]) << np.uint64(48))
                  | (np.uint64(t7[i]) << np.uint64(56)))


@_numba()
def _emit_transposed(tile, pk, k, r, c, n, q, qo, qs):  # type: ignore[no-untyped-def]
    """tile[j, i] (rows r+j < r+k, columns c+i < c+n) -> q[qo + (c+i)·qs + r+j]: a transposed write.

    With aligned output, each run of 8 rows is packed column-wise into uint64s (vectorized, into pk), then each
    output row gets its k bytes as consecutive 8-byte stores (a whole cache line for k = 64).
    """
    p = qo + r
    k8 = k - k % 8 if p % 8 == 0 and qs % 8 == 0 and q.size % 8 == 0 else 0
    if k8:
        for g in range(k8 // 8):
            j = 8 * g
            _pack8(tile[j], tile[j + 1], tile[j + 2], tile[j + 3], tile[j + 4], tile[j + 5], tile[j + 6],
                   tile[j + 7], pk[g, :n])
        q64 = q.view(np.uint64)
        for i in range(n):
            o = ((c + i) * qs + p) >> 3
            for g in range(k8 // 8):
                q64[o + g] = pk[g, i]
    for j in range(k8, k):
        for i in range(n):
            q[(c + i) * qs + p + j] = tile[j, i]


# Every kernel reads the BF16 view x[xo + r·xs + c] (r < R, c < C) and writes element (r, c) of q to
# q[qo + r·qs + c], or to q[qo + c·qs + r] when qt (transposed). Each returns (err2, norm2, finite); on a
# non-finite absmax it stops early and the caller falls back to the torch reference.


@_numba()
def _rows_kernel(x, xo, xs, C, r0, r1, ct, q, qt, qo, qs, scale):  # type: ignore[no-untyped-def]
    """Rows r0..r1, one scale per row: fbgemm (float32 scale) or, if ct, compressed-tensors channel."""
    d = np.empty(C, np.float32)
    tile = np.empty((GROUP, C if qt else 0), np.uint8)
    pk = np.empty((GROUP // 8, C if qt else 0), np.uint64)
    err2 = 0.0
    norm2 = 0.0
    for g in range(r0, r1, GROUP):
        k = min(GROUP, r1 - g)
        for j in range(k):
            r = g + j
            xr = x[xo + r * xs : xo + r * xs + C]
            m = _absmax(xr)
            if m >= 0x7F80:
                return err2, norm2, False
            s = _ct_scale(m) if ct else _fbgemm_scale(m)
            scale[r] = s
            _quantize(xr, s, ct, tile[j] if qt else q[qo + r * qs : qo + r * qs + C], d)
            e, t = _sumsq(d, xr)
            err2 += e
            norm2 += t
        if qt:
            _emit_transposed(tile, pk, k, g, 0, C, q, qo, qs)
    return err2, norm2, True


@_numba()
def _cols_kernel(x, xo, xs, R, c0, c1, ct, q, qt, qo, qs, scale):  # type: ignore[no-untyped-def]
    """Columns c0..c1 of all R rows, one scale per column (per output channel of an input-major slice)."""
    n = c1 - c0
    m = np.zeros(n, np.uint16)
    for r in range(R):
        _colmax(x[xo + r * xs + c0 : xo + r * xs + c1], m)
    s = np.empty(n, np.float32)
    for i in range(n):
        if m[i] >= 0x7F80:
            return 0.0, 0.0, False
        s[i] = _ct_scale(m[i]) if ct else _fbgemm_scale(m[i])
        scale[c0 + i] = s[i]
    d = np.empty(n, np.float32)
    tile = np.empty((GROUP, n if qt else 0), np.uint8)
    pk = np.empty((GROUP // 8, n if qt else 0), np.uint64)
    err2 = 0.0
    norm2 = 0.0
    for g in range(0, R, GROUP):
        k = min(GROUP, R - g)
        for j in range(k):
            r = g + j
            xr = x[xo + r * xs + c0 : xo + r * xs + c1]
            _quantize_cols(xr, s, ct, tile[j] if qt else q[qo + r * qs + c0 : qo + r * qs + c1], d)
            e, t = _sumsq(d, xr)
            err2 += e
            norm2 += t
        if qt:
            _emit_transposed(tile, pk, k, g, c0, n, q, qo, qs)
    return err2, norm2, True


@_numba()
def _blocks_kernel(x, xo, xs, R, C, b0, b1, q, qt, qo, qs, scale):  # type: ignore[no-untyped-def]
    """Row blocks b0..b1 of compressed-tensors 128×128 block quantization; scale is [⌈R/128⌉, ⌈C/128⌉] flat.

    Edge blocks take their absmax over the real elements only (the reference's zero padding never raises it).
    """
    nb = (C + 127) // 128
    m = np.empty(C, np.uint16)
    s = np.empty(nb, np.float32)
    d = np.empty(C, np.float32)
    tile = np.empty((GROUP, C if qt else 0), np.uint8)
    pk = np.empty((GROUP // 8, C if qt else 0), np.uint64)
    err2 = 0.0
    norm2 = 0.0
    for b in range(b0, b1):
        ra, rb = b * 128, min(b * 128 + 128, R)
        m[:] = 0
        for r in range(ra, rb):
            _colmax(x[xo + r * xs : xo + r * xs + C], m)
        for j in range(nb):
            bm = _absmax(m[j * 128 : min(j * 128 + 128, C)])
            if bm >= 0x7F80:
                return err2, norm2, False
            s[j] = _ct_scale(bm)
            scale[b * nb + j] = s[j]
        for g in range(ra, rb, GROUP):
            k = min(GROUP, rb - g)
            for jj in range(k):
                r = g + jj
                xr = x[xo + r * xs : xo + r * xs + C]
                qr = tile[jj] if qt else q[qo + r * qs : qo + r * qs + C]
                for j in range(nb):
                    a, z = j * 128, min(j * 128 + 128, C)
                    _quantize(xr[a:z], s[j], True, qr[a:z], d[a:z])
                e, t = _sumsq(d, xr)
                err2 += e
                norm2 += t
            if qt:
                _emit_transposed(tile, pk, k, g, 0, C, q, qo, qs)
    return err2, norm2, True


# ------------------------------------------------------------------------------------------------ threads

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _cores() -> int:
    """CPUs this process may run on (taskset/affinity aware), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_cores(), thread_name_prefix="fp8-cpu")
        return _pool


def _split(n: int, unit: int, work: int) -> list[tuple[int, int]]:
    """[0, n) in pieces of whole `unit`s, one per core at most, each worth >= MIN_TASK_ELEMENTS (work = total)."""
    units = -(-n // unit)
    pieces = max(1, min(_cores(), units, work // MIN_TASK_ELEMENTS))
    bounds = [min(n, (units * i // pieces) * unit) for i in range(pieces + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _run(kernel: Callable[..., tuple[float, float, bool]], calls: list[tuple[Any, ...]]) -> tuple[float, float, bool]:
    """Run kernel(*args) for every args (the first on this thread) and add up (err2, norm2, finite)."""
    futures = [_executor().submit(kernel, *a) for a in calls[1:]]
    results = [kernel(*calls[0])] + [f.result() for f in futures]
    return sum(r[0] for r in results), sum(r[1] for r in results), all(r[2] for r in results)


# ------------------------------------------------------------------------------------------------ wrappers


def _bf16_view(w: torch.Tensor) -> tuple[np.ndarray, int, int, int]:
    """(flat uint16 numpy view over w's span, row stride, rows, cols): no copy when w's last stride is 1."""
    import torch

    w = w.detach()
    if w.shape[1] > 1 and w.stride(1) != 1:
        w = w.contiguous()
    rows, cols = w.shape
    xs = w.stride(0) if rows > 1 else cols
    flat = w.as_strided(((rows - 1) * xs + cols,), (1,))
    return flat.view(torch.uint16).numpy(), xs, rows, cols


def _fast(*ws: torch.Tensor) -> bool:
    import torch

    return all(w.dtype == torch.bfloat16 and w.dim() == 2 and w.numel() > 0 and w.device.type == "cpu"
               for w in ws)


def _fp8(q: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(q).view(torch.float8_e4m3fn)


def _bf16(scale: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(scale).to(torch.bfloat16)  # exact: the kernels only produce BF16 values


def _stats(w: torch.Tensor, restored: torch.Tensor) -> tuple[float, float]:
    """The reference statistic, for the fallbacks."""
    x = w.float()
    return float((restored - x).pow(2).sum()), float(x.pow(2).sum())


def _rowwise(parts: Sequence[torch.Tensor], ct: bool, transpose: bool) -> tuple[Any, Any, float, float] | None:
    """One scale per row of torch.cat(parts): (q uint8 [R, C] or [C, R], scale float32 [R], err2, norm2)."""
    import numpy as np

    cols = parts[0].shape[1]
    if not (_fast(*parts) and all(p.shape[1] == cols for p in parts)):
        return None
    _jit()
    rows = sum(p.shape[0] for p in parts)
    q = np.empty((cols, rows) if transpose else (rows, cols), np.uint8)
    scale = np.empty(rows, np.float32)
    calls, r0 = [], 0
    for p in parts:
        x, xs, n, _ = _bf16_view(p)
        qo, qs = (r0, rows) if transpose else (r0 * cols, cols)
        calls += [(x, 0, xs, cols, a, b, ct, q.reshape(-1), transpose, qo, qs, scale[r0 : r0 + n])
                  for a, b in _split(n, 64, n * cols)]
        r0 += n
    err2, norm2, finite = _run(_rows_kernel, calls)
    return (q, scale, err2, norm2) if finite else None


def _colwise(w: torch.Tensor, ct: bool, transpose: bool) -> tuple[Any, Any, float, float] | None:
    """One scale per column of w [R, C]: (q uint8 [R, C] or [C, R], scale float32 [C], err2, norm2)."""
    import numpy as np

    if not _fast(w):
        return None
    _jit()
    x, xs, rows, cols = _bf16_view(w)
    q = np.empty((cols, rows) if transpose else (rows, cols), np.uint8)
    scale = np.empty(cols, np.float32)
    qs = rows if transpose else cols
    calls = [(x, 0, xs, rows, a, b, ct, q.reshape(-1), transpose, 0, qs, scale)
             for a, b in _split(cols, 64, rows * cols)]
    err2, norm2, finite = _run(_cols_kernel, calls)
    return (q, scale, err2, norm2) if finite else None


def _blockwise(w: torch.Tensor, transpose: bool) -> tuple[Any, Any, float, float] | None:
    """128×128 blocks of w [R, C]: (q uint8 [R, C] or [C, R], scale f32 [⌈R/128⌉, ⌈C/128⌉], err2, norm2)."""
    import numpy as np

    if not _fast(w):
        return None
    _jit()
    x, xs, rows, cols = _bf16_view(w)
    q = np.empty((cols, rows) if transpose else (rows, cols), np.uint8)
    scale = np.empty((-(-rows // BLOCK), -(-cols // BLOCK)), np.float32)
    qs = rows if transpose else cols
    calls = [(x, 0, xs, rows, cols, a // BLOCK, -(-b // BLOCK), q.reshape(-1), transpose, 0, qs, scale.reshape(-1))
             for a, b in _split(rows, BLOCK, rows * cols)]
    err2, norm2, finite = _run(_blocks_kernel, calls)
    return (q, scale, err2, norm2) if finite else None


def fbgemm_rows(*parts: torch.Tensor, transpose: bool = False) -> Result:
    """fbgemm per-row FP8 of torch.cat(parts) (each [R_i, C]), without concatenating.

    (q float8_e4m3fn [R, C], or [C, R] with transpose=True; scale float32 [R]; err2; norm2).
    """
    import torch

    fast = _rowwise(parts, False, transpose)
    if fast is not None:
        q, scale, err2, norm2 = fast
        return _fp8(q), torch.from_numpy(scale), err2, norm2
    from llama4ctl.quant.fp8 import dequantize_rowwise, fbgemm_rowwise

    w = torch.cat(parts) if len(parts) > 1 else parts[0]
    qr, s = fbgemm_rowwise(w, use_kernel=False)
    return (qr.t().contiguous() if transpose else qr), s, *_stats(w, dequantize_rowwise(qr, s))


def fbgemm_cols(w: torch.Tensor) -> Result:
    """fbgemm FP8 per column of an input-major slice w [in, out] (one scale per output channel, as transformers
    quantizes fused experts): (q [in, out] in w's layout, scale float32 [out], err2, norm2)."""
    import torch

    fast = _colwise(w, False, False)
    if fast is not None:
        q, scale, err2, norm2 = fast
        return _fp8(q), torch.from_numpy(scale), err2, norm2
    from llama4ctl.quant.fp8 import dequantize_rowwise, fbgemm_rowwise

    qr, s = fbgemm_rowwise(w.t(), use_kernel=False)
    return qr.t().contiguous(), s, *_stats(w.t(), dequantize_rowwise(qr, s))


def ct_channel_rows(w: torch.Tensor) -> Result:
    """compressed-tensors FP8_DYNAMIC weight of w [out, in]: (q [out, in], scale bf16 [out, 1], err2, norm2)."""
    fast = _rowwise((w,), True, False)
    if fast is not None:
        q, scale, err2, norm2 = fast
        return _fp8(q), _bf16(scale).reshape(-1, 1), err2, norm2
    return _ct_reference(w, block=False)


def ct_channel_cols(w: torch.Tensor) -> Result:
    """FP8_DYNAMIC of w.T for an input-major slice w [in, out]: (q [out, in], scale [out, 1], err2, norm2)."""
    fast = _colwise(w, True, True)
    if fast is not None:
        q, scale, err2, norm2 = fast
        return _fp8(q), _bf16(scale).reshape(-1, 1), err2, norm2
    return _ct_reference(w.t(), block=False)


def ct_block_rows(w: torch.Tensor) -> Result:
    """compressed-tensors FP8_BLOCK (128×128) of w [out, in]: (q [out, in], scale [⌈out/128⌉, ⌈in/128⌉], …)."""
    fast = _blockwise(w, False)
    if fast is not None:
        q, scale, err2, norm2 = fast
        return _fp8(q), _bf16(scale), err2, norm2
    return _ct_reference(w, block=True)


def ct_block_cols(w: torch.Tensor) -> Result:
    """FP8_BLOCK of w.T for an input-major slice w [in, out]: (q [out, in], scale [⌈out/128⌉, ⌈in/128⌉], ...).

    Block absmax is transpose-invariant, so the blocks are taken on w and only the FP8 result is transposed.
    """
    fast = _blockwise(w, True)
    if fast is not None:
        q, scale, err2, norm2 = fast
        return _fp8(q), _bf16(scale).t().contiguous(), err2, norm2
    return _ct_reference(w.t(), block=True)


def _ct_reference(w: torch.Tensor, *, block: bool) -> Result:
    from llama4ctl.quant.fp8 import ct_block, ct_channel, dequantize_block, dequantize_rowwise

    if block:
        q, s = ct_block(w, (BLOCK, BLOCK))
        restored = dequantize_block(q, s, (BLOCK, BLOCK))
    else:
        q, s = ct_channel(w)
        restored = dequantize_rowwise(q, s)
    return q.contiguous(), s, *_stats(w, restored)
