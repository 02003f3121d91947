"""Compact per-file Xet chunk index, cached on disk.

A ``ChunkIndex`` holds, per chunk, its end offset (uint64) and its Xet chunk hash (32 bytes):
40 bytes per ~64 KiB chunk, about 0.06% of the file (500 MB for an 800 GB checkpoint).
That is all a dedup report needs, and chunking a file costs a full read, so indexes are cached
as ``.npz`` files keyed by (chunker, file size, mtime_ns, BLAKE3 of the first 64 KiB): a
touched or rewritten file gets a new key, without re-reading it whole to find out. Entries are
written to a temporary file and renamed, so readers never see half an entry, and loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np

from llama4ctl.xet.chunker import DEFAULT_BLOCK_SIZE, ChunkerName
from llama4ctl.xet.hashing import HASH_SIZE, chunk_and_hash, file_hash_from_chunks, hash_to_hex

__all__ = ["ChunkIndex", "build_index", "default_cache_dir", "cache_path", "INDEX_FORMAT_VERSION"]

INDEX_FORMAT_VERSION = 1
HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, eq=False)
class ChunkIndex:
    """Chunks of one file: ``ends`` (uint64, ascending) and ``hashes`` ((n, 32) uint8)."""

    ends: np.ndarray
    hashes: np.ndarray
    chunker: ChunkerName = "current"

    def __post_init__(self) -> None:
        if self.ends.dtype != np.uint64 or self.ends.ndim != 1:
            raise ValueError("ends must be a 1-D uint64 array")
        if self.hashes.dtype != np.uint8 or self.hashes.shape != (self.ends.size, HASH_SIZE):
            raise ValueError(f"hashes must be a ({self.ends.size}, {HASH_SIZE}) uint8 array")

    def __len__(self) -> int:
        return int(self.ends.size)

    @property
    def file_size(self) -> int:
        return int(self.ends[-1]) if self.ends.size else 0

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([np.zeros(1, np.uint64), self.ends[:-1]]) if self.ends.size else self.ends

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.ends, prepend=np.uint64(0))

    @property
    def nbytes(self) -> int:
        return self.ends.nbytes + self.hashes.nbytes

    def file_hash(self) -> str:
        """The Xet file hash (what ``hf_xet.hash_files`` reports for the current chunker)."""
        return hash_to_hex(file_hash_from_chunks(self.hashes, self.sizes))

    def chunk_hash_hex(self, i: int) -> str:
        return hash_to_hex(self.hashes[i].tobytes())

    def save(self, path: str | os.PathLike, **meta) -> None:
        """Write atomically (temporary file in the same directory, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, ends=self.ends, hashes=self.hashes, chunker=np.str_(self.chunker),
                         version=np.int64(INDEX_FORMAT_VERSION),
                         **{k: np.asarray(v) for k, v in meta.items()})
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["ChunkIndex", dict]:
        """Read an index written by ``save``; returns it and its extra metadata fields."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_FORMAT_VERSION:
                raise ValueError(f"index format {int(z['version'])}, expected {INDEX_FORMAT_VERSION}")
            meta = {k: z[k][()] for k in z.files if k not in ("ends", "hashes", "chunker", "version")}
            return cls(z["ends"], z["hashes"], z["chunker"].item()), meta


def default_cache_dir() -> Path:
    """``$LLAMA4CTL_CACHE_DIR/xet-index``, else ``$XDG_CACHE_HOME/llama4ctl/xet-index``,
    else ``~/.cache/llama4ctl/xet-index``."""
    if os.environ.get("LLAMA4CTL_CACHE_DIR"):
        return Path(os.environ["LLAMA4CTL_CACHE_DIR"]) / "xet-index"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "llama4ctl" / "xet-index"


def _signature(path: str | os.PathLike, chunker: str) -> tuple[str, int, int, str]:
    st = os.stat(path)
    with open(path, "rb") as f:
        head = blake3.blake3(f.read(HEAD_BYTES)).hexdigest()
    key = f"v{INDEX_FORMAT_VERSION}|{chunker}|{st.st_size}|{st.st_mtime_ns}|{head}"
    return blake3.blake3(key.encode()).hexdigest()[:40], st.st_size, st.st_mtime_ns, head


def cache_path(path: str | os.PathLike, chunker: ChunkerName = "current",
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached index of ``path`` (as it is now) lives."""
    key = _signature(path, chunker)[0]
    return Path(cache_dir or default_cache_dir()) / f"{key}.npz"


def _try_load(entry: Path, chunker: str, size: int, mtime_ns: int, head: str) -> ChunkIndex | None:
    try:
        index, meta = ChunkIndex.load(entry)
    except Exception:  # missing, truncated, foreign or older-format entry: (re)build it
        return None
    if (index.chunker, index.file_size, int(meta.get("mtime_ns", -1)), str(meta.get("head", ""))) != \
            (chunker, size, mtime_ns, head):
        return None
    return index


def build_index(path: str | os.PathLike, *, chunker: ChunkerName = "current", cache: bool = True,
                cache_dir: str | os.PathLike | None = None,
                block_size: int = DEFAULT_BLOCK_SIZE) -> ChunkIndex:
    """Chunk and hash ``path``, or load its index from the cache when the file is unchanged.

    A file modified while it is being read is indexed but not cached. A cache that cannot be
    written only costs a warning.
    """
    if chunker not in ("current", "legacy"):
        raise ValueError(f"chunker must be 'current' or 'legacy', not {chunker!r}")
    if not cache:
        ends, hashes = chunk_and_hash(path, chunker=chunker, block_size=block_size)
        return ChunkIndex(ends, hashes, chunker)
    key, size, mtime_ns, head = _signature(path, chunker)
    entry = Path(cache_dir or default_cache_dir()) / f"{key}.npz"
    index = _try_load(entry, chunker, size, mtime_ns, head)
    if index is not None:
        return index
    ends, hashes = chunk_and_hash(path, chunker=chunker, block_size=block_size)
    index = ChunkIndex(ends, hashes, chunker)
    st = os.stat(path)
    if st.st_size == size == index.file_size and st.st_mtime_ns == mtime_ns:
        try:
            index.save(entry, file_size=np.uint64(size), mtime_ns=np.int64(mtime_ns), head=np.str_(head))
        except OSError as exc:
            warnings.warn(f"could not write Xet index cache {entry}: {exc}", RuntimeWarning, stacklevel=2)
    return index
