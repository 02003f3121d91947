"""`llama4ctl inspect` on hostile files: a one-line error and exit 1 (or a summary and exit 0), never a traceback.

Hundreds of mutated files go through the CLI in-process (typer's CliRunner, the same `handled` error path);
a few go through a real `python -m llama4ctl` process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama4ctl.cli.app import app
from tests import fuzzkit

ROOT = Path(__file__).resolve().parents[2]


def check_cli(result_code: int, stdout: str, stderr: str, json_mode: bool) -> str:
    assert "Traceback" not in stdout + stderr, stderr[-2000:]
    assert result_code in (0, 1), (result_code, stderr[-2000:])
    if result_code == 0:
        if json_mode:
            assert json.loads(stdout)["kind"] == "inspect"
        return "ok"
    lines = stderr.splitlines()
    assert len(lines) in (1, 2) and lines[0].startswith("Error: "), lines[:5]
    assert len(lines) == 1 or lines[1].startswith("Hint: ")
    assert not lines[0].startswith("Error: unexpected "), lines[0]  # handled, not an escaped exception
    if json_mode:
        assert stdout.count("\n") == 1 and json.loads(stdout)["error"]["message"]
    else:
        assert stdout == ""
    return "error"


def test_inspect_on_hundreds_of_hostile_files(tmp_path, long_run):
    runner = CliRunner()
    seed = int(os.environ.get("LLAMA4CTL_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    outcomes = {"ok": 0, "error": 0}
    for i in range(3000 if long_run else 100):
        path = tmp_path / f"case{i % 2}.safetensors"
        path.write_bytes(fuzzkit.hostile_file(rng))
        json_mode = i % 3 == 0
        args = ["inspect", str(path), *(["--json"] if json_mode else []), *(["--tensors"] if i % 5 == 0 else [])]
        r = runner.invoke(app, args)
        try:
            outcomes[check_cli(r.exit_code, r.stdout, r.stderr, json_mode)] += 1
        except AssertionError as e:
            raise AssertionError(f"seed {seed} case {i}: {e}") from None
    assert outcomes["error"] > 0 and outcomes["ok"] > 0, outcomes


def test_inspect_on_hostile_checkpoint_directories(tmp_path):
    runner = CliRunner()
    rng = random.Random(7)
    root = tmp_path / "ckpt"
    files = fuzzkit.build_checkpoint(root, rng)
    for _ in range(60):
        fuzzkit.hostile_checkpoint(root, rng, files)
        r = runner.invoke(app, ["inspect", str(root)])
        assert "Traceback" not in r.stderr and r.exit_code in (0, 1), r.stderr
        if r.exit_code == 1:
            assert r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) <= 2, r.stderr


HOSTILE = {
    "markup-name": fuzzkit.join(b'{"x[/]":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"\0" * 4),
    "deep": fuzzkit.join(b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", b""),
    "huge-length": fuzzkit.join(b"{}", b"", 2**63),
    "huge-number": fuzzkit.join(b'{"x":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}', b""),
    "newline-name": fuzzkit.join(b'{"a\\nb\\r\\u001b[2J":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b""),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_real_process_prints_one_line_and_exits_1(tmp_path, name):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(HOSTILE[name])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("LLAMA4CTL_DEBUG", None)
    for json_mode in (False, True):
        r = subprocess.run([sys.executable, "-m", "llama4ctl", "inspect", str(path), *(["--json"] * json_mode)],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1
        check_cli(r.returncode, r.stdout, r.stderr, json_mode)
        assert str(path) in r.stderr


def test_names_with_markup_are_listed_literally(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(fuzzkit.join(b'{"[/]x[bold]":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))
    r = CliRunner().invoke(app, ["inspect", str(path), "--tensors"])
    assert r.exit_code == 0, r.stderr
    assert "[/]x[bold]" in r.stderr


#: ESC (a CSI sequence that clears the screen), CR, BEL, an OSC title sequence, C1 CSI, bidi overrides/isolates
CONTROL_NAMES = ["a\x1b[2Jb", "line\rover", "bell\x07", "\x1b]0;title\x07x", "c1\x9b31m", "right\u202etxt.exe",
                 "iso\u2066late\u2069", "sep\u2028x"]


def _unsafe(text: str) -> list[str]:
    """Characters a terminal would act on rather than show (newlines between lines are fine)."""
    return [c for c in text if not c.isprintable() and c != "\n"]


def _file_with_names(path: Path, names: list[str]) -> Path:
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    path.write_bytes(fuzzkit.join(json.dumps(header).encode(), b"\0" * 4 * len(names)))
    return path


def test_control_characters_in_tensor_names_are_escaped_in_the_listing(tmp_path):
    path = _file_with_names(tmp_path / "names.safetensors", CONTROL_NAMES)
    r = CliRunner().invoke(app, ["inspect", str(path), "--tensors"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.stderr
    assert _unsafe(r.stderr) == []
    for shown in (r"a\x1b[2Jb", r"line\rover", r"bell\x07", r"\x1b]0;title\x07x", r"c1\x9b31m", r"right\u202etxt.exe",
                  r"iso\u2066late\u2069", r"sep\u2028x"):
        assert shown in r.stderr


def test_json_output_keeps_control_characters_in_tensor_names_exactly(tmp_path):
    path = _file_with_names(tmp_path / "names.safetensors", CONTROL_NAMES)
    r = CliRunner().invoke(app, ["inspect", str(path), "--tensors", "--json"])
    assert r.exit_code == 0, r.stderr
    assert _unsafe(r.stdout) == []  # JSON escapes them on the wire
    assert sorted(t["name"] for t in json.loads(r.stdout)["tensors"]) == sorted(CONTROL_NAMES)


def test_control_characters_from_files_are_escaped_in_error_lines(tmp_path):
    """The index names a shard whose name carries ESC and a bidi override; the error quotes that name twice
    (in the path and in the message) and must still be one inert line."""
    root = tmp_path / "ckpt"
    root.mkdir()
    shard = "evil\x1b]0;pwned\x07\u202e.safetensors"
    _file_with_names(root / shard, ["a"])
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard, "b": shard}}))
    r = CliRunner().invoke(app, ["inspect", str(root)])
    assert r.exit_code == 1
    check_cli(r.exit_code, r.stdout, r.stderr, json_mode=False)
    assert _unsafe(r.stderr) == []
    assert r"evil\x1b]0;pwned\x07\u202e.safetensors" in r.stderr
    r = CliRunner().invoke(app, ["inspect", str(root), "--json"])
    error = json.loads(r.stdout)["error"]
    assert shard in error["message"] and error["path"] == str(root / shard)
