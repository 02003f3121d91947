"""CLI conventions: exit codes, one JSON document on stdout, one-line errors without tracebacks."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.rawfiles import write_checkpoint, write_raw


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llama4ctl", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "200",
                                        "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])})


@pytest.fixture
def ckpt(tmp_path):
    rng = np.random.default_rng(0)
    return write_checkpoint(tmp_path / "ck", {
        "model-00001-of-00002.safetensors": {"model.embed_tokens.weight": rng.standard_normal((10, 8)).astype(np.float32)},
        "model-00002-of-00002.safetensors": {"lm_head.weight": rng.standard_normal((10, 8)).astype(np.float32)},
    })


def test_version_and_help():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("llama4ctl ")
    r = cli("--help")
    assert r.returncode == 0
    for name in ("download", "inspect", "quantize", "shard", "dedup-report", "run", "push"):
        assert name in r.stdout


def test_usage_errors_exit_2():
    assert cli("inspect").returncode == 2
    assert cli("shard", "a", "b", "--bogus").returncode == 2
    assert cli("nosuchcommand").returncode == 2


def test_inspect_json_is_one_document_on_stdout(ckpt):
    r = cli("inspect", ckpt, "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 1 and doc["shards"] == 2 and doc["num_parameters"] == 160
    assert r.stdout.count("\n") == 1


def test_errors_are_one_line_naming_the_file_without_traceback(tmp_path):
    bad = write_raw(tmp_path / "bad.safetensors", b"{not json")
    r = cli("inspect", bad)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert str(bad) in first and "invalid header JSON" in first
    assert r.stdout == ""


def test_json_errors_are_a_document_with_message_path_hint(tmp_path):
    r = cli("inspect", tmp_path / "missing", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert set(doc["error"]) == {"message", "path", "hint"} and doc["schema_version"] == 1


def test_debug_shows_the_traceback(tmp_path):
    r = cli("inspect", tmp_path / "missing", "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_shard_dry_run_writes_nothing(ckpt, tmp_path):
    r = cli("shard", ckpt, tmp_path / "out", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "plan" and doc["num_shards"] == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_shard_refuses_existing_destination_and_overwrites_on_request(ckpt, tmp_path):
    (tmp_path / "out").mkdir()
    r = cli("shard", ckpt, tmp_path / "out")
    assert r.returncode == 1 and "already exists" in r.stderr and "--overwrite" in r.stderr
    r = cli("shard", ckpt, tmp_path / "out", "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shards_written"] == 1


def test_bad_option_values_are_handled_errors(ckpt, tmp_path):
    r = cli("shard", ckpt, tmp_path / "out", "--max-shard-size", "5GiB")
    assert r.returncode == 1 and "invalid size" in r.stderr
    r = cli("shard", ckpt, tmp_path / "out", "--dtype", "int3")
    assert r.returncode == 1 and "unknown dtype" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_hub_repo_ids_must_be_downloaded_before_sharding(tmp_path):
    r = cli("shard", "meta-llama/Llama-4-Scout-17B-16E-Instruct", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 1 and "download" in r.stderr


def test_quantize_recipe_errors_are_handled(ckpt, tmp_path):
    r = cli("quantize", ckpt, tmp_path / "q", "--fp8", "--recipe", "no-such-recipe")
    assert r.returncode == 1 and "shipped recipes" in r.stderr
    r = cli("quantize", ckpt, tmp_path / "q", "--fp8", "--recipe", "maverick-fp8-dynamic", "--resume")
    assert r.returncode == 2


def test_quantize_needs_exactly_one_method(ckpt, tmp_path):
    assert cli("quantize", ckpt, tmp_path / "q").returncode == 2
    assert cli("quantize", ckpt, tmp_path / "q", "--fp8", "--int8").returncode == 2
