"""Host <-> GPU transfers through a few fixed page-locked buffers, with the next slice loaded ahead.

Why: page-locked memory makes copies DMA-fast, but torch's pinned allocator keeps every block it ever handed out
(rounded up to a power of two), so a run over 168 MB expert slices held 3.5 GB of host memory. Here every
transfer goes through PIECES buffers of PIECE_BYTES: host memory per worker stays at 2 × PIECES × PIECE_BYTES
whatever the tensor size, while the slice after the current one (the next expert, the next row block) is read
into GPU memory by a helper thread during the kernel's work on this one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.reader import Reader, torch_dtype

if TYPE_CHECKING:
    import torch

PIECE_BYTES = 16 << 20
PIECES = 4


class PinnedPool:
    """A fixed set of page-locked byte buffers; a buffer comes back with the CUDA event that frees it."""

    def __init__(self, count: int = PIECES, nbytes: int = PIECE_BYTES, *, pinned: bool = True) -> None:
        """pinned=False gives ordinary buffers: the same code path without a GPU (tests)."""
        import torch

        self._free: queue.SimpleQueue[tuple[torch.Tensor, Any]] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put((torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned), None))

    def take(self, stop: threading.Event | None = None) -> torch.Tensor:
        while True:
            try:
                buf, done = self._free.get(timeout=0.1)
                break
            except queue.Empty:
                if stop is not None and stop.is_set():
                    raise InterruptedError("transfer cancelled") from None
        if done is not None:
            done.synchronize()  # the asynchronous copy that last used it has finished
        return buf

    def give(self, buf: torch.Tensor, done: Any = None) -> None:
        self._free.put((buf, done))


class DeviceLoader:
    """Tensor slices read from the checkpoint straight into GPU memory; used by one worker's compute thread."""

    def __init__(self, reader: Reader, device: str) -> None:
        import torch

        self._cuda = device.startswith("cuda")
        if self._cuda and torch.device(device).index is None:
            device = f"cuda:{torch.cuda.current_device()}"
        self.reader, self.device = reader, device
        self._pool = PinnedPool(pinned=self._cuda)
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-ahead")
        self._ahead: tuple[tuple[str, int, int], Future[torch.Tensor]] | None = None

    def close(self) -> None:
        self._helper.shutdown(wait=True, cancel_futures=True)
        self._ahead = None

    def load(self, ref: TensorRef, start: int, stop: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Bytes [start, stop) of the tensor (relative offsets) as a GPU tensor of `shape`."""
        data = self._take_ahead(ref, start, stop)
        if data is None:
            data = self._to_device(ref, start, stop)
        following = 2 * stop - start  # guess: the caller walks the file in equal steps (experts, row blocks)
        if stop > start and ref.start + following <= self.reader.file_size(ref):
            self._ahead = ((str(ref.file), ref.start + stop, stop - start),
                           self._helper.submit(self._to_device, ref, stop, following))
        return data.view(torch_dtype(ref.dtype)).reshape(shape)

    def _take_ahead(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor | None:
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != (str(ref.file), ref.start + start, stop - start):
            return None  # a guess that missed is dropped when its read finishes
        try:
            return ahead[1].result()
        except Exception:  # noqa: BLE001 - the plain read reports the problem properly
            return None

    def _to_device(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor:
        import torch

        out = torch.empty(stop - start, dtype=torch.uint8, device=self.device)
        if self._cuda:
            torch.cuda.set_device(self.device)  # this helper thread's current device: the events record there
        for off in range(0, stop - start, PIECE_BYTES):
            n = min(PIECE_BYTES, stop - start - off)
            buf = self._pool.take()
            try:
                self.reader.read_into(ref, start + off, memoryview(buf.numpy())[:n])
            except BaseException:
                self._pool.give(buf)
                raise
            out[off : off + n].copy_(buf[:n], non_blocking=self._cuda)
            done = None
            if self._cuda:
                done = torch.cuda.Event()
                done.record()
            self._pool.give(buf, done)
        return out


def host_pieces(chunk: torch.Tensor, pool: PinnedPool,
                stop: threading.Event | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
    """A GPU tensor's bytes as (page-locked piece, release) pairs; call release() once the piece is written."""
    import torch

    flat = chunk.detach().contiguous().reshape(-1)
    flat = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    for off in range(0, flat.numel(), PIECE_BYTES):
        n = min(PIECE_BYTES, flat.numel() - off)
        buf = pool.take(stop)
        buf[:n].copy_(flat[off : off + n])  # waits for the kernels that made the chunk, then one DMA copy
        yield buf[:n], (lambda b=buf: pool.give(b))
