"""bitsandbytes weight quantization (NF4/FP4 and LLM.int8) as transformers serializes it: no names, no files.

The math is bitsandbytes' own (its CPU backend or its CUDA kernels, whichever device the weight is on); this
module only calls the same functions `Params4bit._quantize` / `Int8Params._quantize` call and lays the results
out as `Linear4bit._save_to_state_dict` / `Linear8bitLt._save_to_state_dict` do (bitsandbytes 0.50):

  4-bit, one [out, in] weight, n = out*in, blocksize 64, nb = ceil(n / 64):
    weight                          U8  [ceil(n/2), 1]   two codes per byte
    weight.absmax                   F32 [nb]             (double quant: U8 [nb], 8-bit blockwise codes)
    weight.quant_map                F32 [16]             the NF4 (or FP4) code book
    weight.nested_absmax            F32 [ceil(nb/256)]   double quant only
    weight.nested_quant_map         F32 [256]            double quant only
    weight.quant_state.bitsandbytes__nf4  U8 [L]         JSON {quant_type, blocksize, dtype, shape[, nested_*]}
  8-bit:  weight I8 [out, in] = round(w·127/rowmax) of the FP16 weight, SCB F32 [out] (row absmax),
          weight_format U8 [] = 0 (row-major).

The JSON length depends on `nested_offset` (the mean absmax, a float) with double quant, and output sizes are
planned before any data is read, so the JSON is padded with trailing spaces to the size of its longest float
(`json.loads` ignores them; bitsandbytes' `unpack_tensor_to_dict` is `json.loads`). Without double quant the
bytes are exactly bitsandbytes'.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
QUANT_TYPES = ("nf4", "fp4")
_LONGEST_FLOAT = -2.2250738585072014e-308  # 24 characters: as long as a Python float repr gets


def dtype_name(dtype: str) -> str:
    """safetensors dtype -> the name bitsandbytes writes (`str(torch.bfloat16).strip("torch.")`)."""
    return {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype]


def _state_json(quant_type: str, shape: tuple[int, ...], dtype: str, double_quant: bool,
                offset: float | None) -> str:
    doc: dict[str, Any] = {"quant_type": quant_type, "blocksize": BLOCKSIZE, "dtype": dtype, "shape": list(shape)}
    if double_quant:
        doc.update({"nested_blocksize": NESTED_BLOCKSIZE, "nested_dtype": "float32", "nested_offset": offset})
    return json.dumps(doc)


def state4_keys(quant_type: str, double_quant: bool) -> tuple[str, ...]:
    keys = ("absmax", "quant_map")
    if double_quant:
        keys += ("nested_absmax", "nested_quant_map")
    return (*keys, f"quant_state.bitsandbytes__{quant_type}")


def layout4(shape: tuple[int, int], dtype: str, quant_type: str = "nf4",
            double_quant: bool = True) -> list[tuple[str, str, tuple[int, ...]]]:
    """[(suffix after `weight`, safetensors dtype, shape)] for one 4-bit weight, in the order written."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    n = math.prod(shape)
    nb = -(-n // BLOCKSIZE)
    out = [("", "U8", (-(-n // 2), 1)), (".absmax", "U8" if double_quant else "F32", (nb,)),
           (".quant_map", "F32", (16,))]
    if double_quant:
        out += [(".nested_absmax", "F32", (-(-nb // NESTED_BLOCKSIZE),)), (".nested_quant_map", "F32", (256,))]
    size = len(_state_json(quant_type, shape, dtype_name(dtype), double_quant, _LONGEST_FLOAT).encode())
    out.append((f".quant_state.bitsandbytes__{quant_type}", "U8", (size,)))
    return out


def quantize_4bit(w: torch.Tensor, quant_type: str = "nf4", double_quant: bool = True) -> list[torch.Tensor]:
    """w [out, in] (BF16/F16/F32) -> tensors in layout4's order (on w's device; the JSON on the CPU)."""
    import torch
    from bitsandbytes.functional import quantize_4bit as bnb_quantize_4bit

    packed, state = bnb_quantize_4bit(w.contiguous(), blocksize=BLOCKSIZE, compress_statistics=double_quant,
                                      quant_type=quant_type, quant_storage=torch.uint8)
    tensors = [packed, state.absmax, state.code]
    offset = None
    if double_quant:
        tensors += [state.state2.absmax, state.state2.code]
        offset = state.offset.item()
    dtype = str(w.dtype).removeprefix("torch.")
    text = _state_json(quant_type, tuple(w.shape), dtype, double_quant, offset)
    size = len(_state_json(quant_type, tuple(w.shape), dtype, double_quant, _LONGEST_FLOAT).encode())
    raw = text.encode().ljust(size, b" ")
    tensors.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    return tensors


def dequantize_4bit(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight back from a `{"weight": ..., "weight.absmax": ..., ...}` dict (bitsandbytes' own decoder)."""
    from bitsandbytes.functional import QuantState, dequantize_4bit as bnb_dequantize_4bit

    data = tensors["weight"]
    stats = {k[len("weight."):]: v for k, v in tensors.items() if k.startswith("weight.")}
    state = QuantState.from_dict(stats, device=data.device)
    return bnb_dequantize_4bit(data, state)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8 weights as Int8Params quantizes them: (CB int8 [out, in], SCB float32 [out])."""
    import torch
    from bitsandbytes.functional import int8_vectorwise_quant

    cb, scb, _ = int8_vectorwise_quant(w.contiguous().to(torch.float16))
    return cb, scb


def dequantize_int8(cb: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    return cb.float() * (scb.float()[:, None] / 127.0)
