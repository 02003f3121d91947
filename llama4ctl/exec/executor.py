"""Run a plan: the only place tensor data is materialized.

validate everything -> check free disk -> for each unfinished shard: run its ops, stream every chunk into the
shard file, drop it -> write index/config/extras/provenance -> rename into place.
Workers run whole shards in parallel (threads: reads, writes and torch kernels release the GIL); memory is
bounded by one op's working set per worker (one expert slice, or one 64 MB block).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama4ctl import __version__
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.reader import Reader
from llama4ctl.errors import OutputError, PlanError
from llama4ctl.exec.writer import STATS_FILE, OutputDir, build_header
from llama4ctl.plan.ops import KERNELS, ShardPlan
from llama4ctl.plan.planner import Plan
from llama4ctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    import torch


@dataclass
class Recorder:
    """Collects per-tensor statistics that kernels report (e.g. quantization error)."""

    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, **values: float) -> None:
        with self._lock:
            self.stats.setdefault(name, {}).update(values)


@dataclass
class OpContext:
    """What a kernel gets: reads land on `device` (through the staging loader on a GPU)."""

    reader: Reader
    device: str = "cpu"
    recorder: Recorder = field(default_factory=Recorder)
    loader: Any = None  # staging.DeviceLoader on a GPU
    host_pool: Any = None  # staging.PinnedPool for chunks coming back from a GPU

    def load(self, ref: TensorRef) -> torch.Tensor:
        if self.loader is None:
            return self.reader.read(ref)
        return self.loader.load(ref, 0, ref.nbytes, ref.shape)

    def load_rows(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor:
        if self.loader is None:
            return self.reader.read_rows(ref, start, stop)
        row = ref.nbytes // ref.shape[0]
        return self.loader.load(ref, start * row, stop * row, (stop - start, *ref.shape[1:]))

    def load_expert(self, ref: TensorRef, e: int) -> torch.Tensor:
        if self.loader is None:
            return self.reader.read_expert(ref, e)
        if not 0 <= e < ref.shape[0]:
            raise ValueError(f"expert {e} out of range for {ref.name} with {ref.shape[0]} experts")
        return self.load_rows(ref, e, e + 1)[0]

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()


@dataclass
class RunResult:
    dst: Path
    already_complete: bool = False
    shards_written: int = 0
    shards_skipped: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    recorder: Recorder = field(default_factory=Recorder)
    shard_devices: dict[str, str] = field(default_factory=dict)


def validate(plan: Plan) -> None:
    import llama4ctl.exec.kernels  # noqa: F401  (registers the generic kernels)

    for op in plan.ops:
        if op.kernel not in KERNELS:
            raise PlanError(f"internal: no kernel registered for {op.kernel!r}")


def check_free_disk(dst: Path, needed: int) -> None:
    probe = dst.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise OutputError(
            f"not enough free disk: needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free "
            f"(short by {(needed - free) / 1e9:.2f} GB)",
            probe,
        )


def provenance(plan: Plan, command: list[str] | None) -> dict[str, Any]:
    return {
        "llama4ctl_version": __version__,
        "command": command if command is not None else sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": plan.source.source, "revision": plan.source.revision},
        "operation": plan.format.describe(),
        "output": {"bytes": plan.total_bytes, "shards": len(plan.shards), "tensors": len(plan.outputs)},
        "dropped": plan.dropped,
        "fingerprint": plan.fingerprint(),  # `--resume` on a complete output checks it was made this way
        "complete": True,
    }


def execute(
    plan: Plan,
    dst: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    workers: int = 1,
    devices: tuple[str, ...] = ("cpu",),
    progress: Progress | None = None,
    command: list[str] | None = None,
    extra_outputs: Callable[[OutputDir, Recorder], None] | None = None,
) -> RunResult:
    """Write `plan` to `dst` atomically. `extra_outputs` adds files (reports) before the final rename.

    With several `devices` (one per GPU) there is one worker per device; otherwise `workers` share devices[0].
    """
    progress = progress or NullProgress()
    validate(plan)
    out = OutputDir(dst, fingerprint=plan.fingerprint(), overwrite=overwrite, resume=resume)
    result = RunResult(out.dst)
    if resume and not overwrite:
        _check_same_plan(out.dst, plan)
    if out.check_destination():
        result.already_complete = True
        return result

    t0 = time.perf_counter()
    out.open()
    try:
        todo = [s for s in plan.shards if not out.is_finished(s)]
        kept_stats = _ShardStats(out.partial, fresh=not resume)
        for shard in plan.shards:
            if shard not in todo:
                for name, values in kept_stats.of(shard).items():
                    result.recorder.record(name, **values)
        result.shards_skipped = len(plan.shards) - len(todo)
        needed = sum(len(build_header(s.outputs)) + s.nbytes for s in todo) + (1 << 20)
        check_free_disk(out.dst, needed)

        reader = Reader()
        if len(devices) > 1:
            workers = len(devices)
        free_devices: queue.SimpleQueue[str] = queue.SimpleQueue()
        for i in range(max(1, workers)):
            free_devices.put(devices[i % len(devices)])
        local = threading.local()
        contexts: list[OpContext] = []
        progress.start(f"writing {out.dst.name}", sum(s.nbytes for s in todo))

        def write_shard(shard: ShardPlan) -> int:
            if not hasattr(local, "ctx"):
                local.ctx = OpContext(reader, device=free_devices.get(), recorder=result.recorder)
                contexts.append(local.ctx)
                if local.ctx.device.startswith("cuda"):
                    import torch

                    from llama4ctl.exec.staging import DeviceLoader, PinnedPool

                    # the current CUDA device is per thread; kernels such as fbgemm's launch on it
                    torch.cuda.set_device(local.ctx.device)
                    local.ctx.loader = DeviceLoader(reader, local.ctx.device)
                    local.ctx.host_pool = PinnedPool()
            ctx = local.ctx
            f = out.open_shard(shard)
            try:
                unsynced = 0
                for name, chunk, release in _computed_ahead(ctx, shard):
                    n = f.write(name, chunk)
                    if release is not None:
                        release()
                    progress.advance(n)
                    unsynced += n
                    if unsynced >= SYNC_EVERY_BYTES:
                        syncer.sync(f.tmp_path)
                        unsynced = 0
                f.close()
            except BaseException:
                f.abort()
                raise
            syncer.sync(f.final_path)
            kept_stats.save(shard, result.recorder)  # before marking it finished: a resume needs its figures
            out.mark_finished(shard)
            result.shard_devices[shard.filename] = ctx.device
            return f.bytes_written

        syncer = _BackgroundSync()
        try:
            if workers <= 1 or len(todo) <= 1:
                written = [write_shard(s) for s in todo]
            else:
                _limit_torch_threads(workers)
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    written = list(pool.map(write_shard, todo))
            syncer.wait()
        finally:
            syncer.close()
            for ctx in contexts:
                ctx.close()
            reader.close()
        result.shards_written = len(todo)
        result.bytes_written = sum(written)

        _write_metadata(plan, out, command)
        if extra_outputs is not None:
            extra_outputs(out, result.recorder)
        out.commit()
        progress.finish()
    except OSError as e:
        out.release()
        raise OutputError(f"write failed: {e.strerror or e}", e.filename or out.partial,
                          hint="fix the cause, then re-run with --resume to continue") from None
    except BaseException:
        out.release()
        raise
    result.seconds = time.perf_counter() - t0
    return result


def _check_same_plan(dst: Path, plan: Plan) -> None:
    """`--resume` on a complete DST succeeds only if DST was made from the same source and options."""
    try:
        made = json.loads((dst / "llama4ctl.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return  # not complete (or written before fingerprints were recorded): the writer's checks apply
    if made is not None and made != plan.fingerprint():
        raise OutputError("the destination was made from a different source or different options", dst,
                          hint="pass --overwrite to replace it, or choose another destination")


class _ShardStats:
    """Per-tensor kernel statistics (quantization error) of finished shards, kept in the partial directory so a
    resumed run reports every tensor, not only the ones it rewrote. OutputDir.commit removes the file together
    with the progress file, just before the rename."""

    def __init__(self, partial: Path, *, fresh: bool) -> None:
        self.path = partial / STATS_FILE
        self._lock = threading.Lock()
        self._by_shard: dict[str, dict[str, dict[str, float]]] = {}
        if not fresh:
            try:
                doc = json.loads(self.path.read_text())
                self._by_shard = doc if isinstance(doc, dict) else {}
            except (OSError, ValueError):
                self._by_shard = {}

    def of(self, shard: ShardPlan) -> dict[str, dict[str, float]]:
        stats = self._by_shard.get(shard.filename)
        return stats if isinstance(stats, dict) else {}

    def save(self, shard: ShardPlan, recorder: Recorder) -> None:
        with recorder._lock:
            mine = {o.name: dict(recorder.stats[o.name]) for o in shard.outputs if o.name in recorder.stats}
        with self._lock:
            self._by_shard[shard.filename] = mine
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self._by_shard))
            os.replace(tmp, self.path)



# Chunks computed ahead of the writer, per worker: one in the queue while one is written and one computed.
AHEAD = 1
# Written bytes after which a shard's dirty pages are handed to the background sync.
SYNC_EVERY_BYTES = 1 << 30
_DONE = object()


def _computed_ahead(ctx: OpContext, shard: ShardPlan) -> Iterator[tuple[str, Any, Callable[[], None] | None]]:
    """The shard's (name, chunk, release) stream, computed in a helper thread so reads, kernels and copies back
    from the GPU overlap the writes. Chunks arrive as host data (GPU results in page-locked pieces: call release
    once written); an error on either side stops both."""
    from llama4ctl.exec.staging import host_pieces

    chunks: queue.Queue[Any] = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if ctx.device.startswith("cuda"):
                import torch

                torch.cuda.set_device(ctx.device)
            for op in shard.ops:
                for name, chunk in KERNELS[op.kernel](ctx, op):
                    if getattr(chunk, "is_cuda", False):
                        for piece, release in host_pieces(chunk, ctx.host_pool, stop):
                            if not put((name, piece, release)):
                                return
                    elif not put((name, chunk, None)):
                        return
            put(_DONE)
        except InterruptedError:  # the writer stopped while this thread waited for a buffer
            return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(e)

    thread = threading.Thread(target=produce, name=f"compute-{shard.filename}", daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _BackgroundSync:
    """fsyncs finished (and long, growing) shard files in a helper thread, so the flush to disk overlaps the
    rest of the run; commit() still fsyncs every file, which is cheap once their pages are clean."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._pending: list[Any] = []

    def sync(self, path: Path) -> None:
        self._pending.append(self._pool.submit(_fsync_path, path))

    def wait(self) -> None:
        for fut in self._pending:
            fut.result()
        self._pending.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # a growing .tmp renamed meanwhile: its final name is synced later
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_metadata(plan: Plan, out: OutputDir, command: list[str] | None) -> None:
    if len(plan.shards) > 1:
        out.write_json("model.safetensors.index.json", {
            "metadata": {"total_size": plan.total_bytes, "llama4ctl_version": __version__},
            "weight_map": dict(sorted(plan.weight_map().items())),
        })
    if plan.config is not None:
        out.write_json("config.json", plan.config)
    root = plan.source.root
    assert root is not None
    for name in plan.extra_files:
        out.copy_file(root / name, name)
    out.write_json("llama4ctl.json", provenance(plan, command))


def _limit_torch_threads(workers: int) -> None:
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
