"""`llama4ctl dedup-report` end to end: a ~14 MB Llama-4-shaped base and derivatives made by llama4ctl itself
(an identical copy, a resharded copy, an FP8 quantization, a text-only copy), through the CLI as a subprocess
with its own index cache; a Hub repo id through the loopback fake Hub (tests/hubserver.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama4ctl.checkpoint.header import read_header

ROOT = Path(__file__).resolve().parents[2]
MAX_CHUNK = 128 * 1024
QUANTIZED = {"routed_experts", "attention", "dense_mlp", "shared_expert"}

try:
    import hf_xet
except ImportError:  # pragma: no cover
    hf_xet = None


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from llama4ctl import jobs
    from llama4ctl.fixtures import build_random_checkpoint

    root = tmp_path_factory.mktemp("dedup")
    base = build_random_checkpoint(root / "base", hidden_size=256, expert_intermediate_size=512,
                                   mlp_intermediate_size=768, num_experts=4, num_layers=2, shape="maverick",
                                   vocab_size=8192, max_shard_size="5MB", vision=True)
    copy = root / "copy"
    shutil.copytree(base, copy, copy_function=shutil.copyfile)  # fresh mtimes: indexed on its own
    jobs.execute_plan(jobs.plan_shard(base, max_shard_size="2MB"), root / "reshard")
    jobs.quantize(jobs.plan_quantize(base, max_shard_size="5MB"), root / "fp8", device="cpu")
    jobs.execute_plan(jobs.plan_shard(base, max_shard_size="5MB", drop_vision=True), root / "text")
    return {"root": root, "base": base, "copy": copy, "reshard": root / "reshard", "fp8": root / "fp8",
            "text": root / "text", "cache": root / "xet-cache"}


def cli(*args: object, cache: Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    e = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200",
         "LLAMA4CTL_CACHE_DIR": str(cache), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run([sys.executable, "-m", "llama4ctl", "dedup-report", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=120, cwd=cwd)


def doc_of(r: subprocess.CompletedProcess[str]) -> dict:
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1, r.stdout
    doc = json.loads(r.stdout)
    assert doc["kind"] == "dedup_report" and doc["schema_version"] == 1
    return doc


@pytest.fixture(scope="module")
def report(ckpts) -> dict:
    """One run: base vs copy, reshard, fp8 (upload order), by tensor."""
    c = ckpts
    return doc_of(cli(c["base"], c["copy"], c["reshard"], c["fp8"], "--by", "tensor", "--json", cache=c["cache"]))


def _sums_match(d: dict) -> None:
    for key in ("total_bytes", "reused_bytes", "new_bytes"):
        assert sum(t[key] for t in d["tensors"]) == d[key], key
        assert sum(c[key] for c in d["components"].values()) == d[key], key
    assert sum(f["size"] for f in d["files"]) == d["total_bytes"]
    assert sum(f["reused_bytes"] for f in d["files"]) == d["reused_bytes"]
    assert d["total_bytes"] == d["reused_bytes"] + d["new_bytes"] + d["intra_dedup_bytes"]


def test_schema_and_attribution_sums(report, ckpts):
    assert report["chunker"] == report["base_chunker"] == "current" and report["by"] == "tensor"
    base = report["base"]
    assert base["path"] == str(ckpts["base"])
    assert base["total_bytes"] == sum(p.stat().st_size for p in ckpts["base"].iterdir() if p.is_file())
    for f in base["files"]:
        assert {"name", "size", "xet_hash"} <= set(f)
    for d in report["derivatives"]:
        assert {"path", "total_bytes", "reused_bytes", "new_bytes", "reuse_pct", "files", "components"} <= set(d)
        assert 0 <= d["reuse_pct"] <= 100
        for f in d["files"]:
            assert {"name", "size", "xet_hash", "reused_bytes"} <= set(f)
        for comp in d["components"].values():
            assert {"total_bytes", "reused_bytes"} <= set(comp)
        _sums_match(d)


@pytest.mark.skipif(hf_xet is None or not hasattr(hf_xet, "hash_files"), reason="needs hf_xet.hash_files")
def test_file_hashes_are_hf_xet_hashes(report, ckpts):
    files = report["base"]["files"]
    got = hf_xet.hash_files([str(ckpts["base"] / f["name"]) for f in files])
    assert [g.hash for g in got] == [f["xet_hash"] for f in files]


def test_identical_copy_reuses_everything(report):
    d = report["derivatives"][0]
    assert d["reuse_pct"] == 100.0 and d["new_bytes"] == 0
    assert d["upload_order"]["saving_pct"] == 100.0
    assert all(c["reuse_pct"] == 100.0 for c in d["components"].values())


def _discontinuities(ckpt: Path, base: Path) -> dict[str, list[int]]:
    """Per file of `ckpt`: offsets where its bytes stop continuing the base's byte stream (file start and end,
    and where the next tensor is not the one that follows in the base)."""
    follows = {}
    for shard in base.glob("*.safetensors"):
        ts = read_header(shard).tensors
        follows.update({a.name: b.name for a, b in zip(ts, ts[1:])})
    out = {}
    for shard in ckpt.glob("*.safetensors"):
        ts = read_header(shard).tensors
        cuts = [0, ts[0].start, shard.stat().st_size]
        cuts += [b.start for a, b in zip(ts, ts[1:]) if follows.get(a.name) != b.name]
        out[shard.name] = cuts
    return out


def test_resharded_copy_new_bytes_are_headers_and_boundaries(report, ckpts):
    d = report["derivatives"][1]
    assert d["reuse_pct"] > 75
    assert d["components"]["header"]["reused_bytes"] == 0  # every header changed (shard names, offsets)
    # tensor bytes are identical: only chunks cut near a file boundary, or where the tensor order differs from
    # the base's, can differ (CDC resynchronises within a few chunks)
    cuts = _discontinuities(ckpts["reshard"], ckpts["base"])
    starts = {t.name: (t.start, t.end) for shard in ckpts["reshard"].glob("*.safetensors")
              for t in read_header(shard).tensors}
    near, far = [], []
    for t in d["tensors"]:
        if t["component"] in ("header", "other"):
            continue
        s, e = starts[t["name"]]
        close = any(s < p + 3 * MAX_CHUNK and e > p - MAX_CHUNK for p in cuts[t["file"]])
        (near if close else far).append(t)
    assert far and all(t["new_bytes"] == 0 for t in far), [t for t in far if t["new_bytes"]]
    n_cuts = sum(len(v) for v in cuts.values())
    assert sum(t["new_bytes"] for t in near) <= n_cuts * 4 * MAX_CHUNK


def test_quantized_copy_new_bytes_are_the_quantized_components(report):
    d = report["derivatives"][2]
    comps = d["components"]
    for name in QUANTIZED:
        assert comps[name]["reused_bytes"] == 0, name
    for name in ("embed", "lm_head"):  # kept in BF16, copied byte for byte: only their edges are re-chunked
        assert comps[name]["reuse_pct"] > 85, (name, comps[name])
    quantized_new = sum(comps[n]["new_bytes"] for n in QUANTIZED)
    assert quantized_new == sum(comps[n]["total_bytes"] for n in QUANTIZED)
    assert quantized_new > 0.6 * d["new_bytes"]


def test_upload_order_and_collection_are_consistent(report):
    ders = report["derivatives"]
    assert ders[0]["upload_order"]["new_bytes"] == ders[0]["new_bytes"]  # right after the base
    for d in ders:
        u = d["upload_order"]
        assert u["new_bytes"] <= d["new_bytes"]
        assert u["new_bytes"] + u["saved_bytes"] == d["total_bytes"]
    c = report["collection"]
    assert c["total_bytes"] == report["base"]["total_bytes"] + sum(d["total_bytes"] for d in ders)
    assert c["unique_bytes"] == report["base"]["unique_bytes"] + sum(d["upload_order"]["new_bytes"] for d in ders)
    assert c["dedup_pct"] == pytest.approx(100 * (1 - c["unique_bytes"] / c["total_bytes"]), abs=1e-3)


def test_cached_rerun_reads_only_the_new_derivative(report, ckpts):
    c = ckpts
    assert report["indexing"]["cache_dir"] == str(c["cache"] / "xet-index")
    assert len(list((c["cache"] / "xet-index").glob("*.npz"))) == report["indexing"]["files"]
    again = doc_of(cli(c["base"], c["fp8"], "--by", "file", "--json", cache=c["cache"]))
    assert again["indexing"]["bytes_read"] == 0
    assert all(f["cached"] for f in again["base"]["files"] + again["derivatives"][0]["files"])
    assert again["derivatives"][0]["reused_bytes"] == report["derivatives"][2]["reused_bytes"]
    text = doc_of(cli(c["base"], c["text"], "--json", cache=c["cache"]))
    assert text["indexing"]["bytes_read"] == text["derivatives"][0]["total_bytes"]
    d = text["derivatives"][0]
    assert "vision" not in d["components"] and d["reuse_pct"] > 75
    # human output: one table per derivative with bars, the collection line, on stderr
    r = cli(c["base"], c["reshard"], c["fp8"], cache=c["cache"])
    assert r.returncode == 0 and r.stdout == ""
    for text_ in ("reuse by component", "routed_experts", "█", "upload order", "collection", "from the cache"):
        assert text_ in r.stderr, text_


def test_legacy_base_chunker_lowers_reuse_of_identical_bytes(ckpts):
    c = ckpts
    doc = doc_of(cli(c["base"], c["copy"], "--base-chunker", "legacy", "--json", cache=c["cache"]))
    d = doc["derivatives"][0]
    assert doc["base"]["chunker"] == "legacy" and d["chunker"] == "current"
    assert 50 < d["reuse_pct"] < 100
    assert d["same_chunker"]["reuse_pct"] == 100.0
    both = doc_of(cli(c["base"], c["copy"], "--base-chunker", "legacy", "--chunker", "legacy", "--json",
                      cache=c["cache"]))
    assert both["derivatives"][0]["reuse_pct"] == 100.0


@pytest.mark.skipif(hf_xet is None or not hasattr(hf_xet, "XetSession"), reason="needs hf_xet.XetSession")
def test_exact_matches_chunk_overlap(ckpts, tmp_path):
    c = ckpts
    doc = doc_of(cli(c["base"], c["fp8"], c["reshard"], "--exact", "--json", cache=c["cache"],
                     TMPDIR=str(tmp_path)))
    for d in doc["derivatives"]:
        e = d["exact"]
        assert {"deduped_bytes", "new_bytes", "defrag_prevented_dedup_bytes"} <= set(e)
        assert e["defrag_prevented_dedup_bytes"] == 0
        assert e["deduped_bytes"] == d["upload_order"]["saved_bytes"]
        assert e["new_bytes"] == d["upload_order"]["new_bytes"]
    assert list(tmp_path.iterdir()) == []  # the temporary CAS is removed


def test_hub_repo_id_as_base(ckpts, tmp_path):
    from tests.hubserver import FakeHub

    c = ckpts
    files = {p.name: p.read_bytes() for p in sorted(c["base"].iterdir()) if p.is_file()}
    with FakeHub(lifetime=120) as hub:
        sha = hub.add_repo("meta-llama/Llama-4-Dedup", files)
        doc = doc_of(cli("meta-llama/Llama-4-Dedup", c["copy"], "--json", cache=c["cache"], cwd=tmp_path,
                         HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
                         HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1"))
    assert doc["base"]["repo_id"] == "meta-llama/Llama-4-Dedup" and doc["base"]["commit"] == sha
    assert Path(doc["base"]["path"]).is_relative_to(tmp_path / "hf-home")
    assert doc["derivatives"][0]["reuse_pct"] == 100.0


def test_push_model_card_gets_the_estimate(ckpts, tmp_path):
    c = ckpts
    r = subprocess.run([sys.executable, "-m", "llama4ctl", "push", str(c["fp8"]), "me/tiny-fp8", "--dry-run",
                        "--json"], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"),
                            "LLAMA4CTL_CACHE_DIR": str(c["cache"]), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)["card"]
    assert "## Storage dedup estimate" in card and "Xet chunk reuse against the base model" in card
    assert str(c["base"]) not in card  # a card is public: no local paths


def test_usage_errors_exit_2(ckpts):
    c = ckpts
    for args in ([c["base"]], [c["base"], c["copy"], "--by", "layer"], [c["base"], c["copy"], "--chunker", "x"]):
        r = cli(*args, cache=c["cache"])
        assert r.returncode == 2, args
    r = cli(c["base"], c["root"] / "missing", "--json", cache=c["cache"])
    assert r.returncode == 1 and json.loads(r.stdout)["kind"] == "error"
