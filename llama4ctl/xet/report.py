"""Xet chunk reuse between a base checkpoint and its derivatives (the library behind `dedup-report`).

Every file of the base and of each derivative is cut into Xet chunks and hashed (``build_index``, cached per file
under the user cache directory, so a re-run against the same base reads only what changed). Chunk hashes are
then compared as sorted ``uint64`` keys (the first 8 bytes of each 32-byte hash; a false match needs a 64-bit
collision, ~1e-5 for 12 M chunks), with sort-based numpy set operations. Per chunk the report keeps its end
offset, its key and one key-chunk flag (17 bytes); comparing a derivative peaks near 56 bytes per chunk, the base's
key set included (12 M + 12 M chunks, Maverick scale: 5.7 s; bench/bench_dedup.py).

Figures per derivative (reference xet.md §5.2):

* ``reused_bytes`` / ``reuse_pct`` (D1): bytes of its chunks whose hash is among the base's chunks.
* ``new_bytes``: bytes an upload right after the base would send: chunks not in the base, each unique chunk
  counted once (first occurrence in file order). ``total = reused + new + intra_dedup_bytes``, where
  ``intra_dedup_bytes`` are repeats, within the derivative, of chunks the base does not have.
* ``self_dedup_pct`` (D2): 1 − unique chunk bytes / total, the derivative on its own.
* ``upload_order`` (D3): uploaded after the base *and every derivative listed before it*: bytes still new, and
  the saving. The first derivative's saving equals ``(total − new) / total``.
* ``key_chunks`` (D5): of the reused bytes, those in runs of consecutive reused chunks that contain a chunk a
  fresh uploader would query through global dedup (the first chunk of a file, or a chunk whose hash's last
  8 bytes as a little-endian u64 are 0 mod 1024). A lower bound: one hit returns a shard covering whole xorbs.
* ``collection`` (D4, the "~25 % on Llama 4" style figure): 1 − unique bytes / total bytes over the base and
  all derivatives together (= base unique bytes + every derivative's upload-order new bytes).

Attribution: each chunk's bytes are split over the byte ranges of the file they lie in: the safetensors
header (8-byte length + JSON) is component ``header``, tensors are classified by ``layout.component()``,
non-safetensors files are ``other``; a chunk spanning two tensors is split by bytes. So per-component and
per-tensor figures sum exactly to the totals.

Chunkers: ``chunker`` cuts the derivatives, ``base_chunker`` the base (default: the same). Llama 4 was uploaded
by a pre-1.1.10 client (``legacy``), whose cuts differ from current clients' far more than xet.md §1.5 says:
~4-9 % of legacy chunks end at exactly 8128 bytes (depending on the data), and only part of the bytes fall in
chunks that both rules cut identically: measured 88 % for uniformly random bytes, 95 % for BF16 N(0, 0.02)
weights. A legacy-chunked base against a current-chunked derivative therefore caps reuse there even for
identical bytes; when the two differ, the report also gives the reuse against the base cut with the
derivative's chunker (``same_chunker``), so the loss due to the chunker change is visible.

``exact_dedup`` (``--exact``) runs hf_xet's real upload pipeline offline against a ``local://`` CAS in a
temporary directory (base, then each derivative, one commit per file, deleting xorb payloads after each commit
so disk use stays below the largest file) and returns its ``DeduplicationMetrics``. Its ``deduped_bytes`` equal
the upload-order chunk overlap unless fragmentation prevention declined short matching runs
(``defrag_prevented_dedup_bytes``). hf_xet always chunks with the current rule.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llama4ctl.errors import CheckpointError, OutputError, PlanError
from llama4ctl.progress import NullProgress, Progress
from llama4ctl.xet.chunker import ChunkerName
from llama4ctl.xet.index import build_index, cache_path, default_cache_dir

__all__ = ["BY_CHOICES", "CHUNKERS", "Source", "dedup_report", "dedup_estimate", "exact_dedup", "resolve_source",
           "list_files"]

BY_CHOICES = ("file", "component", "tensor")
CHUNKERS = ("current", "legacy")
GLOBAL_DEDUP_MODULUS = 1024  # MDB_SHARD_GLOBAL_DEDUP_CHUNK_MODULUS
HEADER = "header"
OTHER = "other"
#: dedup_estimate skips (returns None) when more than this many bytes would have to be read (not cached)
ESTIMATE_MAX_READ_BYTES = 50_000_000_000
_EMPTY_U64 = np.empty(0, dtype=np.uint64)


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One checkpoint to compare: what the user gave, the local directory (or file) it resolved to, its files."""

    spec: str
    root: Path
    files: tuple[tuple[str, Path], ...]  # (name relative to root, path), in upload order (sorted names)
    repo_id: str | None = None
    commit: str | None = None


