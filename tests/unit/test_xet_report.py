"""dedup report library (llama4ctl.xet.report): set figures against a brute-force recount, byte attribution,
key-chunk runs, upload order, chunker mismatch, the model-card estimate and hf_xet's own local:// dedup."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from llama4ctl.xet import report as rep
from llama4ctl.xet.index import build_index
from tests.rawfiles import write_tensors

KIB = 1024
MAX_CHUNK = 128 * KIB

try:
    import hf_xet
except ImportError:  # pragma: no cover
    hf_xet = None
needs_xet_session = pytest.mark.skipif(hf_xet is None or not hasattr(hf_xet, "XetSession"),
                                       reason="hf_xet with XetSession (>= 1.5) not installed")


def rand(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def arr(nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(nbytes // 4).astype(np.float32)


def report(base: Path, *ders: Path, tmp: Path, **kw):
    return rep.dedup_report(base, list(ders), cache_dir=tmp / "cache", **kw)


def brute(base: Path, ders: list[Path], chunker="current", base_chunker=None):
    """Expected figures from full 32-byte hashes and Python sets."""
    def chunks(root: Path, ck):
        out = []
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            idx = build_index(p, chunker=ck, cache=False)
            out += [(idx.hashes[i].tobytes(), int(s)) for i, s in enumerate(idx.sizes)]
        return out

    b = chunks(base, base_chunker or chunker)
    seen = {h for h, _ in b}
    base_set = set(seen)
    uniq_total = sum(dict(b).values())
    total = sum(s for _, s in b)
    figs = []
    for d in ders:
        c = chunks(d, chunker)
        reused = sum(s for h, s in c if h in base_set)
        firsts, new, up_new = set(), 0, 0
        for h, s in c:
            if h not in firsts:
                firsts.add(h)
                new += s if h not in base_set else 0
                up_new += s if h not in seen else 0
        seen |= firsts
        uniq_total += up_new
        total += sum(s for _, s in c)
        figs.append({"reused_bytes": reused, "new_bytes": new, "upload_new": up_new,
                     "self_unique": sum(dict(c).values())})
    return figs, 1 - uniq_total / total


# ------------------------------------------------------------------------------------------------ set figures


def test_figures_match_a_brute_force_recount(tmp_path):
    a, b1, b2, c = rand(3 << 20, 1), rand(1 << 20, 2), rand(1 << 20, 3), rand(700 * KIB, 4)
    base = tmp_path / "base"
    base.mkdir()
    (base / "a.bin").write_bytes(a)
    (base / "c.bin").write_bytes(c)
    d1 = tmp_path / "d1"   # edited middle + a file repeated twice inside itself
    d1.mkdir()
    (d1 / "a.bin").write_bytes(a[:1 << 20] + b1 + a[2 << 20:])
    (d1 / "z.bin").write_bytes(b2 + b2)
    d2 = tmp_path / "d2"   # shares d1's new block and adds more
    d2.mkdir()
    (d2 / "x.bin").write_bytes(b1 + rand(500 * KIB, 5) + c)
    doc = report(base, d1, d2, tmp=tmp_path)
    want, collection = brute(base, [d1, d2])
    for got, w in zip(doc["derivatives"], want):
        assert got["reused_bytes"] == w["reused_bytes"]
        assert got["new_bytes"] == w["new_bytes"]
        assert got["upload_order"]["new_bytes"] == w["upload_new"]
        assert got["total_bytes"] == got["reused_bytes"] + got["new_bytes"] + got["intra_dedup_bytes"]
        assert got["self_dedup_pct"] == pytest.approx(100 * (1 - w["self_unique"] / got["total_bytes"]), abs=1e-3)
        assert sum(f["reused_bytes"] for f in got["files"]) == got["reused_bytes"]
        assert sum(f["new_bytes"] for f in got["files"]) == got["new_bytes"]
        assert set(got["components"]) == {"other"}  # no safetensors here
    d1doc, d2doc = doc["derivatives"]
    assert d1doc["intra_dedup_bytes"] > len(b2) - 2 * MAX_CHUNK  # z.bin's second half repeats its first
    assert d1doc["upload_order"]["new_bytes"] == d1doc["new_bytes"]  # first derivative: only the base before it
    assert d2doc["upload_order"]["new_bytes"] < d2doc["new_bytes"]  # b1 was already uploaded with d1
    assert doc["collection"]["dedup_pct"] == pytest.approx(100 * collection, abs=1e-3)
    assert doc["collection"]["unique_bytes"] == doc["base"]["unique_bytes"] + sum(
        d["upload_order"]["new_bytes"] for d in doc["derivatives"])
    assert [f["name"] for f in doc["base"]["files"]] == ["a.bin", "c.bin"]
    assert all(len(f["xet_hash"]) == 64 for f in doc["base"]["files"] + d1doc["files"])


def test_identical_copy_reuses_everything_and_the_cache_is_used(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "w.bin").write_bytes(rand(2 << 20, 7))
    (base / "small.json").write_bytes(b'{"a": 1}')
    copy = tmp_path / "copy"
    shutil.copytree(base, copy, copy_function=shutil.copyfile)  # new mtimes: its own cache entries
    doc = report(base, copy, tmp=tmp_path)
    d = doc["derivatives"][0]
    assert d["reuse_pct"] == 100.0 and d["new_bytes"] == 0 and d["upload_order"]["saving_pct"] == 100.0
    assert d["key_chunks"]["reachable_pct_of_reused"] == 100.0  # one run per file, starting at the file start
    assert doc["indexing"]["files_from_cache"] == 0 and doc["indexing"]["bytes_read"] == 2 * d["total_bytes"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4
    again = report(base, copy, tmp=tmp_path)
    assert again["indexing"]["files_from_cache"] == 4 and again["indexing"]["bytes_read"] == 0
    assert all(f["cached"] for f in again["base"]["files"] + again["derivatives"][0]["files"])
    assert again["derivatives"][0]["reused_bytes"] == d["reused_bytes"]
    # a new derivative against the same base: only the derivative is read
    other = tmp_path / "other"
    other.mkdir()
    (other / "w.bin").write_bytes(rand(1 << 20, 8))
    third = report(base, other, tmp=tmp_path)
    assert third["indexing"]["bytes_read"] == (1 << 20)
    assert third["derivatives"][0]["reused_bytes"] == 0


def test_single_files_and_empty_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(rand(300 * KIB, 1))
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.bin").write_bytes(rand(300 * KIB, 1))
    (d / "empty").write_bytes(b"")
    doc = report(tmp_path / "a.bin", d, tmp=tmp_path)
    assert doc["base"]["files"][0]["name"] == "a.bin"
    got = doc["derivatives"][0]
    assert got["reuse_pct"] == 100.0 and got["total_bytes"] == 300 * KIB
    assert {f["name"]: f["chunks"] for f in got["files"]}["empty"] == 0


def test_bad_arguments(tmp_path):
    from llama4ctl.errors import CheckpointError, PlanError

    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(PlanError):
        report(tmp_path / "a", tmp_path / "a", tmp=tmp_path, by="layer")
    with pytest.raises(PlanError):
        report(tmp_path / "a", tmp_path / "a", tmp=tmp_path, chunker="fastcdc")
    with pytest.raises(PlanError):
        report(tmp_path / "a", tmp=tmp_path)
    with pytest.raises(CheckpointError):
        report(tmp_path / "a", tmp_path / "missing", tmp=tmp_path)


# ------------------------------------------------------------------------------------------------ attribution


def test_attribute_splits_chunks_by_bytes():
    seg = rep._Segments(np.array([0, 10, 10, 25, 40], dtype=np.uint64), ["h", "empty", "t1", "t2"],
                        ["header", "x", "y", "y"])
    ends = np.array([8, 20, 40], dtype=np.uint64)
    reused = np.array([True, False, True])
    total, r = rep._attribute(ends, seg, [reused])
    assert total.tolist() == [10, 0, 15, 15]
    # chunk 0 [0,8) reused -> h 8; chunk 1 [8,20) new; chunk 2 [20,40) reused -> t1 5, t2 15
    assert r.tolist() == [8, 0, 5, 15]


def test_reachable_runs():
    flat = rep._Flat(keys=np.arange(8, dtype=np.uint64), sizes=np.full(8, 10, dtype=np.int64),
                     key_chunk=np.array([0, 0, 0, 0, 0, 1, 0, 0], bool),
                     file_first=np.array([1, 0, 0, 0, 1, 0, 0, 0], bool), offsets=[0, 4, 8])
    reused = np.array([0, 1, 1, 0, 1, 1, 0, 1], bool)
    # runs: [1,2] (no key chunk, not at file start), [4,5] (file start + key chunk), [7] (nothing)
    assert rep._reachable_bytes(flat, reused) == 20
    assert rep._reachable_bytes(flat, np.zeros(8, bool)) == 0


def test_safetensors_attribution_finetune_like_change(tmp_path):
    names = ["a.weight", "b.weight", "c.weight"]
    sizes = [1 << 20, 16 * KIB, 1 << 20]
    tensors = {n: arr(s, i) for i, (n, s) in enumerate(zip(names, sizes))}
    base = tmp_path / "base"
    base.mkdir()
    write_tensors(base / "model.safetensors", tensors)
    der = tmp_path / "der"
    der.mkdir()
    write_tensors(der / "model.safetensors", {**tensors, "b.weight": tensors["b.weight"] * 1.01})
    (der / "notes.txt").write_text("finetuned\n")
    doc = report(base, der, tmp=tmp_path, by="tensor")
    d = doc["derivatives"][0]
    rows = {t["name"]: t for t in d["tensors"]}
    assert rows["b.weight"]["reused_bytes"] == 0 and rows["b.weight"]["total_bytes"] == sizes[1]
    assert rows["a.weight"]["new_bytes"] <= MAX_CHUNK           # only the chunk that runs into b
    assert rows["c.weight"]["new_bytes"] <= 3 * MAX_CHUNK       # CDC resynchronises after b
    assert rows["c.weight"]["reused_bytes"] >= sizes[2] - 3 * MAX_CHUNK
    assert rows["model.safetensors (header)"]["component"] == "header"
    assert rows["model.safetensors (header)"]["reused_bytes"] == rows["model.safetensors (header)"]["total_bytes"]
    assert rows["notes.txt"]["component"] == "other" and rows["notes.txt"]["reused_bytes"] == 0
    for key in ("total_bytes", "reused_bytes", "new_bytes"):
        want = d[key] if key != "total_bytes" else d["total_bytes"]
        assert sum(t[key] for t in d["tensors"]) == want
        assert sum(c[key] for c in d["components"].values()) == want


def test_unreadable_safetensors_counts_as_other(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.safetensors").write_bytes(rand(50 * KIB, 1))
    doc = report(tmp_path / "b", tmp_path / "b", tmp=tmp_path)
    assert set(doc["derivatives"][0]["components"]) == {"other"}
    assert any("unreadable safetensors header" in n for n in doc["notes"])


# ------------------------------------------------------------------------------------------------ chunkers


def test_legacy_base_vs_current_derivative(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    # BF16-like data: many bytes whose gear value is below 2**48 at legacy's first test position
    (base / "w.bin").write_bytes(rand(4 << 20, 3))
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    mixed = report(base, copy, tmp=tmp_path, base_chunker="legacy")
    d = mixed["derivatives"][0]
    assert mixed["base_chunker"] == "legacy" and mixed["chunker"] == "current"
    assert d["reuse_pct"] < 99.0  # identical bytes, different cuts
    assert d["same_chunker"]["reuse_pct"] == 100.0
    assert d["same_chunker"]["lost_to_chunker_bytes"] == d["total_bytes"] - d["reused_bytes"]
    assert any("legacy chunker" in n for n in mixed["notes"])
    want, _ = brute(base, [copy], base_chunker="legacy")
    assert d["reused_bytes"] == want[0]["reused_bytes"]
    both = report(base, copy, tmp=tmp_path, base_chunker="legacy", chunker="legacy")
    assert both["derivatives"][0]["reuse_pct"] == 100.0 and "same_chunker" not in both["derivatives"][0]


# ------------------------------------------------------------------------------------------------ model card hook


def test_dedup_estimate_for_the_model_card(tmp_path):
    from llama4ctl.modelcard import build_model_card

    base = tmp_path / "base"
    base.mkdir()
    (base / "w.bin").write_bytes(rand(1 << 20, 1))
    der = tmp_path / "der"
    der.mkdir()
    (der / "w.bin").write_bytes(rand(1 << 20, 1)[: 512 * KIB] + rand(512 * KIB, 2))
    assert rep.dedup_estimate(base, der, cache_dir=tmp_path / "c", max_read_bytes=0) is None  # nothing cached
    est = rep.dedup_estimate(base, der, cache_dir=tmp_path / "c")
    assert set(est) >= {"reused_bytes", "total_bytes", "new_bytes", "reuse_pct", "chunker", "base_chunker"}
    assert "base" not in est  # push's hook adds the base itself
    assert est["total_bytes"] == 1 << 20 and 0 < est["reused_bytes"] < est["total_bytes"]
    # now cached: allowed even with no read budget
    assert rep.dedup_estimate(base, der, cache_dir=tmp_path / "c", max_read_bytes=0) == est
    card = build_model_card(der, repo_id="me/der", base_model="me/base", dedup={"base": "me/base", **est})
    assert f"{est['reuse_pct']:.1f}% of" in card and "Storage dedup estimate" in card


def test_card_estimate_uses_the_base_chunker_of_the_earlier_dedup_report(tmp_path):
    """Llama 4 bases were uploaded with the legacy chunker: after `dedup-report --base-chunker legacy` the card
    must state the reuse that report measured, not one against a base re-chunked with the current chunker."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "w.bin").write_bytes(rand(1 << 20, 3))
    der = tmp_path / "der"
    der.mkdir()
    (der / "w.bin").write_bytes(rand(1 << 20, 3)[: 768 * KIB] + rand(256 * KIB, 4))
    cache = tmp_path / "c"
    legacy = rep.dedup_estimate(base, der, cache_dir=cache, base_chunker="legacy")  # fills the legacy base index
    current = rep.dedup_estimate(base, der, cache_dir=tmp_path / "other", base_chunker="current")
    assert legacy["reuse_pct"] != current["reuse_pct"]  # the two chunkers cut the base differently
    auto = rep.dedup_estimate(base, der, cache_dir=cache, max_read_bytes=0)
    assert auto == legacy and auto["base_chunker"] == "legacy"


