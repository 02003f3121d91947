"""Unquantized output (what `shard` writes): byte copies, optional float casts, fused <-> per-expert experts."""

from __future__ import annotations

import copy
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import FLOAT_DTYPES, TensorRef
from llama4ctl.checkpoint.layout import component, parse_fused_expert
from llama4ctl.errors import PlanError
from llama4ctl.formats.base import ExpertGroup, Format
from llama4ctl.formats.registry import register
from llama4ctl.plan.ops import OutputSpec, TensorOp

DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
EXPERT_LAYOUTS = ("keep", "fused", "unfused")


@register
class UnquantizedFormat(Format):
    name = "unquantized"

    def __init__(self, dtype: str | None = None, experts: str = "keep"):
        if dtype is not None and dtype not in DTYPES:
            raise PlanError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        if experts not in EXPERT_LAYOUTS:
            raise PlanError(f"unknown expert layout {experts!r}; choose one of {', '.join(EXPERT_LAYOUTS)}")
        self.dtype = DTYPES[dtype] if dtype else None
        self.experts = experts
        self.wants_fused_experts = experts == "fused"  # type: ignore[misc]

    def _out_dtype(self, ref: TensorRef) -> str:
        return self.dtype if self.dtype and ref.dtype in FLOAT_DTYPES else ref.dtype

    def _check_unquantized(self, ckpt: Checkpoint) -> None:
        if ckpt.config and "quantization_config" in ckpt.config:
            raise PlanError("the checkpoint is quantized: --dtype and --experts apply to unquantized checkpoints",
                            ckpt.source)

    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        comp = component(ref.name)
        fused = parse_fused_expert(ref.name)
        if fused is not None and self.experts == "unfused":
            self._check_unquantized(ckpt)
            if len(ref.shape) != 3:
                raise PlanError(f"{ref.name}: fused experts must be 3-D, got {list(ref.shape)}", ref.file)
            num_experts, rows, cols = ref.shape
            dtype = self._out_dtype(ref)
            ops = []
            for e in range(num_experts):
                names = fused.per_expert_weight_names(e)
                if fused.proj == "gate_up_proj":
                    if cols % 2:
                        raise PlanError(f"{ref.name}: last dim {cols} is not 2 × expert size", ref.file)
                    outs = tuple(OutputSpec(n, dtype, (cols // 2, rows)) for n in names)
                else:
                    outs = (OutputSpec(names[0], dtype, (cols, rows)),)
                ops.append(TensorOp("unfuse", (ref,), outs, {"expert": e}, comp))
            return ops
        out_dtype = self._out_dtype(ref)
        if out_dtype != ref.dtype:
            self._check_unquantized(ckpt)
            return [TensorOp("cast", (ref,), (OutputSpec(ref.name, out_dtype, ref.shape),), {}, comp)]
        return [TensorOp("copy", (ref,), (OutputSpec(ref.name, ref.dtype, ref.shape),), {}, comp)]

    def plan_expert_group(self, group: ExpertGroup, ckpt: Checkpoint) -> list[TensorOp]:
        self._check_unquantized(ckpt)
        first = group.refs[0]
        dtype = self._out_dtype(first[0])
        if group.proj == "gate_up_proj":
            inter, hidden = first[0].shape
            if first[1].shape != first[0].shape:
                raise PlanError(f"{group.name}: gate and up shapes differ", first[0].file)
            shape = (group.num_experts, hidden, 2 * inter)
        else:
            hidden, inter = first[0].shape
            shape = (group.num_experts, inter, hidden)
        per_expert = 2 if group.proj == "gate_up_proj" else 1
        out = OutputSpec(group.name, dtype, shape)
        return [TensorOp("fuse", group.sources(), (out,), {"per_expert": per_expert}, "routed_experts")]

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        if config is None or self.dtype is None:
            return config
        config = copy.deepcopy(config)
        name = TORCH_NAMES[self.dtype]
        for target in (config, config.get("text_config"), config.get("vision_config")):
            if isinstance(target, dict):
                for key in ("torch_dtype", "dtype"):
                    if key in target:
                        target[key] = name
        config.setdefault("torch_dtype", name)
        return config

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "dtype": self.dtype, "experts": self.experts}
