"""Xet content-defined chunking (gear-hash CDC), bit-exact with xet-core.

Xet cuts files with a GEAR rolling hash, ``h = (h << 1) + GEAR[byte]`` (wrapping u64), and
declares a boundary after a byte whose hash has its top 16 bits clear (``h & MASK == 0``),
subject to an 8 KiB minimum and a forced cut at 128 KiB. ``h`` is reset at every boundary and
only the last 64 bytes influence it, so xet-core skips hashing the first
``MIN_CHUNK_SIZE - HASH_WINDOW_SIZE - 1`` (8127) bytes of every chunk.

Two rule sets exist (reference xet.md §1.4-1.5):

* ``"current"`` (hf-xet >= 1.1.10, xet-core PR #487): a hash match only counts once the
  chunk is at least ``MIN_CHUNK_SIZE`` (8192) bytes long.
* ``"legacy"`` (older clients, which uploaded Llama 4 in April 2025): every hashed byte is
  tested, so chunks of 8128-8191 bytes can occur, cut on a hash of fewer than 64 bytes.
  This is far from rare: 20 of the 256 gear values are below 2**48, so a legacy chunk ends at
  exactly 8128 bytes whenever its byte 8127 is one of them (~7.8% of chunks on random data;
  checked against hf-xet 1.1.9).

The byte loop runs in a numba-compiled kernel (numba is imported on first use, so importing
this module stays cheap); a pure-Python kernel with the same state machine is kept as the
reference for tests and as a fallback. Both carry ``(h, bytes in open chunk)`` across calls,
so boundaries never depend on how the input is split into blocks.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Literal, Union

import numpy as np

__all__ = [
    "TARGET_CHUNK_SIZE", "MIN_CHUNK_SIZE", "MAX_CHUNK_SIZE", "MASK", "HASH_WINDOW_SIZE",
    "GEAR_TABLE", "DEFAULT_BLOCK_SIZE", "ChunkerName", "Backend",
    "Chunker", "BlockReader", "chunk_boundaries", "numba_available", "open_binary",
]

ChunkerName = Literal["current", "legacy"]
Backend = Literal["auto", "numba", "python"]
Source = Union[bytes, bytearray, memoryview, np.ndarray, str, os.PathLike, BinaryIO]

# --- constants (xet_core_structures/src/xorb_object/constants.rs, chunking.rs) -------------
TARGET_CHUNK_SIZE = 64 * 1024
MINIMUM_CHUNK_DIVISOR = 8
MAXIMUM_CHUNK_MULTIPLIER = 2
MIN_CHUNK_SIZE = TARGET_CHUNK_SIZE // MINIMUM_CHUNK_DIVISOR  # 8192
MAX_CHUNK_SIZE = TARGET_CHUNK_SIZE * MAXIMUM_CHUNK_MULTIPLIER  # 131072
HASH_WINDOW_SIZE = 64
# (target - 1) shifted to the top of the word: the high bits of a gear hash mix 64 bytes,
# the low bits only a few.
MASK = 0xFFFF_0000_0000_0000
# First byte of a chunk that is hashed; earlier bytes fall out of the 64-byte window anyway.
HASH_START = MIN_CHUNK_SIZE - HASH_WINDOW_SIZE - 1  # 8127
# Smallest chunk a hash match may end: current clients wait for MIN_CHUNK_SIZE, legacy
# clients accepted a match on the very first hashed byte.
_ACCEPT_FROM = {"current": MIN_CHUNK_SIZE, "legacy": HASH_START + 1}  # 8192 / 8128

# Read size for files. Small enough that the few blocks in flight (prefetched, being chunked,
# being hashed) stay in a typical L3 cache; 64 MiB blocks measured 2-3x slower end to end.
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
_U64 = (1 << 64) - 1
_MATCH_BELOW = 1 << 48  # h & MASK == 0  <=>  h < 2**48

# DEFAULT_TABLE of the `gearhash` crate 0.1.3 (srijs/rust-gearhash, MIT OR Apache-2.0),
# which xet-core uses via gearhash::Hasher::default().
GEAR_TABLE: tuple[int, ...] = (
    0xb088d3a9e840f559, 0x5652c7f739ed20d6, 0x45b28969898972ab, 0x6b0a89d5b68ec777,
    0x368f573e8b7a31b7, 0x1dc636dce936d94b, 0x207a4c4e5554d5b6, 0xa474b34628239acb,
    0x3b06a83e1ca3b912, 0x90e78d6c2f02baf7, 0xe1c92df7150d9a8a, 0x8e95053a1086d3ad,
    0x5a2ef4f1b83a0722, 0xa50fac949f807fae, 0x0e7303eb80d8d681, 0x99b07edc1570ad0f,
    0x689d2fb555fd3076, 0x00005082119ea468, 0xc4b08306a88fcc28, 0x3eb0678af6374afd,
    0xf19f87ab86ad7436, 0xf2129fbfbe6bc736, 0x481149575c98a4ed, 0x0000010695477bc5,
    0x1fba37801a9ceacc, 0x3bf06fd663a49b6d, 0x99687e9782e3874b, 0x79a10673aa50d8e3,
    0xe4accf9e6211f420, 0x2520e71f87579071, 0x2bd5d3fd781a8a9b, 0x00de4dcddd11c873,
    0xeaa9311c5a87392f, 0xdb748eb617bc40ff, 0xaf579a8df620bf6f, 0x86a6e5da1b09c2b1,
    0xcc2fc30ac322a12e, 0x355e2afec1f74267, 0x2d99c8f4c021a47b, 0xbade4b4a9404cfc3,
    0xf7b518721d707d69, 0x3286b6587bf32c20, 0x0000b68886af270c, 0xa115d6e4db8a9079,
    0x484f7e9c97b2e199, 0xccca7bb75713e301, 0xbf2584a62bb0f160, 0xade7e813625dbcc8,
    0x000070940d87955a, 0x8ae69108139e626f, 0xbd776ad72fde38a2, 0xfb6b001fc2fcc0cf,
    0xc7a474b8e67bc427, 0xbaf6f11610eb5d58, 0x09cb1f5b6de770d1, 0xb0b219e6977d4c47,
    0x00ccbc386ea7ad4a, 0xcc849d0adf973f01, 0x73a3ef7d016af770, 0xc807d2d386bdbdfe,
    0x7f2ac9966c791730, 0xd037a86bc6c504da, 0xf3f17c661eaa609d, 0xaca626b04daae687,
    0x755a99374f4a5b07, 0x90837ee65b2caede, 0x6ee8ad93fd560785, 0x0000d9e11053edd8,
    0x9e063bb2d21cdbd7, 0x07ab77f12a01d2b2, 0xec550255e6641b44, 0x78fb94a8449c14c6,
    0xc7510e1bc6c0f5f5, 0x0000320b36e4cae3, 0x827c33262c8b1a2d, 0x14675f0b48ea4144,
    0x267bd3a6498deceb, 0xf1916ff982f5035e, 0x86221b7ff434fb88, 0x9dbecee7386f49d8,
    0xea58f8cac80f8f4a, 0x008d198692fc64d8, 0x6d38704fbabf9a36, 0xe032cb07d1e7be4c,
    0x228d21f6ad450890, 0x635cb1bfc02589a5, 0x4620a1739ca2ce71, 0xa7e7dfe3aae5fb58,
    0x0c10ca932b3c0deb, 0x2727fee884afed7b, 0xa2df1c6df9e2ab1f, 0x4dcdd1ac0774f523,
    0x000070ffad33e24e, 0xa2ace87bc5977816, 0x9892275ab4286049, 0xc2861181ddf18959,
    0xbb9972a042483e19, 0xef70cd3766513078, 0x00000513abfc9864, 0xc058b61858c94083,
    0x09e850859725e0de, 0x9197fb3bf83e7d94, 0x7e1e626d12b64bce, 0x520c54507f7b57d1,
    0xbee1797174e22416, 0x6fd9ac3222e95587, 0x0023957c9adfbf3e, 0xa01c7d7e234bbe15,
    0xaba2c758b8a38cbb, 0x0d1fa0ceec3e2b30, 0x0bb6a58b7e60b991, 0x4333dd5b9fa26635,
    0xc2fd3b7d4001c1a3, 0xfb41802454731127, 0x65a56185a50d18cb, 0xf67a02bd8784b54f,
    0x696f11dd67e65063, 0x00002022fca814ab, 0x8cd6be912db9d852, 0x695189b6e9ae8a57,
    0xee9453b50ada0c28, 0xd8fc5ea91a78845e, 0xab86bf191a4aa767, 0x0000c6b5c86415e5,
    0x267310178e08a22e, 0xed2d101b078bca25, 0x3b41ed84b226a8fb, 0x13e622120f28dc06,
    0xa315f5ebfb706d26, 0x8816c34e3301bace, 0xe9395b9cbb71fdae, 0x002ce9202e721648,
    0x4283db1d2bb3c91c, 0xd77d461ad2b1a6a5, 0xe2ec17e46eeb866b, 0xb8e0be4039fbc47c,
    0xdea160c4d5299d04, 0x7eec86c8d28c3634, 0x2119ad129f98a399, 0xa6ccf46b61a283ef,
    0x2c52cedef658c617, 0x2db4871169acdd83, 0x0000f0d6f39ecbe9, 0x3dd5d8c98d2f9489,
    0x8a1872a22b01f584, 0xf282a4c40e7b3cf2, 0x8020ec2ccb1ba196, 0x6693b6e09e59e313,
    0x0000ce19cc7c83eb, 0x20cb5735f6479c3b, 0x762ebf3759d75a5b, 0x207bfe823d693975,
    0xd77dc112339cd9d5, 0x9ba7834284627d03, 0x217dc513e95f51e9, 0xb27b1a29fc5e7816,
    0x00d5cd9831bb662d, 0x71e39b806d75734c, 0x7e572af006fb1a23, 0xa2734f2f6ae91f85,
    0xbf82c6b5022cddf2, 0x5c3beac60761a0de, 0xcdc893bb47416998, 0x6d1085615c187e01,
    0x77f8ae30ac277c5d, 0x917c6b81122a2c91, 0x5b75b699add16967, 0x0000cf6ae79a069b,
    0xf3c40afa60de1104, 0x2063127aa59167c3, 0x621de62269d1894d, 0xd188ac1de62b4726,
    0x107036e2154b673c, 0x0000b85f28553a1d, 0xf2ef4e4c18236f3d, 0xd9d6de6611b9f602,
    0xa1fc7955fb47911c, 0xeb85fd032f298dbd, 0xbe27502fb3befae1, 0xe3034251c4cd661e,
    0x441364d354071836, 0x0082b36c75f2983e, 0xb145910316fa66f0, 0x021c069c9847caf7,
    0x2910dfc75a4b5221, 0x735b353e1c57a8b5, 0xce44312ce98ed96c, 0xbc942e4506bdfa65,
    0xf05086a71257941b, 0xfec3b215d351cead, 0x00ae1055e0144202, 0xf54b40846f42e454,
    0x00007fd9c8bcbcc8, 0xbfbd9ef317de9bfe, 0xa804302ff2854e12, 0x39ce4957a5e5d8d4,
    0xffb9e2a45637ba84, 0x55b9ad1d9ea0818b, 0x00008acbf319178a, 0x48e2bfc8d0fbfb38,
    0x8be39841e848b5e8, 0x0e2712160696a08b, 0xd51096e84b44242a, 0x1101ba176792e13a,
    0xc22e770f4531689d, 0x1689eff272bbc56c, 0x00a92a197f5650ec, 0xbc765990bda1784e,
    0xc61441e392fcb8ae, 0x07e13a2ced31e4a0, 0x92cbe984234e9d4d, 0x8f4ff572bb7d8ac5,
    0x0b9670c00b963bd0, 0x62955a581a03eb01, 0x645f83e5ea000254, 0x41fce516cd88f299,
    0xbbda9748da7a98cf, 0x0000aab2fe4845fa, 0x19761b069bf56555, 0x8b8f5e8343b6ad56,
    0x3e5d1cfd144821d9, 0xec5c1e2ca2b0cd8f, 0xfaf7e0fea7fbb57f, 0x000000d3ba12961b,
    0xda3f90178401b18e, 0x70ff906de33a5feb, 0x0527d5a7c06970e7, 0x22d8e773607c13e9,
    0xc9ab70df643c3bac, 0xeda4c6dc8abe12e3, 0xecef1f410033e78a, 0x0024c2b274ac72cb,
    0x06740d954fa900b4, 0x1d7a299b323d6304, 0xb3c37cb298cbead5, 0xc986e3c76178739b,
    0x9fabea364b46f58a, 0x6da214c5af85cc56, 0x17a43ed8b7a38f84, 0x6eccec511d9adbeb,
    0xf9cab30913335afb, 0x4a5e60c5f415eed2, 0x00006967503672b4, 0x9da51d121454bb87,
    0x84321e13b9bbc816, 0xfb3d6fb6ab2fdd8d, 0x60305eed8e160a8d, 0xcbbf4b14e9946ce8,
    0x00004f63381b10c3, 0x07d5b7816fcc4e10, 0xe5a536726a6a8155, 0x57afb23447a07fdd,
    0x18f346f7abc9d394, 0x636dc655d61ad33d, 0xcc8bab4939f7f3f6, 0x63c7a906c1dd187b,
)
_GEAR_TABLE_SHA256 = "e1d3936666d7ae7a977c958e9afcc75f90aaca758ce5fbe4ece61dffefe1912c"
if hashlib.sha256(np.array(GEAR_TABLE, dtype="<u8").tobytes()).hexdigest() != _GEAR_TABLE_SHA256:
    raise ImportError("GEAR_TABLE does not match the gearhash crate's DEFAULT_TABLE")
_GEAR = np.array(GEAR_TABLE, dtype=np.uint64)
_EMPTY = np.empty(0, dtype=np.uint64)


# --- kernels ---------------------------------------------------------------------------------

def _gear_scan_python(data, h: int, clen: int, accept_from: int) -> tuple[list[int], int, int]:
    """Pure-Python reference kernel (a few MB/s); the rule stated as plainly as possible.

    Continues an open chunk of ``clen`` bytes whose gear hash is ``h`` over ``data`` and
    returns ``(chunk ends relative to data, h, clen)``.
    """
    gear = GEAR_TABLE
    n = len(data)
    i = 0
    ends: list[int] = []
    while i < n:
        if clen < HASH_START:  # skip-ahead: these bytes leave the window before any test
            step = min(HASH_START - clen, n - i)
            i += step
            clen += step
            continue
        start = i - clen  # negative when the chunk began in an earlier block
        end = min(n, start + MAX_CHUNK_SIZE)
        found = False
        while i < end:
            h = ((h << 1) + gear[data[i]]) & _U64
            i += 1
            if h < _MATCH_BELOW and i - start >= accept_from:
                found = True
                break
        clen = i - start
        if found or clen == MAX_CHUNK_SIZE:
            ends.append(i)
            h = 0
            clen = 0
    return ends, h, clen


_MATCH_BELOW_U64 = np.uint64(_MATCH_BELOW)


def _gear_scan(data, gear, h, clen, accept_from, out):  # pragma: no cover - compiled by numba
    """Numba kernel, same contract as ``_gear_scan_python``; ends go to ``out``.

    Returns ``(number of ends, h, clen)``. Indices are unsigned in the hot loops so numba
    emits no negative-index wraparound code. The test loop takes two bytes per step and
    derives both hashes from the same ``h`` (``h1 = 4h + 2g0 + g1``), halving the serial
    shift-add chain that otherwise bounds the speed (~1.8 -> ~2.5 GB/s).
    """
    one = np.uint64(1)
    two = np.uint64(2)
    n = data.shape[0]
    i = 0
    nout = 0
    while i < n:
        if clen < HASH_START:
            step = min(HASH_START - clen, n - i)
            i += step
            clen += step
            continue
        start = i - clen
        # Bytes that would end a chunk shorter than accept_from: hash them, do not test.
        warm_end = min(n, start + accept_from - 1)
        if warm_end > i:
            for j in range(np.uint64(i), np.uint64(warm_end)):
                h = (h << one) + gear[data[j]]
            i = warm_end
        uend = np.uint64(min(n, start + MAX_CHUNK_SIZE))
        j = np.uint64(i)
        found = False
        while j + two <= uend:
            g0 = gear[data[j]]
            h0 = (h << one) + g0
            h1 = (h << two) + ((g0 << one) + gear[data[j + one]])
            if h0 < _MATCH_BELOW_U64:
                h = h0
                j += one
                found = True
                break
            h = h1
            j += two
            if h1 < _MATCH_BELOW_U64:
                found = True
                break
        if not found and j < uend:
            h = (h << one) + gear[data[j]]
            j += one
            found = h < _MATCH_BELOW_U64
        i = np.int64(j)
        clen = i - start
        if found or clen == MAX_CHUNK_SIZE:
            out[nout] = i
            nout += 1
            h = np.uint64(0)
            clen = 0
    return nout, h, clen


_numba_scan = None
_numba_lock = threading.Lock()


def numba_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def _compiled_scan():
    """Compile (or load from numba's on-disk cache) the kernel on first use."""
    global _numba_scan
    if _numba_scan is None:
        with _numba_lock:
            if _numba_scan is None:
                from numba import njit

                _numba_scan = njit(nogil=True, cache=True, boundscheck=False)(_gear_scan)
    return _numba_scan


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        if numba_available():
            return "numba"
        warnings.warn("numba is not installed: Xet chunking falls back to pure Python (~3 MB/s); "
                      "`pip install numba` for ~2 GB/s", RuntimeWarning, stacklevel=3)
        return "python"
    if backend not in ("numba", "python"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'python', not {backend!r}")
    return backend


def _as_u8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


# --- streaming chunker -----------------------------------------------------------------------

class Chunker:
    """Stateful chunker: feed consecutive blocks of any size to ``update``, then ``finish``.

    The gear hash and the open chunk's length carry over between calls, so the boundaries
    are those of chunking the concatenated input in one go (xet-core's stream invariance).
    """

    def __init__(self, chunker: ChunkerName = "current", *, backend: Backend = "auto"):
        if chunker not in _ACCEPT_FROM:
            raise ValueError(f"chunker must be 'current' or 'legacy', not {chunker!r}")
        self.chunker = chunker
        self.backend = _resolve_backend(backend)
        self._accept = _ACCEPT_FROM[chunker]
        self._scan = _compiled_scan() if self.backend == "numba" else None
        self._h = 0
        self._clen = 0
        self.position = 0  # bytes consumed so far

    @property
    def pending(self) -> int:
        """Bytes of the chunk still open (not yet cut)."""
        return self._clen

    def update(self, data) -> np.ndarray:
        """Consume ``data``; return the absolute end offsets (uint64) of chunks cut inside it."""
        arr = _as_u8(data)
        n = arr.size
        if n == 0:
            return _EMPTY
        if self._scan is not None:
            if arr.flags.writeable:  # one compiled specialisation (read-only input) is enough
                arr = arr.view()
                arr.flags.writeable = False
            out = np.empty(n // self._accept + 2, dtype=np.uint64)
            k, h, clen = self._scan(arr, _GEAR, np.uint64(self._h), self._clen, self._accept, out)
            ends = out[:k]
            ends += np.uint64(self.position)
        else:
            rel, h, clen = _gear_scan_python(memoryview(arr), self._h, self._clen, self._accept)
            ends = np.array(rel, dtype=np.uint64) + np.uint64(self.position)
        self._h, self._clen = int(h), int(clen)
        self.position += n
        return ends

    def finish(self) -> np.ndarray:
        """End of input: the remainder, if any, is the final chunk (it may be under 8 KiB)."""
        if self._clen == 0:
            return _EMPTY
        self._h = self._clen = 0
        return np.array([self.position], dtype=np.uint64)


# --- block reading ---------------------------------------------------------------------------

def _readinto_full(f, view: memoryview) -> int:
    """Fill ``view`` unless EOF comes first (pipes and sockets return short reads)."""
    total = 0
    readinto = getattr(f, "readinto", None)
    while total < len(view):
        if readinto is not None:
            n = readinto(view[total:])
        else:
            piece = f.read(len(view) - total)
            n = len(piece)
            view[total:total + n] = piece
        if not n:
            break
        total += n
    return total


@contextmanager
def open_binary(source) -> Iterator[BinaryIO]:
    """A path is opened unbuffered (and closed afterwards); a stream is used as it is."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb", buffering=0) as f:
            yield f
    else:
        yield source


_DONE = object()


class BlockReader:
    """Reads a stream into numpy blocks on a background thread, ahead of the consumer.

    Reading (disk I/O or a page-cache memcpy) then overlaps with chunking, which runs without
    the GIL. Yielded arrays are views of reusable buffers: give a block back with
    ``recycle(block)`` once nothing reads it any more, or simply drop it (a new buffer is
    allocated when none is free). At most ``prefetch`` blocks are read ahead.
    """

    def __init__(self, f: BinaryIO, block_size: int = DEFAULT_BLOCK_SIZE, prefetch: int = 2):
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self._f = f
        self._block_size = int(block_size)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._filled: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xet-block-reader", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._filled.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    buf = self._free.get_nowait()
                except queue.Empty:
                    buf = np.empty(self._block_size, dtype=np.uint8)
                n = _readinto_full(self._f, memoryview(buf))
                if n and not self._put(buf[:n]):
                    return
                if n < self._block_size:
                    break
            self._put(_DONE)
        except BaseException as exc:  # surfaced in the consumer's thread
            self._put(exc)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            item = self._filled.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def recycle(self, block: np.ndarray) -> None:
        base = block.base if block.base is not None else block
        if isinstance(base, np.ndarray) and base.size == self._block_size:
            self._free.put(base)

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._filled.get(timeout=0.05)
            except queue.Empty:
                pass

    def __enter__(self) -> "BlockReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- one-call API ----------------------------------------------------------------------------

def _is_buffer(source) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview, np.ndarray))


def chunk_boundaries(source: Source, *, chunker: ChunkerName = "current",
                     block_size: int = DEFAULT_BLOCK_SIZE, backend: Backend = "auto") -> np.ndarray:
    """Xet chunk end offsets (ascending uint64; the last equals the input length).

    ``source`` is an in-memory buffer, a path, or a binary stream (read from its current
    position in ``block_size`` blocks; the result does not depend on ``block_size``).
    Empty input has no chunks; input under 8 KiB is one chunk.
    """
    c = Chunker(chunker, backend=backend)
    if _is_buffer(source):
        return np.concatenate([c.update(source), c.finish()])
    parts = []
    with open_binary(source) as f, BlockReader(f, block_size) as reader:
        for block in reader:
            parts.append(c.update(block))
            reader.recycle(block)
    parts.append(c.finish())
    return np.concatenate(parts)
