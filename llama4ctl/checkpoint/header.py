"""Parse one .safetensors header into TensorRefs without reading tensor bytes.

The header length is untrusted: it is bounded (100 MB, like safetensors itself) and checked against the file
size before anything is allocated, and every offset is validated so later reads never leave the file. The JSON is
held to what safetensors' own (Rust, serde_json) reader accepts: no NaN/Infinity, duplicate keys, lone surrogates,
numbers out of range or nesting deeper than serde_json's limit; shapes whose element count overflows 64 bits and
sub-byte tensors that do not end on a byte are refused, so a file llama4ctl accepts is one transformers can load.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from llama4ctl.errors import CheckpointError

MAX_HEADER_BYTES = 100_000_000
MAX_JSON_DEPTH = 127  # serde_json refuses a 128th level of nesting
_U64 = 1 << 64  # shapes and offsets are usize in safetensors
_LONE_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")

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
            n = header_length(f.read(8), path=path, file_size=file_size)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror or e}", path) from None
    if len(raw) != n:
        raise CheckpointError(f"file ended while reading its {n}-byte header (changed while being read?)", path)
    return parse_header_bytes(raw, path=path, file_size=file_size)


def header_length(prefix: bytes, *, path: str | Path, file_size: int | None) -> int:
    """The header length from a file's first 8 bytes, checked before anything is allocated for the header.

    Shared by local files and Hub files (where `file_size` is None when the server does not say it).
    """
    if len(prefix) < 8:
        size = file_size if file_size is not None else len(prefix)
        raise CheckpointError(f"not a safetensors file: {size} bytes, too short for a header", path)
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit", path)
    if file_size is not None and 8 + n > file_size:
        raise CheckpointError(f"header length {n} runs past the end of the file ({file_size} bytes)", path)
    return n


class _Invalid(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Invalid(f"duplicate key {short_repr(k)}")
            seen.add(k)
    return d


def _no_constant(name: str) -> object:
    raise _Invalid(f"{name} is not valid JSON")


def _json_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise _Invalid(f"number {short_repr(text)} out of range")
    return v


def _json_int(text: str) -> int | float:
    # Beyond 20 characters a number cannot be a u64: it is a float to serde_json too (and Python's int() of a
    # long digit string is slow and limited). "-0" is a float to serde_json, never a valid size or offset.
    if len(text) > 20 or text == "-0":
        return _json_float(text)
    return int(text)


def _depth(value: object) -> int:
    """Nesting depth of a JSON value (a scalar is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def load_json(raw: bytes, *, what: str, path: str | Path) -> object:
    """Untrusted JSON held to serde_json's rules; every failure is a CheckpointError naming `path`."""
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                         parse_float=_json_float, parse_int=_json_int)
        if _LONE_SURROGATE_HINT.search(raw):
            json.dumps(doc, ensure_ascii=False).encode("utf-8")  # a lone surrogate cannot be encoded
    except UnicodeError as e:
        raise CheckpointError(f"invalid {what}: not valid UTF-8 ({e.reason})", path) from None
    except RecursionError:
        raise CheckpointError(f"invalid {what} JSON: nested deeper than {MAX_JSON_DEPTH} levels", path) from None
    except ValueError as e:  # json.JSONDecodeError and _Invalid
        raise CheckpointError(f"invalid {what} JSON: {e}", path) from None
    return doc


def short_repr(value: object, limit: int = 120) -> str:
    """repr() for messages, cut short: names and shapes in a hostile header can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def parse_header_bytes(raw: bytes, *, path: Path, file_size: int | None) -> Header:
    """Validate header JSON; with `file_size` None (remote headers) the end-of-file check is skipped."""
    n = len(raw)
    if not raw.lstrip(b" ").startswith(b"{"):
        raise CheckpointError("invalid header: does not start with '{'", path)
    doc = load_json(raw, what="header", path=path)
    if not isinstance(doc, dict):
        raise CheckpointError("invalid header: top level is not an object", path)

    metadata = doc.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("invalid header: __metadata__ must map strings to strings", path)

    data_start = 8 + n
    entries: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise CheckpointError(f"invalid header entry for tensor {short_repr(name)}", path)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise CheckpointError(f"tensor {short_repr(name)} has unknown dtype {short_repr(dtype)}", path)
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _U64 for d in shape):
            raise CheckpointError(f"tensor {short_repr(name)} has an invalid shape {short_repr(shape)}", path)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < _U64 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CheckpointError(f"tensor {short_repr(name)} has invalid data_offsets {short_repr(offsets)}", path)
        numel = 1
        for d in shape:  # as safetensors does: every partial product must fit in 64 bits
            numel *= d
            if numel >= _U64:
                raise CheckpointError(f"tensor {short_repr(name)}: shape {short_repr(shape)} overflows 64 bits", path)
        bits = DTYPE_BITS[dtype] * numel
        if bits % 8:
            raise CheckpointError(f"tensor {short_repr(name)}: {numel} × {dtype} does not end on a byte boundary", path)
        shape_t = tuple(shape)
        want = bits // 8
        if offsets[1] - offsets[0] != want:
            raise CheckpointError(
                f"tensor {short_repr(name)}: byte range {offsets[1] - offsets[0]} does not match {dtype} × "
                f"{short_repr(list(shape_t))} = {want} bytes",
                path,
            )
        if len(info) > 3:  # unknown fields are ignored, but must be JSON that safetensors can read
            for key, value in info.items():
                if key not in ("dtype", "shape", "data_offsets") and _depth(value) > MAX_JSON_DEPTH - 2:
                    raise CheckpointError(f"invalid header JSON: nested deeper than {MAX_JSON_DEPTH} levels", path)
        entries.append((offsets[0], offsets[1], name, dtype, shape_t))

    entries.sort(key=lambda e: (e[0], e[1]))
    cursor = 0
    for begin, end, name, _, _ in entries:
        if begin < cursor:
            raise CheckpointError(f"tensor {short_repr(name)} overlaps the previous tensor (offset {begin} < {cursor})",
                                  path)
        if begin > cursor:
            raise CheckpointError(f"gap of {begin - cursor} bytes before tensor {short_repr(name)} (offset {begin})",
                                  path)
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
