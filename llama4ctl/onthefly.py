"""Quantize a BF16 Llama 4 at load time with bitsandbytes, routed experts included (behind `run --load-in`).

transformers' own `BitsAndBytesConfig(load_in_4bit=True)` converts only `nn.Linear` modules, so Scout's fused
`Llama4TextExperts` (~97 B of its 109 B parameters) stay BF16 and the model does not fit one GPU. Here:

1. the model is built by transformers on the meta device (buffers such as the rotary tables are real);
2. each `Llama4TextExperts` is swapped for transformers' `SequentialLlama4TextExperts` (one Llama4TextMLP per
   expert: the module layout transformers uses for pre-quantized Llama 4), and every Linear of the language
   model that is not kept is replaced by bitsandbytes' Linear4bit / Linear8bitLt with transformers'
   `replace_with_bnb_linear` (kept: router, lm_head, vision tower, projector, plus --ignore / --experts-only);
3. the checkpoint is streamed tensor by tensor, fused experts expert by expert (gate = first half of
   gate_up_proj[e]ᵀ, up = second half, down = down_proj[e]ᵀ), each weight moved to the device and quantized
   there exactly as transformers does it (`Params4bit(...).to(device)` / `Int8Params(...).to(device)`).

Host memory stays at one tensor or one expert slice; device memory is the quantized model. The skip list is the
one `quantize --backend bnb` writes (formats/bnb.py), so the two paths quantize the same modules.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llama4ctl.errors import PlanError

LOAD_IN = ("int4", "int8")


def _bnb_config(load_in: str, quant_type: str, double_quant: bool, skip: list[str], compute_dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    if load_in == "int4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PlanError(f"--device {device} was asked for but no CUDA GPU is available")
    return device


def build_skeleton(config: Any, bnb_config: Any, skip: list[str], attn: str | None = None) -> Any:
    """The model on the meta device (real buffers), experts per expert, bnb modules in place."""
    import torch
    from accelerate import init_empty_weights
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import SequentialLlama4TextExperts

    from llama4ctl.generate import model_class

    cls = model_class(config.to_dict())
    with init_empty_weights(include_buffers=False):
        kwargs = {"attn_implementation": attn} if attn else {}
        model = cls._from_config(config, dtype=torch.bfloat16, **kwargs)
        text_config = model.config.get_text_config()
        for name, module in list(model.named_modules()):
            if type(module).__name__ == "Llama4TextExperts":
                model.set_submodule(name, SequentialLlama4TextExperts(text_config))
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=bnb_config,
                            pre_quantized=False)
    return model


def _set_tensor(model: Any, name: str, value: Any, device: str) -> str:
    """Put one checkpoint tensor into the model; bnb weights are quantized on `device`. Returns its kind."""
    import bitsandbytes as bnb
    import torch

    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        raise PlanError(f"checkpoint tensor {name!r} has no module in the model") from None
    if leaf in module._buffers:
        module._buffers[leaf] = value.to(device)
        return "buffer"
    if leaf not in module._parameters:
        raise PlanError(f"checkpoint tensor {name!r} has no parameter in the model")
    old = module._parameters[leaf]
    if isinstance(module, bnb.nn.Linear4bit) and leaf == "weight":
        kwargs = {k: v for k, v in old.__dict__.items() if k != "quant_state"}
        module._parameters[leaf] = bnb.nn.Params4bit(value.to(device), requires_grad=False, **kwargs).to(device)
        module._is_hf_initialized = True
        return "int4"
    if isinstance(module, bnb.nn.Linear8bitLt) and leaf == "weight":
        kwargs = {k: v for k, v in old.__dict__.items() if k not in ("SCB", "CB")}
        module._parameters[leaf] = bnb.nn.Int8Params(value.to("cpu"), requires_grad=False, **kwargs).to(device)
        return "int8"
    if tuple(old.shape) != tuple(value.shape):
        raise PlanError(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(old.shape)}")
    module._parameters[leaf] = torch.nn.Parameter(value.to(device), requires_grad=False)
    return "kept"


def _expert_names(ref_name: str, proj: str, e: int) -> list[str]:
    prefix = ref_name.rsplit(".", 1)[0]
    if proj == "gate_up_proj":
        return [f"{prefix}.{e}.gate_proj.weight", f"{prefix}.{e}.up_proj.weight"]
    return [f"{prefix}.{e}.down_proj.weight"]


def weight_bytes(model: Any) -> dict[str, int]:
    """Bytes the weights occupy: quantized (data + quantization state) and kept, and their logical counts."""
    import bitsandbytes as bnb

    out = {"quantized_bytes": 0, "quantized_parameters": 0, "kept_bytes": 0, "kept_parameters": 0}
    seen: set[int] = set()
    for module in model.modules():
        for leaf, p in list(module._parameters.items()) + list(module._buffers.items()):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            nbytes = p.numel() * p.element_size()
            if isinstance(module, bnb.nn.Linear4bit) and leaf == "weight":
                qs = p.quant_state
                state = [qs.absmax, qs.code] + ([qs.state2.absmax, qs.state2.code] if qs.nested else [])
                out["quantized_bytes"] += nbytes + sum(t.numel() * t.element_size() for t in state)
                out["quantized_parameters"] += module.in_features * module.out_features
            elif isinstance(module, bnb.nn.Linear8bitLt) and leaf == "weight":
                scb = p.SCB if getattr(p, "SCB", None) is not None else module.state.SCB  # moved there on CUDA
                out["quantized_bytes"] += nbytes + scb.numel() * scb.element_size()
                out["quantized_parameters"] += p.numel()
            elif leaf in module._parameters:
                out["kept_bytes"] += nbytes
                out["kept_parameters"] += p.numel()
            else:
                out["kept_bytes"] += nbytes  # buffers (rotary tables): memory, not parameters
    return out


def load_quantized(src: str | Path, load_in: str = "int4", *, device: str = "auto", quant_type: str = "nf4",
                   double_quant: bool = True, ignore: list[str] | None = None, experts_only: bool = False,
                   attn: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load the BF16 Llama 4 checkpoint `src` with every language-model Linear (experts included) quantized by
    bitsandbytes on `device` ("auto": the first GPU, else the CPU). Returns (model in eval mode, report)."""
    import torch

    from llama4ctl.checkpoint.checkpoint import Checkpoint
    from llama4ctl.checkpoint.layout import normalize_config, parse_fused_expert
    from llama4ctl.checkpoint.reader import Reader
    from llama4ctl.formats.bnb import BitsAndBytesFormat
    from llama4ctl.formats.selection import Selection
    from llama4ctl.generate import model_class

    if load_in not in LOAD_IN:
        raise PlanError(f"--load-in must be one of {', '.join(LOAD_IN)}, not {load_in!r}")
    t0 = time.perf_counter()
    device = _resolve_device(device)
    ckpt = Checkpoint.open(src)
    if (ckpt.config or {}).get("quantization_config"):
        raise PlanError("the checkpoint is already quantized; --load-in quantizes a BF16 checkpoint", ckpt.source,
                        hint="load a pre-quantized checkpoint as it is")
    fmt = BitsAndBytesFormat(4 if load_in == "int4" else 8, quant_type, double_quant,
                             Selection(list(ignore or []), experts_only))
    fmt.prepare(ckpt)  # the kept modules, exactly as `quantize --backend bnb` keeps them
    skip = fmt.quantization_config()["llm_int8_skip_modules"]
    raw, _ = normalize_config(json.loads((Path(src) / "config.json").read_text()))
    config = model_class(raw).config_class.from_dict(raw)
    bnb_config = _bnb_config(load_in, quant_type, double_quant, skip, torch.bfloat16)
    model = build_skeleton(config, bnb_config, skip, attn)

    counts = {"int4": 0, "int8": 0, "kept": 0, "buffer": 0}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.no_grad(), Reader() as reader:
        for ref in ckpt.tensors:
            fused = parse_fused_expert(ref.name)
            if fused is None:
                counts[_set_tensor(model, ref.name, reader.read(ref), device)] += 1
                continue
            half = ref.shape[-1] // 2
            for e in range(ref.shape[0]):
                w = reader.read_expert(ref, e)  # [in, out]
                parts = [w[:, :half], w[:, half:]] if fused.proj == "gate_up_proj" else [w]
                for name, part in zip(_expert_names(ref.name, fused.proj, e), parts, strict=True):
                    counts[_set_tensor(model, name, part.t().contiguous(), device)] += 1
    if getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise PlanError(f"{len(missing)} model tensors were not in the checkpoint: {', '.join(missing[:5])}",
                        ckpt.source)
    for module in model.modules():  # non-persistent buffers were built on the CPU
        for k, b in module._buffers.items():
            if b is not None and b.device != torch.device(device):
                module._buffers[k] = b.to(device)
    model.is_quantized = True
    model.quantization_method = "bitsandbytes"
    setattr(model, "is_loaded_in_4bit" if load_in == "int4" else "is_loaded_in_8bit", True)
    model.eval()

    mem = weight_bytes(model)
    report: dict[str, Any] = {
        "source": str(src),
        "load_in": load_in,
        "scheme": fmt.describe()["scheme"],
        "device": device,
        "modules_quantized": counts["int4"] + counts["int8"],
        "skip_modules": skip,
        **mem,
        "weights_bytes": mem["quantized_bytes"] + mem["kept_bytes"],
        "quantized_bytes_per_parameter": (mem["quantized_bytes"] / mem["quantized_parameters"]
                                          if mem["quantized_parameters"] else None),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if device.startswith("cuda"):
        report["cuda_allocated_bytes"] = torch.cuda.memory_allocated(device) - base
        report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
    return model, report


def load(model: str | Path, config: dict[str, Any] | None = None, *, bits: int = 4, device_map: str | None = None,
         attn: str | None = None, tensor_parallel: bool = False, revision: str | None = None,
         token: str | None = None) -> Any:
    """The entry `run --load-in int4|int8` calls: a local directory or a Hub repo id (fetched into the Hub cache,
    as from_pretrained would). device_map None / "cpu" loads on the CPU, "cuda" / "auto" on the first GPU (the
    point of int4 is that Scout fits one). `config` is unused: the checkpoint's own config.json is read and
    normalized the same way. The load report (weight memory, time) is attached as `model.llama4ctl_load_report`.
    """
    if tensor_parallel:
        raise PlanError("--load-in int4|int8 loads onto one device; tensor parallel is not supported",
                        hint="drop torchrun, or quantize ahead of time with `llama4ctl quantize`")
    path = Path(model)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(model), revision=revision, token=token))
    device = "cpu" if device_map in (None, "cpu") else _resolve_device("cuda:0" if device_map == "cuda" else device_map)
    loaded, report = load_quantized(path, f"int{bits}", device=device, attn=attn)
    loaded.llama4ctl_load_report = report
    return loaded
