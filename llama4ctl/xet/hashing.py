"""Xet hashes: chunk hashes, Merkle aggregation (xorb hash / file hash), hash strings.

Exactly as xet-core (reference xet.md §2):

* chunk hash = BLAKE3 keyed with ``DATA_KEY`` over the chunk bytes;
* an internal node = BLAKE3 keyed with ``INTERNAL_NODE_KEY`` over the text lines
  ``"{hex(child)} : {child size}\\n"``; the tree is *not* binary: each group of 2-9 children
  ends at the first child (from the third on) whose hash is 0 mod 4;
* xorb hash = the root; file hash = BLAKE3 keyed with a 32-byte salt (zeros) over the root,
  and all zeros for an empty file;
* hash strings print each 8-byte word as a little-endian u64 (``hash_to_hex``).

``file_hash(path)`` equals ``hf_xet.hash_files([path])[0].hash``. Chunking runs in the
caller's thread (numba, GIL released) while a reader thread prefetches blocks and a hasher
thread runs BLAKE3 (which also releases the GIL), so two cores are kept busy.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import blake3
import numpy as np

from llama4ctl.xet.chunker import (
    DEFAULT_BLOCK_SIZE, Backend, BlockReader, Chunker, ChunkerName, Source, _as_u8, _is_buffer,
    chunk_boundaries, open_binary,
)

__all__ = [
    "DATA_KEY", "INTERNAL_NODE_KEY", "HASH_SIZE", "ZERO_HASH",
    "chunk_hash", "hash_chunks", "chunk_and_hash", "hash_to_hex", "hex_to_hash", "hashes_to_hex",
    "xorb_hash", "file_hash_from_chunks", "file_hash", "file_hash_bytes",
]

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
# xet_core_structures/src/merklehash/data_hash.rs
DATA_KEY = bytes([102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
                  157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41])
INTERNAL_NODE_KEY = bytes([1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
                           93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63])
# AGGREGATED_HASHES_MEAN_TREE_BRANCHING_FACTOR: a group ends at a hash that is 0 mod 4.
MEAN_TREE_BRANCHING_FACTOR = 4
_MAX_GROUP = 2 * MEAN_TREE_BRANCHING_FACTOR + 1  # 9


# --- strings ---------------------------------------------------------------------------------

def hash_to_hex(h: bytes) -> str:
    """Xet's string form: each 8-byte word printed as a little-endian u64 ({:016x})."""
    if len(h) != HASH_SIZE:
        raise ValueError("a Xet hash has 32 bytes")
    return b"".join(h[i:i + 8][::-1] for i in range(0, HASH_SIZE, 8)).hex()


def hex_to_hash(s: str) -> bytes:
    """Inverse of ``hash_to_hex``."""
    raw = bytes.fromhex(s)
    if len(raw) != HASH_SIZE:
        raise ValueError("a Xet hash string has 64 hex digits")
    return b"".join(raw[i:i + 8][::-1] for i in range(0, HASH_SIZE, 8))


def hashes_to_hex(hashes: np.ndarray) -> list[str]:
    """``hash_to_hex`` for every row of an (n, 32) uint8 array, vectorised."""
    hashes = np.asarray(hashes, dtype=np.uint8).reshape(-1, 4, 8)
    text = hashes[:, :, ::-1].tobytes().hex()
    return [text[i:i + 64] for i in range(0, len(text), 64)]


# --- chunk hashes ----------------------------------------------------------------------------

def chunk_hash(data) -> bytes:
    """Xet chunk hash: BLAKE3 keyed with DATA_KEY."""
    return blake3.blake3(data, key=DATA_KEY).digest()


def _hash_ranges(data, bounds: list[int]) -> bytes:
    """Concatenated chunk hashes of ``data[bounds[k]:bounds[k+1]]`` (GIL released inside)."""
    mv = memoryview(data)
    return b"".join(blake3.blake3(mv[a:b], key=DATA_KEY).digest() for a, b in zip(bounds, bounds[1:]))


