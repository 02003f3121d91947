"""transformers' pre-quantized `fbgemm_fp8` format: per-row FP8 with float32 scales, experts kept fused.

  Linear:  weight F8_E4M3 [out, in] + weight_scale F32 [out, 1]
  experts: gate_up_proj F8_E4M3 [E, H, 2I] + gate_up_proj_scale F32 [E, 1, 2I]   (one scale per output column)
           down_proj    F8_E4M3 [E, I, H]  + down_proj_scale    F32 [E, H, 1]
transformers quantizes experts by transposing each expert to [out, in] and taking per-row scales; the kernels
here do the same one expert at a time, so memory stays at one expert slice. On CPU the numba kernels of
quant/fp8_cpu.py take the per-output-channel scales straight from the [in, out] slice (no transpose) in one pass;
on CUDA the torch/fbgemm path runs. Both give the same bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import component, parse_fused_expert
from llama4ctl.checkpoint.reader import BLOCK_BYTES, row_blocks
from llama4ctl.formats.base import ExpertGroup, Format
from llama4ctl.formats.registry import register
from llama4ctl.formats.selection import Selection
from llama4ctl.plan.ops import OutputSpec, TensorOp, kernel
from llama4ctl.quant.fp8 import dequantize_rowwise, fbgemm_rowwise
from llama4ctl.quant.fp8_cpu import fbgemm_cols, fbgemm_rows

ACTIVATION_SCALE_UB = 1200.0


@register
class FbgemmFp8Format(Format):
    name = "fbgemm_fp8"
    wants_fused_experts = True

    def __init__(self, selection: Selection | None = None):
        self.selection = selection or Selection()
        self._kept: list[str] = []

    def default_suffix(self) -> str:
        return "FBGEMM-FP8"

    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        comp = component(ref.name)
        if not self.selection.quantizes(ref):
            return [TensorOp("copy", (ref,), (OutputSpec(ref.name, ref.dtype, ref.shape),), {}, comp)]
        fused = parse_fused_expert(ref.name)
        if fused is not None:
            e, a, b = ref.shape
            scale_shape = (e, 1, b) if fused.proj == "gate_up_proj" else (e, b, 1)
            outs = (OutputSpec(ref.name, "F8_E4M3", ref.shape), OutputSpec(f"{ref.name}_scale", "F32", scale_shape))
            return [TensorOp("fbgemm_fp8_experts", (ref,), outs, {}, comp)]
        out_f, _ = ref.shape
        outs = (OutputSpec(ref.name, "F8_E4M3", ref.shape),
                OutputSpec(ref.name[: -len("weight")] + "weight_scale", "F32", (out_f, 1)))
        return [TensorOp("fbgemm_fp8_linear", (ref,), outs, {}, comp)]

    def plan_expert_group(self, group: ExpertGroup, ckpt: Checkpoint) -> list[TensorOp]:
        """Per-expert BF16 input: fuse and quantize in one pass, expert by expert."""
        first = group.refs[0]
        if group.proj == "gate_up_proj":
            inter, hidden = first[0].shape
            shape, scale_shape = (group.num_experts, hidden, 2 * inter), (group.num_experts, 1, 2 * inter)
        else:
            hidden, inter = first[0].shape
            shape, scale_shape = (group.num_experts, inter, hidden), (group.num_experts, hidden, 1)
        outs = (OutputSpec(group.name, "F8_E4M3", shape), OutputSpec(f"{group.name}_scale", "F32", scale_shape))
        per_expert = 2 if group.proj == "gate_up_proj" else 1
        return [TensorOp("fbgemm_fp8_fuse_experts", group.sources(), outs, {"per_expert": per_expert},
                         "routed_experts")]

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        if config is None:
            return None
        config = dict(config)
        config["quantization_config"] = self.quantization_config()
        return config

    def prepare(self, ckpt: Checkpoint) -> None:
        self.selection.check_not_empty(ckpt)
        self._kept = compact_kept(self.selection.kept_linear_modules(ckpt, per_expert=False), ckpt)

    def quantization_config(self) -> dict[str, Any]:
        return {"quant_method": "fbgemm_fp8", "activation_scale_ub": ACTIVATION_SCALE_UB,
                "modules_to_not_convert": list(self._kept)}

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "backend": "fbgemm", "scheme": "FP8 per-row (fbgemm)",
                "ignore": self.selection.ignore, "experts_only": self.selection.experts_only}


def compact_kept(kept: list[str], ckpt: Checkpoint) -> list[str]:
    """modules_to_not_convert entries: whole towers by prefix, the rest by full module name.

    transformers skips a module when an entry matches it as a regex anchored at the start (`key` or `key.`)
    or as a literal suffix, so `vision_model` covers the tower and a full name covers exactly one module
    (`layers.1.x` cannot match `layers.10.x`: the character after `1` must be `.`-then-name, not a digit).
    """
    from llama4ctl.checkpoint.layout import module_name

    out: list[str] = []
    for tower in ("vision_model", "multi_modal_projector"):
        linears = {module_name(r.name) for r in ckpt.tensors
                   if r.name.startswith(tower + ".") and r.name.endswith(".weight") and len(r.shape) == 2}
        if linears and linears <= set(kept):
            out.append(tower)
            kept = [k for k in kept if k not in linears]
    return out + kept


def _quantize_rows(w: Any) -> tuple[Any, Any, float, float]:
    """Torch path (CUDA): w [out, in] -> (q [out, in], scale [out], err², norm²)."""
    q, s = fbgemm_rowwise(w)
    d = dequantize_rowwise(q, s) - w.float()
    return q, s, float(d.pow(2).sum()), float(w.float().pow(2).sum())


@kernel("fbgemm_fp8_linear")
def quantize_linear(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    import torch

    (src,), (w_out, s_out) = op.sources, op.outputs
    scales, err2, norm2 = [], 0.0, 0.0
    for start, stop in row_blocks(src, BLOCK_BYTES // 4):
        w = ctx.load_rows(src, start, stop)
        if ctx.device == "cpu":
            q, s, e, n = fbgemm_rows(w)
        else:
            q, s, e, n = _quantize_rows(w)
        err2 += e
        norm2 += n
        scales.append(s)
        yield w_out.name, q
    yield s_out.name, torch.cat(scales).reshape(-1, 1)
    ctx.recorder.record(w_out.name, rel_error=(err2 / norm2) ** 0.5 if norm2 else 0.0)


def _expert_stats(ctx: Any, name: str, per_expert: list[tuple[float, float]]) -> None:
    err2, norm2 = sum(e for e, _ in per_expert), sum(n for _, n in per_expert)
    worst = max(((e / n) ** 0.5 if n else 0.0) for e, n in per_expert)
    ctx.recorder.record(name, rel_error=(err2 / norm2) ** 0.5 if norm2 else 0.0, max_expert_rel_error=worst)


@kernel("fbgemm_fp8_experts")
def quantize_experts(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    import torch

    (src,), (w_out, s_out) = op.sources, op.outputs
    scales, stats = [], []
    for e in range(src.shape[0]):
        w = ctx.load_expert(src, e)  # [in, out]: quantized per output channel, stored as is
        if ctx.device == "cpu":
            q, s, err2, norm2 = fbgemm_cols(w)
        else:
            q, s, err2, norm2 = _quantize_rows(w.t())
            q = q.t().contiguous()
        stats.append((err2, norm2))
        scales.append(s)
        yield w_out.name, q
    yield s_out.name, torch.stack(scales).reshape(s_out.shape)
    _expert_stats(ctx, w_out.name, stats)


@kernel("fbgemm_fp8_fuse_experts")
def fuse_and_quantize_experts(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    import torch

    w_out, s_out = op.outputs
    k = op.params["per_expert"]
    scales, stats = [], []
    for i in range(0, len(op.sources), k):
        parts = [ctx.load(r) for r in op.sources[i : i + k]]  # [out, in] each: gate rows then up rows
        if ctx.device == "cpu":
            q, s, err2, norm2 = fbgemm_rows(*parts, transpose=True)  # stored [in, out]
        else:
            w = torch.cat(parts, dim=0) if k == 2 else parts[0]
            q, s, err2, norm2 = _quantize_rows(w)
            q = q.t().contiguous()
        stats.append((err2, norm2))
        scales.append(s)
        yield w_out.name, q
    yield s_out.name, torch.stack(scales).reshape(s_out.shape)
    _expert_stats(ctx, w_out.name, stats)
