"""Hostile safetensors files and checkpoint directories, and the properties every parse of them must keep.

Shared by the fuzz tests (tests/unit/test_fuzz_header.py, tests/unit/test_fuzz_checkpoint.py) and
bench/bench_hardening.py. Everything is driven by one `random.Random`, so a failing case is reproduced from its
seed (hypothesis hands in its own shrinkable `Random`).

Properties (`check_header_file`, `check_checkpoint_dir`):
  * only `CheckpointError` ever escapes, with a one-line message that names the file;
  * no read asks for more bytes than remain in the file (so nothing is allocated from a declared length),
    and positioned reads of accepted tensors stay inside the file;
  * a file we accept is one safetensors (Rust) accepts too, with the same names, dtypes, shapes and metadata,
    and the tensor bytes we read are the file's bytes at the declared offsets;
  * an accepted checkpoint directory only ever opened files beside its index, and its index, shards and
    headers agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llama4ctl.checkpoint import checkpoint as checkpoint_mod
from llama4ctl.checkpoint import header as header_mod
from llama4ctl.checkpoint.checkpoint import INDEX_FILE, Checkpoint
from llama4ctl.checkpoint.header import DTYPE_BITS, MAX_HEADER_BYTES, Header, read_header
from llama4ctl.errors import CheckpointError

DTYPES = sorted(DTYPE_BITS)
U64 = 1 << 64
INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 9, 255, 256, 4095, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**53 + 1,
                    2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**25, MAX_HEADER_BYTES,
                    MAX_HEADER_BYTES + 1]
# Raw JSON values spliced into headers where a number, string or object is expected.
HOSTILE_JSON = [
    "NaN", "Infinity", "-Infinity", "-0", "-0.0", "1e400", "-1e400", "1e-400", "1.5", "1e2", "2.0", '"1"', '"F32"',
    "null", "true", "false", "[]", "{}", '""', "[0]", "[0,0,0]", "[[0]]", '{"a":1}', "9" * 25, "-" + "9" * 25,
    "9" * 5000, str(2**64), str(2**64 - 1), str(2**63), '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"',
    "[" * 130 + "]" * 130, '{"a":' * 130 + "1" + "}" * 130, "[" * 5000 + "]" * 5000,
]
NAMES = [
    "language_model.model.layers.0.feed_forward.experts.gate_up_proj",
    "language_model.model.layers.0.feed_forward.experts.down_proj",
    "language_model.model.layers.1.feed_forward.experts.3.gate_proj.weight",
    "language_model.model.layers.0.self_attn.q_proj.weight",
    "language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
    "model.layers.2.feed_forward.router.weight", "vision_model.patch_embedding.linear.weight",
    "x.weight_packed", "x.weight_scale", "a", "", " ", "__metadata__x", "[/]", "[bold]x[/bold]", "x\ny",
    "\x1b[31mred", "é", "😀", "a" * 300, "../../etc/passwd", "C:\\x", "\x00", "\u2028",
]


# ----------------------------------------------------------------------------------------- valid files


def random_tensors(rng: random.Random, max_tensors: int = 6) -> list[tuple[str, str, tuple[int, ...]]]:
    """Distinct names, any dtype, small shapes (0-d, empty and sub-byte dtypes included), whole bytes."""
    out, names = [], set()
    for _ in range(rng.randint(0, max_tensors)):
        name = rng.choice(NAMES) if rng.random() < 0.5 else "t" + str(rng.randrange(10**6))
        if name in names:
            continue
        names.add(name)
        dtype = rng.choice(DTYPES)
        shape = [rng.choice((0, 1, 1, 2, 3, 4, 5, 8)) for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4)))]
        numel = 1
        for d in shape:
            numel *= d
        if (numel * DTYPE_BITS[dtype]) % 8:
            shape.append(8)  # sub-byte dtypes: safetensors wants every tensor to end on a byte
        out.append((name, dtype, tuple(shape)))
    return out


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = DTYPE_BITS[dtype]
    for d in shape:
        n *= d
    return n // 8


def build_file(rng: random.Random, tensors: list[tuple[str, str, tuple[int, ...]]] | None = None,
               metadata: dict[str, str] | None = None) -> tuple[bytes, dict[str, Any]]:
    """A valid safetensors file: data laid out in a random order, header keys in another, random padding."""
    tensors = random_tensors(rng) if tensors is None else tensors
    if metadata is None and rng.random() < 0.5:
        metadata = {rng.choice(["format", "x", "é", ""]): rng.choice(["pt", "", "[/]", "😀"])}
    layout = list(tensors)
    rng.shuffle(layout)
    doc: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in layout:
        size = nbytes(dtype, shape)
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    keys = list(doc)
    rng.shuffle(keys)
    doc = {k: doc[k] for k in keys}
    if metadata is not None:
        doc = {"__metadata__": metadata, **doc} if rng.random() < 0.5 else {**doc, "__metadata__": metadata}
    raw = json.dumps(doc, ensure_ascii=rng.random() < 0.5, separators=rng.choice([(",", ":"), (", ", ": ")]))
    raw_b = raw.encode("utf-8") + b" " * rng.choice((0, (-len(raw.encode())) % 8, 3))
    data = rng.randbytes(offset)
    return struct.pack("<Q", len(raw_b)) + raw_b + data, doc


def split(file: bytes) -> tuple[bytes, bytes]:
    """(header bytes, data bytes) of a file; a broken length prefix is clamped to what is there."""
    if len(file) < 8:
        return b"", b""
    (n,) = struct.unpack("<Q", file[:8])
    n = min(n, len(file) - 8)
    return file[8 : 8 + n], file[8 + n :]


def join(header: bytes | str, data: bytes, length: int | None = None) -> bytes:
    hb = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    return struct.pack("<Q", len(hb) if length is None else length % U64) + hb + data


# --------------------------------------------------------------------------------------------- mutators
# Each takes (rng, a valid file, its header doc) and returns hostile file bytes.

Mutator = Callable[[random.Random, bytes, dict[str, Any]], bytes]


def _splice(doc: dict[str, Any], path: list[Any], raw_value: str) -> str:
    """JSON text of `doc` with the value at `path` replaced by `raw_value` (any text, valid JSON or not)."""
    marker = "\x00SPLICE\x00"
    doc = json.loads(json.dumps(doc))
    target: Any = doc
    for p in path[:-1]:
        target = target[p]
    if isinstance(target, dict) or (isinstance(target, list) and path[-1] < len(target)):
        target[path[-1]] = marker
    else:
        target.append(marker)
    return json.dumps(doc).replace(json.dumps(marker), raw_value)


def _tensor_keys(doc: dict[str, Any]) -> list[str]:
    return [k for k in doc if k != "__metadata__"]


def m_bit_flips(rng, file, doc):
    b = bytearray(file)
    if not b:
        return bytes(b)
    hlen = min(len(b), 8 + len(split(file)[0]))
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        i = rng.randrange(hlen) if rng.random() < 0.9 else rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_byte_set(rng, file, doc):
    b = bytearray(file)
    hlen = min(len(b), 8 + len(split(file)[0]))
    for _ in range(rng.choice((1, 2, 4))):
        b[rng.randrange(hlen)] = rng.choice(b'{}[]",:\\ 0-9e.\x00\xff\x80\xc0\xed\xa0')
    return bytes(b)


def m_truncate(rng, file, doc):
    return file[: rng.randrange(len(file) + 1)]


def m_extend(rng, file, doc):
    return file + rng.randbytes(rng.choice((1, 7, 8, 100)))


def m_length_prefix(rng, file, doc):
    header, data = split(file)
    n = rng.choice([*INTERESTING_INTS, len(header) - 1, len(header) + 1, len(header) + len(data),
                    len(header) + len(data) + 1, len(file), len(file) - 8, rng.randrange(U64)])
    return join(header, data, n)


def m_header_insert(rng, file, doc):
    header, data = split(file)
    i = rng.randrange(len(header) + 1)
    junk = rng.choice([b"\xff", b"\x80", b"\xed\xa0\x80", b"\x00", b" ", b"\t", b"\n", b",", b"{", b"}", b'"',
                       b"\xef\xbb\xbf", rng.randbytes(4)])
    keep_length = rng.random() < 0.3
    new = header[:i] + junk + header[i:]
    return join(new, data, len(header) if keep_length else None)


def m_header_delete(rng, file, doc):
    header, data = split(file)
    if not header:
        return file
    i = rng.randrange(len(header))
    j = min(len(header), i + rng.choice((1, 2, 5, 20)))
    return join(header[:i] + header[j:], data)


def m_field_value(rng, file, doc):
    """A tensor's dtype, shape, a dimension, data_offsets or one offset replaced by a hostile value."""
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return join(_splice(doc, [rng.choice(["x", "__metadata__"])], rng.choice(HOSTILE_JSON)), data)
    k = rng.choice(keys)
    field = rng.choice(["dtype", "shape", "data_offsets", ("shape", 0), ("shape", 9), ("data_offsets", 0),
                        ("data_offsets", 1), ("data_offsets", 2)])
    path = [k, *field] if isinstance(field, tuple) else [k, field]
    if isinstance(field, tuple) and field[0] == "shape" and not doc[k]["shape"]:
        path = [k, "shape"]
    value = rng.choice(HOSTILE_JSON + [str(v) for v in INTERESTING_INTS])
    return join(_splice(doc, path, value), data)


