"""FP8 E4M3 quantization math: no tensor names, no files. Each function takes a 2-D [out, in] weight.

Two conventions, reproduced exactly so outputs match what their loaders expect:
- fbgemm (`quantize_fp8_per_row`): float32 math, one scale per row s = max(row absmax / 448, 1 / (448·512))
  (the dequantization multiplier), q = e4m3(x / s). On CUDA with fbgemm-gpu-genai installed the kernel itself
  is used; results equal this reference except for rounding ties.
- compressed-tensors (FP8_DYNAMIC per channel, FP8_BLOCK 128×128): math in the weight's dtype (BF16 for
  Llama 4): scale = absmax / 448 rounded to that dtype (0 -> dtype eps), q = clamp(w / scale, ±448) cast to FP8.
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FP8_MAX = 448.0
FBGEMM_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


@cache
def fbgemm_kernel() -> object | None:
    """torch.ops.fbgemm.quantize_fp8_per_row when fbgemm-gpu-genai is importable (CUDA builds only)."""
    try:
        import fbgemm_gpu.experimental.gen_ai  # noqa: F401
        import torch

        return torch.ops.fbgemm.quantize_fp8_per_row
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def fbgemm_rowwise(w: torch.Tensor, *, use_kernel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """w [rows, cols] -> (q float8_e4m3fn [rows, cols], scale float32 [rows]); w ≈ q * scale[:, None]."""
    import torch

    kernel = fbgemm_kernel() if use_kernel and w.is_cuda else None
    if kernel is not None:
        with torch.cuda.device(w.device):  # fbgemm launches on the current device, not the tensor's
            q, scale = kernel(w.to(torch.bfloat16).contiguous())
        return q, scale.float()
    x = w.float()
    scale = (x.abs().amax(dim=-1) / FP8_MAX).clamp(min=FBGEMM_MIN_SCALE)
    q = (x / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _ct_scale(absmax: torch.Tensor) -> torch.Tensor:
    import torch

    # 448 is exact in every float dtype, so dividing by the Python number rounds like compressed-tensors'
    # division by a tensor of the weight's dtype, without building a device tensor per call.
    scale = absmax / FP8_MAX
    return scale.masked_fill(scale == 0, torch.finfo(scale.dtype).eps)


def _ct_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.clamp(x / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def ct_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8_DYNAMIC weights: (q [out, in], scale [out, 1] in w's dtype)."""
    scale = _ct_scale(w.abs().amax(dim=1, keepdim=True))
    return _ct_quantize(w, scale), scale


def ct_block(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8_BLOCK weights: (q [out, in], scale [ceil(out/bh), ceil(in/bw)]); padded while quantizing, then cut."""
    import torch

    bh, bw = block
    out_f, in_f = w.shape
    rows, cols = math.ceil(out_f / bh), math.ceil(in_f / bw)
    padded = torch.nn.functional.pad(w, (0, cols * bw - in_f, 0, rows * bh - out_f))
    blocks = padded.reshape(rows, bh, cols, bw).transpose(1, 2)
    scale = _ct_scale(blocks.abs().amax(dim=(-2, -1)))
    q = _ct_quantize(blocks, scale[..., None, None]).transpose(1, 2).reshape(rows * bh, cols * bw)
    return q[:out_f, :in_f].contiguous(), scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float().reshape(-1, 1)


def dequantize_block(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    bh, bw = block
    full = scale.float().repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return q.float() * full[: q.shape[0], : q.shape[1]]


def relative_error(original: torch.Tensor, restored: torch.Tensor) -> float:
    """‖restored − original‖ / ‖original‖ in float32 (0 for an all-zero original)."""
    o = original.float()
    denom = o.norm().item()
    return (restored.float() - o).norm().item() / denom if denom else 0.0
