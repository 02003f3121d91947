"""Generic kernels: byte copy, cast, and exact conversion between fused and per-expert expert layouts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama4ctl.checkpoint.reader import BLOCK_BYTES, row_blocks, torch_dtype
from llama4ctl.exec.writer import FileRange
from llama4ctl.plan.ops import TensorOp, kernel


@kernel("copy")
def copy_bytes(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    """Bit-identical: the raw byte range, copied file to file by the kernel (no decode, no user memory)."""
    (src,), (out,) = op.sources, op.outputs
    yield out.name, FileRange(src.file, src.start, src.nbytes)


@kernel("cast")
def cast(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,), (out,) = op.sources, op.outputs
    dt = torch_dtype(out.dtype)
    for start, stop in row_blocks(src, BLOCK_BYTES // 2):
        yield out.name, ctx.reader.read_rows(src, start, stop).to(dt)


@kernel("unfuse")
def unfuse(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    """Expert e of gate_up_proj [E,H,2I] -> gate [I,H], up [I,H]; of down_proj [E,I,H] -> down [H,I]."""
    (src,) = op.sources
    e = op.params["expert"]
    w = ctx.reader.read_expert(src, e)
    outs = op.outputs
    dt = torch_dtype(outs[0].dtype)
    if len(outs) == 2:
        half = w.shape[-1] // 2
        yield outs[0].name, w[:, :half].t().contiguous().to(dt)
        yield outs[1].name, w[:, half:].t().contiguous().to(dt)
    else:
        yield outs[0].name, w.t().contiguous().to(dt)


@kernel("fuse")
def fuse(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    """Per-expert weights -> one fused tensor, written expert by expert (one expert in memory)."""
    import torch

    (out,) = op.outputs
    dt = torch_dtype(out.dtype)
    per_expert = op.params["per_expert"]  # 2 for gate/up pairs, 1 for down
    srcs = op.sources
    for i in range(0, len(srcs), per_expert):
        parts = [ctx.reader.read(r) for r in srcs[i : i + per_expert]]
        if per_expert == 2:
            yield out.name, torch.cat([parts[0].t(), parts[1].t()], dim=1).to(dt)
        else:
            yield out.name, parts[0].t().contiguous().to(dt)
