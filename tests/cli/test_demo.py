"""The README's first command: `llama4ctl demo` builds the tiny checkpoint and runs the built commands."""

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_built_step(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llama4ctl", "demo", str(tmp_path / "d"), "--json"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2]),
                            "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    steps = [s["step"] for s in doc["steps"]]
    assert steps[0] == "inspect" and any(s.startswith("quantize --fp8") for s in steps)
    assert (tmp_path / "d" / "tiny-llama4-maverick-FP8-DYNAMIC" / "quantization_report.json").exists()