def m_extra_field(rng, file, doc):
    """An unknown field (ignored by safetensors) holding NaN, huge numbers, deep nesting, lone surrogates."""
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return file
    return join(_splice(doc, [rng.choice(keys), "extra"], rng.choice(HOSTILE_JSON)), data)


def m_remove_field(rng, file, doc):
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return file
    d = json.loads(json.dumps(doc))
    d[rng.choice(keys)].pop(rng.choice(["dtype", "shape", "data_offsets"]))
    return join(json.dumps(d), data)


def m_shape(rng, file, doc):
    """Dimensions added, removed, scaled, zeroed or made huge (element counts that overflow 64 bits)."""
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return file
    d = json.loads(json.dumps(doc))
    s = d[rng.choice(keys)]["shape"]
    op = rng.randrange(6)
    if op == 0:
        s.append(rng.choice((0, 1, 2, 2**32)))
    elif op == 1 and s:
        s.pop(rng.randrange(len(s)))
    elif op == 2 and s:
        s[rng.randrange(len(s))] *= rng.choice((2, 3, 2**33))
    elif op == 3:
        s[:] = [2**32] * rng.choice((2, 3, 1000)) + rng.choice(([], [0]))
    elif op == 4:
        s[:] = [0] + [2**63] * rng.choice((1, 2, 5))
    else:
        s[:] = [1] * rng.choice((100, 10000))
    return join(json.dumps(d), data)


