"""Property-based and mutation fuzzing of the safetensors header parser (tests/fuzzkit.py has the properties).

Every input either parses into a header that safetensors (Rust) reads the same way, with reads that stay inside
the file, or is refused with a one-line CheckpointError naming the file. Nothing else may escape, and nothing is
allocated from a declared length. `pytest --long` (or LLAMA4CTL_LONG=1) runs ~100k mutated files instead of 4000;
LLAMA4CTL_FUZZ_SEED=N replays a campaign.
"""

from __future__ import annotations

import json
import os
import random
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama4ctl.checkpoint.header import DTYPE_BITS, MAX_HEADER_BYTES, read_header
from llama4ctl.errors import CheckpointError
from llama4ctl.exec.writer import build_header
from llama4ctl.plan.ops import OutputSpec
from tests import fuzzkit


def fast(examples: int = 100) -> settings:
    return settings(deadline=None, database=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-header")


# ------------------------------------------------------------------------------------------ valid inputs

dims = st.lists(st.integers(0, 6), max_size=4)
tensor = st.tuples(st.text(max_size=40), st.sampled_from(sorted(DTYPE_BITS)), dims)


def _whole_bytes(dtype: str, shape: list[int]) -> tuple[int, ...]:
    n = DTYPE_BITS[dtype]
    for d in shape:
        n *= d
    return tuple(shape + [8]) if n % 8 else tuple(shape)


@fast(150)
@given(st.lists(tensor, max_size=8, unique_by=lambda t: t[0]).filter(lambda ts: all(t[0] != "__metadata__"
                                                                                    for t in ts)),
       st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3), st.randoms())
def test_valid_files_round_trip_and_agree_with_safetensors(work, tensors, metadata, rng):
    tensors = [(name, dtype, _whole_bytes(dtype, shape)) for name, dtype, shape in tensors]
    file, doc = fuzzkit.build_file(rng, tensors, metadata)
    path = work / "valid.safetensors"
    assert fuzzkit.check_header_file(path, file) == "accepted"
    h = read_header(path)
    assert {t.name: (t.dtype, t.shape, t.start - h.data_start, t.end - h.data_start) for t in h.tensors} == {
        k: (v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in doc.items() if k != "__metadata__"}
    assert h.metadata == doc.get("__metadata__", {})


@fast(150)
@given(st.lists(tensor, max_size=8, unique_by=lambda t: t[0]), st.randoms())
def test_headers_the_writer_builds_parse_back_to_the_same_outputs(work, tensors, rng):
    outputs = [OutputSpec(name, dtype, _whole_bytes(dtype, shape)) for name, dtype, shape in tensors
               if name != "__metadata__"]
    data = b"".join(rng.randbytes(o.nbytes) for o in outputs)
    path = work / "written.safetensors"
    path.write_bytes(build_header(outputs) + data)
    h = read_header(path)
    assert [(t.name, t.dtype, t.shape) for t in h.tensors if t.nbytes] == \
        [(o.name, o.dtype, o.shape) for o in outputs if o.nbytes]
    assert h.metadata == {"format": "pt"} and (h.data_start - 8) % 8 == 0
    fuzzkit.check_accepted(h, path.read_bytes())


# ---------------------------------------------------------------------------------------- hostile inputs

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                | st.text(max_size=8) | st.sampled_from(sorted(DTYPE_BITS)))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)
entry_like = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(sorted(DTYPE_BITS)) | json_values,
    "shape": st.lists(st.integers(-2, 2**65) | json_scalars, max_size=4) | json_values,
    "data_offsets": st.lists(st.integers(-2, 2**65), max_size=3) | json_values,
    "extra": json_values,
})


@fast(150)
@given(st.dictionaries(st.text(max_size=8), entry_like | json_values, max_size=5), st.integers(0, 64),
       st.booleans())
def test_random_json_headers_are_parsed_or_refused_cleanly(work, doc, data_len, padded):
    raw = json.dumps(doc).encode()  # NaN/Infinity included: Python writes them, serde_json refuses them
    if padded:
        raw += b" " * (-len(raw) % 8)
    fuzzkit.check_header_file(work / "json.safetensors", fuzzkit.join(raw, bytes(data_len)))


@fast(300)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1) | st.sampled_from([None, 0, 1, 8, MAX_HEADER_BYTES]),
       st.binary(max_size=32))
def test_arbitrary_bytes_are_refused_cleanly(work, header, length, data):
    fuzzkit.check_header_file(work / "bytes.safetensors", fuzzkit.join(header, data, length))


