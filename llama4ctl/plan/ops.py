"""Frozen descriptions of work: which source bytes become which output tensors, by which kernel.

An op names its kernel by a string so the plan stays printable and free of I/O; kernels are registered by
exec/kernels.py (generic copies, casts, expert (un)fusing) and by format files (quantization).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llama4ctl.checkpoint.header import TensorRef, expected_nbytes
from llama4ctl.errors import PlanError


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return expected_nbytes(self.dtype, self.shape)


@dataclass(frozen=True, eq=False)
class TensorOp:
    """Read `sources` (optionally one expert of each), run `kernel`, emit `outputs` in order."""

    kernel: str
    sources: tuple[TensorRef, ...]
    outputs: tuple[OutputSpec, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    component: str = "other"

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)

    @property
    def source_bytes(self) -> int:
        expert = self.params.get("expert")
        total = sum(s.nbytes for s in self.sources)
        return total // self.sources[0].shape[0] if expert is not None else total

    def describe(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "component": self.component,
            "sources": [s.name for s in self.sources],
            "params": {k: v for k, v in self.params.items() if isinstance(v, (int, float, str, bool, type(None)))},
            "outputs": [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape)} for o in self.outputs],
        }


# A chunk is bytes-like or a torch tensor; kernels yield (output name, chunk) covering each output in order.
Kernel = Callable[[Any, TensorOp], Iterator[tuple[str, Any]]]
KERNELS: dict[str, Kernel] = {}


def kernel(name: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        if name in KERNELS and KERNELS[name] is not fn:
            raise PlanError(f"kernel {name!r} registered twice")
        KERNELS[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class ShardPlan:
    filename: str
    ops: tuple[TensorOp, ...]

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        return tuple(o for op in self.ops for o in op.outputs)

    @property
    def nbytes(self) -> int:
        return sum(op.nbytes for op in self.ops)
