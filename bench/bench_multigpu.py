"""Multi-GPU proof for quantize: one worker per visible GPU, output identical to the single-device run.

usage: python bench/bench_multigpu.py [--workdir /tmp/mgpu]   (run on a machine with 2+ GPUs)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mgpu"))
    work = ap.parse_args().workdir
    from llama4ctl.fixtures import build_random_checkpoint

    src = work / "src"
    if not src.exists():
        build_random_checkpoint(src, shape="scout", hidden_size=1024, expert_intermediate_size=1536,
                                mlp_intermediate_size=3072, num_experts=16, num_layers=12, vocab_size=32000,
                                max_shard_size="500MB", seed=0)
    print(f"GPUs: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
    print("| backend | device | workers | seconds (in process) | shards per device | output sha256 |")
    print("|---|---|---|---|---|---|")
    for backend in ("fbgemm", "llm-compressor"):
        for device, workers in (("cuda", "1"), ("cpu", "16")):
            dst = work / f"out-{backend}-{device}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "llama4ctl", "quantize", str(src), str(dst), "--fp8",
                                   "--backend", backend, "--device", device, "--workers", workers, "--overwrite",
                                   "--json", "--max-shard-size", "500MB"], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:])
                continue
            doc = json.loads(proc.stdout)
            per_device: dict[str, int] = {}
            for d in doc["shard_devices"].values():
                per_device[d] = per_device.get(d, 0) + 1
            print(f"| {backend} | {device} | {workers} | {doc['seconds']:.2f} ({time.perf_counter() - t0:.1f} wall) "
                  f"| {per_device} | {digest(dst)} |")


if __name__ == "__main__":
    main()