def m_offsets(rng, file, doc):
    """Ranges shifted, overlapped, gapped, swapped, reversed, or pointing past the end."""
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return file
    d = json.loads(json.dumps(doc))
    a = d[rng.choice(keys)]["data_offsets"]
    op = rng.randrange(6)
    if op == 0:
        delta = rng.choice((-8, -1, 1, 4, 8, len(data)))
        a[0], a[1] = a[0] + delta, a[1] + delta
    elif op == 1:
        a[1] += rng.choice((-1, 1, 2**64))
    elif op == 2:
        a.reverse()
    elif op == 3 and len(keys) > 1:
        b = d[rng.choice(keys)]["data_offsets"]
        a[:], b[:] = list(b), list(a)
    elif op == 4:
        a[:] = [len(data), len(data) + (a[1] - a[0])]
    else:
        a[:] = [a[0] + 2**64, a[1] + 2**64]
    return join(json.dumps(d), data)


def m_dtype(rng, file, doc):
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return file
    d = json.loads(json.dumps(doc))
    k = rng.choice(keys)
    d[k]["dtype"] = rng.choice([*DTYPES, "F13", "f32", "bf16", "", "F8_E4M3FN", "Q4_K", d[k]["dtype"] + " "])
    return join(json.dumps(d), data)


