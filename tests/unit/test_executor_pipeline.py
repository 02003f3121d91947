"""Kernels run one chunk ahead of the writer in a helper thread, and shards are flushed to disk in the background:
errors on either side stop both, nothing runs away, and every file is synced before the rename."""

import threading

import numpy as np
import pytest

from llama4ctl.errors import OutputError
from llama4ctl.exec import executor, writer
from llama4ctl.jobs import execute_plan, plan_shard
from llama4ctl.plan import ops as ops_mod
from tests.rawfiles import write_checkpoint


@pytest.fixture
def src(tmp_path):
    rng = np.random.default_rng(1)
    shards = {f"s{i}.safetensors": {f"t{i}.{j}.weight": rng.standard_normal((16, 32)).astype(np.float32)
                                    for j in range(4)} for i in range(2)}
    return write_checkpoint(tmp_path / "src", shards, config={"model_type": "x"})


def _chunked_copy(counter):
    """The copy kernel, emitting each tensor as 16 row chunks and counting what it produced."""

    def kernel(ctx, op):
        (src,), (out,) = op.sources, op.outputs
        data = ctx.reader.read(src)
        for row in data:
            counter.append(threading.current_thread().name)
            yield out.name, row.clone()

    return kernel


def test_kernels_run_in_a_helper_thread_and_the_output_is_unchanged(src, tmp_path, monkeypatch):
    plan = plan_shard(src, max_shard_size=5000)
    execute_plan(plan, tmp_path / "ref")
    produced = []
    monkeypatch.setitem(ops_mod.KERNELS, "copy", _chunked_copy(produced))
    execute_plan(plan, tmp_path / "out")
    assert produced and all(name.startswith("compute-") for name in produced)
    for f in (tmp_path / "ref").glob("*.safetensors"):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()


def test_a_kernel_error_reaches_the_caller_and_leaves_no_destination(src, tmp_path, monkeypatch):
    def broken(ctx, op):
        yield op.outputs[0].name, ctx.reader.read(op.sources[0])[:1].clone()
        raise ValueError("kernel blew up")

    monkeypatch.setitem(ops_mod.KERNELS, "copy", broken)
    with pytest.raises(ValueError, match="kernel blew up"):
        execute_plan(plan_shard(src, max_shard_size=5000), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(t.name.startswith("compute-") for t in threading.enumerate())


def test_a_write_error_stops_the_kernels_within_a_few_chunks(src, tmp_path, monkeypatch):
    produced = []
    monkeypatch.setitem(ops_mod.KERNELS, "copy", _chunked_copy(produced))
    real_write, writes = writer.ShardFile.write, []

    def failing_write(self, name, chunk):
        writes.append(name)
        if len(writes) == 3:
            raise OSError(5, "Input/output error")
        return real_write(self, name, chunk)

    monkeypatch.setattr(writer.ShardFile, "write", failing_write)
    with pytest.raises(OutputError, match="Input/output error"):
        execute_plan(plan_shard(src, max_shard_size=5000), tmp_path / "out")
    # one chunk written per call before the failure, at most AHEAD queued and one more in the kernel's hands
    assert len(produced) <= 3 + executor.AHEAD + 1
    assert not any(t.name.startswith("compute-") for t in threading.enumerate())


def test_every_shard_is_fsynced_before_the_rename(src, tmp_path, monkeypatch):
    synced, real_fsync = [], executor.os.fsync
    renamed = []

    def record_fsync(fd):
        import os

        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(executor.os, "fsync", record_fsync)
    real_commit = writer.OutputDir.commit

    def commit(self):
        renamed.append(list(synced))
        return real_commit(self)

    monkeypatch.setattr(writer.OutputDir, "commit", commit)
    plan = plan_shard(src, max_shard_size=5000)
    execute_plan(plan, tmp_path / "out")
    before_commit = {p.rsplit("/", 1)[-1] for p in renamed[0]}
    assert {s.filename for s in plan.shards} <= before_commit


def test_long_shards_are_synced_while_they_grow(src, tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "SYNC_EVERY_BYTES", 100)
    paths = []
    real = executor._fsync_path
    monkeypatch.setattr(executor, "_fsync_path", lambda p: (paths.append(p.name), real(p)))
    execute_plan(plan_shard(src, max_shard_size="1MB"), tmp_path / "out")
    assert any(name.endswith(".tmp") for name in paths)
