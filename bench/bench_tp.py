"""`run` tensor parallel over 2 GPUs (torchrun): BF16 vs FP8 checkpoints through llama4ctl's fast FP8 MoE.

usage: python bench/bench_tp.py [--workdir /tmp/bench-run] [--gpus 2] [--rounds 5] [--new-tokens 64] [--wide]

transformers 5.17 cannot decode fbgemm_fp8 or compressed-tensors checkpoints under tp_plan="auto" (it crashes),
so the peer is BF16 under transformers' own tensor parallel, measured in the same processes.
1. builds (or reuses) bench_run.py's Maverick-shaped random checkpoint and its fbgemm_fp8 / compressed-tensors
   FP8 copies (quantized on GPU 0);
2. `torchrun --nproc-per-node GPUS bench/bench_tp.py --child ...` loads every variant in the same processes the
   way `llama4ctl run` does under torchrun, then times them in rotation (ROUNDS rounds at batch 1 and 16,
   exactly --new-tokens per sequence, after a warm-up that also captures the CUDA graphs);
3. rank 0 prints a markdown table: median tok/s, median per-round ratio to BF16, weights per GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_run import SHAPE, WIDE, rotate

VARIANTS = [  # (label, checkpoint key, load_in)
    ("BF16 (transformers tensor parallel)", "bf16", None),
    ("fbgemm_fp8 + fast FP8 MoE + CUDA graphs", "fbgemm", None),
    ("compressed-tensors FP8 + fast FP8 MoE + CUDA graphs", "ct", None),
    ("BF16 --load-in fp8 (fast FP8 MoE + CUDA graphs)", "bf16", "fp8"),
]


def child(paths: dict[str, str], rounds: int, new_tokens: int) -> dict | None:
    import gc

    import torch

    from llama4ctl import generate
    from llama4ctl.moe_fp8 import graph_stats
    from llama4ctl.runner import RunRequest, load_for_run, load_tokenizer, placement

    models = []
    for label, key, load_in in VARIANTS:
        config, _ = generate.read_config(paths[key])
        fmt = generate.checkpoint_format(config)
        req = RunRequest(model=paths[key], prompt="-", load_in=load_in, max_new_tokens=new_tokens, temperature=0,
                         ignore_eos=True)
        device_map, on_cuda = placement("auto", tensor_parallel=True)
        gc.collect()
        before = torch.cuda.memory_allocated()
        loaded = load_for_run(req, config, fmt, device_map=device_map, on_cuda=on_cuda, tp=True)
        gc.collect()
        models.append((label, loaded.model, torch.cuda.memory_allocated() - before, loaded.info))
    figures = rotate([(label, model) for label, model, _w, _i in models], load_tokenizer(paths["bf16"]), rounds,
                     new_tokens)
    if generate.rank() != 0:
        return None
    rows = []
    for (label, model, weights, info), timed in zip(models, figures):
        rows.append({"label": label, "weights_bytes_per_gpu": weights, "fp8_moe": info["fp8_moe"],
                     "graphs": graph_stats(model) if info["fp8_moe"] else None, **timed})
    return {"rows": rows, "rounds": rounds, "world_size": generate.world_size(),
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-run"))
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--wide", action="store_true", help="bench_run.py's ~7 GB checkpoint instead of ~2.1 GB")
    ap.add_argument("--child", nargs=3, metavar=("BF16", "FBGEMM", "CT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        doc = child(dict(zip(("bf16", "fbgemm", "ct"), args.child)), args.rounds, args.new_tokens)
        if doc is not None:
            print("BENCH_TP " + json.dumps(doc), flush=True)
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        return

    import compressed_tensors.quantization  # noqa: F401 - before the quantizer's background warm-up import

    from llama4ctl.fixtures import build_random_checkpoint
    from llama4ctl.jobs import plan_quantize, quantize

    shape = WIDE if args.wide else SHAPE
    work = args.workdir / ("wide" if args.wide else "")
    work.mkdir(parents=True, exist_ok=True)
    paths = {"bf16": work / "maverick-bf16", "fbgemm": work / "maverick-fbgemm-fp8", "ct": work / "maverick-ct-fp8"}
    if not (paths["bf16"] / "config.json").exists():
        build_random_checkpoint(paths["bf16"], overwrite=True, **shape)
    if not (paths["fbgemm"] / "config.json").exists():
        quantize(plan_quantize(paths["bf16"], backend="fbgemm", max_shard_size="1GB"), paths["fbgemm"],
                 device="cuda", overwrite=True)
    if not (paths["ct"] / "config.json").exists():
        quantize(plan_quantize(paths["bf16"], max_shard_size="1GB"), paths["ct"], device="cuda", overwrite=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.gpus),
           str(Path(__file__).resolve()), "--child", *map(str, paths.values()), "--rounds", str(args.rounds),
           "--new-tokens", str(args.new_tokens)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_TP ")), None)
    if r.returncode or line is None:
        errors = [ln for ln in r.stderr.splitlines() if "Error" in ln and ln.startswith("[rank")]
        sys.exit(f"torchrun failed (exit {r.returncode}):\n" + "\n".join(errors[-6:] or [r.stderr[-4000:]]))
    doc = json.loads(line[len("BENCH_TP "):])
    sizes = {k: sum(f.stat().st_size for f in p.glob("*.safetensors")) / 1e9 for k, p in paths.items()}
    print(f"### `run` tensor parallel x{doc['world_size']} — {datetime.date.today()}\n")
    print(f"Command: `python bench/bench_tp.py {' '.join(sys.argv[1:])}` on {doc['world_size']} x {doc['device']}, "
          f"torch {doc['torch']}. Checkpoint: bench_run.py's Maverick-shaped random "
          f"({'--wide, ' if args.wide else ''}files BF16 {sizes['bf16']:.2f} GB, fbgemm_fp8 {sizes['fbgemm']:.2f} GB, "
          f"compressed-tensors {sizes['ct']:.2f} GB). All variants loaded in the same torchrun processes and timed "
          f"in rotation, {doc['rounds']} rounds, {args.new_tokens} new tokens per sequence; ratios are medians "
          "of per-round ratios to BF16 (worst round in brackets).\n")
    print("| variant | tok/s b1 | × BF16 b1 | tok/s b16 | × BF16 b16 | weights per GPU GB | × BF16 | graphs |")
    print("|---|---|---|---|---|---|---|---|")
    bf16_w = doc["rows"][0]["weights_bytes_per_gpu"]
    for row in doc["rows"]:
        g = row["graphs"]
        graphs = f"{g['captured']} captured, {g['replays']} replays" + (f", off: {g['disabled']}" if g["disabled"]
                                                                         else "") if g else "-"
        print(f"| {row['label']} | {row['b1_median']:.1f} | {row['b1_ratio_median']:.2f} ({row['b1_ratio_min']:.2f}) "
              f"| {row['b16_median']:.0f} | {row['b16_ratio_median']:.2f} ({row['b16_ratio_min']:.2f}) | "
              f"{row['weights_bytes_per_gpu'] / 1e9:.2f} | {row['weights_bytes_per_gpu'] / bf16_w:.2f} | {graphs} |")


if __name__ == "__main__":
    main()
