"""Load produced checkpoints in transformers: logits comparison for `quantize --compare-logits`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is Paris. The capital of Italy is"


def model_class(config: dict[str, Any]) -> Any:
    import transformers

    arch = (config.get("architectures") or ["Llama4ForConditionalGeneration"])[0]
    return getattr(transformers, arch)


def load(path: str | Path, device: str = "cpu") -> Any:
    import torch

    from llama4ctl.checkpoint.layout import normalize_config

    config, _ = normalize_config(json.loads((Path(path) / "config.json").read_text()))
    cls = model_class(config)
    # Normalized config (legacy fields fixed) so transformers 5.x accepts older Llama 4 configs.
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "config": cls.config_class.from_dict(config)}
    if device != "cpu":
        kwargs["device_map"] = device
    return cls.from_pretrained(str(path), **kwargs).eval()


def prompt_ids(path: str | Path, vocab_size: int) -> Any:
    import torch

    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(str(path))(PROMPT, return_tensors="pt").input_ids
    except Exception:  # noqa: BLE001 - a checkpoint without a tokenizer still gets compared
        ids = torch.arange(1, 17).unsqueeze(0)
    return ids.clamp(max=vocab_size - 1)


def _fits_in_memory(path: str | Path) -> bool:
    from llama4ctl.checkpoint.checkpoint import Checkpoint

    total = Checkpoint.open(path).total_bytes
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return total * 3 < avail


def compare_logits(source: str | Path, quantized: str | Path, device: str | None = None) -> dict[str, Any]:
    """Relative logits error and top-1 agreement of `quantized` against `source` on a fixed prompt."""
    import torch

    qcfg = json.loads((Path(quantized) / "config.json").read_text()).get("quantization_config") or {}
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    if qcfg.get("quant_method") == "fbgemm_fp8" and device == "cpu":
        return {"skipped": "fbgemm_fp8 checkpoints load only on a CUDA GPU (compute capability >= 9.0)",
                "device": device}
    if not _fits_in_memory(source):
        return {"skipped": "the model does not fit in host memory for a logits comparison", "device": device}
    ref_model = load(source, device)
    vocab = ref_model.config.get_text_config().vocab_size
    ids = prompt_ids(source, vocab).to(ref_model.device)
    with torch.no_grad():
        ref = ref_model(input_ids=ids).logits.float().cpu()
    del ref_model
    q_model = load(quantized, device)
    with torch.no_grad():
        got = q_model(input_ids=ids.to(q_model.device)).logits.float().cpu()
    return {
        "device": device,
        "tokens": int(ids.shape[1]),
        "rel_error": float((got - ref).norm() / ref.norm()),
        "max_abs_error": float((got - ref).abs().max()),
        "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
    }
