"""GPU figures for the FP8 path (run on the H100 through the device tool).

usage: python bench/bench_gpu.py [--workdir /tmp/bench] [--gb 2]
1. end-to-end `quantize --fp8` GB/s from page cache, CUDA (fbgemm kernel if installed) vs CPU reference path;
2. fbgemm kernel vs CPU reference agreement on the same checkpoint;
3. load the fbgemm_fp8 output in transformers on the GPU and generate; logits vs BF16.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import dir_bytes, run  # noqa: E402


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--layers", type=int, default=24)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from llama4ctl.fixtures import build_random_checkpoint, build_tiny_checkpoint
    from llama4ctl.quant.fp8 import fbgemm_kernel

    rows = []
    gpu = torch.cuda.get_device_name(0)
    rows.append(("device", f"{gpu}, torch {torch.__version__}, fbgemm kernel {'yes' if fbgemm_kernel() else 'no'}", ""))

    src = work / "scout-bench"
    if not src.exists():
        build_random_checkpoint(src, shape="scout", hidden_size=1024, expert_intermediate_size=1536,
                                mlp_intermediate_size=3072, num_experts=16, num_layers=args.layers,
                                vocab_size=32000, max_shard_size="500MB", seed=0)
    size = dir_bytes(src)
    subprocess.run(["cat", *map(str, src.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)
    cli = [sys.executable, "-m", "llama4ctl", "quantize", str(src)]
    for backend in ("fbgemm", "llm-compressor"):
        for device, workers in (("cuda", "4"), ("cpu", "8")):
            dst = work / f"out-{backend}-{device}"
            best, best_inproc, used = None, None, set()
            for _ in range(2):
                t0 = time.perf_counter()
                proc = subprocess.run([*cli, str(dst), "--fp8", "--backend", backend, "--device", device,
                                       "--workers", workers, "--overwrite", "--json", "--max-shard-size", "500MB"],
                                      capture_output=True, text=True, check=True)
                wall = time.perf_counter() - t0
                doc = json.loads(proc.stdout)
                used |= set(doc["shard_devices"].values())
                best = min(best or wall, wall)
                best_inproc = min(best_inproc or doc["seconds"], doc["seconds"])
            _, rss = run([*cli, str(dst), "--fp8", "--backend", backend, "--device", device,
                          "--workers", workers, "--overwrite", "-q", "--max-shard-size", "500MB"])
            rows.append((f"quantize --fp8 --backend {backend} --device {device} (workers {workers}), "
                         f"{size / 1e9:.2f} GB from page cache",
                         f"{best:.2f} s whole process, {best_inproc:.2f} s writing",
                         f"{size / best / 1e9:.2f} GB/s end to end, {size / best_inproc / 1e9:.2f} GB/s after "
                         f"start-up; peak RSS {rss / 1e6:.0f} MB; devices {sorted(used)}"))

    # CUDA kernel output vs CPU reference output, tensor by tensor
    from safetensors.torch import load_file

    diff_bytes = total_bytes = 0
    max_scale_rel = 0.0
    for f in sorted((work / "out-fbgemm-cuda").glob("*.safetensors")):
        a, b = load_file(f), load_file(work / "out-fbgemm-cpu" / f.name)
        for k in a:
            if a[k].dtype == torch.float8_e4m3fn:
                diff_bytes += int((a[k].view(torch.uint8) != b[k].view(torch.uint8)).sum())
                total_bytes += a[k].numel()
            elif k.endswith("_scale"):
                rel = ((a[k] - b[k]).abs() / b[k].abs().clamp(min=1e-30)).max().item()
                max_scale_rel = max(max_scale_rel, rel)
    rows.append(("fbgemm CUDA vs CPU reference: FP8 bytes differing", f"{diff_bytes} of {total_bytes}",
                 f"{100 * diff_bytes / max(1, total_bytes):.4f} % (target < 0.1 %); max scale rel. diff "
                 f"{max_scale_rel:.2e} (target 1e-6)"))

    # Load + generate on the GPU: fbgemm_fp8 vs BF16 on a tiny model and on the bench model
    from llama4ctl.generate import compare_logits
    from llama4ctl.jobs import plan_quantize, quantize

    tiny = build_tiny_checkpoint(work / "tiny", shape="maverick", overwrite=True)
    quantize(plan_quantize(tiny, backend="fbgemm"), work / "tiny-fbgemm", device="cuda", overwrite=True)
    quantize(plan_quantize(tiny), work / "tiny-ct", device="cuda", overwrite=True)
    for label, out in (("fbgemm_fp8", work / "tiny-fbgemm"), ("compressed-tensors FP8_DYNAMIC", work / "tiny-ct")):
        r = compare_logits(tiny, out, device="cuda")
        rows.append((f"tiny maverick {label}: load + logits vs BF16 on GPU", json.dumps(r), ""))

    from transformers import AutoModelForCausalLM

    for label, path in (("BF16", src), ("fbgemm_fp8", work / "out-fbgemm-cuda")):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16, device_map="cuda")
        ids = torch.randint(0, 1000, (1, 32), device="cuda")
        model.generate(ids, max_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=64, do_sample=False, min_new_tokens=64)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rows.append((f"generate 64 tokens, batch 1, {label} (bench model, transformers)",
                     f"{(out.shape[1] - 32) / dt:.1f} tok/s",
                     f"weights {torch.cuda.memory_allocated() / 1e9:.2f} GB allocated"))
        del model
        torch.cuda.empty_cache()

    print(f"### FP8 on GPU — {datetime.date.today()}\n")
    print("Command: `python bench/bench_gpu.py` (device tool, nvidia-h100-x1)\n")
    print("| measurement | figure | notes |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
