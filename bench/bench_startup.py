"""`run` on the CPU: time from the command to the first generated token, on the built-in tiny checkpoint.

usage: python bench/bench_startup.py [--runs 5] [--workdir /tmp/bench-startup]

Target (issue #7): under 10 s on a tiny model on the CPU. Each run is a fresh process:
- `python -m llama4ctl run TINY --prompt ... --max-new-tokens 16 --device-map cpu --json`; the document's
  `startup_to_first_token_s` runs from the process start (interpreter start-up and imports included);
- the peer, in the same session: a plain transformers script doing the same job (tokenizer, chat template,
  `Llama4ForConditionalGeneration.from_pretrained`, `generate` with a streamer), timed the same way.
The first run of each is the coldest (imports not yet in the page cache); the table gives the first and the median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "Describe a llama."

PEER = r'''
import os, sys, time
def started():
    with open(f"/proc/{os.getpid()}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(l.split()[1]) for l in f if l.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")
import torch
from transformers import AutoTokenizer, Llama4ForConditionalGeneration
from transformers.generation.streamers import BaseStreamer
path, prompt = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(path)
ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                              return_dict=True)
model = Llama4ForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).eval()
class First(BaseStreamer):
    first = None
    seen = False
    def put(self, value):
        if self.seen and self.first is None:
            self.first = time.time()
        self.seen = True
    def end(self):
        pass
s = First()
with torch.inference_mode():
    model.generate(**ids, max_new_tokens=16, do_sample=False, streamer=s)
print(s.first - started())
'''


def ours(path: Path) -> float:
    cmd = [sys.executable, "-m", "llama4ctl", "run", str(path), "--prompt", PROMPT, "--max-new-tokens", "16",
           "--device-map", "cpu", "--temperature", "0", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout)["startup_to_first_token_s"]


def peer(path: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", PEER, str(path), PROMPT], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    from llama4ctl.fixtures import build_tiny_checkpoint

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-startup-"))
    tiny = work / "tiny-llama4-maverick"
    if not (tiny / "config.json").exists():
        build_tiny_checkpoint(tiny, shape="maverick")
    times: dict[str, list[float]] = {"llama4ctl run": [], "transformers script (peer)": []}
    t0 = time.perf_counter()
    for _ in range(args.runs):  # alternate, so both see the same machine load
        times["llama4ctl run"].append(ours(tiny))
        times["transformers script (peer)"].append(peer(tiny))
    print(f"### `run` command to first token, CPU — {datetime.date.today()}\n")
    print(f"Command: `python bench/bench_startup.py --runs {args.runs}` on {platform.machine()}, "
          f"{platform.python_version()}; built-in tiny Maverick-shaped checkpoint; each run a fresh process "
          f"({time.perf_counter() - t0:.0f} s in all).\n")
    print("| program | first run (s) | median (s) | min–max (s) |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {ts[0]:.2f} | {statistics.median(ts):.2f} | {min(ts):.2f}–{max(ts):.2f} |")
    ratio = statistics.median(times["llama4ctl run"]) / statistics.median(times["transformers script (peer)"])
    print(f"\nmedian llama4ctl ÷ peer: {ratio:.2f}×; target < 10 s: "
          f"{'met' if max(times['llama4ctl run']) < 10 else 'not met'} (slowest run "
          f"{max(times['llama4ctl run']):.2f} s)")


if __name__ == "__main__":
    main()
