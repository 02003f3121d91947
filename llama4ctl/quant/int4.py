"""Symmetric integer (int4 / int8) weight quantization: no tensor names, no files. Weights are 2-D [out, in].

Reproduces compressed-tensors 0.19's data-free path bit for bit (llm-compressor's model-free
`initialize_quantized_linear` + `calibrate_weight` + `compress_module`, i.e. the memoryless min-max observer,
`calculate_qparams` and the `pack-quantized` compressor), computing in the weight's dtype as that path does:

  per group of `group_size` input columns (group_size -1: one group per output row, the CHANNEL strategy)
    absmax = max(|min(w, 0)|, |max(w, 0)|)
    scale  = absmax / ((qmax - qmin) / 2)     (7.5 for int4, 127.5 for int8), in w's dtype; 0 -> dtype eps
    q      = round_half_even(clamp(w / scale, qmin, qmax))        qmin, qmax = -8, 7 (int4) / -128, 127 (int8)
  pack: q + 2^(bits-1) as unsigned codes, 32/bits consecutive columns per int32, lowest bits first
  (compressed-tensors' dense `pack_to_int32`; for 4 and 8 bits no code straddles two words).

W4A16 and W8A16 are both GROUP 128 in compressed-tensors 0.19's presets (W8A16 is not per-channel).
compressed-tensors' Triton kernel (CUDA with triton) divides in float32 instead of the weight's dtype, so it can
differ by one code on rounding ties; this module always follows the torch path, on any device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BITS = (4, 8)


def qrange(num_bits: int) -> tuple[int, int]:
    if num_bits not in BITS:
        raise ValueError(f"num_bits must be one of {BITS}, got {num_bits}")
    return -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1


def num_groups(in_features: int, group_size: int) -> int:
    """Scale columns for one weight; raises ValueError when group_size does not divide in_features."""
    if group_size == -1:
        return 1
    if group_size <= 0:
        raise ValueError(f"group size must be positive or -1 (per channel), got {group_size}")
    if in_features % group_size:
        raise ValueError(f"group size {group_size} does not divide the input features ({in_features})")
    return in_features // group_size


def packed_columns(in_features: int, num_bits: int) -> int:
    return -(-in_features * num_bits // 32)


def quantize(w: torch.Tensor, num_bits: int = 4, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (q int8 [out, in] in [qmin, qmax], scale [out, in/group_size] (or [out, 1]) in w's dtype)."""
    import torch

    qmin, qmax = qrange(num_bits)
    out_f, in_f = w.shape
    groups = num_groups(in_f, group_size)
    x = w.reshape(out_f, groups, in_f // groups)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    absmax = torch.maximum(torch.minimum(x.amin(-1), zero).abs(), torch.maximum(x.amax(-1), zero).abs())
    scale = absmax / (torch.tensor(qmax - qmin, device=w.device).to(w.dtype) / 2)
    scale = torch.where(scale == 0, torch.tensor(torch.finfo(w.dtype).eps, dtype=w.dtype, device=w.device), scale)
    q = torch.round(torch.clamp(x / scale[..., None], qmin, qmax)).to(torch.int8)
    return q.reshape(out_f, in_f), scale


def pack_int32(q: torch.Tensor, num_bits: int) -> torch.Tensor:
    """q int8 [rows, cols] -> int32 [rows, ceil(cols * bits / 32)] (compressed-tensors' packing along dim 1)."""
    import torch

    qmin, _ = qrange(num_bits)
    per_word = 32 // num_bits
    rows, cols = q.shape
    codes = q.to(torch.int64) - qmin  # unsigned codes 0 .. 2^bits - 1
    pad = -cols % per_word
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    shifts = torch.arange(per_word, device=q.device, dtype=torch.int64) * num_bits
    words = (codes.reshape(rows, -1, per_word) << shifts).sum(-1)  # < 2^32
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)
    return words.to(torch.int32)


def unpack_int32(packed: torch.Tensor, num_bits: int, cols: int) -> torch.Tensor:
    """Inverse of pack_int32: int32 [rows, words] -> int8 [rows, cols]."""
    import torch

    qmin, _ = qrange(num_bits)
    per_word = 32 // num_bits
    shifts = torch.arange(per_word, device=packed.device, dtype=torch.int64) * num_bits
    codes = (packed.to(torch.int64)[..., None] >> shifts) & ((1 << num_bits) - 1)
    return (codes.reshape(packed.shape[0], -1)[:, :cols] + qmin).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """q [out, in] with scale [out, groups] -> weight [out, in] (float32 unless dtype is given)."""
    import torch

    out_f, in_f = q.shape
    groups = scale.shape[-1]
    dt = dtype or torch.float32
    w = q.reshape(out_f, groups, in_f // groups).to(dt) * scale.to(dt)[..., None]
    return w.reshape(out_f, in_f)


def quantize_packed(w: torch.Tensor, num_bits: int = 4,
                    group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(weight_packed int32, weight_scale, err², norm²) for one [out, in] weight."""
    q, scale = quantize(w, num_bits, group_size)
    d = dequantize(q, scale) - w.float()
    return pack_int32(q, num_bits), scale, float(d.pow(2).sum()), float(w.float().pow(2).sum())
