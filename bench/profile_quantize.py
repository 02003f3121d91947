"""Where the time of `quantize --fp8` goes: start-up pieces, raw read and write speeds, and a cProfile of the run.

usage: python bench/profile_quantize.py [--workdir /tmp/bench] [--device cuda] [--backend fbgemm] [--workers 1]
Builds (or reuses) the Scout-shaped 4.11 GB checkpoint of bench_gpu.py. Prints plain text.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import dir_bytes  # noqa: E402


def timed(label: str, cmd: list[str]) -> None:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"{label:<48} {time.perf_counter() - t0:6.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="fbgemm")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--layers", type=int, default=24)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from llama4ctl.fixtures import build_random_checkpoint

    src = args.workdir / "scout-bench"
    if not src.exists():
        build_random_checkpoint(src, shape="scout", hidden_size=1024, expert_intermediate_size=1536,
                                mlp_intermediate_size=3072, num_experts=16, num_layers=args.layers,
                                vocab_size=32000, max_shard_size="500MB", seed=0)
    size = dir_bytes(src)
    subprocess.run(["cat", *map(str, src.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)

    py = sys.executable
    timed("python -c pass", [py, "-c", "pass"])
    timed("import torch", [py, "-c", "import torch"])
    if args.device == "cuda":
        timed("import torch + CUDA init", [py, "-c", "import torch; torch.zeros(1, device='cuda')"])
        timed("import fbgemm_gpu gen_ai", [py, "-c", "import torch, fbgemm_gpu.experimental.gen_ai"])
    timed("quantize --dry-run", [py, "-m", "llama4ctl", "quantize", str(src), str(args.workdir / "dry"), "--fp8",
                                 "--backend", args.backend, "--dry-run", "-q"])

    import torch

    from llama4ctl.checkpoint.checkpoint import Checkpoint
    from llama4ctl.checkpoint.reader import Reader

    ckpt = Checkpoint.open(src)
    reader = Reader()
    t0 = time.perf_counter()
    n = 0
    for ref in ckpt.tensors:
        if len(ref.shape) == 3:
            for e in range(ref.shape[0]):
                n += reader.read_expert(ref, e).nbytes
        else:
            n += reader.read(ref).nbytes
    dt = time.perf_counter() - t0
    print(f"read every tensor{'':<31} {dt:6.2f} s  {n / dt / 1e9:.2f} GB/s", flush=True)
    reader.close()

    buf = torch.empty(64 << 20, dtype=torch.uint8).numpy()
    path = args.workdir / "write-probe"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(32):
            f.write(buf)
        t1 = time.perf_counter()
        f.flush()
        os.fsync(f.fileno())
    t2 = time.perf_counter()
    print(f"write 2.15 GB to page cache{'':<21} {t1 - t0:6.2f} s  {2.147 / (t1 - t0):.2f} GB/s")
    print(f"then fsync{'':<38} {t2 - t1:6.2f} s  {2.147 / (t2 - t1):.2f} GB/s", flush=True)
    path.unlink()

    from llama4ctl import jobs

    plan = jobs.plan_quantize(src, backend=args.backend, max_shard_size="500MB")
    jobs.quantize(plan, args.workdir / "warm", device=args.device, workers=args.workers, overwrite=True)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = jobs.quantize(plan, args.workdir / "prof", device=args.device, workers=args.workers, overwrite=True)
    prof.disable()
    dt = time.perf_counter() - t0
    print(f"\nquantize in-process ({args.backend}, {args.device}, workers {args.workers}): {dt:.2f} s, "
          f"{size / dt / 1e9:.2f} GB/s (writing {res['seconds']:.2f} s)")
    s = io.StringIO()
    stats = pstats.Stats(prof, stream=s)
    stats.sort_stats("tottime").print_stats(25)
    print(s.getvalue()[-6000:])


if __name__ == "__main__":
    main()
