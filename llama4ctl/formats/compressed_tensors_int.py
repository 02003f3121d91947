"""compressed-tensors `pack-quantized` W4A16 / W8A16 (symmetric int, group 128, data-free round-to-nearest),
routed experts unfused per expert.

  Linear and each expert: weight_packed I32 [out, in·bits/32]  (8 int4 or 4 int8 codes per int32)
                          weight_scale  [out, in/group] in the weight's dtype (BF16 for Llama 4)
                          weight_shape  I64 [2] = (out, in)
  no zero point (symmetric). experts.{e}.gate_proj / up_proj [I, H] and down_proj [H, I], the keys vLLM's
  Llama 4 loader and transformers' pre-quantized path (SequentialLlama4TextExperts) read.
The tensors are bit-identical to llm-compressor's model-free path on the same weight (quant/int4.py), the
quantization_config is built with compressed-tensors' own classes, and `ignore` lists every kept Linear by full
module name, as for FP8. Every quantized weight's input features must be a multiple of the group size: the plan
is refused otherwise, naming the weights and the group sizes that would work (or `--group-size -1`, per channel).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import component, parse_fused_expert
from llama4ctl.errors import PlanError
from llama4ctl.formats.base import Format
from llama4ctl.formats.compressed_tensors import check_vllm_layout
from llama4ctl.formats.fbgemm_fp8 import compact_kept
from llama4ctl.formats.registry import register
from llama4ctl.formats.selection import Selection
from llama4ctl.plan.ops import OutputSpec, TensorOp, kernel
from llama4ctl.quant.int4 import packed_columns, quantize_packed

SCHEMES = {"W4A16": 4, "W8A16": 8}
DEFAULT_GROUP_SIZE = 128


def in_features(ref: TensorRef) -> int:
    """Input features of a 2-D Linear weight [out, in] or of a fused expert tensor ([E, H, 2I] / [E, I, H])."""
    return ref.shape[1]


@register
class CompressedTensorsIntFormat(Format):
    name = "compressed-tensors-int"

    def __init__(self, scheme: str = "W4A16", group_size: int = DEFAULT_GROUP_SIZE,
                 selection: Selection | None = None):
        if scheme not in SCHEMES:
            raise PlanError(f"unknown int scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        if group_size != -1 and group_size <= 0:
            raise PlanError(f"--group-size must be positive, or -1 for one scale per output channel; got {group_size}")
        self.scheme = scheme
        self.bits = SCHEMES[scheme]
        self.group_size = group_size
        self.selection = selection or Selection()
        self._kept: list[str] = []

    def default_suffix(self) -> str:
        if self.group_size == -1:
            return f"{self.scheme}-CH"
        if self.scheme == "W8A16" and self.group_size == DEFAULT_GROUP_SIZE:
            return "W8A16"
        return f"{self.scheme}-G{self.group_size}"

    def prepare(self, ckpt: Checkpoint) -> None:
        self.selection.check_not_empty(ckpt)
        self._check_group_size(ckpt)
        kept = compact_kept(self.selection.kept_linear_modules(ckpt, per_expert=True), ckpt)
        self._kept = [f"re:{k}\\..*" if k in ("vision_model", "multi_modal_projector") else k for k in kept]

    def _check_group_size(self, ckpt: Checkpoint) -> None:
        if self.group_size == -1:
            return
        sizes = {r.name: in_features(r) for r in ckpt.tensors if self.selection.quantizes(r)}
        bad = {n: k for n, k in sizes.items() if k % self.group_size}
        if not bad:
            return
        common = math.gcd(*sizes.values())
        fits = [g for g in (128, 64, 32, 16, 8) if common % g == 0]
        example = ", ".join(f"{n} ({k})" for n, k in list(bad.items())[:3])
        raise PlanError(
            f"group size {self.group_size} does not divide the input features of {len(bad)} weight(s): {example}"
            + (" …" if len(bad) > 3 else ""), ckpt.source,
            hint=(f"use --group-size {fits[0]} (divides every quantized weight), " if fits else "")
            + "--group-size -1 (one scale per output channel), or --ignore the modules listed")

    def _outputs(self, name: str, dtype: str, out_f: int, in_f: int) -> tuple[OutputSpec, ...]:
        base = name[: -len("weight")]
        groups = 1 if self.group_size == -1 else in_f // self.group_size
        return (OutputSpec(base + "weight_packed", "I32", (out_f, packed_columns(in_f, self.bits))),
                OutputSpec(base + "weight_scale", dtype, (out_f, groups)),
                OutputSpec(base + "weight_shape", "I64", (2,)))

    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        comp = component(ref.name)
        if not self.selection.quantizes(ref):
            return [TensorOp("copy", (ref,), (OutputSpec(ref.name, ref.dtype, ref.shape),), {}, comp)]
        params = {"bits": self.bits, "group_size": self.group_size}
        fused = parse_fused_expert(ref.name)
        if fused is None:
            return [TensorOp("ct_int_linear", (ref,), self._outputs(ref.name, ref.dtype, *ref.shape), params, comp)]
        num_experts, rows, cols = ref.shape
        ops = []
        for e in range(num_experts):
            names = fused.per_expert_weight_names(e)
            if fused.proj == "gate_up_proj":
                outs = (*self._outputs(names[0], ref.dtype, cols // 2, rows),
                        *self._outputs(names[1], ref.dtype, cols // 2, rows))
            else:
                outs = self._outputs(names[0], ref.dtype, cols, rows)
            ops.append(TensorOp("ct_int_unfuse", (ref,), outs, {**params, "expert": e}, comp))
        return ops

    def validate_plan(self, ops: list[TensorOp]) -> None:
        check_vllm_layout([o for op in ops for o in op.outputs], self.ignore_list())

    def warm_up(self) -> None:
        import compressed_tensors.quantization  # noqa: F401  (several seconds; overlapped with quantization)

    def ignore_list(self) -> list[str]:
        return list(self._kept) + [p if p.startswith("re:") else f"re:{p}" for p in self.selection.ignore]

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        if config is None:
            return None
        return {**config, "quantization_config": self.quantization_config()}

    def quantization_scheme(self) -> Any:
        from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme

        scheme = preset_name_to_scheme(self.scheme, ["Linear"])
        if self.group_size == -1:
            scheme.weights = QuantizationArgs(num_bits=self.bits, type="int", symmetric=True, strategy="channel")
        elif self.group_size != scheme.weights.group_size:
            scheme.weights = QuantizationArgs(num_bits=self.bits, type="int", symmetric=True, strategy="group",
                                              group_size=self.group_size)
        return scheme

    def quantization_config(self) -> dict[str, Any]:
        from compressed_tensors import __version__ as ct_version
        from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

        qc = QuantizationConfig(config_groups={"group_0": self.quantization_scheme()}, format="pack-quantized",
                                quantization_status=QuantizationStatus.COMPRESSED, ignore=self.ignore_list())
        doc = qc.model_dump(mode="json")
        doc["config_groups"]["group_0"]["format"] = "pack-quantized"
        return {**doc, "version": ct_version, "transform_config": {}}

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "backend": "llm-compressor", "scheme": self.scheme,
                "group_size": self.group_size, "ignore": self.selection.ignore,
                "experts_only": self.selection.experts_only}


def _rel(err2: float, norm2: float) -> float:
    return (err2 / norm2) ** 0.5 if norm2 else 0.0


def _emit(ctx: Any, outs: tuple[OutputSpec, ...], w: Any, bits: int, group_size: int) -> Iterator[tuple[str, Any]]:
    import torch

    packed, scale, err2, norm2 = quantize_packed(w, bits, group_size)
    yield outs[0].name, packed
    yield outs[1].name, scale
    yield outs[2].name, torch.tensor(list(w.shape), dtype=torch.int64)
    ctx.recorder.record(outs[0].name, rel_error=_rel(err2, norm2))


@kernel("ct_int_linear")
def quantize_linear(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,) = op.sources
    w = ctx.load(src)
    yield from _emit(ctx, op.outputs, w, op.params["bits"], op.params["group_size"])


@kernel("ct_int_unfuse")
def quantize_expert(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,) = op.sources
    w = ctx.load_expert(src, op.params["expert"])  # [in, out] slice of the fused tensor
    outs = op.outputs
    half = w.shape[-1] // 2
    parts = [w[:, :half], w[:, half:]] if len(outs) == 6 else [w]  # [in, out] each; the weights are their .T
    for i, part in enumerate(parts):
        yield from _emit(ctx, outs[3 * i: 3 * i + 3], part.t().contiguous(), op.params["bits"],
                         op.params["group_size"])
