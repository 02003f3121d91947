"""examples/release.sh end to end against the loopback fake Hub (tests/hubserver.py): what it pushes, its
quality gate, and that re-running after a failure at any step finishes with the same pushed result.

The script runs as `bash examples/release.sh` with HF_ENDPOINT on the fake Hub, a temporary HF_HOME and
LLAMA4CTL_CACHE_DIR, HF_HUB_DISABLE_XET=1 (no Xet store offline) and no inherited proxy settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.e2e._load import assert_loaded_cleanly, load, logits
from tests.hubserver import FakeHub

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "release.sh"
WRITER = "hf_writer_token"
MAVERICK = "meta-llama/Llama-4-Tiny-128E"
SCOUT = "meta-llama/Llama-4-Tiny-16E"
# Small shards so that an interrupted quantize leaves finished shards behind for --resume to keep.
SHARDS = {"MAX_SHARD_SIZE": "100KB"}

# `llama4ctl` for the script; with KILL_AFTER_SHARDS=N, `quantize` SIGKILLs itself once N output shards are
# finished (a machine dying mid-run: no cleanup, no JSON document).
WRAPPER = """
import os, signal, sys
n = int(os.environ.get("KILL_AFTER_SHARDS", "0"))
if n and sys.argv[1:2] == ["quantize"]:
    from llama4ctl.exec import writer
    mark, done = writer.OutputDir.mark_finished, []
    def mark_then_die(self, shard):
        mark(self, shard)
        done.append(shard)
        if len(done) >= n:
            os.kill(os.getpid(), signal.SIGKILL)
    writer.OutputDir.mark_finished = mark_then_die