def list_files(root: Path) -> list[tuple[str, Path]]:
    """Files an upload of ``root`` would send (push's ignore rules: no .cache/, partial or lock files)."""
    if root.is_file():
        return [(root.name, root)]
    from llama4ctl.hub import push_files

    return [(rel, root / rel) for rel, _ in push_files(root)]


def resolve_source(spec: str | os.PathLike, *, token: str | None = None,
                   progress: Progress | None = None) -> Source:
    """A local directory or file, or a Hub repo id fetched (verified) into the Hugging Face cache."""
    text = str(spec)
    p = Path(text).expanduser()
    repo_id = commit = None
    if not p.exists():
        from llama4ctl.jobs import looks_like_repo_id

        if not looks_like_repo_id(text):
            raise CheckpointError("no such file or directory", text)
        from llama4ctl.hub import download

        res = download(text, token=token, progress=progress)
        p, repo_id, commit = Path(res["destination"]), text, res.get("commit")
    files = list_files(p)
    if not files:
        raise CheckpointError("no files to compare", p)
    return Source(text, p, tuple(files), repo_id, commit)


# --------------------------------------------------------------------------------------------- indexes


@dataclass
class FileChunks:
    """What the report keeps of one file's chunk index: 17 bytes per chunk."""

    name: str
    path: Path
    size: int
    ends: np.ndarray      # uint64, chunk end offsets
    keys: np.ndarray      # uint64, first 8 bytes of each chunk hash
    key_chunk: np.ndarray  # bool, hash eligible for global dedup (last 8 bytes LE % 1024 == 0)
    xet_hash: str | None
    cached: bool

    @property
    def chunks(self) -> int:
        return int(self.ends.size)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.ends, prepend=np.uint64(0)).astype(np.uint32)  # chunks are at most 128 KiB

    def release(self) -> None:
        """Drop the per-chunk keys once they are in a _Flat (attribution needs only ``ends``)."""
        self.keys = self.key_chunk = _EMPTY_U64


def _entry_state(entry: Path | None) -> tuple[int, int] | None:
    if entry is None:
        return None
    try:
        st = entry.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _load_file(name: str, path: Path, chunker: ChunkerName, *, cache: bool, cache_dir: Path | None,
               with_hash: bool) -> FileChunks:
    entry = cache_path(path, chunker, cache_dir) if cache else None
    before = _entry_state(entry)
    idx = build_index(path, chunker=chunker, cache=cache, cache_dir=cache_dir)
    # build_index loads a valid entry as it is and rewrites anything else: an entry that was there before and
    # is untouched now was used.
    cached = before is not None and before == _entry_state(entry)
    h = idx.hashes
    keys = np.ascontiguousarray(h[:, :8]).view("<u8").reshape(-1)
    key_chunk = (h[:, 24] == 0) & ((h[:, 25] & 3) == 0)  # LE u64 of bytes 24..31 ≡ 0 mod 1024
    return FileChunks(name, path, idx.file_size, idx.ends, keys, key_chunk,
                      idx.file_hash() if with_hash else None, cached)


@dataclass
class IndexStats:
    files: int = 0
    files_from_cache: int = 0
    bytes_read: int = 0
    bytes_from_cache: int = 0


