"""GPU figures for the FP8 path (run on the H100 through the device tool).

usage: python bench/bench_gpu.py [--workdir /tmp/bench] [--models small scout-layers] [--cpu]
                                 [--cuda-workers 2 4] [--parts quantize agreement generate]
1. quantize: end-to-end `quantize --fp8` GB/s from page cache (whole process, and after start-up), CUDA (fbgemm
   kernel if installed), optionally the CPU path, on a 4.11 GB model of small experts and a ~18 GB one with
   Scout's own layer geometry;
2. agreement: fbgemm kernel vs CPU reference on the small model (needs --cpu);
3. generate: load the fbgemm_fp8 output in transformers on the GPU and generate; logits vs BF16.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import dir_bytes, run_json  # noqa: E402


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--layers", type=int, default=24, help="layers of the small model (4.11 GB at 24)")
    ap.add_argument("--scout-layers", type=int, default=4, help="layers of the Scout-geometry model (~4.4 GB each)")
    ap.add_argument("--models", nargs="+", default=["small", "scout-layers"], choices=["small", "scout-layers"])
    ap.add_argument("--cuda-workers", nargs="+", default=["2"], help="--workers values to time on CUDA")
    ap.add_argument("--cpu", action="store_true", help="also time the CPU path (needed for 'agreement')")
    ap.add_argument("--parts", nargs="+", default=["quantize", "agreement", "generate"])
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from llama4ctl.fixtures import build_random_checkpoint, build_tiny_checkpoint
    from llama4ctl.quant.fp8 import fbgemm_kernel

    rows = []
    gpu = torch.cuda.get_device_name(0)
    rows.append(("device", f"{gpu}, torch {torch.__version__}, fbgemm kernel {'yes' if fbgemm_kernel() else 'no'}", ""))

    models = {
        # many small experts: Python overhead per expert shows here
        "small": dict(hidden_size=1024, expert_intermediate_size=1536, mlp_intermediate_size=3072,
                      num_layers=args.layers),
        # Scout's own layer geometry (one gate_up slice is 168 MB), 4 layers: start-up weighs as in real use
        "scout-layers": dict(hidden_size=5120, expert_intermediate_size=8192, mlp_intermediate_size=16384,
                             num_layers=args.scout_layers),
    }
    for model in args.models:
        src = work / f"bench-{model}"
        if not src.exists():
            t0 = time.perf_counter()
            build_random_checkpoint(src, shape="scout", num_experts=16, vocab_size=32000, max_shard_size="5GB",
                                    seed=0, **models[model])
            print(f"built {src} in {time.perf_counter() - t0:.0f} s", flush=True)
        size = dir_bytes(src)
        subprocess.run(["cat", *map(str, src.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)
        devices = [("cuda", w) for w in args.cuda_workers] + ([("cpu", "8")] if args.cpu else [])
        for backend in ("fbgemm", "llm-compressor"):
            for device, workers in devices:
                dst = work / f"out-{model}-{backend}-{device}"
                runs = []
                for _ in range(2):
                    shutil.rmtree(dst, ignore_errors=True)
                    subprocess.run(["sync"], check=True)  # the previous run's write-back must not bleed in
                    runs.append(run_json([*cli_quantize(src, dst), "--fp8", "--backend", backend, "--device",
                                          device, "--workers", workers, "--json"]))
                wall, rss, doc = min(runs, key=lambda r: r[0])
                rows.append((f"{model} ({size / 1e9:.2f} GB): `quantize --fp8 --backend {backend} --device {device} "
                             f"--workers {workers}`",
                             f"{wall:.2f} s = {size / wall / 1e9:.2f} GB/s end to end",
                             f"after start-up {doc['seconds']:.2f} s = {size / doc['seconds'] / 1e9:.2f} GB/s; "
                             f"start-up {wall - doc['seconds']:.2f} s; peak RSS {rss / 1e6:.0f} MB; "
                             f"devices {sorted(set(doc['shard_devices'].values()))}"))
                print(rows[-1], flush=True)
    if "agreement" not in args.parts:
        return _print(rows)

    # CUDA kernel output vs CPU reference output, tensor by tensor
    from safetensors.torch import load_file

    diff_bytes = total_bytes = 0
    max_scale_rel = 0.0
    for f in sorted((work / "out-small-fbgemm-cuda").glob("*.safetensors")):
        a, b = load_file(f), load_file(work / "out-small-fbgemm-cpu" / f.name)
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
    if "generate" not in args.parts:
        return _print(rows)

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

    for label, path in (("BF16", work / "bench-small"), ("fbgemm_fp8", work / "out-small-fbgemm-cuda")):
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

    _print(rows)


def cli_quantize(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "llama4ctl", "quantize", str(src), str(dst)]


def _print(rows: list[tuple[str, str, str]]) -> None:
    print(f"### FP8 on GPU — {datetime.date.today()}\n")
    print(f"Command: `python bench/bench_gpu.py {' '.join(sys.argv[1:])}` (device tool)\n")
    print("| measurement | figure | notes |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")

if __name__ == "__main__":
    main()
