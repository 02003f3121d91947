"""This rank's shard of a model loaded tensor parallel (transformers' tp_plan under torchrun), for the FP8 paths.

transformers 5.17 loads fbgemm_fp8 and compressed-tensors checkpoints under tp_plan="auto" with every weight and
scale sharded as DTensors, but cannot run them: fbgemm's kernels get mixed DTensor/Tensor arguments and
compressed-tensors' first-forward decompress hook fails on TP-wrapped modules. llama4ctl instead takes each
rank's local shards into its own modules (the fast FP8 MoE, BF16 dense Linears) and does the one all-reduce
each needs itself, the way transformers' local inference path does for BF16 Linears.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_sharded(t: Any) -> bool:
    """A DTensor split over ranks (not merely replicated)."""
    return type(t).__name__ == "DTensor" and any(not p.is_replicate() for p in t.placements)


def is_distributed(t: Any) -> bool:
    return type(t).__name__ == "DTensor"


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of t (all of it when t is a plain tensor)."""
    return t.to_local() if is_distributed(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """All of t on every rank (a collective for a sharded DTensor: every rank must call it in the same order)."""
    return t.full_tensor() if is_distributed(t) else t


def group(t: Any) -> Any:
    """The process group t is sharded over."""
    return t.device_mesh.get_group()


def local_offsets(t: torch.Tensor) -> tuple[int, ...]:
    """Where this rank's part of t starts in the whole tensor, per dim (zeros for a plain tensor)."""
    if not is_distributed(t):
        return (0,) * t.dim()
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(offsets)


def linear_split(weight: torch.Tensor) -> str | None:
    """How a Linear weight [out, in] is split: 'out' (colwise), 'in' (rowwise) or None (whole on every rank)."""
    if not is_sharded(weight):
        return None
    (placement,) = weight.placements
    dim = placement.dim % 2
    return "out" if dim == 0 else "in"


class ShardedLinear(nn.Module):
    """A BF16 Linear holding one rank's shard, computed locally as transformers' TP inference path does:
    split 'out' -> this rank's output features (the next layer takes them as they are); split 'in' -> a partial
    sum, all-reduced, then the bias once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, split: str, process_group: Any):
        super().__init__()
        self.split, self.process_group = split, process_group
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def extra_repr(self) -> str:
        return f"local in={self.in_features}, out={self.out_features}, split={self.split}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split == "out":
            return nn.functional.linear(x, self.weight, self.bias)
        y = nn.functional.linear(x, self.weight)
        torch.distributed.all_reduce(y, group=self.process_group)
        return y if self.bias is None else y + self.bias


def drop_compressed_tensors_hook(model: nn.Module) -> bool:
    """Remove compressed-tensors' decompress-on-first-forward hook (it fails under TP); True if there was one.
    Only for a model whose compressed Linears llama4ctl has already replaced."""
    found = [k for k, fn in model._forward_pre_hooks.items() if getattr(fn, "__name__", "") == "ct_decompress_hook"]
    for k in found:
        del model._forward_pre_hooks[k]
        model._forward_pre_hooks_with_kwargs.pop(k, None)
    return bool(found)
