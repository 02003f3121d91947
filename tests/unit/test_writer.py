"""Outputs are atomic and resumable: no half-written DST, resume skips verified shards, locks refuse."""

import fcntl
import json
import os

import numpy as np
import pytest

from llama4ctl.errors import OutputError
from llama4ctl.exec import executor
from llama4ctl.jobs import execute_plan, plan_shard
from llama4ctl.plan import ops as ops_mod
from tests.rawfiles import write_checkpoint


@pytest.fixture
def src(tmp_path):
    rng = np.random.default_rng(0)
    shards = {f"s{i}.safetensors": {f"t{i}.{j}.weight": rng.standard_normal((16, 32)).astype(np.float32)
                                    for j in range(3)} for i in range(3)}
    return write_checkpoint(tmp_path / "src", shards, config={"model_type": "x"})


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_output_is_renamed_into_place_with_index_config_and_provenance(src, tmp_path):
    plan = plan_shard(src, max_shard_size=5000)
    res = execute_plan(plan, tmp_path / "out")
    out = tmp_path / "out"
    names = set(os.listdir(out))
    assert {"model.safetensors.index.json", "config.json", "llama4ctl.json"} <= names
    assert res["shards_written"] == len(plan.shards) == 5
    assert not (tmp_path / ".out.partial").exists()
    prov = json.loads((out / "llama4ctl.json").read_text())
    assert prov["complete"] and prov["source"]["path"] == str(src)


def _failing_after(n_calls):
    calls = {"n": 0}
    real = ops_mod.KERNELS["copy"]

    def kernel(ctx, op):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise OSError(28, "No space left on device")
        yield from real(ctx, op)

    return kernel


def test_failure_midway_leaves_no_destination_and_resume_finishes_identically(src, tmp_path, monkeypatch):
    plan = plan_shard(src, max_shard_size=5000)
    execute_plan(plan, tmp_path / "ref")
    monkeypatch.setitem(ops_mod.KERNELS, "copy", _failing_after(5))
    with pytest.raises(OutputError, match="No space left"):
        execute_plan(plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert (tmp_path / ".out.partial").exists()
    monkeypatch.undo()
    with pytest.raises(OutputError, match="interrupted run"):
        execute_plan(plan, tmp_path / "out")
    res = execute_plan(plan, tmp_path / "out", resume=True)
    assert res["shards_skipped"] == 2 and res["shards_written"] == 3
    ref, out = files(tmp_path / "ref"), files(tmp_path / "out")
    ref.pop("llama4ctl.json"), out.pop("llama4ctl.json")
    assert ref == out


def test_resume_rewrites_a_finished_shard_that_was_corrupted(src, tmp_path, monkeypatch):
    plan = plan_shard(src, max_shard_size=5000)
    monkeypatch.setitem(ops_mod.KERNELS, "copy", _failing_after(5))
    with pytest.raises(OutputError):
        execute_plan(plan, tmp_path / "out")
    monkeypatch.undo()
    first = tmp_path / ".out.partial" / plan.shards[0].filename
    first.write_bytes(first.read_bytes()[:-10])
    res = execute_plan(plan, tmp_path / "out", resume=True)
    assert res["shards_skipped"] == 1 and res["shards_written"] == 4


def test_resume_with_different_options_is_refused(src, tmp_path, monkeypatch):
    monkeypatch.setitem(ops_mod.KERNELS, "copy", _failing_after(5))
    with pytest.raises(OutputError):
        execute_plan(plan_shard(src, max_shard_size=5000), tmp_path / "out")
    monkeypatch.undo()
    with pytest.raises(OutputError, match="different"):
        execute_plan(plan_shard(src, max_shard_size=9000), tmp_path / "out", resume=True)


def test_resume_on_a_finished_destination_does_nothing(src, tmp_path):
    plan = plan_shard(src)
    execute_plan(plan, tmp_path / "out")
    assert execute_plan(plan, tmp_path / "out", resume=True)["already_complete"]


def test_existing_destination_is_refused_unless_overwrite(src, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="already exists"):
        execute_plan(plan_shard(src), tmp_path / "out")
    execute_plan(plan_shard(src), tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists()
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_a_second_writer_is_refused_by_the_lock(src, tmp_path):
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    fd = os.open(partial / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputError, match="lock"):
            execute_plan(plan_shard(src), tmp_path / "out", resume=True)
    finally:
        os.close(fd)


def test_not_enough_disk_is_refused_before_writing(src, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 100))
    with pytest.raises(OutputError, match="short by"):
        execute_plan(plan_shard(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parallel_workers_write_the_same_bytes(src, tmp_path):
    plan = plan_shard(src, max_shard_size=5000)
    execute_plan(plan, tmp_path / "one", workers=1)
    execute_plan(plan, tmp_path / "two", workers=2)
    a, b = files(tmp_path / "one"), files(tmp_path / "two")
    a.pop("llama4ctl.json"), b.pop("llama4ctl.json")
    assert a == b


def test_unknown_kernel_is_caught_before_anything_is_written(src, tmp_path):
    from dataclasses import replace

    plan = plan_shard(src)
    plan.shards[0] = replace(plan.shards[0], ops=(replace(plan.shards[0].ops[0], kernel="nope"),))
    with pytest.raises(Exception, match="nope"):
        executor.execute(plan, tmp_path / "out")
    assert not (tmp_path / ".out.partial").exists()


def test_one_worker_per_device_each_shard_written_once(src, tmp_path):
    """The multi-GPU split, exercised with two CPU 'devices': each worker keeps its device."""
    plan = plan_shard(src, max_shard_size=5000)
    res = executor.execute(plan, tmp_path / "out", devices=("cpu", "cpu"))
    assert set(res.shard_devices) == {s.filename for s in plan.shards}
    ref = execute_plan(plan, tmp_path / "ref")
    a, b = files(tmp_path / "out"), files(tmp_path / "ref")
    a.pop("llama4ctl.json"), b.pop("llama4ctl.json")
    assert a == b and ref["shards_written"] == 5
