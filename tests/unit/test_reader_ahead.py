"""Read-ahead returns exactly what plain reads return, in any order, and never hides a read error."""

import os
import random

import numpy as np
import pytest

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.reader import Reader, row_blocks
from llama4ctl.errors import CheckpointError
from tests.rawfiles import write_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    rng = np.random.default_rng(2)
    shards = {"a.safetensors": {"fused": rng.standard_normal((6, 8, 12)).astype(np.float32),
                                "rows": rng.standard_normal((40, 7)).astype(np.float32),
                                "tail": rng.standard_normal((3, 5)).astype(np.float32)}}
    return Checkpoint.open(write_checkpoint(tmp_path / "src", shards, config={"model_type": "x"}))


def _jobs(ckpt):
    """Expert slices, row blocks and whole tensors, in file order."""
    t = ckpt.by_name
    jobs = [("e", t["fused"], e) for e in range(6)]
    jobs += [("r", t["rows"], b) for b in row_blocks(t["rows"], 7 * 4 * 6)]
    return jobs + [("t", t["tail"], None), ("t", t["rows"], None)]


def _do(reader, job):
    kind, ref, arg = job
    if kind == "e":
        return reader.read_expert(ref, arg)
    if kind == "r":
        return reader.read_rows(ref, *arg)
    return reader.read(ref)


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_read_ahead_equals_plain_reads_in_order_and_shuffled(ckpt, seed):
    jobs = _jobs(ckpt)
    if seed is not None:
        random.Random(seed).shuffle(jobs)
    with Reader() as plain, Reader(read_ahead=True) as ahead:
        for job in jobs:
            assert _do(ahead, job).numpy().tobytes() == _do(plain, job).numpy().tobytes()


def test_sequential_expert_reads_are_served_by_the_helper_thread(ckpt, monkeypatch):
    import threading

    callers = []
    real = os.preadv

    def spy(fd, bufs, pos):
        callers.append(threading.current_thread().name)
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "preadv", spy)
    fused = ckpt.by_name["fused"]
    with Reader(read_ahead=True) as reader:
        for e in range(6):
            reader.read_expert(fused, e)
    assert callers[0] == threading.current_thread().name
    assert all(name.startswith("read-ahead") for name in callers[1:])


def test_a_file_truncated_after_the_guess_still_raises_the_read_error(ckpt):
    fused = ckpt.by_name["fused"]
    with Reader(read_ahead=True) as reader:
        reader.read_expert(fused, 0)
        os.truncate(fused.file, fused.start + fused.nbytes // 2)
        with pytest.raises(CheckpointError, match="truncated"):
            for e in range(1, 6):
                reader.read_expert(fused, e)