def hash_chunks(data, ends: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """Chunk hashes, (n, 32) uint8, of the in-memory ``data`` cut at ``ends``.

    Contiguous runs of chunks go to up to ``threads`` threads (default: CPU count); BLAKE3
    releases the GIL, so this scales with cores.
    """
    arr = _as_u8(data)
    bounds = [0] + np.asarray(ends, dtype=np.uint64).tolist()
    n = len(bounds) - 1
    threads = max(1, min(threads or os.cpu_count() or 1, n // 16 or 1))
    if threads == 1:
        raw = _hash_ranges(arr, bounds)
    else:
        step = -(-n // threads)
        with ThreadPoolExecutor(threads) as ex:
            parts = ex.map(lambda k: _hash_ranges(arr, bounds[k:k + step + 1]), range(0, n, step))
            raw = b"".join(parts)
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, HASH_SIZE).copy()


def _hash_job(blocks: list[tuple[int, np.ndarray]], bounds: list[int], release: list[np.ndarray],
              reader: BlockReader) -> bytes:
    """Hash the chunks ``bounds[k]..bounds[k+1]`` (absolute offsets) held by ``blocks``.

    A chunk may straddle blocks; it is then fed piece by piece to one BLAKE3 hasher. Blocks
    in ``release`` are handed back to the reader afterwards.
    """
    out = []
    bi = 0
    for a, b in zip(bounds, bounds[1:]):
        while blocks[bi][0] + blocks[bi][1].size <= a:
            bi += 1
        base, block = blocks[bi]
        if b <= base + block.size:
            out.append(blake3.blake3(block[a - base:b - base], key=DATA_KEY).digest())
            continue
        hasher = blake3.blake3(key=DATA_KEY)
        k, pos = bi, a
        while pos < b:
            base, block = blocks[k]
            stop = min(b, base + block.size)
            hasher.update(block[pos - base:stop - base])
            pos = stop
            k += 1
        out.append(hasher.digest())
    for block in release:
        reader.recycle(block)
    return b"".join(out)


def chunk_and_hash(source: Source, *, chunker: ChunkerName = "current",
                   block_size: int = DEFAULT_BLOCK_SIZE, backend: Backend = "auto",
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Chunk and hash in one pass: ``(ends uint64 (n,), hashes uint8 (n, 32))``.

    For a path or stream, a reader thread prefetches ``block_size`` blocks, this thread
    chunks them, and one hasher thread hashes finished chunks in order; blocks are recycled
    once no unhashed chunk needs them. Results do not depend on ``block_size``.
    """
    if _is_buffer(source):
        ends = chunk_boundaries(source, chunker=chunker, backend=backend)
        return ends, hash_chunks(source, ends)
    c = Chunker(chunker, backend=backend)
    ends_parts: list[np.ndarray] = []
    jobs: list[Future] = []
    with open_binary(source) as f, BlockReader(f, block_size) as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="xet-hash") as hasher:
        live: deque[tuple[int, np.ndarray]] = deque()  # blocks that may hold unhashed bytes
        chunk_start = 0

        def submit(ends: np.ndarray) -> None:
            nonlocal chunk_start
            bounds = [chunk_start] + ends.tolist()
            chunk_start = bounds[-1]
            done = []  # blocks that no later chunk needs: recycle them after this job
            while live and live[0][0] + live[0][1].size <= chunk_start:
                done.append(live.popleft())
            jobs.append(hasher.submit(_hash_job, [*done, *live], bounds, [b for _, b in done], reader))
            ends_parts.append(ends)
            # Bound the queue (and the memory it pins); hashing is faster than chunking anyway.
            if len(jobs) > 2:
                jobs[-3].result()

        for block in reader:
            live.append((c.position, block))
            ends = c.update(block)
            if ends.size:
                submit(ends)
        ends = c.finish()
        if ends.size:
            submit(ends)
        raw = b"".join(job.result() for job in jobs)
    ends = np.concatenate(ends_parts) if ends_parts else np.empty(0, dtype=np.uint64)
    return ends, np.frombuffer(raw, dtype=np.uint8).reshape(-1, HASH_SIZE).copy()


# --- Merkle aggregation ----------------------------------------------------------------------

def _merge_level(hashes: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    """One level of xet-core's variable fan-out tree (aggregated_hashes.rs)."""
    n = len(sizes)
    lines = [f"{h} : {s}\n" for h, s in zip(hashes_to_hex(hashes), sizes)]
    # hash % 4 in xet-core reads the last 8 bytes as a little-endian u64.
    ends_group = ((hashes[:, 24] % MEAN_TREE_BRANCHING_FACTOR) == 0).tolist()
    out, out_sizes = [], []
    i = 0
    while i < n:
        if n - i <= 2:
            k = n - i
        else:
            limit = min(_MAX_GROUP, n - i)
            k = next((j + 1 for j in range(2, limit) if ends_group[i + j]), limit)
        out.append(blake3.blake3("".join(lines[i:i + k]).encode(), key=INTERNAL_NODE_KEY).digest())
        out_sizes.append(sum(sizes[i:i + k]))
        i += k
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(-1, HASH_SIZE), out_sizes


def _as_hash_array(hashes) -> np.ndarray:
    if isinstance(hashes, np.ndarray):
        return np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_SIZE)
    return np.frombuffer(b"".join(bytes(h) for h in hashes), dtype=np.uint8).reshape(-1, HASH_SIZE)


def xorb_hash(hashes: np.ndarray | Sequence[bytes], sizes: Sequence[int] | np.ndarray) -> bytes:
    """Root of the aggregation tree over ``(chunk hash, size)`` leaves (a xorb's hash).

    A single leaf is its own root; no leaves give the zero hash.
    """
    h = _as_hash_array(hashes)
    s = np.asarray(sizes, dtype=np.uint64).tolist()
    if len(s) != len(h):
        raise ValueError(f"{len(h)} hashes but {len(s)} sizes")
    if not s:
        return ZERO_HASH
    while len(s) > 1:
        h, s = _merge_level(h, s)
    return h[0].tobytes()


def file_hash_from_chunks(hashes: np.ndarray | Sequence[bytes], sizes: Sequence[int] | np.ndarray,
                          salt: bytes = ZERO_HASH) -> bytes:
    """Xet file hash: the tree root re-hashed with ``salt`` as BLAKE3 key; zeros if empty."""
    if len(sizes) == 0:
        return ZERO_HASH
    return blake3.blake3(xorb_hash(hashes, sizes), key=salt).digest()


def file_hash_bytes(data, *, chunker: ChunkerName = "current") -> str:
    """Xet file hash string of an in-memory buffer."""
    ends, hashes = chunk_and_hash(data, chunker=chunker)
    return hash_to_hex(file_hash_from_chunks(hashes, np.diff(ends, prepend=np.uint64(0))))


def file_hash(path: str | os.PathLike, *, chunker: ChunkerName = "current",
              block_size: int = DEFAULT_BLOCK_SIZE) -> str:
    """Xet file hash string of a file, as ``hf_xet.hash_files`` (current chunker) returns it.

    With ``chunker="legacy"`` it is the hash a pre-1.1.10 client computed for the file.
    """
    ends, hashes = chunk_and_hash(path, chunker=chunker, block_size=block_size)
    return hash_to_hex(file_hash_from_chunks(hashes, np.diff(ends, prepend=np.uint64(0))))
