"""download and push over real HTTP against a fake Hub on 127.0.0.1 (tests/hubserver.py); never the internet.

Every CLI call is a subprocess with HF_ENDPOINT pointing at the loopback server, a temporary HF_HOME,
HF_HUB_DISABLE_XET=1 (no Xet store offline: the plain HTTP/LFS path of the same huggingface_hub calls) and no
inherited proxy settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hubserver import FakeHub

ROOT = Path(__file__).resolve().parents[2]
REPO = "meta-llama/Llama-4-Tiny-16E"
WRITER = "hf_writer_token"
READER = "hf_reader_token_abcdef"
VISION_ONLY = "model-00001-of-00008.safetensors"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def repo_files(scout_dir: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(scout_dir.iterdir()) if p.is_file()}
    index = json.loads(files["model.safetensors.index.json"])
    shards = {}
    for name, shard in index["weight_map"].items():
        shards.setdefault(shard, set()).add(name.split(".")[0])
    assert shards[VISION_ONLY] == {"vision_model"}, "fixture layout changed: pick another vision-only shard"
    return files


@pytest.fixture
def hub():
    with FakeHub(write_tokens=(WRITER,), lifetime=120) as h:
        yield h


@pytest.fixture
def run(hub: FakeHub, tmp_path: Path):
    """run(*args, token=None, **env) -> CompletedProcess of `python -m llama4ctl ...` against the fake Hub."""
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200",
            "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5"}

    def _run(*args: object, token: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        e = {**base, **env, **({"HF_TOKEN": token} if token else {})}
        return subprocess.run([sys.executable, "-m", "llama4ctl", *map(str, args)], capture_output=True,
                              text=True, env=e, timeout=120, cwd=tmp_path)

    return _run


def _doc(r: subprocess.CompletedProcess[str]) -> dict:
    assert r.stdout.count("\n") == 1, r.stdout + r.stderr
    return json.loads(r.stdout)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(root).parts}


# ------------------------------------------------------------------------------------------------ download


def test_download_full_is_byte_identical_and_verified(hub, run, repo_files, tmp_path):
    sha = hub.add_repo(REPO, repo_files)
    r = run("download", REPO, "--json")
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    assert doc["kind"] == "download" and doc["commit"] == sha and doc["verified"] is True
    dest = Path(doc["destination"])
    assert dest == tmp_path / "hf-home" / "hub" / "models--meta-llama--Llama-4-Tiny-16E" / "snapshots" / sha
    assert _tree(dest) == repo_files
    assert {f["path"]: f["check"] for f in doc["files"]}[VISION_ONLY] == "sha256"
    assert {f["path"]: f["check"] for f in doc["files"]}["config.json"] == "git-sha1"
    assert all(f["ok"] for f in doc["files"])
    assert doc["total_bytes"] == sum(map(len, repo_files.values()))
    # the branch -> commit ref is cached, so transformers (and HF_HUB_OFFLINE=1 runs) find the snapshot offline
    assert (dest.parents[1] / "refs" / "main").read_text() == sha
    n = len(hub.requests)
    r = run("download", REPO, "--json", HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    assert doc["destination"] == str(dest) and doc["verified"] is None and "HF_HUB_OFFLINE" in doc["note"]
    assert len(hub.requests) == n


def test_components_text_fetches_no_vision_only_shard(hub, run, repo_files, tmp_path):
    hub.add_repo(REPO, repo_files)
    out = tmp_path / "text"
    r = run("download", REPO, "--local-dir", out, "--components", "text", "--json")
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    assert doc["skipped_by_components"] == [VISION_ONLY]
    assert VISION_ONLY not in hub.fetched("GET") and VISION_ONLY not in hub.fetched("HEAD")
    got = _tree(out)
    assert got == {k: v for k, v in repo_files.items() if k != VISION_ONLY}
    for always in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
                   "preprocessor_config.json", "model.safetensors.index.json"):
        assert always in got
    marker = json.loads((out / ".cache" / "huggingface" / "llama4ctl-download.json").read_text())
    assert marker["repo_id"] == REPO

    vis = tmp_path / "vision"
    r = run("download", REPO, "--local-dir", vis, "--components", "vision", "--json")
    assert r.returncode == 0, r.stderr
    shards = sorted(p for p in _tree(vis) if p.endswith(".safetensors"))
    comps = _doc(r)["shard_components"]
    assert shards == sorted(s for s, c in comps.items() if {"vision", "projector"} & set(c))
    assert VISION_ONLY in shards and len(shards) < 8


def test_unknown_component_is_a_usage_error(run):
    r = run("download", REPO, "--components", "text,bogus")
    assert r.returncode == 2 and "bogus" in r.stderr


def test_dry_run_lists_files_and_sizes_from_hub_metadata_and_downloads_nothing(hub, run, repo_files, tmp_path):
    hub.add_repo(REPO, repo_files)
    out = tmp_path / "dry"
    r = run("download", REPO, "--local-dir", out, "--include", "*.safetensors", "--include", "*.json",
            "--exclude", "tokenizer*", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    expected = {k: len(v) for k, v in repo_files.items()
                if (k.endswith((".safetensors", ".json"))) and not k.startswith("tokenizer")}
    assert {f["path"]: f["size"] for f in doc["files"]} == expected
    assert doc["dry_run"] is True and doc["bytes_to_download"] == sum(expected.values())
    assert not out.exists() and hub.fetched("GET") == []
    human = run("download", REPO, "--dry-run", "--components", "text")
    assert human.returncode == 0 and VISION_ONLY not in human.stderr and "to download" in human.stderr


def test_corrupted_file_fails_verification_is_deleted_and_a_rerun_heals(hub, run, repo_files, tmp_path):
    hub.add_repo(REPO, repo_files)
    bad = "model-00003-of-00008.safetensors"
    hub.add_fault("GET", f"/resolve/.*/{bad}$", "corrupt")
    out = tmp_path / "dl"
    r = run("download", REPO, "--local-dir", out, "--json")
    assert r.returncode == 1
    err = _doc(r)["error"]
    assert "failed verification" in err["message"] and bad in err["message"] and "re-run" in err["hint"]
    assert not (out / bad).exists()
    assert (out / "model-00002-of-00008.safetensors").read_bytes() == repo_files["model-00002-of-00008.safetensors"]
    r = run("download", REPO, "--local-dir", out)
    assert r.returncode == 0, r.stderr
    assert _tree(out) == repo_files


def test_no_verify_skips_the_check(hub, run, repo_files, tmp_path):
    hub.add_repo(REPO, repo_files)
    hub.add_fault("GET", "/resolve/.*/config.json$", "corrupt")
    r = run("download", REPO, "--local-dir", tmp_path / "dl", "--no-verify", "--json")
    assert r.returncode == 0 and _doc(r)["verified"] is None
    assert (tmp_path / "dl" / "config.json").read_bytes() != repo_files["config.json"]


def test_server_errors_are_retried_and_a_dropped_connection_resumes(hub, run, repo_files, tmp_path):
    # huggingface_hub writes in 10 MiB chunks, so the dropped file must be big enough for bytes to land on disk
    # before the connection drops (the server sends half of it): then the retry asks for the rest with Range.
    dropped = "original/consolidated.00.bin"
    repo_files = {**repo_files, dropped: os.urandom(24 << 20)}
    hub.add_repo(REPO, repo_files)
    hub.add_fault("GET", f"^/api/models/{REPO}/revision/main$", "500", times=2)   # metadata: llama4ctl retries
    hub.add_fault("HEAD", "/resolve/.*/model-00005-of-00008.safetensors$", "500")  # huggingface_hub retries
    hub.add_fault("GET", "/resolve/.*/model-00006-of-00008.safetensors$", "500")   # whole-download retry
    hub.add_fault("GET", f"/resolve/.*/{dropped}$", "drop")                        # resumed with Range
    out = tmp_path / "dl"
    r = run("download", REPO, "--local-dir", out, "--max-workers", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert _doc(r)["verified"] is True and _tree(out) == repo_files
    ranges = [q["range"] for q in hub.requests if q.get("file") == dropped and q["method"] == "GET"]
    assert ranges[0] is None and len(ranges) == 2
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(repo_files[dropped]) // 2


@pytest.mark.parametrize("token", [None, "hf_wrong_token_0123456789"])
def test_gated_repo_says_accept_the_license_and_set_hf_token(hub, run, repo_files, tmp_path, token):
    hub.add_repo(REPO, repo_files, gated=True, allowed_tokens=(READER,))
    r = run("download", REPO, "--local-dir", tmp_path / "dl", *(["--token", token] if token else []))
    assert r.returncode == 1
    assert "license" in r.stderr and "HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    r = run("download", REPO, "--json", token=token)
    assert r.returncode == 1 and "license" in _doc(r)["error"]["hint"]
    if token:
        assert token not in r.stdout + r.stderr
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").glob("*.safetensors"))


def test_gated_repo_downloads_with_an_accepted_token_and_never_prints_it(hub, run, repo_files, tmp_path):
    hub.add_repo(REPO, repo_files, gated=True, allowed_tokens=(READER,))
    hub.add_fault("GET", "/resolve/.*/config.json$", "corrupt")
    r = run("download", REPO, "--local-dir", tmp_path / "dl", "--json", token=READER)
    assert r.returncode == 1 and READER not in r.stdout + r.stderr
    r = run("download", REPO, "--local-dir", tmp_path / "dl", "--json", token=READER)
    assert r.returncode == 0 and READER not in r.stdout + r.stderr
    assert _tree(tmp_path / "dl") == repo_files


def test_missing_repo_and_missing_revision_are_clear(hub, run, repo_files):
    hub.add_repo(REPO, repo_files)
    r = run("download", "meta-llama/No-Such-Model")
    assert r.returncode == 1 and "repository not found" in r.stderr and "Traceback" not in r.stderr
    r = run("download", REPO, "--revision", "no-such-branch", "--json")
    assert r.returncode == 1 and "revision not found" in _doc(r)["error"]["message"]


def test_inspect_reads_only_headers_from_the_hub(hub, run, repo_files):
    hub.add_repo(REPO, repo_files)
    r = run("inspect", REPO, "--json")
    assert r.returncode == 0, r.stderr
    assert _doc(r)["shards"] == 8
    shard_gets = [q for q in hub.requests if q["method"] == "GET" and (q.get("file") or "").endswith(".safetensors")]
    assert shard_gets and all(q["range"] for q in shard_gets)


def test_inspect_of_a_hub_repo_matches_the_local_copy_from_two_range_requests_per_shard(hub, run, repo_files,
                                                                                      scout_dir):
    hub.add_repo(REPO, repo_files)
    remote = run("inspect", REPO, "--tensors", "--json")
    local = run("inspect", scout_dir, "--tensors", "--json")
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    assert {**_doc(remote), "source": None} == {**_doc(local), "source": None}
    shards = sorted(name for name in repo_files if name.endswith(".safetensors"))
    for shard in shards:
        n = int.from_bytes(repo_files[shard][:8], "little")
        ranges = [q["range"] for q in hub.requests if q["method"] == "GET" and q.get("file") == shard]
        assert ranges == ["bytes=0-7", f"bytes=8-{n + 7}"], (shard, ranges)


def _header(doc: bytes | str) -> bytes:
    raw = doc.encode() if isinstance(doc, str) else doc
    return len(raw).to_bytes(8, "little") + raw


_F32X2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE_REPOS = {
    "header-past-the-end": {"model.safetensors": (10**6).to_bytes(8, "little") + b'{"x":1}'},
    "overlapping-offsets": {"model.safetensors": _header(json.dumps(
        {"a": _F32X2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})) + bytes(12)},
    "not-json": {"model.safetensors": _header(b'{"a": {"dtype": F32}}') + bytes(8)},
    "trailing-bytes": {"model.safetensors": _header(json.dumps({"a": _F32X2})) + bytes(8 + 100)},
    "index-names-a-missing-shard": {
        "model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}).encode()},
    "index-escapes-the-repo": {
        "model.safetensors.index.json": json.dumps({"weight_map": {"a": "../model.safetensors"}}).encode(),
        "model.safetensors": _header(json.dumps({"a": _F32X2})) + bytes(8)},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_REPOS))
def test_hostile_hub_repo_fails_in_one_line_naming_the_file_like_the_local_copy(hub, run, tmp_path, case):
    files = HOSTILE_REPOS[case]
    hub.add_repo(REPO, files)
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for name, data in files.items():
        (local_dir / name).write_bytes(data)
    human = run("inspect", REPO)
    assert human.returncode == 1 and human.stdout == "" and "Traceback" not in human.stderr, human.stderr
    remote, local = _doc(run("inspect", REPO, "--json"))["error"], _doc(run("inspect", local_dir, "--json"))["error"]
    # the same problem, worded the same, as for the files on disk; only where the file lives differs
    assert remote["message"] == local["message"]
    assert remote["path"] == f"{REPO}/{Path(local['path']).name}"
    assert remote["path"].startswith(f"{REPO}/model.safetensors")
    assert human.stderr.splitlines() == [f"Error: {remote['path']}: {remote['message']}"]


def test_xet_hashes_are_checked_with_the_xet_hasher(hub, run, repo_files, tmp_path, scout_dir):
    pytest.importorskip("llama4ctl.xet.hashing")
    hf_xet = pytest.importorskip("hf_xet")
    shard, small = "model-00002-of-00008.safetensors", "generation_config.json"
    hashes = {name: hf_xet.hash_files([str(scout_dir / name)])[0].hash for name in (shard, small)}
    hub.add_repo(REPO, repo_files, xet_hashes=hashes)  # shard: LFS + Xet; generation_config: Xet only
    r = run("download", REPO, "--local-dir", tmp_path / "dl", "--include", shard, "--include", small, "--json")
    assert r.returncode == 0, r.stderr
    checks = {f["path"]: (f["check"], f["ok"]) for f in _doc(r)["files"]}
    assert checks == {shard: ("xet", True), small: ("xet", True)}
    hub.add_fault("GET", f"/resolve/.*/{small}$", "corrupt")
    r = run("download", REPO, "--local-dir", tmp_path / "dl2", "--include", small, "--json")
    assert r.returncode == 1 and "xet" in _doc(r)["error"]["message"]
    assert not (tmp_path / "dl2" / small).exists()


# ---------------------------------------------------------------------------------------------------- push


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, repo_files):
    """A real `quantize --fp8` output whose source is a llama4ctl download of REPO (so base_model is known)."""
    from llama4ctl import jobs

    work = tmp_path_factory.mktemp("quantized")
    src = work / "Llama-4-Tiny-16E"
    src.mkdir()
    for name, data in repo_files.items():
        (src / name).write_bytes(data)
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "llama4ctl-download.json").write_text(json.dumps({"repo_id": REPO}))
    dst = work / "Llama-4-Tiny-16E-FP8"
    plan = jobs.plan_quantize(src, method="fp8")
    jobs.quantize(plan, dst, device="cpu", command=["llama4ctl", "quantize", str(src), str(dst), "--fp8"])
    return dst


def _stage(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_push_creates_the_repo_uploads_only_the_right_files_with_a_generated_card(hub, run, quantized, tmp_path):
    src = _stage(quantized, tmp_path / "push-src")
    (src / "progress.json").write_text("{}")
    (src / ".lock").write_text("")
    (src / "model.safetensors.tmp").write_bytes(b"junk")
    (src / ".old.partial").mkdir()
    (src / ".old.partial" / "x.safetensors").write_bytes(b"junk")
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "x.metadata").write_text("junk")
    r = run("push", src, "me/Llama-4-Tiny-16E-FP8", "--private", "--json", token=WRITER)
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    assert hub.repos["me/Llama-4-Tiny-16E-FP8"].private is True
    assert doc["model_card"] == "generated" and doc["commit_oid"] and doc["url"].endswith("me/Llama-4-Tiny-16E-FP8")
    (commit,) = hub.commits
    local = {k: v for k, v in _tree(src).items() if k not in ("progress.json", ".lock", "model.safetensors.tmp")
             and not k.startswith(".old.partial/")}
    pushed = dict(commit["files"])
    card = pushed.pop("README.md").decode()
    assert pushed == local
    assert {"llama4ctl.json", "quantization_report.json", "model.safetensors", "config.json"} <= set(pushed)

    meta = _front_matter(card)
    assert meta["base_model"] == REPO and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "other" and meta["license_name"] == "llama4"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert {"llama4", "fp8", "compressed-tensors"} <= set(meta["tags"])
    for text in ("FP8_DYNAMIC", "llm-compressor", "Kept in BF16", "router", "Quantization report",
                 "Llama4ForConditionalGeneration", "vllm serve me/Llama-4-Tiny-16E-FP8", "llama4ctl quantize",
                 "llama4ctl 0.1.0"):
        assert text in card, text
    assert doc["card"] == card


def test_push_dry_run_shows_files_and_card_and_touches_no_hub(hub, run, quantized):
    r = run("push", quantized, "me/x", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    assert doc["dry_run"] is True and doc["commit_url"] is None and hub.requests == []
    assert "README.md" in {f["path"] for f in doc["files"]} and _front_matter(doc["card"])["base_model"] == REPO
    human = run("push", quantized, "me/x", "--dry-run", "--base-model", "org/other-base")
    assert human.returncode == 0 and "base_model: org/other-base" in human.stderr
    assert "model.safetensors" in human.stderr and hub.requests == []


def test_push_refuses_incomplete_or_partial_outputs(hub, run, quantized, tmp_path):
    incomplete = _stage(quantized, tmp_path / "incomplete")
    prov = json.loads((incomplete / "llama4ctl.json").read_text())
    (incomplete / "llama4ctl.json").write_text(json.dumps({**prov, "complete": False}))
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "progress.json").write_text("{}")
    writing = tmp_path / "writing"
    writing.mkdir()
    (writing / "progress.json").write_text("{}")
    (writing / "model-00001-of-00002.safetensors.tmp").write_bytes(b"x")
    for src, words in ((incomplete, "incomplete"), (partial, "partial output"), (writing, "still being written")):
        r = run("push", src, "me/x", "--json", token=WRITER)
        assert r.returncode == 1, r.stdout
        assert words in _doc(r)["error"]["message"]
    assert "me/x" not in hub.repos and hub.commits == []


def test_push_keeps_an_existing_readme_opens_a_pr_and_pushes_to_a_branch(hub, run, repo_files, tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    for name in ("config.json", "model-00001-of-00008.safetensors"):
        (src / name).write_bytes(repo_files[name])
    (src / "README.md").write_text("---\nlicense: other\nlicense_name: llama4\n---\n# mine\n")
    hub.add_repo("me/plain", {"README.md": b"old"})
    r = run("push", src, "me/plain", "--create-pr", "--commit-message", "add weights", "--json", token=WRITER)
    assert r.returncode == 0, r.stderr
    doc = _doc(r)
    assert doc["model_card"] == "existing" and doc["pr_url"].endswith("/discussions/1")
    assert hub.commits[-1]["revision"] == "refs/pr/1" and hub.commits[-1]["summary"] == "add weights"
    assert hub.commits[-1]["files"]["README.md"] == (src / "README.md").read_bytes()
    assert hub.files("me/plain")["README.md"] == b"old"  # main untouched
    (src / "config.json").write_text('{"changed": true}')
    r = run("push", src, "me/plain", "--revision", "dev", "--json", token=WRITER)
    assert r.returncode == 0, r.stderr
    assert hub.files("me/plain", "dev")["config.json"] == b'{"changed": true}'
    r = run("push", src, "me/plain", "--revision", "dev", "--create-pr")
    assert r.returncode == 2


def test_push_refuses_a_broken_checkpoint_before_uploading(hub, run, quantized, tmp_path):
    src = _stage(quantized, tmp_path / "broken")
    (src / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:100])
    r = run("push", src, "me/x", "--json", token=WRITER)
    assert r.returncode == 1 and "model.safetensors" in _doc(r)["error"]["path"]
    assert hub.requests == []


def test_push_without_write_access_fails_cleanly_and_never_prints_the_token(hub, run, quantized):
    bad = "hf_not_a_writer_token_987654"
    r = run("push", quantized, "me/x", "--token", bad, "--json")
    assert r.returncode == 1
    err = _doc(r)["error"]
    assert "write" in (err["message"] + err["hint"]) and bad not in r.stdout + r.stderr
    r = run("push", quantized, "me/x", token=bad)
    assert r.returncode == 1 and bad not in r.stdout + r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------- model card


def test_model_card_reads_what_is_there_and_tolerates_the_rest(tmp_path):
    from llama4ctl.modelcard import build_model_card

    d = tmp_path / "bnb"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Llama4ForCausalLM"], "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
        "llm_int8_skip_modules": ["lm_head", "model.layers.0.feed_forward.router"]}}))
    (d / "quantization_report.json").write_text("{not json")
    (d / "llama4ctl.json").write_text(json.dumps({"source": {"path": "/nowhere/local"}, "command": "x"}))
    card = build_model_card(d, repo_id="me/scout-nf4", base_model="meta-llama/Llama-4-Scout-17B-16E")
    meta = _front_matter(card)
    assert meta["base_model"] == "meta-llama/Llama-4-Scout-17B-16E" and meta["base_model_relation"] == "quantized"
    assert {"int4", "bitsandbytes"} <= set(meta["tags"]) and meta["pipeline_tag"] == "text-generation"
    assert "AutoModelForCausalLM" in card and "lm_head (1), router (1)" in card

    empty = tmp_path / "empty"
    empty.mkdir()
    meta = _front_matter(build_model_card(empty, repo_id="me/x"))
    assert "base_model" not in meta and meta["license_name"] == "llama4"

    cache = tmp_path / "fbgemm"
    cache.mkdir()
    (cache / "llama4ctl.json").write_text(json.dumps({
        "complete": True, "operation": {"format": "fbgemm_fp8", "backend": "fbgemm"},
        "source": {"path": "/x/hub/models--meta-llama--Llama-4-Maverick-17B-128E-Instruct/snapshots/" + "a" * 40}}))
    meta = _front_matter(build_model_card(cache, repo_id="me/mav-fp8"))
    assert meta["base_model"] == "meta-llama/Llama-4-Maverick-17B-128E-Instruct"
    assert {"fp8", "fbgemm"} <= set(meta["tags"])


def test_help_does_not_import_huggingface_hub():
    code = ("import sys; from llama4ctl.cli.app import app; "
            "assert 'huggingface_hub' not in sys.modules, 'imported at start-up'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
