"""quantize --fp8 vs llm-compressor model_free_ptq and cp, on the same checkpoint and machine.

usage: python bench/bench_quantize.py [--workdir bench/out] [--skip-big]
1. ~2 GB Scout-shaped BF16 checkpoint (500 MB shards): wall time and peak RSS of
   `llama4ctl quantize --fp8` (both backends) vs `model_free_ptq(scheme="FP8_DYNAMIC")` vs `cp -r`.
   model_free_ptq is run on the fused checkpoint as a user would (its expert output is wrong there: it splits
   the fused [E, H, 2I] tensors on the wrong axis) and on a per-expert copy (where its output is right).
2. peak RSS of `llama4ctl quantize --fp8` on a checkpoint whose largest tensor is 4.3 GB.
Prints a markdown block for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import dir_bytes, llama4ctl, machine, run  # noqa: E402

MFPTQ = """
import sys
from llmcompressor import model_free_ptq
model_free_ptq(sys.argv[1], sys.argv[2], scheme="FP8_DYNAMIC", max_workers=int(sys.argv[3]), device="cpu",
               ignore=["re:.*lm_head", "re:.*router", "re:vision_model.*", "re:multi_modal_projector.*",
                       "re:.*embed_tokens"])
"""


def best(cmd: list[str], out: Path, repeat: int = 2) -> tuple[float, int]:
    results = []
    partial = out.parent / f".{out.name}.partial"
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        results.append(run(cmd))
    shutil.rmtree(out, ignore_errors=True)
    return min(r[0] for r in results), max(r[1] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from llama4ctl.fixtures import build_random_checkpoint

    src = work / "scout-2gb"
    if not src.exists():
        build_random_checkpoint(src, shape="scout", hidden_size=1024, expert_intermediate_size=1536,
                                mlp_intermediate_size=3072, num_experts=16, num_layers=12, vocab_size=32000,
                                max_shard_size="500MB", seed=0)
    unfused = work / "scout-2gb-unfused"
    if not unfused.exists():
        run(llama4ctl("shard", str(src), str(unfused), "--experts", "unfused", "--max-shard-size", "500MB", "-q"))
    size = dir_bytes(src)
    rows = []
    cp_s, cp_rss = best(["cp", "-r", str(src), str(work / "cp")], work / "cp")
    rows.append((f"`cp -r` ({size / 1e9:.2f} GB)", cp_s, cp_rss))
    out = work / "q"
    for backend in ("llm-compressor", "fbgemm"):
        s, r = best(llama4ctl("quantize", str(src), str(out), "--fp8", "--backend", backend, "--device", "cpu",
                              "--workers", "2", "-q", "--max-shard-size", "500MB"), out)
        rows.append((f"`llama4ctl quantize --fp8 --backend {backend}` (2 workers)", s, r))
    for label, inp in (("fused input (wrong experts)", src), ("per-expert input", unfused)):
        s, r = best([sys.executable, "-c", MFPTQ, str(inp), str(out), "2"], out)
        rows.append((f"`model_free_ptq(FP8_DYNAMIC)`, {label}, max_workers=2", s, r))

    ours = rows[1]
    print(f"### FP8 quantize, CPU — {datetime.date.today()} — {machine()}\n")
    print("Command: `python bench/bench_quantize.py`; input: Scout-shaped BF16, 12 layers × 16 experts, "
          "hidden 1024, expert 1536, 500 MB shards; wall time includes process start-up; best of 2.\n")
    print("| run | wall | GB/s | peak RSS | llama4ctl (llm-compressor backend) vs this |\n|---|---|---|---|---|")
    for label, s, r in rows:
        ratio = "" if label == ours[0] else f"{s / ours[1]:.2f}× time, {r / ours[2]:.2f}× RSS"
        print(f"| {label} | {s:.2f} s | {size / s / 1e9:.2f} | {r / 1e6:.0f} MB | {ratio} |")

    if not args.skip_big:
        big = work / "big-4gb-tensor"
        if not big.exists():
            build_random_checkpoint(big, shape="scout", hidden_size=4096, expert_intermediate_size=8192,
                                    mlp_intermediate_size=8192, num_experts=32, num_layers=1, vocab_size=256,
                                    max_shard_size="5GB", seed=0)
        from llama4ctl.checkpoint.checkpoint import Checkpoint

        largest = max(t.nbytes for t in Checkpoint.open(big).tensors)
        print(f"\nLargest tensor {largest / 1e9:.2f} GB, checkpoint {dir_bytes(big) / 1e9:.2f} GB:\n")
        print("| run | wall | peak RSS |\n|---|---|---|")
        for backend in ("llm-compressor", "fbgemm"):
            s, r = best(llama4ctl("quantize", str(big), str(out), "--fp8", "--backend", backend, "--device", "cpu",
                                  "--workers", "2", "-q"), out, repeat=1)
            print(f"| `llama4ctl quantize --fp8 --backend {backend}` | {s:.1f} s | {r / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