# ------------------------------------------------------------------------------------------------ exact


@needs_xet_session
def test_exact_equals_chunk_overlap_without_fragmentation_prevention(tmp_path):
    tensors = {f"t{i}.weight": arr(256 * KIB, i) for i in range(8)}
    base = tmp_path / "base"
    base.mkdir()
    write_tensors(base / "model.safetensors", tensors)
    tuned = tmp_path / "tuned"  # finetune-like: two tensors perturbed
    tuned.mkdir()
    write_tensors(tuned / "model.safetensors",
                  {**tensors, "t2.weight": tensors["t2.weight"] + 1e-3, "t6.weight": tensors["t6.weight"] * 0.5})
    inserted = tmp_path / "inserted"  # a tensor inserted in the middle shifts every later offset
    inserted.mkdir()
    items = list(tensors.items())
    write_tensors(inserted / "model.safetensors", dict(items[:4] + [("extra.weight", arr(40 * KIB, 99))] + items[4:]))
    doc = report(base, tuned, inserted, tmp=tmp_path, exact=True, exact_dir=tmp_path)
    assert not list(tmp_path.glob("llama4ctl-xet-cas-*"))  # the temporary CAS is gone
    for d in doc["derivatives"]:
        e = d["exact"]
        assert e["total_bytes"] == d["total_bytes"]
        assert e["defrag_prevented_dedup_bytes"] == 0
        assert e["deduped_bytes"] == d["upload_order"]["saved_bytes"]
        assert e["new_bytes"] == d["upload_order"]["new_bytes"]
        assert [f["xet_hash"] for f in e["files"]] == [f["xet_hash"] for f in d["files"]]
    assert 0 < doc["derivatives"][1]["reuse_pct"] < 100
    assert doc["exact"]["peak_cas_bytes"] < 2 * max(p.stat().st_size for p in tmp_path.rglob("*.safetensors"))
