"""Split an ordered list of sizes into output shards; plain integers in, plain integers out.

Semantics follow huggingface_hub's `split_state_dict_into_shards_factory` (greedy, in order, decimal size
units, a unit larger than the limit gets a shard of its own) with one deliberate difference: order is never
changed. huggingface_hub appends an oversized tensor's shard ahead of the shard being filled; here the current
shard is closed first, so shards hold consecutive units and reads stay sequential. Units are op output groups
(a weight and its scale stay together), so no op is ever split across two shards.
"""

from __future__ import annotations

import re

from llama4ctl.errors import PlanError

_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(TB|GB|MB|KB|B)?\s*$", re.IGNORECASE)


def parse_size(size: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as transformers and huggingface_hub); ints pass through."""
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE.match(size)
        if not m:
            raise PlanError(f"invalid size {size!r}: use a number with KB, MB, GB or TB (decimal units), e.g. 5GB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])
    if value <= 0:
        raise PlanError(f"invalid size {size!r}: must be positive")
    return value


def split_sizes(sizes: list[int], max_shard_size: int) -> list[list[int]]:
    """Indices of `sizes` grouped into shards of at most max_shard_size bytes (oversized units alone)."""
    shards: list[list[int]] = []
    current: list[int] = []
    current_size = 0
    for i, size in enumerate(sizes):
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(i)
        current_size += size
        if current_size >= max_shard_size:
            shards.append(current)
            current, current_size = [], 0
    if current:
        shards.append(current)
    return shards


def shard_file_names(count: int) -> list[str]:
    """transformers' names: a single `model.safetensors`, else `model-0000N-of-0000M.safetensors`."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