def m_duplicate_key(rng, file, doc):
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return join('{"__metadata__":{},"__metadata__":{}}', data)
    k = rng.choice(keys)
    text = json.dumps(doc)
    entry = json.dumps({k: doc[k]})[1:-1]
    if rng.random() < 0.5:
        return join("{" + entry + "," + text[1:], data)  # the same tensor twice
    inner = json.dumps(doc[k])  # a field twice inside one entry
    dup = inner[:-1] + ', "dtype": ' + json.dumps(rng.choice(DTYPES)) + "}"
    return join(text.replace(inner, dup, 1), data)


def m_metadata(rng, file, doc):
    _, data = split(file)
    value = rng.choice(['{"a":1}', '{"a":null}', '{"a":["x"]}', "[]", '"pt"', "0", "null", "false", '{"a":"b"}',
                        '{"\\ud800":"x"}', '{"a":"\\udc00"}'])
    return join(_splice(doc, ["__metadata__"], value), data)


def m_names(rng, file, doc):
    """Tensor names that are empty, huge, control characters, markup, lone surrogates or not UTF-8."""
    _, data = split(file)
    keys = _tensor_keys(doc)
    if not keys:
        return file
    k = rng.choice(keys)
    text = json.dumps(doc)
    new = rng.choice(['""', '"' + "n" * 100_000 + '"', '"\\u0000\\n\\r\\u001b[2J"', '"[/]"', '"\\ud800"',
                      '"\\udbff\\udfff"', '"__metadata__"'])
    if rng.random() < 0.3:
        return join(text.encode().replace(json.dumps(k).encode(), b'"\xff\xfe"', 1), data)
    return join(text.replace(json.dumps(k), new, 1), data)


def m_top_level(rng, file, doc):
    _, data = split(file)
    return join(rng.choice(["[]", "[{}]", '"x"', "1", "null", "{", "}", "", " ", "{}" * 2, "{} x", "{}\x00",
                            '{"x":1}', '{"x":[]}', '{"x":null}', "[" * 200000, "{" + '"a":{' * 200 + "}" * 200]),
                data)


def m_deep(rng, file, doc):
    _, data = split(file)
    depth = rng.choice((120, 125, 126, 127, 128, 1000, 100_000))
    keys = _tensor_keys(doc)
    where = [rng.choice(keys), "extra"] if keys and rng.random() < 0.7 else ["nested"]
    opener, closer = rng.choice((("[", "]"), ('{"k":', "}")))
    return join(_splice(doc, where, opener * depth + ("1" if opener != "[" else "") + closer * depth), data)


def m_many_entries(rng, file, doc):
    """Thousands of tiny entries: work must stay linear in the header size."""
    n = rng.choice((500, 3000))
    d = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}
    if rng.random() < 0.5:
        d[f"t{rng.randrange(n)}"]["data_offsets"] = [0, 1]  # one overlap somewhere
    return join(json.dumps(d), bytes(n))


MUTATORS: list[Mutator] = [
    m_bit_flips, m_byte_set, m_truncate, m_extend, m_length_prefix, m_header_insert, m_header_delete,
    m_field_value, m_extra_field, m_remove_field, m_shape, m_offsets, m_dtype, m_duplicate_key, m_metadata,
    m_names, m_top_level, m_deep,
]
RARE_MUTATORS: list[Mutator] = [m_many_entries]


def hostile_file(rng: random.Random) -> bytes:
    """A valid file with 1-3 mutations applied (or, rarely, a bulk one)."""
    file, doc = build_file(rng)
    if rng.random() < 0.01:
        return rng.choice(RARE_MUTATORS)(rng, file, doc)
    for i in range(rng.choice((1, 1, 1, 2, 3))):
        try:
            base_doc = doc if i == 0 else json.loads(split(file)[0])
        except (ValueError, struct.error, UnicodeDecodeError, RecursionError):
            base_doc = {}
        if not isinstance(base_doc, dict):
            base_doc = {}
        try:
            file = rng.choice(MUTATORS)(rng, file, base_doc)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError, struct.error, RecursionError):
            file = m_bit_flips(rng, file, base_doc)  # the mutator did not fit what an earlier one left
    return file


# ------------------------------------------------------------------------------------------- guarded I/O


