"""Load produced checkpoints in transformers: logits comparison for `quantize --compare-logits`, and the
loader behind `run` (`load_model`: any format the toolkit writes, device placement, tensor parallel, FP8 MoE)."""

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


# ---------------------------------------------------------------------------------------------------------------
# `run`: read the config of a local checkpoint or Hub repo, check what its format needs, load it.

#: quantization formats `load_model` knows, by what the checkpoint's config says
FORMATS = ("bf16", "fbgemm_fp8", "compressed-tensors", "bitsandbytes-4bit", "bitsandbytes-8bit")


def read_config(model: str, *, revision: str | None = None, token: str | None = None) -> tuple[dict[str, Any], bool]:
    """(normalized config.json, is_local) of a checkpoint directory or Hub repo id (config.json only is fetched)."""
    from llama4ctl.checkpoint.layout import normalize_config
    from llama4ctl.errors import CheckpointError
    from llama4ctl.jobs import looks_like_repo_id

    local = Path(model)
    if local.exists() or not looks_like_repo_id(model):
        path = local / "config.json"
        if not path.is_file():
            raise CheckpointError("no config.json: not a checkpoint directory", local,
                                  hint="pass a checkpoint directory or a Hub repo id (owner/name)")
        try:
            raw = json.loads(path.read_text())
        except ValueError as e:
            raise CheckpointError(f"config.json is not valid JSON ({e})", path) from None
        return normalize_config(raw)[0], True
    from huggingface_hub import hf_hub_download

    from llama4ctl.hub import _hub_error

    try:
        path = Path(hf_hub_download(model, "config.json", revision=revision, token=token))
    except Exception as e:  # noqa: BLE001 - one handled Hub error
        raise _hub_error(e, model, token=token) from None
    return normalize_config(json.loads(path.read_text()))[0], False


def checkpoint_format(config: dict[str, Any]) -> str:
    """One of FORMATS (or the quant_method itself when it is another one) from config.json."""
    q = config.get("quantization_config") or {}
    method = str(q.get("quant_method") or "").replace("_", "-") if q else ""
    if not method:
        return "bf16"
    if method == "fbgemm-fp8":
        return "fbgemm_fp8"
    if method == "bitsandbytes":
        return "bitsandbytes-4bit" if q.get("load_in_4bit") or q.get("_load_in_4bit") else "bitsandbytes-8bit"
    return method


def _require(module: str, what: str, install: str) -> None:
    import importlib.util

    from llama4ctl.errors import Llama4ctlError

    if importlib.util.find_spec(module) is None:
        raise Llama4ctlError(f"{what} needs the Python package `{module}`, which is not installed",
                             hint=f"install it: {install}")


def _cuda_or_fail(fmt: str, need: str, hint: str, min_capability: tuple[int, int] | None = None) -> None:
    import torch

    from llama4ctl.errors import Llama4ctlError

    if not torch.cuda.is_available():
        raise Llama4ctlError(f"{fmt} needs {need}, and no CUDA GPU is visible", hint=hint)
    if min_capability is not None:
        cap = torch.cuda.get_device_capability(0)
        if cap < min_capability:
            raise Llama4ctlError(f"{fmt} needs {need}; this GPU has compute capability {cap[0]}.{cap[1]}", hint=hint)


FBGEMM_INSTALL = '`pip install "llama4ctl[fbgemm]" fbgemm-gpu-genai==<the release built for your torch>` ' \
                 "(1.6.0 for torch 2.11)"


def _bnb_4bit_on_cpu(what: str) -> str:
    """bitsandbytes >= 0.47 ("multi_backend") runs 4-bit on CPU, slowly; older releases need CUDA."""
    import bitsandbytes as bnb

    from llama4ctl.errors import Llama4ctlError

    if "multi_backend" not in getattr(bnb, "features", set()):
        raise Llama4ctlError(f"{what} needs a CUDA GPU: bitsandbytes {bnb.__version__} has no CPU 4-bit kernels, "
                             "and no GPU is in use", hint="run it on a GPU, or `pip install -U bitsandbytes` "
                             "(0.47+ runs 4-bit on CPU, slowly); 8-bit also runs on CPU")
    return f"{what} runs on the CPU through bitsandbytes' CPU 4-bit kernels: slow, meant for checks; use a GPU"


def check_environment(fmt: str, *, load_in: str | None, on_cuda: bool) -> list[str]:
    """Clear errors before transformers is asked to load (a GPU the format needs, a package it needs);
    returns warnings for what will run but badly."""
    from llama4ctl.errors import Llama4ctlError

    notes: list[str] = []
    if fmt == "fbgemm_fp8":
        _cuda_or_fail("an fbgemm_fp8 checkpoint", "a CUDA GPU with compute capability >= 9.0 (H100-class)",
                      "run it on an H100/H200, or quantize with `--backend llm-compressor` (compressed-tensors "
                      "loads on CPU)", (9, 0))
        if not on_cuda:
            raise Llama4ctlError("an fbgemm_fp8 checkpoint runs only on the GPU", hint="use --device-map auto or cuda")
        _require("fbgemm_gpu", "an fbgemm_fp8 checkpoint", FBGEMM_INSTALL)
        _require("accelerate", "an fbgemm_fp8 checkpoint", "`pip install accelerate`")
    elif fmt == "compressed-tensors":
        _require("compressed_tensors", "a compressed-tensors checkpoint",
                 "`pip install compressed-tensors==0.19.0` (a llama4ctl dependency)")
    elif fmt.startswith("bitsandbytes"):
        _require("bitsandbytes", f"a {fmt} checkpoint", "`pip install bitsandbytes` (a llama4ctl dependency)")
        if fmt == "bitsandbytes-4bit" and not on_cuda:
            notes.append(_bnb_4bit_on_cpu("a bitsandbytes 4-bit checkpoint"))
    if load_in is not None and fmt != "bf16":
        raise Llama4ctlError(f"--load-in {load_in} quantizes a BF16 checkpoint at load, but this one is already "
                             f"{fmt}", hint="drop --load-in to run the checkpoint as it is")
    if load_in in ("int4", "int8"):
        _require("bitsandbytes", f"--load-in {load_in}", "`pip install bitsandbytes` (a llama4ctl dependency)")
        if load_in == "int4" and not on_cuda:
            notes.append(_bnb_4bit_on_cpu("--load-in int4"))
    return notes


def world_size() -> int:
    """Processes started by torchrun (WORLD_SIZE), 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def load_model(model: str, config: dict[str, Any], *, device_map: str | None = None, attn: str | None = None,
               tensor_parallel: bool = False, revision: str | None = None, token: str | None = None,
               extra: dict[str, Any] | None = None) -> Any:
    """from_pretrained with the normalized config (legacy fields fixed), BF16 compute, the given placement.

    device_map None loads on CPU; tensor_parallel uses transformers' tp_plan="auto" over the torchrun processes
    (transformers starts the process group: NCCL on GPUs, gloo on CPUs). `extra` goes to from_pretrained as is.
    """
    import torch

    cls = model_class(config)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "config": cls.config_class.from_dict(config)}
    if tensor_parallel:
        from transformers import DistributedConfig

        kwargs["distributed_config"] = DistributedConfig(tp_plan="auto")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if attn is not None:
        kwargs["attn_implementation"] = attn
    if revision is not None:
        kwargs["revision"] = revision
    if token is not None:
        kwargs["token"] = token
    kwargs.update(extra or {})
    return cls.from_pretrained(model, **kwargs).eval()


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
