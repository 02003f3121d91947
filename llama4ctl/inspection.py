"""Header-only summary of a checkpoint: what `inspect` prints. No tensor bytes are read."""

from __future__ import annotations

import math
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import DTYPE_BITS, TensorRef
from llama4ctl.checkpoint.layout import COMPONENTS, KEPT_IN_BF16, component, is_aux_tensor, parse_fused_expert

GPUS = (("80GB", 80 * 10**9), ("141GB", 141 * 10**9))
QUANTIZABLE = frozenset({"attention", "dense_mlp", "shared_expert", "routed_experts"})


def logical_numel(ref: TensorRef, names: set[str], packed_bits: int = 4) -> int:
    """Unpacked parameter count: packed int4 counts its unpacked elements; scales and state count 0."""
    if ref.name.endswith(".weight_packed"):
        return ref.numel * (DTYPE_BITS[ref.dtype] // packed_bits)
    if is_aux_tensor(ref.name):
        return 0
    if ref.dtype == "U8" and any(f"{ref.name}.quant_state.bitsandbytes__{t}" in names for t in ("nf4", "fp4")):
        return ref.numel * 2  # bitsandbytes 4-bit: two values per byte
    return ref.numel


def detect_quantization(ckpt: Checkpoint) -> dict[str, Any]:
    qc = (ckpt.config or {}).get("quantization_config") or {}
    method = qc.get("quant_method")
    if method == "fbgemm_fp8":
        return {"format": "fbgemm_fp8", "scheme": "FP8 per-row", "bits": 8}
    if method == "compressed-tensors":
        return {"format": "compressed-tensors", "scheme": _ct_scheme(qc), "bits": _ct_bits(qc),
                "ct_format": qc.get("format")}
    if method == "bitsandbytes":
        bits = 4 if qc.get("load_in_4bit") else 8
        return {"format": "bitsandbytes", "scheme": qc.get("bnb_4bit_quant_type", "nf4") if bits == 4 else "int8",
                "bits": bits}
    if method:
        return {"format": str(method), "scheme": None, "bits": None}
    dtypes = {t.dtype for t in ckpt.tensors}
    if dtypes & {"F8_E4M3", "F8_E5M2"}:
        return {"format": "unknown-fp8", "scheme": None, "bits": 8}
    return {"format": "none", "scheme": None, "bits": None}


def _ct_bits(qc: dict[str, Any]) -> int | None:
    for group in (qc.get("config_groups") or {}).values():
        w = (group or {}).get("weights") or {}
        if w.get("num_bits"):
            return int(w["num_bits"])
    return None


def _ct_scheme(qc: dict[str, Any]) -> str | None:
    for group in (qc.get("config_groups") or {}).values():
        w = (group or {}).get("weights") or {}
        a = (group or {}).get("input_activations") or {}
        bits, kind, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
        if kind == "float" and bits == 8:
            if strategy == "block":
                return "FP8_BLOCK"
            return "FP8_DYNAMIC" if a.get("dynamic") else "FP8"
        if kind == "int" and bits in (4, 8) and not a:
            return f"W{bits}A16"
        return f"{kind}{bits}-{strategy}"
    return None


QUANTIZED_DTYPES = frozenset({"I8", "U8", "F8_E4M3", "F8_E5M2", "I32"})


def bits_per_weight(ckpt: Checkpoint, names: set[str], packed_bits: int = 4) -> dict[str, Any]:
    """Storage bits per logical weight of the quantized weights, their scales and state included."""
    params = stored = 0
    for t in ckpt.tensors:
        if is_aux_tensor(t.name):
            stored += t.nbytes if t.dtype != "I64" else 0  # weight_shape: metadata, a few bytes per module
        elif t.dtype in QUANTIZED_DTYPES and (t.name.endswith((".weight", ".weight_packed"))
                                              or parse_fused_expert(t.name)):
            params += logical_numel(t, names, packed_bits)
            stored += t.nbytes
    if not params:
        return {"quantized_parameters": 0, "bits_per_weight": None}
    return {"quantized_parameters": params, "bits_per_weight": round(8 * stored / params, 4)}


def summarize(ckpt: Checkpoint, *, with_tensors: bool = False) -> dict[str, Any]:
    names = {t.name for t in ckpt.tensors}
    quant = detect_quantization(ckpt)
    by_component = dict.fromkeys(COMPONENTS, 0)
    dtypes: dict[str, int] = {}
    for t in ckpt.tensors:
        by_component[component(t.name)] += logical_numel(t, names, quant.get("bits") or 4)
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.nbytes
    num_params = sum(by_component.values())
    quant.update(bits_per_weight(ckpt, names, quant.get("bits") or 4))
    text = ckpt.text
    fused = any(parse_fused_expert(t.name) for t in ckpt.tensors)
    per_expert = any(".feed_forward.experts." in t.name and not parse_fused_expert(t.name) for t in ckpt.tensors)
    doc: dict[str, Any] = {
        "source": ckpt.source,
        "family": text.family if text else "unknown",
        "moe_pattern": text.moe_pattern if text else None,
        "architecture": "multimodal" if ckpt.is_multimodal else "text-only",
        "num_parameters": num_params,
        "total_bytes": ckpt.total_bytes,
        "parameters_by_component": {k: v for k, v in by_component.items() if v or k != "other"},
        "num_experts": text.num_experts if text else None,
        "moe_layers": list(text.moe_layers) if text else [],
        "nope_layers": list(text.nope_layers) if text else [],
        "hidden_size": text.hidden_size if text else None,
        "expert_intermediate_size": text.expert_intermediate_size if text else None,
        "expert_layout": "fused" if fused else ("per-expert" if per_expert else None),
        "dtypes": dict(sorted(dtypes.items())),
        "quantization": quant,
        "shards": len(ckpt.shards),
        "num_tensors": len(ckpt.tensors),
        "memory": memory_estimates(by_component),
        "config_notes": list(ckpt.config_notes),
    }
    if with_tensors:
        doc["tensors"] = [
            {"name": t.name, "component": component(t.name), "dtype": t.dtype, "shape": list(t.shape),
             "shard": t.shard, "bytes": t.nbytes}
            for t in ckpt.tensors
        ]
    return doc


def memory_estimates(by_component: dict[str, int]) -> dict[str, Any]:
    """Weight bytes at BF16 / FP8 / int4 (kept modules stay BF16) and whether they fit on 1 or 8 GPUs."""
    quantizable = sum(v for k, v in by_component.items() if k in QUANTIZABLE)
    kept = sum(v for k, v in by_component.items() if k not in QUANTIZABLE)
    assert not (KEPT_IN_BF16 & QUANTIZABLE)
    estimates = {
        "bf16": 2 * (quantizable + kept),
        "fp8": quantizable + 2 * kept,
        "int8": math.ceil(quantizable + quantizable / 128 * 2) + 2 * kept,  # group-128 BF16 scales (W8A16)
        "int4": math.ceil(quantizable / 2 + quantizable / 128 * 2) + 2 * kept,  # group-128 BF16 scales
    }
    fits = {
        precision: {f"{n}x{label}": nbytes <= n * cap for label, cap in GPUS for n in (1, 8)}
        for precision, nbytes in estimates.items()
    }
    return {"weights_bytes": estimates, "fits": fits,
            "note": "weights only; KV cache and activations need more"}