def _index_files(files: Sequence[tuple[str, Path]], chunker: ChunkerName, *, cache: bool, cache_dir: Path | None,
                 with_hash: bool, progress: Progress, stats: IndexStats, workers: int) -> list[FileChunks]:
    def one(item: tuple[str, Path]) -> FileChunks:
        fc = _load_file(item[0], item[1], chunker, cache=cache, cache_dir=cache_dir, with_hash=with_hash)
        progress.advance(fc.size)
        return fc

    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(min(workers, len(files)), thread_name_prefix="xet-index") as ex:
            out = list(ex.map(one, files))
    else:
        out = [one(f) for f in files]
    for fc in out:
        stats.files += 1
        if fc.cached:
            stats.files_from_cache += 1
            stats.bytes_from_cache += fc.size
        else:
            stats.bytes_read += fc.size
    return out


def default_workers() -> int:
    """Files indexed at once. One file already keeps two cores busy (chunking + BLAKE3 threads)."""
    return max(1, (os.cpu_count() or 1) // 2)


# --------------------------------------------------------------------------------------------- set helpers
# Sort-based on purpose: numpy 2.4's np.unique / np.isin / np.union1d take ~18-25 s on 12 M uint64 keys (hash
# path), and searchsorted with unsorted queries is cache-miss bound (~20 s); sorting and searching sorted
# queries takes ~1-2 s.


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted unique values of a uint64 array."""
    s = np.sort(keys)
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


_BLOCK = 1 << 20


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """keys ∈ sorted_set (sorted unique uint64); fast when ``keys`` is sorted too. Works in blocks of 1 Mi keys,
    so its temporaries (positions, gathered values) stay small."""
    out = np.zeros(keys.shape, dtype=bool)
    if sorted_set.size == 0:
        return out
    last = sorted_set.size - 1
    for a in range(0, keys.size, _BLOCK):
        k = keys[a:a + _BLOCK]
        pos = np.searchsorted(sorted_set, k)
        np.minimum(pos, last, out=pos)
        np.equal(sorted_set[pos], k, out=out[a:a + _BLOCK])
    return out


def _classify(keys: np.ndarray, sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(sorted unique keys, mask of each key's first chunk in upload order, [keys ∈ set for each set]).

    One stable argsort (8 bytes per chunk) serves all of it; membership is tested on the sorted keys.
    """
    n = keys.size
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    head = np.empty(n, dtype=bool)
    if n:
        head[0] = True
        np.not_equal(sk[1:], sk[:-1], out=head[1:])
    first = np.zeros(n, dtype=bool)
    first[order[head]] = True  # stable: the earliest chunk of each group comes first
    members = []
    for st in sets:
        m = np.empty(n, dtype=bool)
        m[order] = _member(sk, st)
        members.append(m)
    del order
    return sk[head], first, members


@dataclass
class _Flat:
    """All chunks of one checkpoint in upload order (files by name, chunks by offset)."""

    keys: np.ndarray
    sizes: np.ndarray       # uint32 (sums come out as 64-bit)
    key_chunk: np.ndarray   # bool
    file_first: np.ndarray  # bool: first chunk of a file
    offsets: list[int]      # chunk index where each file starts

    @classmethod
    def of(cls, files: list[FileChunks]) -> _Flat:
        counts = [f.keys.size for f in files]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        n = offsets[-1]
        first = np.zeros(n, dtype=bool)
        first[[o for o, c in zip(offsets, counts) if c]] = True
        cat = (lambda arrs, dt: np.concatenate(arrs) if arrs else np.empty(0, dt))
        return cls(cat([f.keys for f in files], np.uint64), cat([f.sizes for f in files], np.uint32),
                   cat([f.key_chunk for f in files], bool), first, offsets)

    @property
    def total(self) -> int:
        return int(self.sizes.sum())


def _reachable_bytes(flat: _Flat, reused: np.ndarray) -> int:
    """Reused bytes in runs (within a file) that contain a key chunk or start the file (xet.md §5.2 D5)."""
    if not reused.any():
        return 0
    prev = np.concatenate([[False], reused[:-1]])
    prev[flat.file_first] = False
    run_start = reused & ~prev
    del prev
    run_id = np.cumsum(run_start, dtype=np.int32 if reused.size < 2**31 else np.int64)  # 1-based on reused chunks
    hit = np.zeros(int(run_start.sum()) + 1, dtype=bool)
    hit[run_id[reused & (flat.key_chunk | flat.file_first)]] = True
    return int(flat.sizes[reused][hit[run_id[reused]]].sum())


# --------------------------------------------------------------------------------------------- attribution


@dataclass
class _Segments:
    """Byte ranges of one file: ``bounds`` (len m+1, from 0 to the file size) and a name/component per range."""

    bounds: np.ndarray
    names: list[str]
    components: list[str]


def _segments(name: str, path: Path, size: int, notes: list[str]) -> _Segments:
    from llama4ctl.checkpoint.header import read_header
    from llama4ctl.checkpoint.layout import component

    if name.endswith(".safetensors"):
        try:
            header = read_header(path)
        except CheckpointError as e:
            notes.append(f"{name}: unreadable safetensors header ({e.message}); counted as `other`")
        else:
            bounds = [0, header.data_start] + [t.end for t in header.tensors]
            return _Segments(np.array(bounds, dtype=np.uint64), [f"{name} (header)"] + [t.name for t in header.tensors],
                             [HEADER] + [component(t.name) for t in header.tensors])
    return _Segments(np.array([0, size], dtype=np.uint64), [name], [OTHER])


def _attribute(ends: np.ndarray, seg: _Segments, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per segment: total bytes, then the bytes of chunks selected by each mask (chunks split by bytes)."""
    m = len(seg.names)
    if ends.size == 0:
        return [np.zeros(m, dtype=np.int64) for _ in range(len(masks) + 1)]
    cuts = _sorted_unique(np.concatenate([seg.bounds, ends]))  # bounds start at 0
    starts, lens = cuts[:-1], np.diff(cuts).astype(np.float64)
    sid = np.searchsorted(seg.bounds, starts, side="right") - 1
    cid = np.searchsorted(ends, starts, side="right")
    # float64 sums of integers below 2**53 are exact
    out = [np.bincount(sid, weights=lens, minlength=m)]
    out += [np.bincount(sid, weights=lens * mask[cid], minlength=m) for mask in masks]
    return [np.rint(o).astype(np.int64) for o in out]


@dataclass
class _Rows:
    """Attribution rows of one checkpoint: one per (file, byte range)."""

    file: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    component: list[str] = field(default_factory=list)
    total: list[np.ndarray] = field(default_factory=list)
    reused: list[np.ndarray] = field(default_factory=list)
    new: list[np.ndarray] = field(default_factory=list)

    def add(self, fname: str, seg: _Segments, total: np.ndarray, reused: np.ndarray, new: np.ndarray) -> None:
        self.file += [fname] * len(seg.names)
        self.name += seg.names
        self.component += seg.components
        self.total.append(total)
        self.reused.append(reused)
        self.new.append(new)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cat = (lambda a: np.concatenate(a) if a else np.empty(0, np.int64))
        return cat(self.total), cat(self.reused), cat(self.new)

    def group(self, keys: list[str]) -> dict[str, dict[str, int]]:
        total, reused, new = self.arrays()
        out: dict[str, dict[str, int]] = {}
        for k, t, r, n in zip(keys, total.tolist(), reused.tolist(), new.tolist()):
            d = out.setdefault(k, {"total_bytes": 0, "reused_bytes": 0, "new_bytes": 0})
            d["total_bytes"] += t
            d["reused_bytes"] += r
            d["new_bytes"] += n
        for d in out.values():
            d["reuse_pct"] = _pct(d["reused_bytes"], d["total_bytes"])
        return out

    def tensors(self) -> list[dict[str, Any]]:
        total, reused, new = self.arrays()
        return [{"name": n, "component": c, "file": f, "total_bytes": t, "reused_bytes": r, "new_bytes": w,
                 "reuse_pct": _pct(r, t)}
                for f, n, c, t, r, w in zip(self.file, self.name, self.component, total.tolist(), reused.tolist(),
                                            new.tolist())]


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 4) if whole else 0.0


# --------------------------------------------------------------------------------------------- the report


def _compare(flat: _Flat, files: list[FileChunks], base_set: np.ndarray, earlier: Sequence[np.ndarray],
             same_chunker_set: np.ndarray | None, *, attribute: bool, notes: list[str]) -> tuple[dict[str, Any],
                                                                                                   _Rows, np.ndarray]:
    """Figures of one derivative against the base and the keys ``earlier`` derivatives added (sorted arrays).

    Returns (figures, attribution rows, the sorted keys this derivative adds to the store: its upload-order new
    chunks), so memory grows by 8 bytes per new chunk per derivative, without merging sets.
    """
    total = flat.total
    extra = [same_chunker_set] if same_chunker_set is not None else []
    _, first, members = _classify(flat.keys, [base_set, *extra, *earlier])
    in_base = members[0]
    in_seen = in_base.copy()
    for m in members[1 + len(extra):]:
        in_seen |= m
    new = ~in_base & first
    reused_bytes = int(flat.sizes[in_base].sum())
    new_bytes = int(flat.sizes[new].sum())
    unique_bytes = int(flat.sizes[first].sum())
    upload_new = ~in_seen & first
    upload_new_bytes = int(flat.sizes[upload_new].sum())
    reachable = _reachable_bytes(flat, in_base)
    fig: dict[str, Any] = {
        "total_bytes": total,
        "chunks": int(flat.keys.size),
        "reused_bytes": reused_bytes,
        "new_bytes": new_bytes,
        "intra_dedup_bytes": total - reused_bytes - new_bytes,
        "reuse_pct": _pct(reused_bytes, total),
        "dedup_pct": _pct(total - new_bytes, total),
        "self_dedup_pct": _pct(total - unique_bytes, total),
        "upload_order": {"new_bytes": upload_new_bytes, "saved_bytes": total - upload_new_bytes,
                         "saving_pct": _pct(total - upload_new_bytes, total)},
        "key_chunks": {"eligible_chunks": int((flat.key_chunk | flat.file_first).sum()),
                       "reachable_reused_bytes": reachable, "reachable_pct_of_reused": _pct(reachable, reused_bytes)},
    }
    if same_chunker_set is not None:
        same = int(flat.sizes[members[1]].sum())
        fig["same_chunker"] = {"reused_bytes": same, "reuse_pct": _pct(same, total),
                               "lost_to_chunker_bytes": same - reused_bytes}
    rows = _Rows()
    file_docs = []
    for i, f in enumerate(files):
        a, b = flat.offsets[i], flat.offsets[i + 1]
        f_reused, f_new = in_base[a:b], new[a:b]
        doc = {"name": f.name, "size": f.size, "xet_hash": f.xet_hash, "chunks": int(b - a),
               "reused_bytes": int(flat.sizes[a:b][f_reused].sum()), "new_bytes": int(flat.sizes[a:b][f_new].sum()),
               "cached": f.cached}
        doc["reuse_pct"] = _pct(doc["reused_bytes"], f.size)
        file_docs.append(doc)
        if attribute:
            seg = _segments(f.name, f.path, f.size, notes)
            t, r, n = _attribute(f.ends, seg, [f_reused, f_new])
            rows.add(f.name, seg, t, r, n)
    fig["files"] = file_docs
    return fig, rows, np.sort(flat.keys[upload_new])


def _checked_chunker(name: str | None, what: str) -> ChunkerName:
    if name not in CHUNKERS:
        raise PlanError(f"{what} must be 'current' or 'legacy', not {name!r}")
    return name  # type: ignore[return-value]


def dedup_report(base: str | os.PathLike, derivatives: Sequence[str | os.PathLike], *, by: str = "component",
                 exact: bool = False, chunker: str = "current", base_chunker: str | None = None,
                 token: str | None = None, cache: bool = True, cache_dir: str | os.PathLike | None = None,
                 workers: int | None = None, exact_dir: str | os.PathLike | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Chunk reuse of each derivative against ``base`` (and, in upload order, the derivatives before it).

    ``base`` and ``derivatives`` are local directories / files or Hub repo ids (downloaded into the HF cache).
    Returns the body of the ``dedup_report`` JSON document (see the module docstring for every figure).
    """
    t0 = time.perf_counter()
    progress = progress or NullProgress()
    if by not in BY_CHOICES:
        raise PlanError(f"--by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    if not derivatives:
        raise PlanError("give at least one derivative to compare with the base")
    chunker_ = _checked_chunker(chunker, "--chunker")
    base_chunker_ = _checked_chunker(base_chunker or chunker, "--base-chunker")
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    workers = workers or default_workers()
    notes: list[str] = []

    base_src = resolve_source(base, token=token, progress=progress)
    der_srcs = [resolve_source(d, token=token, progress=progress) for d in derivatives]

    # what has to be read: one progress bar over the bytes not in the cache
    jobs: list[tuple[list[tuple[str, Path]], ChunkerName]] = [(list(base_src.files), base_chunker_)]
    if base_chunker_ != chunker_:
        jobs.append((list(base_src.files), chunker_))
    jobs += [(list(s.files), chunker_) for s in der_srcs]
    todo = sum(p.stat().st_size for files, ck in jobs for _, p in files
               if not (cache and cache_path(p, ck, cdir).exists()))
    stats = IndexStats()
    progress.start("indexing Xet chunks", todo or None)
    try:
        index = (lambda files, ck, with_hash=True: _index_files(
            files, ck, cache=cache, cache_dir=cdir, with_hash=with_hash, progress=progress, stats=stats,
            workers=workers))
        base_files = index(list(base_src.files), base_chunker_)
        base_flat = _Flat.of(base_files)
        base_counts = [f.chunks for f in base_files]
        for f in base_files:
            f.release()
            f.ends = _EMPTY_U64
        base_set, base_first, _ = _classify(base_flat.keys, [])
        base_unique = int(base_flat.sizes[base_first].sum())
        base_total = base_flat.total
        del base_flat, base_first
        same_set = None
        if base_chunker_ != chunker_:
            same_set = _sorted_unique(np.concatenate(
                [f.keys for f in index(list(base_src.files), chunker_, False)] or [np.empty(0, np.uint64)]))
        earlier: list[np.ndarray] = []
        der_docs = []
        unique_total, grand_total = base_unique, base_total
        for src in der_srcs:
            files = index(list(src.files), chunker_)
            flat = _Flat.of(files)
            for f in files:
                f.release()
            fig, rows, added = _compare(flat, files, base_set, earlier, same_set, attribute=True, notes=notes)
            earlier.append(added)
            unique_total += fig["upload_order"]["new_bytes"]
            grand_total += fig["total_bytes"]
            doc = {"path": str(src.root), "source": src.spec, "repo_id": src.repo_id, "commit": src.commit,
                   "chunker": chunker_, **fig,
                   "components": rows.group(rows.component)}
            if by == "tensor":
                doc["tensors"] = rows.tensors()
            der_docs.append(doc)
            del flat, files, rows
    finally:
        progress.finish()

    base_doc = {"path": str(base_src.root), "source": base_src.spec, "repo_id": base_src.repo_id,
                "commit": base_src.commit, "chunker": base_chunker_, "total_bytes": base_total,
                "chunks": int(sum(base_counts)), "unique_bytes": base_unique,
                "self_dedup_pct": _pct(base_total - base_unique, base_total),
                "files": [{"name": f.name, "size": f.size, "xet_hash": f.xet_hash, "chunks": n,
                           "cached": f.cached} for f, n in zip(base_files, base_counts)]}
    if base_chunker_ != chunker_:
        notes.append(
            f"the base is cut with the {base_chunker_} chunker and the derivatives with the {chunker_} one: "
            "identical bytes only match where both rules cut the same chunks (legacy vs current: 88 % of uniformly "
            "random bytes, 95 % of BF16 weights; a legacy chunk can end at 8128 bytes). `same_chunker` gives the reuse "
            f"against the base cut with the {chunker_} chunker.")
    doc: dict[str, Any] = {
        "chunker": chunker_, "base_chunker": base_chunker_, "by": by,
        "base": base_doc, "derivatives": der_docs,
        "collection": {"total_bytes": grand_total, "unique_bytes": unique_total,
                       "dedup_pct": _pct(grand_total - unique_total, grand_total)},
        "indexing": {"files": stats.files, "files_from_cache": stats.files_from_cache,
                     "bytes_read": stats.bytes_read, "bytes_from_cache": stats.bytes_from_cache,
                     "cache_dir": str(cdir) if cache else None, "workers": workers},
        "notes": notes,
    }
    if exact:
        ex = exact_dedup(base_src.files, [s.files for s in der_srcs], tmp_dir=exact_dir, progress=progress)
        for d, e in zip(der_docs, ex["derivatives"]):
            d["exact"] = e
        doc["exact"] = {k: v for k, v in ex.items() if k != "derivatives"}
        if "legacy" in (chunker_, base_chunker_):
            notes.append("--exact runs hf_xet, which always cuts with the current chunker: compare its figures "
                         "with a current/current report")
        notes.append("exact `deduped_bytes` are the upload-order chunk overlap minus `defrag_prevented_dedup_bytes`: "
                     "hf_xet declines to dedup short matching runs once the average run is short (fragmentation "
                     "prevention) and uploads them again")
    doc["seconds"] = round(time.perf_counter() - t0, 3)
    return doc


# --------------------------------------------------------------------------------------------- exact (hf_xet)


_METRIC_FIELDS = ("total_bytes", "deduped_bytes", "new_bytes", "defrag_prevented_dedup_bytes",
                  "deduped_bytes_by_global_dedup", "total_chunks", "deduped_chunks", "new_chunks",
                  "defrag_prevented_dedup_chunks")


def _prune_xorbs(cas: Path) -> None:
    """Drop xorb payloads (dedup reads shards only; observed, xet.md §3.1) and finished session staging dirs."""
    for d in (cas / "xet" / "xorbs" / "xorbs", cas / "xet" / "shard-session"):
        if d.is_dir():
            for p in d.iterdir():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def exact_dedup(base_files: Sequence[tuple[str, Path]], derivatives: Sequence[Sequence[tuple[str, Path]]], *,
                tmp_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """hf_xet's own dedup of each derivative, uploaded after the base and the derivatives before it.

    Offline: a ``local://`` CAS in a temporary directory, one commit per file; after each commit the xorb
    payloads are deleted, so the CAS never holds more than about one file's new data. Raises OutputError when
    the temporary directory's disk cannot hold the largest file.
    """
    progress = progress or NullProgress()
    try:
        import hf_xet
    except ImportError:
        raise PlanError("--exact needs hf_xet (pip install hf_xet)") from None
    if not hasattr(hf_xet, "XetSession"):
        raise PlanError(f"--exact needs hf_xet >= 1.5 (XetSession); installed: {_version('hf-xet') or '?'}",
                        hint="pip install -U hf_xet")
    t0 = time.perf_counter()
    all_files = [*base_files, *(f for d in derivatives for f in d)]
    largest = max((p.stat().st_size for _, p in all_files), default=0)
    total = sum(p.stat().st_size for _, p in all_files)
    with tempfile.TemporaryDirectory(prefix="llama4ctl-xet-cas-", dir=tmp_dir) as tmp:
        cas = Path(tmp)
        session = hf_xet.XetSession(hf_xet.XetConfig().with_config("telemetry.enabled", False))
        peak = 0

        def upload(files: Sequence[tuple[str, Path]]) -> dict[str, Any]:
            nonlocal peak
            agg = dict.fromkeys(_METRIC_FIELDS, 0)
            per_file = []
            for name, path in files:
                size = path.stat().st_size
                free = shutil.disk_usage(cas).free
                if free < size + (256 << 20):
                    raise OutputError(f"--exact needs about {size / 1e9:.1f} GB free for {name}'s new data, "
                                      f"{free / 1e9:.1f} GB free", cas,
                                      hint="point TMPDIR at a larger disk")
                commit = session.new_upload_commit(endpoint=f"local://{cas}")
                md = commit.start_upload_file(str(path.resolve())).result()
                commit.wait_to_finish()
                peak = max(peak, _du(cas))
                _prune_xorbs(cas)
                m = md.dedup_metrics
                vals = {k: int(getattr(m, k, 0) or 0) for k in _METRIC_FIELDS}
                for k, v in vals.items():
                    agg[k] += v
                per_file.append({"name": name, "xet_hash": md.xet_info.hash, **vals})
                progress.advance(size)
            agg["dedup_pct"] = _pct(agg["deduped_bytes"], agg["total_bytes"])
            agg["files"] = per_file
            return agg

        progress.start("hf_xet local:// upload (--exact)", total or None)
        try:
            base_m = upload(base_files)
            der_m = [upload(d) for d in derivatives]
        finally:
            progress.finish()
    return {"method": "hf_xet XetSession, local:// CAS, one commit per file, base first then derivatives in order",
            "hf_xet_version": _version("hf-xet"), "base": base_m, "derivatives": der_m,
            "largest_file_bytes": largest, "peak_cas_bytes": peak, "seconds": round(time.perf_counter() - t0, 3)}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _du(root: Path) -> int:
    n = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                n += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return n


# --------------------------------------------------------------------------------------------- model card hook


def dedup_estimate(base_dir: str | os.PathLike, derived_dir: str | os.PathLike, *, chunker: str = "current",
                   base_chunker: str | None = None, max_read_bytes: int | None = ESTIMATE_MAX_READ_BYTES,
                   cache_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Cheap Xet chunk reuse of ``derived_dir`` against ``base_dir`` for the model card (push's hook).

    Returns ``{reused_bytes, total_bytes, new_bytes, reuse_pct, chunker, base_chunker, method}`` (bytes of
    ``derived_dir``'s files, push's ignore rules), or None when more than ``max_read_bytes`` would have to be
    read because the indexes are not cached (run ``llama4ctl dedup-report BASE DERIVED`` first: it fills the
    cache and a later push then costs only cache loads). No attribution, no file hashes, no Hub access.

    ``base_chunker`` None: the chunker the base's cached index was made with, when the cache holds the base
    under one chunker only (a `dedup-report --base-chunker legacy` run before the push decides it), else
    ``chunker``; the card then states the same reuse as that report.
    """
    ck = _checked_chunker(chunker, "chunker")
    base_root, der_root = Path(base_dir), Path(derived_dir)
    base_files, der_files = list_files(base_root), list_files(der_root)
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    if base_chunker is None:
        cached = [c for c in CHUNKERS if base_files and all(cache_path(p, c, cdir).exists() for _, p in base_files)]
        base_chunker = cached[0] if len(cached) == 1 else chunker
    bck = _checked_chunker(base_chunker, "base_chunker")
    if max_read_bytes is not None:
        todo = sum(p.stat().st_size for files, c in ((base_files, bck), (der_files, ck)) for _, p in files
                   if not cache_path(p, c, cdir).exists())
        if todo > max_read_bytes:
            return None
    stats = IndexStats()
    kw = dict(cache=True, cache_dir=cdir, with_hash=False, progress=NullProgress(), stats=stats,
              workers=default_workers())
    base_set = _sorted_unique(np.concatenate([f.keys for f in _index_files(base_files, bck, **kw)]
                                        or [np.empty(0, np.uint64)]))
    flat = _Flat.of(_index_files(der_files, ck, **kw))
    _, first, (in_base,) = _classify(flat.keys, [base_set])
    total = flat.total
    reused = int(flat.sizes[in_base].sum())
    return {"reused_bytes": reused, "total_bytes": total, "new_bytes": int(flat.sizes[~in_base & first].sum()),
            "reuse_pct": _pct(reused, total), "chunker": ck, "base_chunker": bck,
            "method": "Xet chunk overlap (llama4ctl.xet.report.dedup_estimate)"}
