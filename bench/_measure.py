"""Shared helpers for benchmarks: run a command, return wall seconds and peak RSS of the child tree."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], **kw) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one command; raises on failure.

    Peak RSS comes from GNU time: a forked child's own ru_maxrss also counts the pages it shared with this
    (large) benchmark process before exec, which made every figure look like the parent's size.
    """
    import tempfile

    with tempfile.NamedTemporaryFile("r") as rss_file:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, **kw)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
        return wall, int(rss_file.read().split()[-1]) * 1024


def run_json(cmd: list[str], **kw) -> tuple[float, int, dict]:
    """Like run(), for a `--json` command: (wall seconds, peak RSS bytes, its JSON document)."""
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("r") as rss_file:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd], capture_output=True,
                              text=True, **kw)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
        return wall, int(rss_file.read().split()[-1]) * 1024, json.loads(proc.stdout)


def median_time(cmd: list[str], repeat: int = 5) -> float:
    return statistics.median(run(cmd)[0] for _ in range(repeat))


def llama4ctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "llama4ctl", *args]


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
