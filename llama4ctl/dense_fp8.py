"""FP8 dense Linear layers of a loaded checkpoint (attention, shared expert, dense MLP) back to BF16 for decoding.

Why: at decode batch sizes these layers are launch-bound, and an FP8 Linear costs an activation-quantization
kernel plus a scaled GEMM per call where BF16 costs one GEMM: on an H100 an fbgemm_fp8 checkpoint with the fast
FP8 MoE decoded at 0.74x BF16 with transformers' FP8 Linears and at BF16 speed without them. The routed experts
hold ~97 % of Llama 4's weights (Maverick: ~386 B of ~400 B), so their FP8 keeps the memory saving; dense layers
in BF16 add ~1 byte per dense parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llama4ctl import tp


def is_fp8_dense(module: nn.Module) -> bool:
    """An nn.Linear whose weight is FP8 with a per-row ([out, 1]) or 128x128-block scale (fbgemm_fp8 or
    compressed-tensors FP8 layout as transformers loads them)."""
    w, s = getattr(module, "weight", None), getattr(module, "weight_scale", None)
    return isinstance(module, nn.Linear) and w is not None and s is not None and w.dtype == torch.float8_e4m3fn \
        and w.dim() == 2 and s.dim() == 2


def _bf16_weight(module: nn.Module) -> torch.Tensor:
    """The module's FP8 weight dequantized to BF16; under tensor parallel, this rank's part of it (the scale is
    gathered whole first: a scale split like a size-1 dim can leave a rank with none of it)."""
    return dequantize_part(tp.local(module.weight), tp.full(module.weight_scale), tp.local_offsets(module.weight),
                           tuple(module.weight.shape))


def dequantize_part(w: torch.Tensor, scale: torch.Tensor, offsets: tuple[int, ...],
                    full_shape: tuple[int, ...]) -> torch.Tensor:
    """BF16 values of the block w of a [out, in] FP8 weight starting at `offsets`, with the whole weight's
    per-row ([out, 1]) or 128x128-block scale."""
    out_f, in_f = full_shape
    row0, col0 = offsets
    scale = scale.float()
    rows = torch.arange(row0, row0 + w.shape[0], device=w.device)
    if tuple(scale.shape) == (out_f, 1):
        grid = scale[rows]
    elif tuple(scale.shape) == (-(-out_f // 128), -(-in_f // 128)):
        cols = torch.arange(col0, col0 + w.shape[1], device=w.device)
        grid = scale[rows // 128][:, cols // 128]
    else:
        raise ValueError(f"unsupported FP8 weight scale shape {tuple(scale.shape)} for a [{out_f}, {in_f}] weight")
    return (w.float() * grid).to(torch.bfloat16)


def dense_to_bf16(model: nn.Module) -> dict[str, Any]:
    """Replace every FP8 dense Linear with a BF16 nn.Linear holding the dequantized weight, one layer at a time;
    under tensor parallel, with a `tp.ShardedLinear` holding this rank's shard.

    Returns {"layers": count, "bytes_added": extra weight bytes (this rank's)}."""
    todo = [(name, m) for name, m in model.named_modules() if is_fp8_dense(m)]
    added = 0
    with torch.no_grad():
        for name, old in todo:
            split = tp.linear_split(old.weight)
            weight = _bf16_weight(old)
            if split is None:
                new = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
                new.weight = nn.Parameter(weight, requires_grad=False)
                if old.bias is not None:
                    new.bias = nn.Parameter(tp.full(old.bias).detach().to(torch.bfloat16), requires_grad=False)
            else:
                bias = None
                if old.bias is not None:
                    bias = (tp.local(old.bias) if split == "out" else tp.full(old.bias)).detach().to(torch.bfloat16)
                new = tp.ShardedLinear(weight, bias, split=split, process_group=tp.group(old.weight))
            added += weight.nbytes - tp.local(old.weight).nbytes - tp.local(old.weight_scale).nbytes
            model.set_submodule(name, new)
    if todo:
        import gc

        gc.collect()  # the replaced modules may sit in reference cycles (compressed-tensors' hooks)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"layers": len(todo), "bytes_added": added}
