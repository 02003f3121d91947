"""The interface every output format implements; only format files know their tensor names and config."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import PerExpert
from llama4ctl.plan.ops import TensorOp


class ExpertGroup:
    """Per-expert weights of one layer's gate/up (or down) projections, to be fused into one tensor."""

    def __init__(self, experts_prefix: str, proj: str, refs: dict[int, tuple[TensorRef, ...]]):
        self.experts_prefix = experts_prefix
        self.proj = proj  # gate_up_proj | down_proj
        self.refs = refs  # expert -> (gate, up) or (down,)

    @property
    def name(self) -> str:
        return f"{self.experts_prefix}.{self.proj}"

    @property
    def num_experts(self) -> int:
        return len(self.refs)

    def sources(self) -> tuple[TensorRef, ...]:
        return tuple(r for e in sorted(self.refs) for r in self.refs[e])


class Format(ABC):
    """An output format: how each input tensor maps to output tensors, and the config that describes them."""

    name: ClassVar[str]
    #: fuse per-expert input weights into [E, H, 2I] / [E, I, H] before planning
    wants_fused_experts: ClassVar[bool] = False

    def prepare(self, ckpt: Checkpoint) -> None:
        """Look at the whole checkpoint once before planning (e.g. to list kept modules)."""

    @abstractmethod
    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        """Ops for one input tensor (return [] to drop it)."""

    def plan_expert_group(self, group: ExpertGroup, ckpt: Checkpoint) -> list[TensorOp]:
        raise NotImplementedError(f"format {self.name} cannot fuse per-expert weights")

    def validate_plan(self, ops: list[TensorOp]) -> None:
        """Check the planned outputs before anything is written (raise PlanError)."""

    def warm_up(self) -> None:
        """Import what output_config needs; run in a background thread while tensors are written."""

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        """The config.json to write (e.g. with quantization_config added)."""
        return config

    def describe(self) -> dict[str, Any]:
        """What was done, for llama4ctl.json and reports."""
        return {"format": self.name}

    def default_suffix(self) -> str:
        return self.name.upper()


def group_per_expert(refs: list[tuple[TensorRef, PerExpert]]) -> list[ExpertGroup]:
    """Group per-expert weight refs of one experts module into gate_up and down groups."""
    by_prefix: dict[str, dict[str, dict[int, TensorRef]]] = {}
    for ref, pe in refs:
        by_prefix.setdefault(pe.experts_prefix, {}).setdefault(pe.proj, {})[pe.expert] = ref
    groups = []
    for prefix, projs in by_prefix.items():
        gates, ups, downs = projs.get("gate_proj", {}), projs.get("up_proj", {}), projs.get("down_proj", {})
        if gates or ups:
            groups.append(ExpertGroup(prefix, "gate_up_proj", {e: (gates[e], ups[e]) for e in sorted(gates)}))
        if downs:
            groups.append(ExpertGroup(prefix, "down_proj", {e: (downs[e],) for e in sorted(downs)}))
    return groups
