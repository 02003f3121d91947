"""build_plan(): a pure function of (checkpoint headers, format, options) -> Plan. No tensor bytes are read.

The whole plan is built and validated before anything is written: unique output names, known kernels,
consistent expert groups, and shard assignment, so a bad option fails before the first byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import FLOAT_DTYPES
from llama4ctl.checkpoint.layout import component, parse_per_expert, text_only_config, to_text_only_name
from llama4ctl.errors import PlanError
from llama4ctl.plan.ops import OutputSpec, ShardPlan, TensorOp
from llama4ctl.plan.sharding import shard_file_names, split_sizes

if TYPE_CHECKING:
    from llama4ctl.formats.base import Format


@dataclass
class Plan:
    source: Checkpoint
    format: Format
    shards: list[ShardPlan]
    config_factory: Callable[[], dict[str, Any] | None]
    extra_files: list[str]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_shard_size: int = 0

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """The output config.json, built on first use: some formats import heavy libraries to write it."""
        return self.config_factory()

    @property
    def ops(self) -> list[TensorOp]:
        return [op for s in self.shards for op in s.ops]

    @property
    def outputs(self) -> list[OutputSpec]:
        return [o for s in self.shards for o in s.outputs]

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    def weight_map(self) -> dict[str, str]:
        return {o.name: s.filename for s in self.shards for o in s.outputs}

    def fingerprint(self) -> str:
        """Identifies the output a plan produces, so --resume never mixes runs made with different options."""
        doc = {
            "format": self.format.describe(),
            "sources": {s: self.source.shard_sizes.get(s) for s in self.source.shards},
            "shards": [[s.filename, [[o.name, o.dtype, list(o.shape)] for o in s.outputs]] for s in self.shards],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        kernels: dict[str, int] = {}
        for op in self.ops:
            kernels[op.kernel] = kernels.get(op.kernel, 0) + 1
        return {
            "format": self.format.describe(),
            "input_bytes": self.source.total_bytes,
            "output_bytes": self.total_bytes,
            "num_input_tensors": len(self.source.tensors),
            "num_output_tensors": len(self.outputs),
            "num_shards": len(self.shards),
            "max_shard_size": self.max_shard_size,
            "ops_by_kernel": kernels,
            "dropped": self.dropped,
            "notes": self.notes,
            "shards": [
                {"file": s.filename, "bytes": s.nbytes, "tensors": len(s.outputs)} for s in self.shards
            ],
        }


def build_plan(ckpt: Checkpoint, fmt: Format, *, max_shard_size: int, drop_vision: bool = False) -> Plan:
    from llama4ctl.formats.base import group_per_expert

    if ckpt.root is None:
        raise PlanError("the checkpoint must be local to be rewritten", ckpt.source,
                        hint="download it first with `llama4ctl download`")
    fmt.prepare(ckpt)
    ops: list[TensorOp] = []
    dropped: list[str] = []
    pending_experts = []
    for ref in ckpt.tensors:
        comp = component(ref.name)
        if drop_vision and comp in ("vision", "projector"):
            dropped.append(ref.name)
            continue
        pe = parse_per_expert(ref.name)
        if fmt.wants_fused_experts and pe is not None and pe.leaf == "weight" and ref.dtype in FLOAT_DTYPES:
            pending_experts.append((ref, pe))
            continue
        ops.extend(fmt.plan_tensor(ref, ckpt))
    for group in group_per_expert(pending_experts):
        _check_group(group, ckpt)
        ops.extend(fmt.plan_expert_group(group, ckpt))

    notes: list[str] = list(ckpt.config_notes)
    base_config = ckpt.config
    if drop_vision:
        if not ckpt.is_multimodal:
            notes.append("--drop-vision: the checkpoint is already text-only")
        ops = [_rename_text_only(op) for op in ops]
        if base_config is not None and "text_config" in base_config:
            base_config = text_only_config(base_config)

    _validate(ops, ckpt)
    fmt.validate_plan(ops)
    groups = split_sizes([op.nbytes for op in ops], max_shard_size)
    names = shard_file_names(len(groups))
    shards = [ShardPlan(name, tuple(ops[i] for i in idx)) for name, idx in zip(names, groups, strict=True)]
    extras = [f for f in ckpt.extra_files if f != "config.json"]
    if drop_vision:
        extras = [f for f in extras if f not in ("preprocessor_config.json", "processor_config.json")]
    final_ops = list(ops)
    return Plan(ckpt, fmt, shards, lambda: fmt.output_config(base_config, final_ops), extras, dropped, notes,
                max_shard_size)


def _rename_text_only(op: TensorOp) -> TensorOp:
    outputs = []
    for o in op.outputs:
        new = to_text_only_name(o.name)
        if new is None:
            raise PlanError(f"output {o.name!r} is part of the vision tower and cannot be kept with --drop-vision")
        outputs.append(replace(o, name=new))
    return replace(op, outputs=tuple(outputs))


def _check_group(group: Any, ckpt: Checkpoint) -> None:
    experts = sorted(group.refs)
    if experts != list(range(len(experts))):
        raise PlanError(f"{group.name}: per-expert weights are not numbered 0..{len(experts) - 1}", ckpt.source)
    n = ckpt.text.num_experts if ckpt.text else len(experts)
    if len(experts) != n:
        raise PlanError(f"{group.name}: {len(experts)} experts found, config says {n}", ckpt.source)
    shapes = {tuple(r.shape for r in refs) for refs in group.refs.values()}
    if len(shapes) != 1:
        raise PlanError(f"{group.name}: experts have different shapes {sorted(shapes)}", ckpt.source)


def _validate(ops: list[TensorOp], ckpt: Checkpoint) -> None:
    seen: set[str] = set()
    for op in ops:
        for o in op.outputs:
            if o.name in seen:
                raise PlanError(f"two outputs would be named {o.name!r}", ckpt.source)
            seen.add(o.name)
    if not ops:
        raise PlanError("the plan writes no tensors", ckpt.source)