class _GuardedFile:
    """A read-only file that fails the test when asked for more bytes than remain in it."""

    def __init__(self, f: Any, log: dict[str, int]):
        self._f, self._log = f, log
        self._size = os.fstat(f.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        pos = self._f.tell()
        if n is None or n < 0:
            raise AssertionError(f"unbounded read() of {self._f.name}")
        if n > max(8, self._size - pos):
            raise AssertionError(f"read({n}) at {pos} of {self._f.name}, which has {self._size} bytes")
        self._log["reads"] += 1
        self._log["max_read"] = max(self._log["max_read"], n)
        return self._f.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _GuardedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@contextlib.contextmanager
def guarded_io(root: Path | None = None) -> Iterator[dict[str, int]]:
    """Within: header/index/config reads are bounded by what remains in the file, opens stay beside `root`
    (when given), and positioned reads (os.preadv) never run past the end of the file."""
    log = {"reads": 0, "max_read": 0, "preads": 0, "opens": 0}
    real_open, real_preadv = open, os.preadv

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        p = Path(os.fsdecode(file))
        if root is not None and p.parent != root:
            raise AssertionError(f"opened {p}, outside the checkpoint directory {root}")
        if "r" not in mode or "+" in mode:
            raise AssertionError(f"opened {p} for writing ({mode!r})")
        log["opens"] += 1
        return _GuardedFile(real_open(file, mode, *args, **kwargs), log)

    def guarded_preadv(fd: int, buffers: list[Any], offset: int, *args: Any) -> int:
        size = os.fstat(fd).st_size
        want = sum(len(memoryview(b)) for b in buffers)
        if offset < 0 or offset + want > size:
            raise AssertionError(f"preadv of {want} bytes at {offset} past the end of a {size}-byte file")
        log["preads"] += 1
        return real_preadv(fd, buffers, offset, *args)

    header_mod.open = guarded_open  # type: ignore[attr-defined]
    checkpoint_mod.open = guarded_open  # type: ignore[attr-defined]
    os.preadv = guarded_preadv
    try:
        yield log
    finally:
        del header_mod.open, checkpoint_mod.open  # type: ignore[attr-defined]
        os.preadv = real_preadv


# --------------------------------------------------------------------------------------------- properties


def check_error(err: CheckpointError, path: Path | None = None) -> None:
    assert type(err).__module__ == "llama4ctl.errors"
    text = str(err)
    assert "\n" not in text and "\r" not in text, f"multi-line error: {text[:300]!r}"
    assert len(text) < 2000, f"error message of {len(text)} chars"
    if path is not None:
        assert err.path is not None and (err.path == str(path) or Path(err.path).parent == path), (err.path, path)


def safetensors_view(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str] | None] | None:
    """What the safetensors library (Rust) reads from the file, or None if it refuses it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {}
            for k in f.keys():
                s = f.get_slice(k)
                tensors[k] = (s.get_dtype(), list(s.get_shape()))
            return tensors, f.metadata()
    except (SafetensorError, ValueError, OSError):
        return None


def check_accepted(h: Header, file: bytes, *, differential: bool = True, read_data: bool = True) -> None:
    """Invariants of a header we accepted, cross-checked with safetensors and with positioned reads."""
    size = len(file)
    assert h.file_size == size and h.data_start <= size
    cursor = h.data_start
    names = set()
    for t in h.tensors:
        assert t.name not in names
        names.add(t.name)
        assert t.start == cursor and t.end >= t.start and t.end <= size, (t, cursor, size)
        assert t.nbytes == nbytes(t.dtype, t.shape)
        cursor = t.end
    assert cursor == size
    if differential:
        theirs = safetensors_view(h.path)
        assert theirs is not None, "llama4ctl accepted a file that safetensors refuses"
        tensors, metadata = theirs
        assert tensors == {t.name: (t.dtype, list(t.shape)) for t in h.tensors}
        assert (metadata or {}) == h.metadata
    if read_data and h.tensors:
        from llama4ctl.checkpoint.reader import Reader

        with Reader() as r:
            for t in h.tensors:
                assert bytes(r.read_bytes(t)) == file[t.start : t.end]


def check_header_file(path: Path, file: bytes, *, differential: bool = True) -> str:
    """Write `file`, parse it under guarded I/O; returns 'accepted' or 'refused'. AssertionError otherwise."""
    path.write_bytes(file)
    with guarded_io():
        try:
            h = read_header(path)
        except CheckpointError as e:
            check_error(e, path)
            return "refused"
        check_accepted(h, file, differential=differential)
    return "accepted"


# ------------------------------------------------------------------------------------------- directories


def build_checkpoint(root: Path, rng: random.Random, shards: int = 3) -> dict[str, bytes]:
    """A small valid sharded checkpoint (index + config) under root; returns {file name: bytes}."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = [(f"s{i}.t{j}.weight", rng.choice(("BF16", "F32", "U8")), (rng.randint(1, 4), 3))
                   for j in range(rng.randint(1, 3))]
        files[name], _ = build_file(rng, tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys((t[0] for t in tensors), name))
    files[INDEX_FILE] = json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()
    files["config.json"] = json.dumps({"model_type": "llama4", "architectures": ["Llama4ForCausalLM"]}).encode()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


