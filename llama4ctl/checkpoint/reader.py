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
from concurrent.futures import ThreadPoolExecutor
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

    def __init__(self, *, pin_memory: bool = False, read_ahead: bool = False) -> None:
        """pin_memory: tensor reads land in page-locked buffers, for fast copies to a GPU.
        read_ahead: after each tensor read, read the same number of bytes that follow it in a helper thread, so a
        caller walking experts or row blocks in order finds its next read done (one spare buffer per thread)."""
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.pin_memory = pin_memory
        self.read_ahead = read_ahead
        self._ahead = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
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

    def _read_tensor(self, ref: TensorRef, start: int, stop: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Into an uninitialized torch buffer: no zero-fill pass, no copy."""
        stop = self._check_range(ref, start, stop)
        raw = self._take_ahead(ref, start, stop) if self.read_ahead else None
        if raw is None:
            raw = self._filled(ref, start, stop)
        if self.read_ahead and stop > start:
            self._start_ahead(ref, stop, 2 * stop - start)
        return raw.view(torch_dtype(ref.dtype)).reshape(shape)

    def _filled(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor:
        import torch

        raw = torch.empty(stop - start, dtype=torch.uint8, pin_memory=self.pin_memory)
        if stop > start:
            self._read_into(ref, start, memoryview(raw.numpy()).cast("B"))
        return raw

    # ------------------------------------------------------------------------------------ read-ahead
    # Offsets are relative to ref.start but may run past the tensor's end into whatever follows it in the
    # file (often the next tensor a shard's ops read); never past the file's end.

    def _start_ahead(self, ref: TensorRef, start: int, stop: int) -> None:
        key = str(ref.file)
        if ref.start + stop > self._sizes.get(key, 0):
            self._ahead.pending = None
            return
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="read-ahead")
        self._ahead.pending = ((key, ref.start + start, stop - start),
                               self._pool.submit(self._filled, ref, start, stop))

    def _take_ahead(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor | None:
        pending = getattr(self._ahead, "pending", None)
        self._ahead.pending = None
        if pending is None or pending[0] != (str(ref.file), ref.start + start, stop - start):
            return None  # a guess that missed: dropped when its read finishes
        try:
            return pending[1].result()
        except Exception:  # noqa: BLE001 - the plain read below reports the problem properly
            return None

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
