"""compressed-tensors `float-quantized` FP8 (FP8_DYNAMIC, FP8_BLOCK) with routed experts unfused per expert.

  Linear and each expert: weight F8_E4M3 [out, in] + weight_scale [out, 1] (channel) or
  [ceil(out/128), ceil(in/128)] (block), in the weight's dtype (BF16 for Llama 4).
  experts.{e}.gate_proj / up_proj [I, H] and down_proj [H, I]: the keys vLLM's Llama 4 loader and transformers'
  pre-quantized path (SequentialLlama4TextExperts) read.
The quantization_config is built with compressed-tensors' own classes so it stays in step with the library;
its `ignore` lists every kept Linear by full module name, as llm-compressor's oneshot writes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import component, parse_fused_expert
from llama4ctl.errors import PlanError
from llama4ctl.formats.base import Format
from llama4ctl.formats.registry import register
from llama4ctl.formats.selection import Selection
from llama4ctl.plan.ops import OutputSpec, TensorOp, kernel
from llama4ctl.quant.fp8 import ct_block, ct_channel, dequantize_block, dequantize_rowwise

SCHEMES = ("FP8_DYNAMIC", "FP8_BLOCK")
BLOCK = (128, 128)


def scale_shape(scheme: str, out_f: int, in_f: int) -> tuple[int, int]:
    if scheme == "FP8_BLOCK":
        return (-(-out_f // BLOCK[0]), -(-in_f // BLOCK[1]))
    return (out_f, 1)


@register
class CompressedTensorsFp8Format(Format):
    name = "compressed-tensors"

    def __init__(self, scheme: str = "FP8_DYNAMIC", selection: Selection | None = None):
        if scheme not in SCHEMES:
            raise PlanError(f"unknown FP8 scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.selection = selection or Selection()
        self._kept: list[str] = []

    def default_suffix(self) -> str:
        return self.scheme.replace("_", "-")

    def prepare(self, ckpt: Checkpoint) -> None:
        self.selection.check_not_empty(ckpt)
        self._kept = self.selection.kept_linear_modules(ckpt, per_expert=True)

    def _weight_outputs(self, name: str, dtype: str, out_f: int, in_f: int) -> tuple[OutputSpec, OutputSpec]:
        return (OutputSpec(name, "F8_E4M3", (out_f, in_f)),
                OutputSpec(name[: -len("weight")] + "weight_scale", dtype, scale_shape(self.scheme, out_f, in_f)))

    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        comp = component(ref.name)
        if not self.selection.quantizes(ref):
            return [TensorOp("copy", (ref,), (OutputSpec(ref.name, ref.dtype, ref.shape),), {}, comp)]
        params = {"scheme": self.scheme}
        fused = parse_fused_expert(ref.name)
        if fused is None:
            outs = self._weight_outputs(ref.name, ref.dtype, *ref.shape)
            return [TensorOp("ct_fp8_linear", (ref,), outs, params, comp)]
        num_experts, rows, cols = ref.shape
        ops = []
        for e in range(num_experts):
            names = fused.per_expert_weight_names(e)
            if fused.proj == "gate_up_proj":
                outs = (*self._weight_outputs(names[0], ref.dtype, cols // 2, rows),
                        *self._weight_outputs(names[1], ref.dtype, cols // 2, rows))
            else:
                outs = self._weight_outputs(names[0], ref.dtype, cols, rows)
            ops.append(TensorOp("ct_fp8_unfuse", (ref,), outs, {**params, "expert": e}, comp))
        return ops

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        if config is None:
            return None
        config = dict(config)
        config["quantization_config"] = self.quantization_config()
        return config

    def quantization_config(self) -> dict[str, Any]:
        from compressed_tensors import __version__ as ct_version
        from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

        scheme = preset_name_to_scheme(self.scheme, ["Linear"])
        ignore = list(self._kept) + [p if p.startswith("re:") else f"re:{p}" for p in self.selection.ignore]
        qc = QuantizationConfig(config_groups={"group_0": scheme}, format="float-quantized",
                                quantization_status=QuantizationStatus.COMPRESSED, ignore=ignore)
        doc = qc.model_dump(mode="json")
        doc["config_groups"]["group_0"]["format"] = "float-quantized"
        return {**doc, "version": ct_version, "transform_config": {}}

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "backend": "llm-compressor", "scheme": self.scheme,
                "ignore": self.selection.ignore, "experts_only": self.selection.experts_only}


def quantize_weight(w: Any, scheme: str) -> tuple[Any, Any, float, float]:
    """(q, scale, err², norm²) for one [out, in] weight."""
    if scheme == "FP8_BLOCK":
        q, s = ct_block(w, BLOCK)
        d = dequantize_block(q, s, BLOCK) - w.float()
    else:
        q, s = ct_channel(w)
        d = dequantize_rowwise(q, s) - w.float()
    return q, s, float(d.pow(2).sum()), float(w.float().pow(2).sum())


def _rel(err2: float, norm2: float) -> float:
    return (err2 / norm2) ** 0.5 if norm2 else 0.0


@kernel("ct_fp8_linear")
def quantize_linear(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,), (w_out, s_out) = op.sources, op.outputs
    w = ctx.reader.read(src)
    if ctx.device != "cpu":
        w = w.to(ctx.device)
    q, s, err2, norm2 = quantize_weight(w, op.params["scheme"])
    yield w_out.name, q
    yield s_out.name, s
    ctx.recorder.record(w_out.name, rel_error=_rel(err2, norm2))


@kernel("ct_fp8_unfuse")
def quantize_expert(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,) = op.sources
    w = ctx.reader.read_expert(src, op.params["expert"])  # [in, out] slice of the fused tensor
    if ctx.device != "cpu":
        w = w.to(ctx.device)
    outs = op.outputs
    if len(outs) == 4:
        half = w.shape[-1] // 2
        parts = [w[:, :half].t().contiguous(), w[:, half:].t().contiguous()]
    else:
        parts = [w.t().contiguous()]
    for i, part in enumerate(parts):
        q, s, err2, norm2 = quantize_weight(part, op.params["scheme"])
        yield outs[2 * i].name, q
        yield outs[2 * i + 1].name, s
        ctx.recorder.record(outs[2 * i].name, rel_error=_rel(err2, norm2))