HOSTILE_SHARD_NAMES = [
    "../outside.safetensors", "/tmp/outside.safetensors", "sub/x.safetensors", "./x.safetensors",
    "x.safetensors/", "..", ".", "", "a\\..\\b.safetensors", "C:\\x.safetensors", "x\x00.safetensors",
    "n" * 300 + ".safetensors", "missing.safetensors", "pytorch_model.bin", "x.pth", "x.SAFETENSORS",
    "\ud800.safetensors", "model.safetensors.index.json", "config.json", ".safetensors", " .safetensors",
    "sub/../model-00001-of-00003.safetensors", "model-00001-of-00003.safetensors ",
]


def mutate_index(rng: random.Random, files: dict[str, bytes]) -> bytes:
    """A hostile model.safetensors.index.json derived from the valid one."""
    index = json.loads(files[INDEX_FILE])
    wm: dict[str, Any] = index["weight_map"]
    names, shards = list(wm), sorted(set(wm.values()))
    op = rng.randrange(14)
    if op == 0:
        wm[rng.choice(names)] = rng.choice(HOSTILE_SHARD_NAMES)
    elif op == 1:
        wm["ghost.weight"] = rng.choice(shards)
    elif op == 2:
        del wm[rng.choice(names)]
    elif op == 3:
        a, b = rng.sample(names, 2) if len(names) > 1 else (names[0], names[0])
        wm[a], wm[b] = wm[b], wm[a]
    elif op == 4:
        wm[rng.choice(names)] = rng.choice([None, 1, [], {}, True, 1.5])
    elif op == 5:
        index["weight_map"] = rng.choice([None, [], "x", 1, {}, [["a", "b"]]])
    elif op == 6:
        index = rng.choice([[], None, "weight_map", 0])
    elif op == 7:
        return _splice(index, ["weight_map", rng.choice(names)], rng.choice(HOSTILE_JSON)).encode()
    elif op == 8:
        return _splice(index, ["metadata", "total_size"], rng.choice(HOSTILE_JSON)).encode()
    elif op == 9:
        text = json.dumps(index)
        entry = json.dumps({names[0]: rng.choice(shards)})[1:-1]
        return text.replace('"weight_map": {', '"weight_map": {' + entry + ", ", 1).encode()
    elif op == 10:
        raw = bytearray(files[INDEX_FILE])
        for _ in range(rng.choice((1, 2, 5))):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    elif op == 11:
        return files[INDEX_FILE][: rng.randrange(len(files[INDEX_FILE]))]
    elif op == 12:
        return rng.choice([b"", b"\xef\xbb\xbf" + files[INDEX_FILE], b"\xff" * 10, b"{" * 100_000,
                           files[INDEX_FILE] + b"\x00", files[INDEX_FILE].replace(b'"', b"'")])
    else:
        wm[rng.choice(names)] = rng.choice(shards).replace(".safetensors", rng.choice(("", ".bin", ".pth")))
    return json.dumps(index).encode()


