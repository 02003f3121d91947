"""Helpers for end-to-end tests: load outputs with transformers and read all tensors of a checkpoint."""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from safetensors.torch import load_file

PROMPT_IDS = torch.tensor([[1, 17, 42, 99, 7, 300, 12, 64, 5, 250]])


def tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(str(Path(path) / "*.safetensors"))):
        out.update(load_file(f))
    return out


def load(path: Path, cls_name: str | None = None):
    import json

    import transformers

    cfg = json.loads((Path(path) / "config.json").read_text())
    cls = getattr(transformers, cls_name or cfg["architectures"][0])
    model, info = cls.from_pretrained(str(path), dtype=torch.bfloat16, output_loading_info=True)
    return model.eval(), info


def logits(model, ids=PROMPT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_loaded_cleanly(info) -> None:
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info.get("mismatched_keys"), info.get("mismatched_keys")
