"""Hostile safetensors headers are refused with CheckpointError naming the file, never anything else."""

import json
import struct

import numpy as np
import pytest

from llama4ctl.checkpoint.header import MAX_HEADER_BYTES, read_header
from llama4ctl.errors import CheckpointError
from tests.rawfiles import write_raw, write_tensors


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_valid_file_lists_tensors_in_offset_order_with_absolute_ranges(tmp_path):
    p = write_tensors(tmp_path / "a.safetensors", {"b": np.zeros(3, np.float32), "a": np.ones((2, 2), np.float32)})
    h = read_header(p)
    assert [t.name for t in h.tensors] == ["b", "a"]
    a = h.tensors[1]
    assert a.shape == (2, 2) and a.dtype == "F32" and a.nbytes == 16
    assert p.read_bytes()[a.start:a.end] == np.ones((2, 2), np.float32).tobytes()


def test_safetensors_written_by_the_library_parse(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3, 5, dtype=torch.bfloat16), "y": torch.ones(7)}, tmp_path / "m.safetensors",
              metadata={"format": "pt"})
    h = read_header(tmp_path / "m.safetensors")
    assert {t.name: t.shape for t in h.tensors} == {"x": (3, 5), "y": (7,)}
    assert h.metadata == {"format": "pt"}


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        (b"", b"", None, "invalid header"),
        ({"x": entry()}, b"\0" * 8, MAX_HEADER_BYTES + 1, "exceeds"),
        ({"x": entry()}, b"\0" * 8, 10_000, "runs past the end"),
        (b"{not json", b"", None, "invalid header JSON"),
        (b"[1, 2]", b"", None, "does not start"),
        (b"\xff\xfe{}", b"", None, "does not start"),
        ({"x": entry(dtype="F13")}, b"\0" * 8, None, "unknown dtype"),
        ({"x": entry(shape=(-2,))}, b"\0" * 8, None, "invalid shape"),
        ({"x": entry(shape=("2",))}, b"\0" * 8, None, "invalid shape"),
        ({"x": entry(offsets=(8, 0))}, b"\0" * 8, None, "invalid data_offsets"),
        ({"x": entry(offsets=(0,))}, b"\0" * 8, None, "invalid data_offsets"),
        ({"x": entry(shape=(3,))}, b"\0" * 8, None, "does not match"),
        ({"x": entry(), "y": entry(offsets=(4, 12))}, b"\0" * 12, None, "overlaps"),
        ({"x": entry(), "y": entry(offsets=(12, 20))}, b"\0" * 20, None, "gap"),
        ({"x": entry(offsets=(4, 12))}, b"\0" * 12, None, "gap"),
        ({"x": entry()}, b"\0" * 4, None, "beyond the end"),
        ({"x": entry()}, b"\0" * 12, None, "trailing bytes"),
        ({"x": entry(), "__metadata__": {"a": 1}}, b"\0" * 8, None, "__metadata__"),
        ({"x": 5}, b"", None, "invalid header entry"),
    ],
)
def test_hostile_header_is_refused_with_a_clear_message(tmp_path, header, data, length, message):
    p = write_raw(tmp_path / "bad.safetensors", header, data, length=length)
    with pytest.raises(CheckpointError) as err:
        read_header(p)
    assert message in err.value.message
    assert err.value.path == str(p)


def test_file_shorter_than_the_length_prefix_is_refused(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(p)


def test_huge_declared_length_is_refused_before_allocating(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CheckpointError, match="exceeds"):
        read_header(p)


def test_header_may_be_padded_with_spaces(tmp_path):
    raw = json.dumps({"x": entry()}).encode() + b"    "
    p = write_raw(tmp_path / "pad.safetensors", raw, b"\0" * 8)
    assert read_header(p).tensors[0].name == "x"


def test_empty_and_scalar_tensors_are_allowed(tmp_path):
    p = write_raw(tmp_path / "e.safetensors",
                  {"empty": entry(shape=(0, 4), offsets=(0, 0)), "scalar": entry(shape=(), offsets=(0, 4))},
                  b"\0" * 4)
    h = read_header(p)
    assert {t.name: t.nbytes for t in h.tensors} == {"empty": 0, "scalar": 4}
