"""Pre-quantized bitsandbytes checkpoints (NF4/FP4 with optional double quant, or LLM.int8), routed experts
unfused per expert, every Linear of the language model quantized (routed and shared experts, attention, dense
MLP); router, lm_head, vision tower, projector, embeddings and norms kept as they are.

transformers loads a pre-quantized bitsandbytes Llama 4 by swapping each `Llama4TextExperts` for
`SequentialLlama4TextExperts` (a ModuleList of Llama4TextMLP), so the experts must be stored per expert:
  experts.{e}.gate_proj / up_proj [I, H] and down_proj [H, I], each with bitsandbytes' serialization
  (quant/bnb.py): 4-bit `weight` (packed U8) + `weight.absmax`, `weight.quant_map`, [`weight.nested_absmax`,
  `weight.nested_quant_map`], `weight.quant_state.bitsandbytes__nf4`; 8-bit `weight` (I8) + `SCB` + `weight_format`.
A checkpoint saved by transformers after on-the-fly `load_in_4bit` keeps the experts fused in BF16 and does not
load back; this one does, with the experts in 4/8 bits.

`llm_int8_skip_modules` *replaces* transformers' default skip list, so it names everything kept: the towers by
prefix (`vision_model`, `multi_modal_projector`), then each kept Linear by its full module name (transformers
5.17 module names equal the checkpoint's for Llama 4, and an entry matches a module as a start-anchored regex
or a suffix, so `layers.1.x` never matches `layers.10.x`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import component, parse_fused_expert
from llama4ctl.errors import PlanError
from llama4ctl.formats.base import Format
from llama4ctl.formats.fbgemm_fp8 import compact_kept
from llama4ctl.formats.registry import register
from llama4ctl.formats.selection import Selection
from llama4ctl.plan.ops import OutputSpec, TensorOp, kernel
from llama4ctl.quant.bnb import QUANT_TYPES, dtype_name, layout4

BITS = (4, 8)


@register
class BitsAndBytesFormat(Format):
    name = "bitsandbytes"

    def __init__(self, bits: int = 4, quant_type: str = "nf4", double_quant: bool = True,
                 selection: Selection | None = None):
        if bits not in BITS:
            raise PlanError(f"bitsandbytes stores 4 or 8 bits, not {bits}")
        quant_type = quant_type.lower()
        if bits == 4 and quant_type not in QUANT_TYPES:
            raise PlanError(f"unknown 4-bit type {quant_type!r}; choose one of {', '.join(QUANT_TYPES)}")
        self.bits = bits
        self.quant_type = quant_type if bits == 4 else "int8"
        self.double_quant = bool(double_quant) and bits == 4
        self.selection = selection or Selection()
        self._kept: list[str] = []
        self._compute_dtype = "bfloat16"

    def default_suffix(self) -> str:
        return f"BNB-{self.quant_type.upper()}"

    def prepare(self, ckpt: Checkpoint) -> None:
        self.selection.check_not_empty(ckpt)
        self._kept = compact_kept(self.selection.kept_linear_modules(ckpt, per_expert=True), ckpt)
        dtypes = {r.dtype for r in ckpt.tensors if self.selection.quantizes(r)}
        if dtypes - {"BF16", "F16", "F32"}:
            raise PlanError(f"bitsandbytes quantizes BF16/F16/F32 weights, found {sorted(dtypes)}", ckpt.source)
        if len(dtypes) == 1:
            self._compute_dtype = dtype_name(dtypes.pop())

    def _outputs(self, name: str, dtype: str, out_f: int, in_f: int) -> tuple[OutputSpec, ...]:
        if self.bits == 8:
            base = name[: -len("weight")]
            return (OutputSpec(name, "I8", (out_f, in_f)), OutputSpec(base + "SCB", "F32", (out_f,)),
                    OutputSpec(base + "weight_format", "U8", ()))
        return tuple(OutputSpec(name + suffix, dt, shape)
                     for suffix, dt, shape in layout4((out_f, in_f), dtype, self.quant_type, self.double_quant))

    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        comp = component(ref.name)
        if not self.selection.quantizes(ref):
            return [TensorOp("copy", (ref,), (OutputSpec(ref.name, ref.dtype, ref.shape),), {}, comp)]
        params = {"bits": self.bits, "quant_type": self.quant_type, "double_quant": self.double_quant}
        fused = parse_fused_expert(ref.name)
        if fused is None:
            return [TensorOp("bnb_linear", (ref,), self._outputs(ref.name, ref.dtype, *ref.shape), params, comp)]
        num_experts, rows, cols = ref.shape
        ops = []
        for e in range(num_experts):
            names = fused.per_expert_weight_names(e)
            if fused.proj == "gate_up_proj":
                a = self._outputs(names[0], ref.dtype, cols // 2, rows)
                outs = (*a, *self._outputs(names[1], ref.dtype, cols // 2, rows))
                per = len(a)
            else:
                outs = self._outputs(names[0], ref.dtype, cols, rows)
                per = len(outs)
            ops.append(TensorOp("bnb_unfuse", (ref,), outs, {**params, "expert": e, "per_weight": per}, comp))
        return ops

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        if config is None:
            return None
        return {**config, "quantization_config": self.quantization_config()}

    def quantization_config(self) -> dict[str, Any]:
        """The fields transformers' BitsAndBytesConfig.to_dict() writes (transformers 5.17)."""
        four = self.bits == 4
        return {
            "_load_in_4bit": four,
            "_load_in_8bit": not four,
            "bnb_4bit_compute_dtype": self._compute_dtype if four else "float32",
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.quant_type if four else "fp4",
            "bnb_4bit_use_double_quant": self.double_quant,
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": list(self._kept),
            "llm_int8_threshold": 6.0,
            "load_in_4bit": four,
            "load_in_8bit": not four,
            "quant_method": "bitsandbytes",
        }

    def describe(self) -> dict[str, Any]:
        if self.bits == 8:
            scheme = "LLM.int8"
        else:
            scheme = self.quant_type.upper() + ("+double-quant" if self.double_quant else "")
        return {"format": self.name, "backend": "bnb", "scheme": scheme, "bits": self.bits,
                "ignore": self.selection.ignore, "experts_only": self.selection.experts_only}