def hostile_checkpoint(root: Path, rng: random.Random, files: dict[str, bytes]) -> None:
    """Rewrite root from `files` with the index, a shard header, or the config made hostile (or several)."""
    for entry in root.iterdir():
        if entry.name not in files or entry.is_symlink() or entry.is_dir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for name, data in files.items():
        (root / name).write_bytes(data)
    for what in sorted(rng.random() for _ in range(rng.choice((1, 1, 2)))):  # shard removal comes last
        if what < 0.5:
            (root / INDEX_FILE).write_bytes(mutate_index(rng, files))
        elif what < 0.8:
            shard = rng.choice(sorted(n for n in files if n.endswith(".safetensors")))
            header, data = split(files[shard])
            doc = json.loads(header)
            (root / shard).write_bytes(rng.choice(MUTATORS)(rng, files[shard], doc))
        elif what < 0.9:
            (root / "config.json").write_bytes(rng.choice(
                [b"[]", b"{", b"\xff", b'{"a":' * 200 + b"1" + b"}" * 200, b'{"x": NaN}', b'{"x": 1e999}',
                 b'{"text_config": []}', b'{"a":1,"a":2}', b"9" * 5000]))
        else:
            shard = rng.choice(sorted(n for n in files if n.endswith(".safetensors")))
            kind = rng.randrange(3)
            if (root / shard).is_symlink() or not (root / shard).is_file():
                continue
            (root / shard).unlink()
            if kind == 0:
                (root / shard).mkdir()  # a directory where a shard should be
            elif kind == 1:
                os.symlink(root / "missing-target", root / shard)  # dangling link
            # kind 2: the shard is simply missing


def check_checkpoint_dir(root: Path) -> str:
    """Open root under guarded I/O; returns 'accepted' or 'refused'. AssertionError on any broken property."""
    with guarded_io(root):
        try:
            ck = Checkpoint.open(root)
        except CheckpointError as e:
            check_error(e, None)
            assert e.path is not None and Path(e.path).parent in (root, root.parent), e.path
            return "refused"
    index_path = root / INDEX_FILE
    weight_map = json.loads(index_path.read_bytes())["weight_map"] if index_path.exists() else None
    names = [t.name for t in ck.tensors]
    assert len(names) == len(set(names))
    for t in ck.tensors:
        assert t.file.parent == root and t.shard in ck.shards
        assert weight_map is None or weight_map[t.name] == t.shard
    if weight_map is not None:
        assert set(weight_map) == set(names) and set(ck.shards) == set(weight_map.values())
    for shard in ck.shards:
        assert (root / shard).resolve().parent == root.resolve()
    return "accepted"


# ----------------------------------------------------------------------------------------------- campaigns


def header_campaign(workdir: Path, seed: int, cases: int) -> dict[str, int]:
    """`cases` hostile files from `seed`; a failure names the seed and case and keeps the file for replay."""
    rng = random.Random(seed)
    stats = {"cases": 0, "accepted": 0, "refused": 0}
    for i in range(cases):
        file = hostile_file(rng)
        try:
            stats[check_header_file(workdir / "case.safetensors", file)] += 1
        except BaseException as e:  # noqa: BLE001 - anything but CheckpointError is the finding
            kept = workdir / f"failure-seed{seed}-case{i}.safetensors"
            kept.write_bytes(file)
            raise AssertionError(f"header case {i} of seed {seed} ({kept}): {type(e).__name__}: "
                                 f"{str(e)[:500]}") from e
        stats["cases"] += 1
    return stats


def checkpoint_campaign(workdir: Path, seed: int, cases: int) -> dict[str, int]:
    rng = random.Random(seed)
    root = workdir / "ckpt"
    files = build_checkpoint(root, rng)
    stats = {"cases": 0, "accepted": 0, "refused": 0}
    for i in range(cases):
        hostile_checkpoint(root, rng, files)
        try:
            stats[check_checkpoint_dir(root)] += 1
        except BaseException as e:  # noqa: BLE001
            raise AssertionError(f"checkpoint case {i} of seed {seed} (left in {root}; checkpoint_campaign(dir, "
                                 f"{seed}, {i + 1}) replays it): {type(e).__name__}: {str(e)[:500]}") from e
        stats["cases"] += 1
    return stats
