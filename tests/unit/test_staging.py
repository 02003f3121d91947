"""GPU transfers through fixed buffers: the loader returns exactly what plain reads return, loads the next slice
ahead when reads walk the file in order, never hides a read error; GPU chunks come back in fixed pieces.
Runs without a GPU through the same code with ordinary buffers (device "cpu"); the CUDA case where one exists."""

import os
import random
import threading

import numpy as np
import pytest
import torch

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.reader import Reader, row_blocks
from llama4ctl.errors import CheckpointError
from llama4ctl.exec import staging
from llama4ctl.exec.executor import OpContext
from tests.rawfiles import write_checkpoint

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    monkeypatch.setattr(staging, "PIECE_BYTES", 100)  # several pieces per slice, and slices of odd sizes


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
    jobs = [("expert", t["fused"], e) for e in range(6)]
    jobs += [("rows", t["rows"], b) for b in row_blocks(t["rows"], 7 * 4 * 6)]
    return jobs + [("whole", t["tail"], None), ("whole", t["rows"], None)]


def _do(ctx, job):
    kind, ref, arg = job
    if kind == "expert":
        return ctx.load_expert(ref, arg)
    if kind == "rows":
        return ctx.load_rows(ref, *arg)
    return ctx.load(ref)


def _staged(reader, device):
    ctx = OpContext(reader, device=device)
    ctx.loader = staging.DeviceLoader(reader, device)
    return ctx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_loads_equal_plain_reads_in_order_and_shuffled(ckpt, device, seed):
    jobs = _jobs(ckpt)
    if seed is not None:
        random.Random(seed).shuffle(jobs)
    with Reader() as reader:
        plain, staged = OpContext(reader), _staged(reader, device)
        for job in jobs:
            got = _do(staged, job)
            assert got.device.type == device
            assert torch.equal(got.cpu(), _do(plain, job))
        staged.close()


def test_walking_experts_in_order_is_served_by_the_helper_thread(ckpt, monkeypatch):
    callers, real = [], os.preadv

    def spy(fd, bufs, pos):
        callers.append(threading.current_thread().name)
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "preadv", spy)
    with Reader() as reader:
        ctx = _staged(reader, "cpu")
        for e in range(6):
            ctx.load_expert(ckpt.by_name["fused"], e)
        ctx.close()
    first_expert_pieces = -(-8 * 12 * 4 // staging.PIECE_BYTES)
    assert set(callers[:first_expert_pieces]) == {threading.current_thread().name}
    assert all(name.startswith("load-ahead") for name in callers[first_expert_pieces:])


def test_a_file_truncated_after_the_guess_still_raises_the_read_error(ckpt):
    fused = ckpt.by_name["fused"]
    with Reader() as reader:
        ctx = _staged(reader, "cpu")
        ctx.load_expert(fused, 0)
        os.truncate(fused.file, fused.start + fused.nbytes // 2)
        with pytest.raises(CheckpointError, match="truncated"):
            for e in range(1, 6):
                ctx.load_expert(fused, e)
        ctx.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float32, torch.bool])
def test_chunks_come_back_in_fixed_pieces_with_the_same_bytes(dtype):
    device = DEVICES[-1]
    chunk = (torch.randn(17, 23) > 0) if dtype == torch.bool else torch.randn(17, 23).to(dtype)
    pool = staging.PinnedPool(2, staging.PIECE_BYTES, pinned=device != "cpu")
    got = bytearray()
    for piece, release in staging.host_pieces(chunk.to(device), pool):
        assert piece.numel() <= staging.PIECE_BYTES
        got += piece.numpy().tobytes()
        release()  # with two buffers, a piece never released would block the third
    expected = chunk.to(torch.uint8) if dtype == torch.bool else chunk.contiguous().view(torch.uint8)
    assert bytes(got) == expected.numpy().tobytes()


def test_a_cancelled_transfer_stops_waiting_for_a_buffer():
    pool = staging.PinnedPool(1, staging.PIECE_BYTES, pinned=False)
    stop = threading.Event()
    pieces = staging.host_pieces(torch.zeros(1000, dtype=torch.uint8), pool, stop)
    next(pieces)  # holds the only buffer
    stop.set()
    with pytest.raises(InterruptedError):
        next(pieces)