def _rel(err2: float, norm2: float) -> float:
    return (err2 / norm2) ** 0.5 if norm2 else 0.0


def _emit(ctx: Any, op: TensorOp, outs: tuple[OutputSpec, ...], w: Any) -> Iterator[tuple[str, Any]]:
    """Quantize one [out, in] weight; yield its tensors in `outs` order; record the dequantization error."""
    import torch

    from llama4ctl.quant import bnb

    p = op.params
    if p["bits"] == 8:
        cb, scb = bnb.quantize_int8(w)
        restored = bnb.dequantize_int8(cb, scb)
        tensors = [cb, scb, torch.zeros((), dtype=torch.uint8)]
    else:
        tensors = bnb.quantize_4bit(w, p["quant_type"], p["double_quant"])
        restored = bnb.dequantize_4bit({"weight" + o.name[len(outs[0].name):]: t for o, t in zip(outs, tensors)})
    for o, t in zip(outs, tensors, strict=True):
        yield o.name, t
    d = restored.float() - w.float()
    ctx.recorder.record(outs[0].name, rel_error=_rel(float(d.pow(2).sum()), float(w.float().pow(2).sum())))


@kernel("bnb_linear")
def quantize_linear(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,) = op.sources
    w = ctx.load(src)
    yield from _emit(ctx, op, op.outputs, w)


@kernel("bnb_unfuse")
def quantize_expert(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,) = op.sources
    w = ctx.load_expert(src, op.params["expert"])  # [in, out] slice of the fused tensor
    per = op.params["per_weight"]
    half = w.shape[-1] // 2
    parts = [w[:, :half], w[:, half:]] if len(op.outputs) == 2 * per else [w]
    for i, part in enumerate(parts):
        yield from _emit(ctx, op, op.outputs[per * i: per * (i + 1)], part.t().contiguous())