from llama4ctl.cli.app import app
app(sys.argv[1:], prog_name="llama4ctl")
"""


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def hub():
    with FakeHub(write_tokens=(WRITER,), lifetime=300) as h:
        yield h


@pytest.fixture(scope="module")
def bases(hub, maverick_dir, scout_dir):
    hub.add_repo(MAVERICK, _files(maverick_dir))
    hub.add_repo(SCOUT, _files(scout_dir))
    return {MAVERICK: maverick_dir, SCOUT: scout_dir}


@pytest.fixture(scope="module")
def release(hub, bases, tmp_path_factory):
    """release(base, target, workdir, **env) -> CompletedProcess of examples/release.sh against the fake Hub."""
    home = tmp_path_factory.mktemp("release-home")
    wrapper = home / "l4.py"
    wrapper.write_text(WRAPPER)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_COLOR": "1",
           "LLAMA4CTL": f"{sys.executable} {wrapper}", "HF_ENDPOINT": hub.url, "HF_HOME": str(home / "hf-home"),
           "HF_TOKEN": WRITER, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
           "LLAMA4CTL_CACHE_DIR": str(home / "xet-cache")}
    assert " " not in sys.executable + str(wrapper)

    def run(base: str, target: str, work: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), base, target, str(work)], check=False, capture_output=True,
                              text=True, env={**env, **extra}, timeout=180, cwd=work.parent)

    return run


def _doc(work: Path, step: str) -> dict:
    return json.loads((work / "json" / f"{step}.json").read_text())


def _card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def _pushed(hub: FakeHub, repo: str, into: Path) -> Path:
    into.mkdir()
    for name, data in hub.files(repo).items():
        (into / name).write_bytes(data)
    return into


# ------------------------------------------------------------------------------------------------ maverick


@pytest.fixture(scope="module")
def maverick_release(hub, release, tmp_path_factory):
    """One uninterrupted release of the Maverick-shaped base (the reference the other runs are compared with)."""
    work = tmp_path_factory.mktemp("mav") / "work"
    r = release(MAVERICK, "me/Tiny-128E-FP8", work, **SHARDS)
    return work, r


def test_maverick_release_pushes_fp8_that_loads_with_card_and_reports(hub, maverick_release, bases, tmp_path):
    work, r = maverick_release
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the script talks on stderr only
    assert _doc(work, "inspect")["moe_pattern"] == "interleaved"
    q = _doc(work, "quantize")
    assert q["already_complete"] is False and q["shards_written"] > 1
    assert q["plan"]["format"]["scheme"] == "FP8_DYNAMIC" and q["plan"]["format"]["format"] == "compressed-tensors"

    (commit,) = [c for c in hub.commits if c["repo"] == "me/Tiny-128E-FP8"]
    pushed = dict(commit["files"])
    card = pushed.pop("README.md").decode()
    out = work / "Tiny-128E-FP8"
    assert pushed == _files(out)  # every output file, nothing else (no partial, lock or progress files)
    assert "model.safetensors.index.json" in pushed and sum(n.endswith(".safetensors") for n in pushed) > 1

    # the quality figures pushed are the ones this run's quantize measured, and the gate used their maximum
    report = json.loads(pushed["quantization_report.json"])
    assert report["scheme"] == "FP8_DYNAMIC" and report["components"] == q["report"]["components"]
    assert report["worst_tensors"] == q["report"]["worst_tensors"]
    summary = json.loads((work / "release.json").read_text())
    worst = max(c["max_rel_error"] for c in report["components"].values())
    assert summary["max_rel_error"] == pytest.approx(worst) and 0 < worst < summary["threshold"] == 0.15
    assert summary["quantization"] == "fp8" and summary["base"] == MAVERICK
    assert summary["base_commit"] == hub.repos[MAVERICK].branches["main"]
    assert summary["commit_oid"] == commit["sha"] == _doc(work, "push")["commit_oid"]

    # dedup figures: in the saved report, the summary and the card (push's estimate from the report's cache)
    d = _doc(work, "dedup")["derivatives"][0]
    assert d["total_bytes"] > 0 and 0 < d["reuse_pct"] < 100 and d["new_bytes"] > 0
    assert summary["dedup_reuse_pct"] == d["reuse_pct"] and summary["dedup_new_bytes"] == d["new_bytes"]
    meta, body = _card(card)
    assert meta["base_model"] == MAVERICK and meta["base_model_relation"] == "quantized"
    assert meta["license_name"] == "llama4" and meta["pipeline_tag"] == "image-text-to-text"
    assert {"llama4", "fp8", "compressed-tensors"} <= set(meta["tags"])
    assert "## Storage dedup estimate" in body and f"{d['same_chunker']['reuse_pct']:.1f}% of" in body
    assert f"{worst:.2e}" in body  # the worst component figure is in the card's report table

    # what was pushed loads in transformers on CPU, with FP8 experts, and stays close to the base
    model, info = load(_pushed(hub, "me/Tiny-128E-FP8", tmp_path / "pushed"))
    assert_loaded_cleanly(info)
    expert = next(m for n, m in model.named_modules() if n.endswith("experts.0.gate_proj"))
    assert expert.weight.dtype == torch.float8_e4m3fn
    ref, got = logits(load(bases[MAVERICK])[0]), logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < 0.15


def test_rerun_after_success_changes_nothing(hub, release, maverick_release):
    work, first = maverick_release
    assert first.returncode == 0, first.stderr
    commits, requests = len(hub.commits), len(hub.requests)
    summary = json.loads((work / "release.json").read_text())
    quantized = (work / "json" / "quantize.json").read_bytes()
    r = release(MAVERICK, "me/Tiny-128E-FP8", work, **SHARDS)
    assert r.returncode == 0, r.stderr
    assert "already downloaded and verified" in r.stderr and "reusing the complete output" in r.stderr
    assert (work / "json" / "quantize.json").read_bytes() == quantized  # no quantize run, only its --dry-run plan
    assert _doc(work, "plan")["format"]["scheme"] == "FP8_DYNAMIC"
    assert len(hub.commits) == commits  # push found nothing to change
    assert json.loads((work / "release.json").read_text()) == summary
    assert not [q for q in hub.requests[requests:] if q["method"] == "GET" and q.get("file")]  # no base re-download


@pytest.fixture(scope="module")
def resumed_release(hub, release, maverick_release, maverick_dir, tmp_path_factory):
    """The same release failing at one step after another: a shard corrupted in transit (download), the machine
    killed half-way through quantize, the Hub refusing the commit (push); each time the same command is run
    again, and the fourth run finishes. Returns (target, bad shard, what each run returned and left behind)."""
    bad = sorted(p.name for p in maverick_dir.glob("*.safetensors"))[2]
    target, work = "me/Tiny-128E-FP8-again", tmp_path_factory.mktemp("resumed") / "work"
    out, partial = work / "Tiny-128E-FP8-again", work / ".Tiny-128E-FP8-again.partial"
    faults = [("GET", f"^/{MAVERICK}/resolve/.*/{bad}$", "corrupt"), None,
              ("POST", f"^/api/models/{target}/commit/", "403"), None]
    seen = []
    for fault, env in zip(faults, ({}, {"KILL_AFTER_SHARDS": "2"}, {}, {})):
        if fault:
            hub.add_fault(*fault)
        n = len(hub.requests)
        r = release(MAVERICK, target, work, **SHARDS, **env)
        quantize = work / "json" / "quantize.json"
        seen.append({"run": r, "partial": partial.is_dir(), "out": out.is_dir(), "repo": target in hub.repos,
                     "commits": len([c for c in hub.commits if c["repo"] == target]),
                     "fetched": [q["file"] for q in hub.requests[n:] if q["method"] == "GET" and q.get("file")],
                     "bad_shard": (work / "base" / bad).exists(),
                     "quantize": json.loads(quantize.read_text() or "null") if quantize.exists() else None})
    return target, bad, seen


def test_a_release_failing_at_each_step_resumes_to_the_same_result(hub, maverick_release, resumed_release):
    target, bad, (corrupt, killed, refused, done) = resumed_release

    # 1: a shard fails verification: it is deleted, nothing else runs
    assert corrupt["run"].returncode == 1 and "llama4ctl download failed (exit 1)" in corrupt["run"].stderr
    assert "failed verification" in corrupt["run"].stderr and not corrupt["bad_shard"]
    assert corrupt["quantize"] is None and not corrupt["partial"] and not corrupt["repo"]

    # 2: the download fetches only that shard; then the machine dies half-way through quantize
    assert killed["fetched"] == [bad] and killed["bad_shard"]
    assert killed["run"].returncode == 137 and "llama4ctl quantize failed (exit 137)" in killed["run"].stderr
    assert killed["partial"] and not killed["out"] and not killed["repo"] and killed["quantize"] is None

    # 3: quantize resumes (the shards finished before the kill are kept), then the Hub refuses the commit
    assert refused["run"].returncode == 1, refused["run"].stderr
    assert "llama4ctl push failed (exit 1)" in refused["run"].stderr
    assert "resuming the interrupted quantize" in refused["run"].stderr and refused["fetched"] == []
    q = refused["quantize"]
    assert q["already_complete"] is False and q["shards_skipped"] >= 2 and q["shards_written"] >= 1
    assert not refused["partial"] and refused["out"] and refused["commits"] == 0

    # 4: everything is reused, the push goes through, and what is on the Hub equals the uninterrupted release
    assert done["run"].returncode == 0, done["run"].stderr
    assert "reusing the complete output" in done["run"].stderr and done["commits"] == 1 and done["fetched"] == []
    got, ref = hub.files(target), hub.files("me/Tiny-128E-FP8")
    assert got.keys() == ref.keys()
    for name in ref.keys() - {"README.md", "llama4ctl.json", "quantization_report.json"}:  # paths, times
        assert got[name] == ref[name], name
    assert _card(got["README.md"].decode())[0] == _card(ref["README.md"].decode())[0]
    report, ref_report = (json.loads(files["quantization_report.json"]) for files in (got, ref))
    assert report["tensors"] and all(ref_report["tensors"][k] == v for k, v in report["tensors"].items())


def test_resumed_release_pushes_the_complete_quality_report(hub, maverick_release, resumed_release):
    target, _, _ = resumed_release
    got, ref = (json.loads(hub.files(r)["quantization_report.json"]) for r in (target, "me/Tiny-128E-FP8"))
    assert got["tensors"] == ref["tensors"] and got["components"] == ref["components"]


def test_changed_options_never_ship_a_stale_output(hub, release, maverick_release, tmp_path):
    first_work, first = maverick_release
    assert first.returncode == 0, first.stderr
    work = tmp_path / "work"
    shutil.copytree(first_work, work)
    commits = len(hub.commits)
    r = release(MAVERICK, "me/Tiny-128E-FP8", work, QUANT="int4", GROUP_SIZE="16", **SHARDS)
    assert r.returncode == 1 and "was made with other options than this run's (int4)" in r.stderr
    assert _doc(work, "plan")["format"]["scheme"] == "W4A16"
    assert not (work / "release.json").exists() and len(hub.commits) == commits


# --------------------------------------------------------------------------------------------------- scout


def test_scout_takes_int4_and_a_failed_quality_gate_pushes_nothing(hub, release, tmp_path):
    target, work = "me/Tiny-16E-W4A16", tmp_path / "work"
    r = release(SCOUT, target, work, GROUP_SIZE="16", MAX_REL_ERROR="0.01")
    assert r.returncode == 1
    assert "quality gate failed: worst relative error" in r.stderr and "MAX_REL_ERROR=0.01" in r.stderr
    assert "nothing was pushed" in r.stderr
    assert target not in hub.repos and not [c for c in hub.commits if c["repo"] == target]
    assert not any((work / name).exists() for name in ("json/push.json", "json/dedup.json", "release.json"))
    q = _doc(work, "quantize")
    assert q["plan"]["format"]["scheme"] == "W4A16" and q["report"]["components"]

    # the default int4 gate (0.3) passes; the re-run reuses the quantized output and pushes it
    r = release(SCOUT, target, work, GROUP_SIZE="16")
    assert r.returncode == 0, r.stderr
    assert "reusing the complete output" in r.stderr and "quality gate passed" in r.stderr
    assert json.loads((work / "release.json").read_text())["threshold"] == 0.3
    pushed = hub.files(target)
    report = json.loads(pushed["quantization_report.json"])
    assert report["scheme"] == "W4A16" and report["components"] == q["report"]["components"]
    meta, _ = _card(pushed["README.md"].decode())
    assert meta["base_model"] == SCOUT and "int4" in meta["tags"]
    model, info = load(_pushed(hub, target, tmp_path / "pushed"))
    assert_loaded_cleanly(info)
    module = next(m for n, m in model.named_modules() if n.endswith("experts.3.down_proj"))
    assert module.weight_packed.dtype == torch.int32 and module.quantization_scheme.weights.num_bits == 4
    assert torch.isfinite(logits(model)).all()


def test_help_and_usage_errors():
    r = subprocess.run(["bash", str(SCRIPT), "-h"], check=False, capture_output=True, text=True)
    assert r.returncode == 0 and "BASE_REPO_ID TARGET_REPO_ID" in r.stdout and "MAX_REL_ERROR" in r.stdout
    r = subprocess.run(["bash", str(SCRIPT), "only-one-arg"], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "Usage:" in r.stderr and r.stdout == ""
    assert os.access(SCRIPT, os.X_OK)
