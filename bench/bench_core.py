"""Foundation benchmarks: start-up, inspect on 55 shards, shard throughput vs cp, peak RSS with a 2 GB tensor.

usage: python bench/bench_core.py [--workdir bench/out] [--size-gb 2]
Prints a markdown block to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import dir_bytes, llama4ctl, machine, median_time, run  # noqa: E402


def build(work: Path) -> dict[str, Path]:
    from llama4ctl.fixtures import build_random_checkpoint

    paths = {}
    # Maverick layout (48 layers, 128 fused experts, vision tower) at small widths, cut into 55 shards.
    p = work / "maverick-55-shards"
    if not p.exists():
        build_random_checkpoint(p, shape="maverick", hidden_size=64, expert_intermediate_size=48,
                                mlp_intermediate_size=96, num_experts=128, num_layers=48, vocab_size=2048,
                                max_shard_size="590KB", seed=0, vision=True)
    paths["inspect"] = p
    # ~2.1 GB Scout-shaped (every layer MoE) checkpoint with 500 MB shards.
    p = work / "scout-2gb"
    if not p.exists():
        build_random_checkpoint(p, shape="scout", hidden_size=1024, expert_intermediate_size=1536,
                                mlp_intermediate_size=3072, num_experts=16, num_layers=12, vocab_size=32000,
                                max_shard_size="500MB", seed=0)
    paths["throughput"] = p
    # One 2 GB tensor: fused gate_up_proj of 16 experts, H=4096, 2I=16384 (BF16) = 2.1 GB.
    p = work / "big-tensor"
    if not p.exists():
        build_random_checkpoint(p, shape="scout", hidden_size=4096, expert_intermediate_size=8192,
                                mlp_intermediate_size=8192, num_experts=16, num_layers=1, vocab_size=256,
                                max_shard_size="5GB", seed=0)
    paths["rss"] = p
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    paths = build(work)
    rows = []

    help_s = median_time(llama4ctl("--help"), 7)
    rows.append(("`llama4ctl --help` start-up (median of 7)", f"{help_s:.3f} s", "target < 0.5 s"))

    from llama4ctl.checkpoint.checkpoint import Checkpoint

    ck = Checkpoint.open(paths["inspect"])
    inspect_s = median_time(llama4ctl("inspect", str(paths["inspect"]), "--json"), 7)
    rows.append((f"`inspect` on {len(ck.shards)} shards, {len(ck.tensors)} tensors (whole process, median of 7)",
                 f"{inspect_s:.3f} s", "target < 0.5 s"))

    src = paths["throughput"]
    size = dir_bytes(src)
    dst_cp, dst_sh = work / "cp-copy", work / "shard-copy"
    results = {}
    for attempt in range(2):  # cp, shard, cp, shard: both warm in page cache
        shutil.rmtree(dst_cp, ignore_errors=True)
        results.setdefault("cp", []).append(run(["cp", "-r", str(src), str(dst_cp)])[0])
        shutil.rmtree(dst_cp, ignore_errors=True)
        results.setdefault("cpsync", []).append(
            run(["bash", "-c", f"cp -r '{src}' '{dst_cp}' && sync"])[0])
        shutil.rmtree(dst_sh, ignore_errors=True)
        results.setdefault("shard", []).append(
            run(llama4ctl("shard", str(src), str(dst_sh), "--max-shard-size", "500MB", "-q", "--workers", "1"))[0])
        shutil.rmtree(dst_sh, ignore_errors=True)
        results.setdefault("shard2", []).append(
            run(llama4ctl("shard", str(src), str(dst_sh), "--max-shard-size", "500MB", "-q", "--workers", "2"))[0])
    cp_s, sh_s, sh2_s = min(results["cp"]), min(results["shard"]), min(results["shard2"])
    cps_s = min(results["cpsync"])
    rows.append((f"`cp -r` of {size / 1e9:.2f} GB (best of 2)", f"{cp_s:.2f} s ({size / cp_s / 1e9:.2f} GB/s)", ""))
    rows.append(("`cp -r && sync` (same durability as shard's final fsync)", f"{cps_s:.2f} s "
                 f"({size / cps_s / 1e9:.2f} GB/s)", ""))
    rows.append(("`shard --max-shard-size 500MB --workers 1` (best of 2)", f"{sh_s:.2f} s ({size / sh_s / 1e9:.2f} GB/s)",
                 f"{cp_s / sh_s:.2f}× cp, {cps_s / sh_s:.2f}× cp+sync"))
    rows.append(("`shard --max-shard-size 500MB` (default --workers 2, best of 2)", f"{sh2_s:.2f} s ({size / sh2_s / 1e9:.2f} GB/s)",
                 f"{cp_s / sh2_s:.2f}× cp, {cps_s / sh2_s:.2f}× cp+sync"))

    big = paths["rss"]
    largest = max(t.nbytes for t in Checkpoint.open(big).tensors)
    for label, extra in (("reshard", []), ("unfuse experts", ["--experts", "unfused"])):
        dst = work / "rss-out"
        shutil.rmtree(dst, ignore_errors=True)
        wall, rss = run(llama4ctl("shard", str(big), str(dst), "-q", *extra))
        rows.append((f"peak RSS, `shard` {label}, largest tensor {largest / 1e9:.2f} GB",
                     f"{rss / 1e6:.0f} MB ({wall:.1f} s)", "target < 500 MB"))
        shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(dst_cp, ignore_errors=True)
    shutil.rmtree(dst_sh, ignore_errors=True)

    print(f"### Foundation — {datetime.date.today()} — {machine()}\n")
    print("Command: `python bench/bench_core.py`\n")
    print("| measurement | figure | ratio / target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
