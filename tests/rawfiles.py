"""Write safetensors files byte by byte, including broken ones, for parser and checkpoint tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def write_tensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32") -> Path:
    """A valid file of float32 (or given-dtype) numpy arrays in insertion order."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    return write_raw(path, header, b"".join(blobs))


def write_checkpoint(root: Path, shards: dict[str, dict[str, np.ndarray]], *, index: bool = True,
                     config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for shard, tensors in shards.items():
        write_tensors(root / shard, tensors)
        weight_map.update(dict.fromkeys(tensors, shard))
    if index:
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    return root
