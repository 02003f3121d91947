"""Xet chunking and hashing throughput: pure Python vs numba, single file.

usage: python bench/bench_xet.py [--workdir bench/out] [--size-mb 512] [--python-mb 8] [--repeat 3]

Generates (once) a file of random data with repeated regions, as in fine-tuned checkpoints, then
times chunk boundaries alone and chunking + hashing (the file hash), from memory and from the
file (page cache warm). Pure Python runs on the first --python-mb only. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _measure import machine  # noqa: E402

from llama4ctl.xet.chunker import chunk_boundaries  # noqa: E402
from llama4ctl.xet.hashing import chunk_and_hash, file_hash, hash_chunks  # noqa: E402


def make_file(path: Path, size: int) -> None:
    """Random 8 MiB blocks, every fourth one a copy of an earlier block (chunk-level reuse)."""
    rng = np.random.default_rng(0)
    block = 8 << 20
    written: list[bytes] = []
    with open(path, "wb") as f:
        for i in range(-(-size // block)):
            data = written[rng.integers(len(written))] if i % 4 == 3 else rng.bytes(block)
            written.append(data)
            f.write(data[:size - i * block])


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--python-mb", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"xet-bench-{args.size_mb}mb.bin"
    size = args.size_mb << 20
    if not path.exists() or path.stat().st_size != size:
        make_file(path, size)
    data = np.fromfile(path, dtype=np.uint8)
    sample = data[:args.python_mb << 20]
    chunk_boundaries(data[:1 << 20])  # compile or load the numba kernel outside the timings

    rows = []

    def row(what: str, impl: str, nbytes: int, seconds: float) -> None:
        rows.append((what, impl, nbytes / seconds / 1e6))
        print(f"  {what:<34} {impl:<26} {nbytes / seconds / 1e6:9.1f} MB/s", file=sys.stderr)

    r = args.repeat
    row("chunking, in memory", f"pure Python ({args.python_mb} MB)", sample.size,
        best_of(1, lambda: chunk_boundaries(sample, backend="python")))
    row("chunking, in memory", "numba", size, best_of(r, lambda: chunk_boundaries(data)))
    row("chunking, in memory (legacy rule)", "numba", size,
        best_of(r, lambda: chunk_boundaries(data, chunker="legacy")))
    row("chunking, file", "numba + reader thread", size, best_of(r, lambda: chunk_boundaries(path)))
    ends = chunk_boundaries(data)
    row("hashing only (keyed BLAKE3)", "blake3, 1 thread", size, best_of(r, lambda: hash_chunks(data, ends, threads=1)))
    row("hashing only (keyed BLAKE3)", "blake3, all cores", size, best_of(r, lambda: hash_chunks(data, ends)))
    row("chunking + hashing, in memory", f"pure Python ({args.python_mb} MB)", sample.size,
        best_of(1, lambda: hash_chunks(sample, chunk_boundaries(sample, backend="python"), threads=1)))
    row("chunking + hashing, in memory", "numba + blake3", size, best_of(r, lambda: chunk_and_hash(data)))
    row("chunking + hashing, file (file_hash)", "numba + blake3 pipeline", size, best_of(r, lambda: file_hash(path)))
    try:
        import hf_xet

        row("chunking + hashing, file", "hf_xet.hash_files (Rust)", size,
            best_of(r, lambda: hf_xet.hash_files([str(path)])))
    except (ImportError, AttributeError):
        pass

    print(f"Xet chunking/hashing, {args.size_mb} MB file, {machine()}, best of {r}:\n")
    print("| what | implementation | MB/s |\n| --- | --- | ---: |")
    for what, impl, mbs in rows:
        print(f"| {what} | {impl} | {mbs:,.1f} |")


if __name__ == "__main__":
    main()
