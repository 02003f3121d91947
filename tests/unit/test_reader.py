"""Slice reads return exactly what safetensors returns, reading only the requested bytes."""

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llama4ctl.checkpoint.header import read_header
from llama4ctl.checkpoint.reader import Reader, row_blocks


def test_expert_rows_and_bytes_match_safetensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    fused = torch.randn(4, 6, 10, generator=g).to(torch.bfloat16)
    save_file({"x.experts.gate_up_proj": fused, "y": torch.arange(12, dtype=torch.int32).reshape(3, 4)},
              tmp_path / "m.safetensors")
    refs = {t.name: t for t in read_header(tmp_path / "m.safetensors").tensors}
    with Reader() as r, safe_open(tmp_path / "m.safetensors", "pt") as st:
        for e in range(4):
            assert torch.equal(r.read_expert(refs["x.experts.gate_up_proj"], e),
                               st.get_slice("x.experts.gate_up_proj")[e])
        assert torch.equal(r.read_rows(refs["y"], 1, 3), st.get_tensor("y")[1:3])
        assert torch.equal(r.read(refs["y"]), st.get_tensor("y"))
        assert bytes(r.read_bytes(refs["y"], 4, 12)) == st.get_tensor("y").numpy().tobytes()[4:12]


def test_reads_are_proportional_to_the_request(tmp_path, monkeypatch):
    import os

    save_file({"big": torch.zeros(64, 1024)}, tmp_path / "m.safetensors")
    (ref,) = read_header(tmp_path / "m.safetensors").tensors
    asked = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: asked.append(sum(len(b) for b in bufs)) or real(fd, bufs, off))
    with Reader() as r:
        r.read_rows(ref, 10, 12)
    assert sum(asked) == 2 * 1024 * 4


def test_row_blocks_cover_all_rows_within_the_limit(tmp_path):
    save_file({"t": torch.zeros(10, 100)}, tmp_path / "m.safetensors")
    (ref,) = read_header(tmp_path / "m.safetensors").tensors
    blocks = list(row_blocks(ref, 1200))
    assert blocks == [(0, 3), (3, 6), (6, 9), (9, 10)]