@fast(150)
@given(st.randoms(use_true_random=False))
def test_mutated_valid_files_are_parsed_or_refused_cleanly(work, rng):
    """Bit flips, truncations, length prefixes, bad dtypes/shapes/offsets, overlaps and gaps, huge numbers,
    non-UTF-8, deep nesting, duplicate keys, NaN and negative values, wrong types (see fuzzkit.MUTATORS)."""
    fuzzkit.check_header_file(work / "mutated.safetensors", fuzzkit.hostile_file(rng))


@pytest.mark.parametrize("mutator", fuzzkit.MUTATORS + fuzzkit.RARE_MUTATORS, ids=lambda m: m.__name__)
def test_every_mutator_produces_refusals(work, mutator):
    """The mutators are not no-ops: each makes at least some files the parser must refuse."""
    rng = random.Random(1)
    outcomes = set()
    for _ in range(40 if mutator in fuzzkit.MUTATORS else 3):
        file, doc = fuzzkit.build_file(rng, [("a", "F32", (2, 3)), ("b", "BF16", (4,)), ("c", "U8", (0,))])
        outcomes.add(fuzzkit.check_header_file(work / "m.safetensors", mutator(rng, file, doc)))
    assert "refused" in outcomes


def test_mutation_campaign(work, long_run):
    """Thousands of hostile files per run from a fresh seed (printed on failure; LLAMA4CTL_FUZZ_SEED replays)."""
    seed = int(os.environ.get("LLAMA4CTL_FUZZ_SEED", random.randrange(2**32)))
    cases = 100_000 if long_run else 4000
    stats = fuzzkit.header_campaign(work, seed, cases)
    assert stats["cases"] == cases and stats["accepted"] > 0.03 * cases and stats["refused"] > 0.5 * cases


# ------------------------------------------------------------------------------------------ allocation


@pytest.mark.parametrize("length", [9, 2**20, 2**31, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 2**40, 2**63,
                                    2**64 - 1])
def test_a_declared_length_allocates_nothing_beyond_the_file(work, length):
    path = work / "len.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    tracemalloc.start()
    try:
        with fuzzkit.guarded_io() as log, pytest.raises(CheckpointError, match="header"):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 and log["max_read"] <= path.stat().st_size


def test_bulk_headers_cost_linear_time_and_bounded_memory(work):
    """A 12 MB header of 200k dimensions that overflow 64 bits is refused fast, not multiplied out."""
    shape = [2**32] * 200_000 + [0]
    raw = json.dumps({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    path = work / "bulk.safetensors"
    path.write_bytes(fuzzkit.join(raw, b""))
    import time

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="overflows 64 bits") as err:
        read_header(path)
    assert time.perf_counter() - t0 < 5 and len(str(err.value)) < 1000


def test_a_file_that_shrinks_after_parsing_is_never_read_past_its_end(work):
    from llama4ctl.checkpoint.reader import Reader

    rng = random.Random(0)
    file, _ = fuzzkit.build_file(rng, [("a", "F32", (64,)), ("b", "F32", (64,))])
    path = work / "shrink.safetensors"
    path.write_bytes(file)
    h = read_header(path)
    path.write_bytes(file[:-100])
    with Reader() as r:
        assert bytes(r.read_bytes(h.tensors[0])) == file[h.tensors[0].start:h.tensors[0].end]
        with pytest.raises(CheckpointError, match="truncated"):
            r.read_bytes(h.tensors[1])


# ------------------------------------------------------------------------------------ specific findings


@pytest.mark.parametrize("header, message", [
    (b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),          # was RecursionError
    (b'{"x":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}', "out of range"),  # ValueError
    (b'{"x":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', "unknown dtype"),  # was TypeError: unhashable
    (b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
     "duplicate key"),
    (b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"e":NaN}}', "NaN"),
    (b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "UTF-8"),
    (b'{"x":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', "invalid shape"),
    (b'{"x":{"dtype":"F32","shape":[8589934592,8589934592,0],"data_offsets":[0,0]}}', "overflows 64 bits"),
    (b'{"x":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', "byte boundary"),
    (b'{"__metadata__":0}', "__metadata__"),
    (b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"e":' + b"[" * 126 + b"]" * 126 + b"}}",
     "nested deeper"),
])
def test_inputs_that_used_to_escape_or_were_accepted_against_safetensors(work, header, message):
    path = work / "finding.safetensors"
    path.write_bytes(fuzzkit.join(header, b"\0" * 4))
    with pytest.raises(CheckpointError, match=message) as err:
        read_header(path)
    fuzzkit.check_error(err.value, path)
    if message != "duplicate key":  # safetensors keeps the last of two equal keys; llama4ctl refuses the ambiguity
        assert fuzzkit.safetensors_view(path) is None  # safetensors refuses the others too
