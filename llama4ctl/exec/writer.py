"""Atomic, resumable output: shards stream into a hidden sibling directory that is renamed at the end.

  DST/../.DST.partial/   .lock (flock held while writing)   progress.json (plan fingerprint + finished shards)
                         model-0000N-of-0000M.safetensors.tmp while being written, renamed when fsynced

A shard is recorded as finished only after it is closed and renamed, so after a crash or kill -9 (the page cache
survives the process) the progress file never claims more than is on disk, and --resume re-checks each
finished shard's size and header. Durability against power loss comes at the end: every file is fsynced
before the directory is renamed into place (one pass, as `cp && sync`, instead of a stall per shard). The
index, config and llama4ctl.json are written last: a directory named DST is always complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama4ctl.errors import OutputError
from llama4ctl.plan.ops import OutputSpec, ShardPlan

PROGRESS_FILE = "progress.json"
STATS_FILE = "stats.json"
LOCK_FILE = ".lock"
LOCK_TRIES = 5


def build_header(outputs: tuple[OutputSpec, ...] | list[OutputSpec]) -> bytes:
    """Deterministic safetensors header for tensors laid out in the given order, padded to 8 bytes."""
    doc: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for o in outputs:
        doc[o.name] = {"dtype": o.dtype, "shape": list(o.shape), "data_offsets": [offset, offset + o.nbytes]}
        offset += o.nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


@dataclass(frozen=True)
class FileRange:
    """A chunk that is a byte range of a source file: copied in the kernel (copy_file_range), never read in."""

    path: Path
    offset: int
    length: int


def _copy_range(src: FileRange, dst_fd: int) -> None:
    fd = os.open(src.path, os.O_RDONLY)
    try:
        done = 0
        while done < src.length:
            try:
                n = os.copy_file_range(fd, dst_fd, src.length - done, src.offset + done)
            except OSError:  # not supported here (old kernel, some filesystems): plain reads and writes
                n = os.write(dst_fd, os.pread(fd, min(src.length - done, 1 << 26), src.offset + done))
            if n == 0:
                raise OutputError(f"source ended while copying {src.length} bytes at offset {src.offset}", src.path)
            done += n
    finally:
        os.close(fd)


def _as_bytes(chunk: Any) -> memoryview:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return memoryview(chunk).cast("B")
    import torch  # a tensor

    t = chunk.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


class ShardFile:
    """Writes one planned shard: header first, then each output's bytes in plan order."""

    def __init__(self, tmp_path: Path, final_path: Path, outputs: tuple[OutputSpec, ...]):
        self.tmp_path, self.final_path, self.outputs = tmp_path, final_path, outputs
        self._i = 0
        self._written = 0
        self.bytes_written = 0
        self._f = open(tmp_path, "wb", buffering=1 << 20)  # noqa: SIM115
        self._f.write(build_header(outputs))

    def write(self, name: str, chunk: Any) -> int:
        data = chunk if isinstance(chunk, FileRange) else _as_bytes(chunk)
        while self._i < len(self.outputs) and self.outputs[self._i].nbytes == 0 and self._written == 0 \
                and self.outputs[self._i].name != name:
            self._i += 1  # empty tensors carry no bytes
        if self._i >= len(self.outputs) or self.outputs[self._i].name != name:
            expected = self.outputs[self._i].name if self._i < len(self.outputs) else "nothing"
            raise OutputError(f"internal: kernel emitted {name!r} while {expected!r} was expected", self.tmp_path)
        spec = self.outputs[self._i]
        size = data.length if isinstance(data, FileRange) else len(data)
        if self._written + size > spec.nbytes:
            raise OutputError(f"internal: kernel emitted too many bytes for {name!r}", self.tmp_path)
        if isinstance(data, FileRange):
            self._f.flush()
            _copy_range(data, self._f.fileno())
        else:
            self._f.write(data)
        self._written += size
        self.bytes_written += size
        if self._written == spec.nbytes:
            self._i, self._written = self._i + 1, 0
        return size

    def close(self) -> None:
        while self._i < len(self.outputs) and self.outputs[self._i].nbytes == 0:
            self._i += 1
        if self._i != len(self.outputs):
            self.abort()
            raise OutputError(f"internal: tensor {self.outputs[self._i].name!r} was not fully written", self.tmp_path)
        self._f.close()  # durability comes at commit(): one fsync pass over every file before the rename
        os.replace(self.tmp_path, self.final_path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


class OutputDir:
    """The hidden partial directory for DST, its lock, and its progress file."""

    def __init__(self, dst: str | Path, *, fingerprint: str, overwrite: bool = False, resume: bool = False):
        self.dst = Path(dst).absolute()
        self.partial = self.dst.parent / f".{self.dst.name}.partial"
        self.fingerprint = fingerprint
        self.overwrite, self.resume = overwrite, resume
        self._lock_fd: int | None = None
        self._finished: dict[str, int] = {}
        self._mutex = threading.Lock()

    # ------------------------------------------------------------------------------------- checks

    def check_destination(self) -> bool:
        """Before planning any writes: True if DST is already complete and --resume was given."""
        if self.dst.exists():
            if self.resume and not self.overwrite and (self.dst / "llama4ctl.json").is_file():
                (self.dst / LOCK_FILE).unlink(missing_ok=True)  # left by a run killed just after its rename
                return True
            if not self.overwrite:
                raise OutputError("destination already exists", self.dst,
                                  hint="pass --overwrite to replace it, or choose another destination")
            if not self.dst.is_dir():
                raise OutputError("destination exists and is not a directory", self.dst)
        if self.partial.exists() and not (self.resume or self.overwrite):
            if _lock_held(self.partial / LOCK_FILE):
                raise OutputError("another llama4ctl run is writing this destination (lock held)", self.partial,
                                  hint="wait for it to finish, or stop it")
            raise OutputError("an interrupted run left partial output here", self.partial,
                              hint="pass --resume to continue it, or --overwrite to start again")
        if not self.dst.parent.is_dir():
            raise OutputError("parent directory does not exist", self.dst.parent)
        return False

    # ---------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        for attempt in range(2):
            try:
                self.partial.mkdir(exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create the output directory: {e.strerror}", self.partial) from None
            try:
                self._open()
                return
            except FileNotFoundError as e:
                # the partial directory was renamed away under us: another run into DST just finished
                self.release()
                if self.dst.exists() and not self.overwrite:
                    raise OutputError("destination already exists (another llama4ctl run just finished it)",
                                      self.dst, hint="pass --overwrite to replace it") from None
                if attempt:
                    raise OutputError(f"write failed: {e.strerror or e}", e.filename or self.partial) from None
            except OSError as e:  # e.g. no space left for the lock or the first progress file
                self.release()
                raise OutputError(f"write failed: {e.strerror or e}", e.filename or self.partial,
                                  hint="fix the cause, then re-run with --resume to continue") from None

    def _open(self) -> None:
        lock = self.partial / LOCK_FILE
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        for attempt in range(LOCK_TRIES):  # a few tries: another run's check_destination probes it briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_TRIES - 1:
                    os.close(fd)
                    raise OutputError("another llama4ctl run is writing this destination (lock held)",
                                      self.partial, hint="wait for it to finish, or stop it") from None
                time.sleep(0.02)
        self._lock_fd = fd
        try:  # the lock is ours only if the partial directory still holds that very file (not renamed into DST)
            held, current = os.fstat(fd), os.stat(lock)
            if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
                raise FileNotFoundError(2, "lock file replaced", str(lock))
        except FileNotFoundError:
            self.release()
            raise
        progress = self.partial / PROGRESS_FILE
        if self.resume and progress.is_file():
            try:
                doc = json.loads(progress.read_text())
            except (OSError, json.JSONDecodeError):
                doc = {}
            if doc.get("fingerprint") != self.fingerprint:
                self.release()
                raise OutputError("the partial output was made from a different source or different options",
                                  self.partial, hint="re-run with the original options, or use --overwrite")
            self._finished = {k: int(v) for k, v in doc.get("finished", {}).items()}
        else:
            for child in self.partial.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            self._finished = {}
            self._save_progress()

    def is_finished(self, shard: ShardPlan) -> bool:
        """A shard counts as finished only if recorded, present, of the planned size and with the planned header."""
        if shard.filename not in self._finished:
            return False
        path = self.partial / shard.filename
        header = build_header(shard.outputs)
        try:
            with open(path, "rb") as f:
                ok = os.fstat(f.fileno()).st_size == len(header) + shard.nbytes and f.read(len(header)) == header
        except OSError:
            ok = False
        if not ok:
            with self._mutex:
                self._finished.pop(shard.filename, None)
        return ok

    def open_shard(self, shard: ShardPlan) -> ShardFile:
        return ShardFile(self.partial / (shard.filename + ".tmp"), self.partial / shard.filename, shard.outputs)

    def mark_finished(self, shard: ShardPlan) -> None:
        with self._mutex:
            self._finished[shard.filename] = shard.nbytes
            self._save_progress()

    def finished_bytes(self) -> int:
        return sum(self._finished.values())

    def _save_progress(self) -> None:
        tmp = self.partial / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "finished": self._finished}))
        os.replace(tmp, self.partial / PROGRESS_FILE)

    def write_json(self, name: str, doc: Any) -> None:
        (self.partial / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def write_text(self, name: str, text: str) -> None:
        (self.partial / name).write_text(text)

    def copy_file(self, src: Path, name: str | None = None) -> None:
        shutil.copyfile(src, self.partial / (name or src.name))

    def commit(self) -> None:
        """Rename the finished partial directory into place (replacing DST with --overwrite)."""
        for stray in self.partial.glob("*.tmp"):
            stray.unlink()
        for child in self.partial.iterdir():
            if child.is_file():
                fd = os.open(child, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        # only now: a failed fsync above leaves the progress file, so --resume keeps every finished shard
        (self.partial / PROGRESS_FILE).unlink(missing_ok=True)
        (self.partial / STATS_FILE).unlink(missing_ok=True)  # the executor's per-shard figures, like progress
        _fsync_dir(self.partial)
        old = None
        if self.dst.exists():
            old = self.dst.parent / f".{self.dst.name}.old-{os.getpid()}"
            os.replace(self.dst, old)
        os.replace(self.partial, self.dst)
        _fsync_dir(self.dst.parent)
        (self.dst / LOCK_FILE).unlink(missing_ok=True)
        self.release()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock_held(lock: Path) -> bool:
    """Whether a live process holds the lock (probed with a non-blocking try, released at once)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
