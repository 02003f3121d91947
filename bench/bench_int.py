"""GPU figures for int4/int8 (run on the H100 through the device tool).

usage: python bench/bench_int.py [--workdir /tmp/bench-int] [--hidden 1536] [--layers 4]
On a Scout-shaped random checkpoint (16 experts, every layer MoE): quantize to W4A16, W8A16, BNB-NF4 and
BNB-INT8 on the GPU, load each (and the BF16 source, and the on-the-fly int4/int8 loader) in transformers on the
GPU, and record weight memory (CUDA bytes after load, and bytes per parameter of the quantized modules) and
greedy generation speed (batch 1, 64 new tokens, after a warm-up). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

FORMATS = {"W4A16": dict(method="int4"), "W8A16": dict(method="int8"),
           "BNB-NF4": dict(method="int4", backend="bnb"), "BNB-INT8": dict(method="int8", backend="bnb")}


def module_bytes_per_param(model) -> float | None:
    """Bytes the quantized Linear modules hold on the GPU (data + scales/state) per logical weight."""
    import bitsandbytes as bnb

    from llama4ctl.onthefly import weight_bytes

    if any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules()):
        wb = weight_bytes(model)
        return wb["quantized_bytes"] / wb["quantized_parameters"]
    total = params = 0
    for m in model.modules():
        if hasattr(m, "weight_packed") or (hasattr(m, "weight_scale") and hasattr(m, "quantization_scheme")):
            shape = m.weight_shape.tolist() if hasattr(m, "weight_shape") else list(m.weight.shape)
            params += shape[0] * shape[1]
            total += sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    return total / params if params else None


def measure(model, ids, new_tokens: int = 64) -> dict:
    import torch

    torch.cuda.synchronize()
    after_load = torch.cuda.memory_allocated()
    bpp = module_bytes_per_param(model)  # as loaded (compressed-tensors may decompress at the first forward)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, do_sample=False)  # warm-up (and any decompression)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    return {"cuda_bytes_after_load": after_load, "cuda_bytes_after_generate": torch.cuda.memory_allocated(),
            "tok_s": (out.shape[1] - ids.shape[1]) / dt, "module_bytes_per_param": bpp}


def main() -> None:
    import torch

    from llama4ctl.fixtures import build_random_checkpoint
    from llama4ctl.generate import load
    from llama4ctl.inspection import summarize
    from llama4ctl.checkpoint.checkpoint import Checkpoint
    from llama4ctl.jobs import plan_quantize, quantize
    from llama4ctl.onthefly import load_quantized

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-int"))
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    src = args.workdir / "scout-int-bench"
    if not (src / "config.json").exists():
        build_random_checkpoint(src, shape="scout", hidden_size=args.hidden, expert_intermediate_size=2 * args.hidden,
                                mlp_intermediate_size=4 * args.hidden, num_experts=16, num_layers=args.layers,
                                vocab_size=32000, num_attention_heads=args.hidden // 128, num_key_value_heads=4,
                                head_dim=128, max_shard_size="2GB", overwrite=True)
    params = summarize(Checkpoint.open(src))["num_parameters"]
    ids = torch.tensor([[1, 17, 42, 99, 7, 300, 12, 64, 5, 250]], device="cuda")
    rows = {}

    def run(name, loader):
        gc.collect()
        torch.cuda.empty_cache()
        t = time.perf_counter()
        model = loader()
        load_s = time.perf_counter() - t
        rows[name] = {"load_s": load_s, **measure(model, ids)}
        del model

    run("BF16", lambda: load(src, "cuda"))
    for name, kw in FORMATS.items():
        dst = args.workdir / f"scout-int-bench-{name}"
        if not (dst / "config.json").exists():
            res = quantize(plan_quantize(src, **kw), dst, device="cuda", overwrite=True)
            rows.setdefault("_quantize_s", {})[name] = res["seconds"]
        run(name, lambda dst=dst: load(dst, "cuda"))
    for load_in in ("int4", "int8"):
        run(f"on-the-fly {load_in}", lambda li=load_in: load_quantized(src, li, device="cuda")[0])

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; {params / 1e9:.2f} B parameters, "
          f"hidden {args.hidden}, {args.layers} layers, 16 experts")
    print("| format | load s | CUDA GB after load | after generate | quantized modules B/param | tok/s (b=1) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        if name.startswith("_"):
            continue
        bpp = f"{r['module_bytes_per_param']:.4f}" if r["module_bytes_per_param"] else "-"
        print(f"| {name} | {r['load_s']:.1f} | {r['cuda_bytes_after_load'] / 1e9:.3f} | "
              f"{r['cuda_bytes_after_generate'] / 1e9:.3f} | {bpp} | {r['tok_s']:.1f} |")
    print("quantize seconds (CUDA):", json.dumps(rows.get("_quantize_s", {})))


if __name__ == "__main__":
    main()
