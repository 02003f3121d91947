"""A quantize run killed with SIGKILL leaves no complete-looking output; --resume finishes it identically."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e._load import bits, tensors

# Slow each shard down a little so the test can kill the process between shards.
SLOW_RUN = """
import sys, time
from llama4ctl.exec import writer
close = writer.ShardFile.close
def slow_close(self):
    close(self)
    time.sleep(0.15)
writer.ShardFile.close = slow_close
from llama4ctl.cli.app import app
app(sys.argv[1:], prog_name="llama4ctl")
"""


def _cmd(src, dst, *extra):
    return [sys.executable, "-c", SLOW_RUN, "quantize", str(src), str(dst), "--fp8", "--max-shard-size", "60KB",
            "--device", "cpu", "--workers", "1", "-q", *extra]


@pytest.mark.parametrize("backend", ["llm-compressor", "fbgemm"])
def test_sigkill_then_resume_gives_the_uninterrupted_output(maverick_dir, tmp_path, backend):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    ref = subprocess.run(_cmd(maverick_dir, tmp_path / "ref", "--backend", backend), env=env, capture_output=True)
    assert ref.returncode == 0, ref.stderr

    dst, partial = tmp_path / "out", tmp_path / ".out.partial"
    proc = subprocess.Popen(_cmd(maverick_dir, dst, "--backend", backend), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(json.loads((partial / "progress.json").read_text())["finished"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists(), "a killed run must not leave a complete-looking destination"
    assert partial.exists()

    again = subprocess.run(_cmd(maverick_dir, dst, "--backend", backend, "--json"), env=env, capture_output=True)
    assert again.returncode == 1 and b"--resume" in again.stderr

    resumed = subprocess.run(_cmd(maverick_dir, dst, "--backend", backend, "--resume", "--json"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["shards_skipped"] >= 2
    a, b = tensors(tmp_path / "ref"), tensors(dst)
    assert a.keys() == b.keys() and all(bits(a[k]).equal(bits(b[k])) for k in a)
    for name in ("config.json", "model.safetensors.index.json", "quantization_report.json"):
        assert (tmp_path / "ref" / name).read_text() == (dst / name).read_text(), name
    assert not partial.exists()
