"""Slice reads from safetensors shards with memory proportional to what was asked.

Safetensors tensors are row-major, so one expert of a fused [E, H, 2I] tensor, a block of rows, or any byte
range is a contiguous span of the file: a positioned read (pread) fetches exactly that span, never a whole
shard or a whole fused tensor. torch is imported lazily so header-only commands stay fast.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from llama4ctl.checkpoint.header import DTYPE_BITS, TensorRef
from llama4ctl.errors import CheckpointError

if TYPE_CHECKING:
    import torch

BLOCK_BYTES = 64 * 1024 * 1024
_MAX_OPEN = 8


def torch_dtype(dtype: str) -> torch.dtype:
    import torch

    table = {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
        "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
        "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "C64": torch.complex64,
    }
    if dtype not in table:
        raise CheckpointError(f"dtype {dtype} cannot be decoded into a torch tensor (byte copies still work)")
    return table[dtype]


def safetensors_dtype(dt: torch.dtype) -> str:
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
        torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
        torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }
    return table[dt]


class Reader:
    """Positioned reads over a checkpoint's shard files; safe to share between threads."""

    def __init__(self) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self, ref: TensorRef) -> tuple[str, int]:
        """(key, fd) of the tensor's file, held open until _release(key); idle files beyond _MAX_OPEN are closed."""
        key = str(ref.file)
        with self._lock:
            fd = self._fds.get(key)
            if fd is None:
                try:
                    fd = os.open(key, os.O_RDONLY)
                except OSError as e:
                    raise CheckpointError(f"cannot open: {e.strerror}", ref.file) from None
                self._fds[key] = fd
                self._sizes[key] = os.fstat(fd).st_size
                idle = [k for k in self._fds if not self._in_use.get(k) and k != key]
                for k in idle[: max(0, len(self._fds) - _MAX_OPEN)]:
                    os.close(self._fds.pop(k))
            else:
                self._fds.move_to_end(key)
            self._in_use[key] = self._in_use.get(key, 0) + 1
            return key, fd

    def _release(self, key: str) -> None:
        with self._lock:
            self._in_use[key] -= 1

    # ---------------------------------------------------------------------------------------- bytes

    def read_bytes(self, ref: TensorRef, start: int = 0, stop: int | None = None) -> bytearray:
        """Bytes [start, stop) of the tensor's data (offsets relative to the tensor)."""
        stop = self._check_range(ref, start, stop)
        buf = bytearray(stop - start)
        self._read_into(ref, start, memoryview(buf))
        return buf

    def _check_range(self, ref: TensorRef, start: int, stop: int | None) -> int:
        stop = ref.nbytes if stop is None else stop
        if not 0 <= start <= stop <= ref.nbytes:
            raise ValueError(f"byte range [{start}, {stop}) outside tensor {ref.name} of {ref.nbytes} bytes")
        return stop

    def _read_into(self, ref: TensorRef, start: int, view: memoryview) -> None:
        key, fd = self._acquire(ref)
        try:
            pos, got = ref.start + start, 0
            while got < len(view):
                n = os.preadv(fd, [view[got:]], pos + got)
                if n == 0:
                    raise CheckpointError(f"file ended while reading tensor {ref.name!r} (truncated?)", ref.file)
                got += n
        finally:
            self._release(key)

    def read_into(self, ref: TensorRef, start: int, view: memoryview) -> None:
        """Fill `view` from the tensor's data at byte `start`; may run past the tensor's end, never the file's."""
        if ref.start + start + len(view) > self.file_size(ref):
            raise ValueError(f"read of {len(view)} bytes at {start} runs past the end of {ref.file}")
        self._read_into(ref, start, view)

    def file_size(self, ref: TensorRef) -> int:
        key, _ = self._acquire(ref)
        self._release(key)
        return self._sizes[key]

    def _read_tensor(self, ref: TensorRef, start: int, stop: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Into an uninitialized torch buffer: no zero-fill pass, no copy."""
        import torch

        stop = self._check_range(ref, start, stop)
        raw = torch.empty(stop - start, dtype=torch.uint8)
        if stop > start:
            self._read_into(ref, start, memoryview(raw.numpy()).cast("B"))
        return raw.view(torch_dtype(ref.dtype)).reshape(shape)

    # -------------------------------------------------------------------------------------- tensors

    def read(self, ref: TensorRef) -> torch.Tensor:
        return self._read_tensor(ref, 0, ref.nbytes, ref.shape)

    def read_rows(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along dim 0."""
        row = _row_bytes(ref)
        return self._read_tensor(ref, start * row, stop * row, (stop - start, *ref.shape[1:]))

    def read_expert(self, ref: TensorRef, e: int) -> torch.Tensor:
        """Expert e of a fused [E, ...] tensor: one contiguous slice."""
        if not 0 <= e < ref.shape[0]:
            raise ValueError(f"expert {e} out of range for {ref.name} with {ref.shape[0]} experts")
        return self.read_rows(ref, e, e + 1)[0]


def row_blocks(ref: TensorRef, max_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """Row ranges along dim 0 of at most max_bytes each (at least one row)."""
    if not ref.shape:
        yield 0, 1
        return
    rows = ref.shape[0]
    per = max(1, max_bytes // max(1, _row_bytes(ref)))
    for start in range(0, rows, per):
        yield start, min(start + per, rows)


def _row_bytes(ref: TensorRef) -> int:
    bits = DTYPE_BITS[ref.dtype] * math.prod(ref.shape[1:])
    if bits % 8:
        raise ValueError(f"rows of {ref.name} ({ref.dtype}) are not byte aligned")
    return bits // 8
