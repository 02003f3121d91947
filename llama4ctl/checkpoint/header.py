"""Parse one .safetensors header into TensorRefs without reading tensor bytes.

The header length is untrusted: it is bounded (100 MB, like safetensors itself) and checked against the file
size before anything is allocated, and every offset is validated so later reads never leave the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from llama4ctl.errors import CheckpointError

MAX_HEADER_BYTES = 100_000_000

# safetensors dtype name -> bits per element (safetensors/src/tensor.rs, enum Dtype)
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: `start`/`end` are absolute file offsets (end exclusive)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def shard(self) -> str:
        return self.file.name


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: tuple[TensorRef, ...]  # in file (offset) order
    metadata: dict[str, str]
    data_start: int
    file_size: int


def expected_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    return (bits + 7) // 8


def read_header(path: str | Path) -> Header:
    """Read and validate a safetensors header; raises CheckpointError naming the file and the problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"not a safetensors file: {file_size} bytes, too short for a header", path)
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit", path)
            if 8 + n > file_size:
                raise CheckpointError(f"header length {n} runs past the end of the file ({file_size} bytes)", path)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", path) from None
    return parse_header_bytes(raw, path=path, file_size=file_size)


def parse_header_bytes(raw: bytes, *, path: Path, file_size: int | None) -> Header:
    """Validate header JSON; with `file_size` None (remote headers) the end-of-file check is skipped."""
    n = len(raw)
    if not raw.lstrip(b" ").startswith(b"{"):
        raise CheckpointError("invalid header: does not start with '{'", path)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"invalid header JSON: {e}", path) from None
    if not isinstance(doc, dict):
        raise CheckpointError("invalid header: top level is not an object", path)

    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("invalid header: __metadata__ must map strings to strings", path)

    data_start = 8 + n
    entries: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise CheckpointError(f"invalid header entry for tensor {name!r}", path)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise CheckpointError(f"tensor {name!r} has unknown dtype {dtype!r}", path)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"tensor {name!r} has an invalid shape {shape!r}", path)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CheckpointError(f"tensor {name!r} has invalid data_offsets {offsets!r}", path)
        shape_t = tuple(shape)
        want = expected_nbytes(dtype, shape_t)
        if offsets[1] - offsets[0] != want:
            raise CheckpointError(
                f"tensor {name!r}: byte range {offsets[1] - offsets[0]} does not match {dtype} × {list(shape_t)}"
                f" = {want} bytes",
                path,
            )
        entries.append((offsets[0], offsets[1], name, dtype, shape_t))

    entries.sort(key=lambda e: (e[0], e[1]))
    cursor = 0
    for begin, end, name, _, _ in entries:
        if begin < cursor:
            raise CheckpointError(f"tensor {name!r} overlaps the previous tensor (offset {begin} < {cursor})", path)
        if begin > cursor:
            raise CheckpointError(f"gap of {begin - cursor} bytes before tensor {name!r} (offset {begin})", path)
        cursor = end
    if file_size is not None and data_start + cursor != file_size:
        if data_start + cursor > file_size:
            raise CheckpointError(
                f"tensor data ends at byte {data_start + cursor}, beyond the end of the file ({file_size} bytes)",
                path,
            )
        raise CheckpointError(
            f"{file_size - data_start - cursor} trailing bytes after the last tensor are not indexed", path
        )

    tensors = tuple(
        TensorRef(name, dtype, shape, path, data_start + begin, data_start + end)
        for begin, end, name, dtype, shape in entries
    )
    return Header(path=path, tensors=tensors, metadata=metadata, data_start=data_start, file_size=file_size or 0)
