"""Calibration-based quantization through llm-compressor's `oneshot` (behind `quantize --recipe`).

Unlike the streaming path this loads the WHOLE model into memory (~800 GB for Maverick in BF16), so it is only
worth it for schemes that need calibration data (GPTQ). The output is still written atomically: into the
hidden partial directory first, renamed into place at the end.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from llama4ctl.errors import PlanError

# A small built-in calibration set, used when no --calibration-data is given (fine for tests and smoke runs;
# give real data for real models).
BUILTIN_CALIBRATION = [
    "The Llama 4 herd: the beginning of a new era of natively multimodal AI innovation.",
    "Quantization trades a little accuracy for a lot of memory: FP8 halves the weight bytes of BF16.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "Paris is the capital of France; Rome is the capital of Italy; Madrid is the capital of Spain.",
    "A mixture-of-experts layer routes each token to one expert and a shared expert.",
    "The quick brown fox jumps over the lazy dog. 1234567890 !@#$%^&*()",
    "User: What is the boiling point of water at sea level?\nAssistant: 100 degrees Celsius.",
    "Streaming tensors shard by shard keeps host memory small whatever the checkpoint size.",
]


def shipped_recipes() -> dict[str, Path]:
    root = resources.files("llama4ctl") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def resolve_recipe(recipe: str | Path) -> Path:
    """A path, or the name of a shipped recipe (`scout-w4a16-gptq`, `recipes/scout-w4a16-gptq.yaml`)."""
    p = Path(recipe)
    if p.is_file():
        return p
    shipped = shipped_recipes()
    if p.stem in shipped:
        return shipped[p.stem]
    raise PlanError(f"recipe not found; shipped recipes: {', '.join(sorted(shipped))}", recipe)


def needs_calibration(recipe: Path) -> bool:
    import yaml

    text = json.dumps(yaml.safe_load(recipe.read_text()))
    return any(name in text for name in ("GPTQModifier", "AWQModifier", "SmoothQuantModifier"))


def run_oneshot(src: str | Path, dst: str | Path, recipe: str | Path, *, calibration_data: Path | None = None,
                num_samples: int = 256, max_seq_length: int = 512, overwrite: bool = False,
                command: list[str] | None = None) -> dict[str, Any]:
    import time

    import torch

    from llama4ctl.checkpoint.checkpoint import Checkpoint
    from llama4ctl.checkpoint.layout import normalize_config
    from llama4ctl.exec.writer import OutputDir
    from llama4ctl.generate import model_class

    recipe_path = resolve_recipe(recipe)
    ckpt = Checkpoint.open(src)
    if ckpt.config is None:
        raise PlanError("config.json is missing", src)
    if not ckpt.is_multimodal:
        raise PlanError("llm-compressor 0.14's oneshot cannot load text-only Llama4ForCausalLM checkpoints (its MoE "
                        "linearizer expects a multimodal config)", src,
                        hint="use the streaming path (quantize --fp8 without --recipe) or the multimodal checkpoint")
    out = OutputDir(dst, fingerprint="oneshot", overwrite=overwrite)
    out.check_destination()
    t0 = time.perf_counter()

    from llmcompressor import oneshot
    from llmcompressor.utils import load_context

    config, _ = normalize_config(ckpt.config)
    cls = model_class(config)
    with load_context(cls):
        model = cls.from_pretrained(str(src), dtype=torch.bfloat16, config=cls.config_class.from_dict(config))
    kwargs: dict[str, Any] = {}
    if needs_calibration(recipe_path):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(src))  # given explicitly: oneshot would load the image processor
        kwargs.update(dataset=_calibration_dataset(tok, calibration_data, num_samples, max_seq_length),
                      tokenizer=tok, num_calibration_samples=num_samples, max_seq_length=max_seq_length)
    oneshot(model=model, recipe=str(recipe_path), **kwargs)

    out.open()
    try:
        model.save_pretrained(str(out.partial), save_compressed=True)
        for name in ckpt.extra_files:
            if name != "config.json":
                out.copy_file(Path(src) / name, name)
        out.write_json("llama4ctl.json", {
            "llama4ctl_version": __import__("llama4ctl").__version__,
            "command": command if command is not None else sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"path": str(src), "revision": None},
            "operation": {"format": "compressed-tensors", "backend": "llm-compressor oneshot",
                          "recipe": recipe_path.name},
            "complete": True,
        })
        out.commit()
    except BaseException:
        out.release()
        raise
    return {"destination": str(out.dst), "recipe": str(recipe_path), "seconds": round(time.perf_counter() - t0, 3),
            "calibrated": "dataset" in kwargs}


def _calibration_dataset(tok: Any, data: Path | None, num_samples: int, max_seq_length: int) -> Any:
    from datasets import Dataset

    if data is not None:
        texts = [line for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise PlanError("calibration data file is empty", data)
    else:
        texts = BUILTIN_CALIBRATION
    texts = (texts * (num_samples // len(texts) + 1))[:num_samples]
    enc = tok(texts, truncation=True, max_length=max_seq_length)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
