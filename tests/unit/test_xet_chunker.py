"""Xet chunking: xet-core's public test vectors (reference xet.md §6.1), stream/block-size
invariance, the numba kernel against the pure-Python reference, and the legacy rule."""

import io
import subprocess
import sys

import numpy as np
import pytest

from llama4ctl.xet import chunker as ck
from llama4ctl.xet.chunker import (
    GEAR_TABLE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Chunker, chunk_boundaries,
)

needs_numba = pytest.mark.skipif(not ck.numba_available(), reason="numba not installed")


def splitmix64_bytes(n: int, seed: int) -> bytes:
    """xet-core's portable ``create_random_data(n, seed)`` (SplitMix64, little-endian words)."""
    s = np.arange(1, (n + 7) // 8 + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    z = (s ^ (s >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z.astype("<u8").tobytes()[:n]


def triggering_data(padding: int, n: int = 65536) -> bytes:
    """xet-core ``get_triggering_base_data``: pattern + ``padding`` zeros, repeated to ``n`` bytes."""
    data = bytearray(TRIGGER_PATTERN + bytes(padding))
    while len(data) < n:
        data += data[:n - len(data)]
    return bytes(data)


def sizes(ends) -> list[int]:
    return np.diff(np.asarray(ends, dtype=np.int64), prepend=0).tolist()


# --- xet-core vectors ------------------------------------------------------------------------

def test_gear_table_is_the_gearhash_default_table():
    assert GEAR_TABLE[:3] == (0xB088D3A9E840F559, 0x5652C7F739ED20D6, 0x45B28969898972AB)
    assert GEAR_TABLE[-1] == 0x63C7A906C1DD187B


@pytest.mark.parametrize("backend", ["numba", "python"])
@pytest.mark.parametrize("chunker", ["current", "legacy"])
def test_splitmix_1mb(backend, chunker):
    if backend == "numba" and not ck.numba_available():
        pytest.skip("numba not installed")
    data = splitmix64_bytes(1_000_000, 0)
    assert (data[0], data[127], data[111111]) == (175, 132, 118)
    assert chunk_boundaries(data, chunker=chunker, backend=backend).tolist() == SPLITMIX_1MB_SEED0_ENDS


@pytest.mark.parametrize("chunker", ["current", "legacy"])
def test_constant_data_cuts_at_maximum(chunker):
    assert chunk_boundaries(bytes([59]) * 1_000_000, chunker=chunker).tolist() == CONST59_1MB_ENDS


@pytest.mark.parametrize("chunker", ["current", "legacy"])
def test_hitting_data_all_128_rows(chunker):
    for padding in range(128):
        data = triggering_data(padding)
        assert data[11111] == TRIGGER_AT_11111[padding]
        expected = TRIGGER_ENDS_CURRENT[padding]
        if chunker == "legacy":
            expected = TRIGGER_ENDS_LEGACY_DIFF.get(padding, expected)
        assert chunk_boundaries(data, chunker=chunker).tolist() == expected + [65536], padding


@pytest.mark.parametrize("chunker", ["current", "legacy"])
def test_hitting_data_python_reference(chunker):
    for padding in [0, 1, 12, 24, 29, 61, 100, 127]:
        expected = TRIGGER_ENDS_CURRENT[padding]
        if chunker == "legacy":
            expected = TRIGGER_ENDS_LEGACY_DIFF.get(padding, expected)
        got = chunk_boundaries(triggering_data(padding), chunker=chunker, backend="python")
        assert got.tolist() == expected + [65536], padding


@pytest.mark.parametrize("n, expected", [
    (0, []), (1, [1]), (63, [63]), (MIN_CHUNK_SIZE - 1, [MIN_CHUNK_SIZE - 1]),
    (MAX_CHUNK_SIZE, [MAX_CHUNK_SIZE]), (MAX_CHUNK_SIZE + 1, [MAX_CHUNK_SIZE, MAX_CHUNK_SIZE + 1]),
])
def test_edge_sizes_on_zeros(n, expected):
    # All-zero data never matches (like xet-core's test_exact_maximum_chunk), so only the
    # maximum and the final remainder cut.
    for backend in ("numba", "python") if ck.numba_available() else ("python",):
        assert chunk_boundaries(bytes(n), backend=backend).tolist() == expected


# --- stream invariance -----------------------------------------------------------------------

def feed(data: bytes, block: int, **kw) -> list[int]:
    c = Chunker(**kw)
    ends = [c.update(data[i:i + block]) for i in range(0, len(data), block)]
    return np.concatenate(ends + [c.finish()]).tolist()


@pytest.mark.parametrize("block", [37, 255, 4096, 8127, 8128, 65537, MAX_CHUNK_SIZE, 300_001])
@pytest.mark.parametrize("chunker", ["current", "legacy"])
def test_block_size_does_not_change_boundaries(block, chunker):
    data = splitmix64_bytes(2_000_000, 2) + bytes(300_000) + splitmix64_bytes(500_000, 3)
    assert feed(data, block, chunker=chunker) == chunk_boundaries(data, chunker=chunker).tolist()


def test_one_byte_blocks():
    data = splitmix64_bytes(100_000, 4)
    data = data[:8100] + bytes([17]) * 200 + data[8300:]  # early legacy matches near the minimum
    for chunker in ("current", "legacy"):
        assert feed(data, 1, chunker=chunker) == chunk_boundaries(data, chunker=chunker).tolist()
    assert feed(data[:5000], 1, backend="python") == [5000]


@pytest.mark.parametrize("block", [1000, MAX_CHUNK_SIZE - 1, 1 << 20])
def test_paths_and_streams_match_in_memory(tmp_path, block):
    data = splitmix64_bytes(3_000_000, 5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = chunk_boundaries(data).tolist()
    assert chunk_boundaries(path, block_size=block).tolist() == expected
    assert chunk_boundaries(str(path), block_size=block).tolist() == expected
    assert chunk_boundaries(io.BytesIO(data), block_size=block).tolist() == expected
    assert chunk_boundaries(np.frombuffer(data, np.uint8)).tolist() == expected


# --- numba vs reference ----------------------------------------------------------------------

@needs_numba
@pytest.mark.parametrize("chunker", ["current", "legacy"])
def test_numba_equals_python_reference(chunker):
    rng = np.random.default_rng(6)
    low_entropy = rng.integers(0, 4, 400_000, dtype=np.uint8).tobytes()  # long chunks, many near-max
    gear_hits = rng.choice(np.array([17, 23, 42, 98, 223], np.uint8), 100_000).tobytes()  # h often tiny
    for data in (rng.bytes(600_000), low_entropy, gear_hits, bytes(300_000) + rng.bytes(50_000)):
        assert (chunk_boundaries(data, chunker=chunker, backend="numba").tolist()
                == chunk_boundaries(data, chunker=chunker, backend="python").tolist())
        # Streaming in odd pieces exercises the carried (h, chunk length) state in both kernels.
        assert feed(data, 9_999, chunker=chunker, backend="numba") == \
            feed(data, 9_999, chunker=chunker, backend="python")


# --- legacy vs current -----------------------------------------------------------------------

def test_current_never_cuts_below_minimum_but_legacy_can():
    # Byte 17 has a gear value below 2**48, so a legacy client, which tests the hash from the
    # first hashed byte (offset 8127), cuts right after it: an 8128-byte chunk on a one-byte
    # hash. Current clients ignore matches before 8192 bytes.
    data = bytearray(splitmix64_bytes(300_000, 2))
    data[8127] = 17
    legacy = chunk_boundaries(bytes(data), chunker="legacy").tolist()
    current = chunk_boundaries(bytes(data), chunker="current").tolist()
    assert legacy[0] == 8128 and current[0] > MIN_CHUNK_SIZE
    assert GEAR_TABLE[17] < 1 << 48


@needs_numba
def test_legacy_differs_only_by_early_cuts_and_resynchronises():
    data = splitmix64_bytes(32_000_000, 8)
    cur = chunk_boundaries(data)
    leg = chunk_boundaries(data, chunker="legacy")
    s_cur, s_leg = sizes(cur), sizes(leg)
    assert min(s_cur[:-1]) >= MIN_CHUNK_SIZE and max(s_cur) <= MAX_CHUNK_SIZE
    assert min(s_leg[:-1]) >= MIN_CHUNK_SIZE - 64 and max(s_leg) <= MAX_CHUNK_SIZE
    # 20 of the 256 gear values are < 2**48, so ~7.8% of legacy chunks end at exactly 8128.
    short = [s for s in s_leg if s < MIN_CHUNK_SIZE]
    assert 0.04 < short.count(8128) / len(s_leg) < 0.12
    # Every cut one rule makes and the other does not lies within a chunk or two of a legacy
    # short chunk: the rules resynchronise at the next ordinary boundary.
    leg_set, cur_set = set(leg.tolist()), set(cur.tolist())
    short_ends = np.array([e for e, s in zip(leg.tolist(), s_leg) if s < MIN_CHUNK_SIZE])
    for e in sorted(leg_set ^ cur_set):
        prior = short_ends[short_ends <= e]
        assert prior.size and e - prior[-1] <= 2 * MAX_CHUNK_SIZE
    assert len(leg_set & cur_set) > 0.8 * len(cur_set)


def test_rejects_unknown_chunker_and_backend():
    with pytest.raises(ValueError):
        Chunker("fastcdc")
    with pytest.raises(ValueError):
        Chunker(backend="cuda")


def test_import_does_not_load_numba():
    code = "import sys, llama4ctl.xet.chunker, llama4ctl.xet.hashing, llama4ctl.xet.index; " \
           "assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# xet-core test_correctness_100kb_hitting_data: triggering pattern, data[11111] per padding,
# and expected chunk ends (65536 omitted) for padding 0..127.
TRIGGER_PATTERN = bytes.fromhex(
    "9a342a229f4b7ee046ec0cc44fecb27c7f3263b22cb0ae7efaebcdaefc7a230a"
    "1465d645c10873699ee4786f88a2c6fbd3b7fdfca4933f10baa27517aa24cdbb"
    "ae4cd2aed3af0cad913b0246deb59fe3b69cbd33e26a1832b79d8c0a0817d446"
    "0aea1721dbfe27ec4631bf7409730f651a9fa5dc0faa387d5ca35eeb26283151"
)
TRIGGER_AT_11111 = bytes.fromhex(
    "ec3224747e91ebe446b2ad00fc9f45db7e0a7c18c46ac4b77c467ebf45a3fc00"
    "ad2a46aeebba009d7e312400ec6900187e0046ec000cec00adc4009fb2000a65"
    "000f930000e37e0065ba340046e4000032d6000032450000468800006524c400"
    "00180800007dad7e00009fd2b20000aaadeb00000018e400000065ae7e000000"
)
TRIGGER_ENDS_CURRENT = [
    [8256, 16448, 24640, 32832, 41024, 49216, 57408], [8320, 16576, 24832, 33088, 41344, 49600, 57856],
    [8254, 16574, 24894, 33214, 41534, 49854, 58174], [8317, 16570, 24823, 33076, 41329, 49582, 57835],
    [8248, 16564, 24880, 33196, 41512, 49828, 58144], [8310, 16556, 24802, 33048, 41294, 49540, 57786],
    [8238, 16546, 24854, 33162, 41470, 49778, 58086], [8299, 16534, 24769, 33004, 41239, 49474, 57709],
    [8224, 16520, 24816, 33112, 41408, 49704, 58000], [8284, 16504, 24724, 32944, 41164, 49384, 57604],
    [8206, 16486, 24766, 33046, 41326, 49606, 57886], [8265, 16466, 24667, 32868, 41069, 49270, 57471],
    [8324, 16584, 24844, 33104, 41364, 49624, 57884], [8242, 16561, 24880, 33199, 41518, 49837, 58156],
    [8300, 16536, 24772, 33008, 41244, 49480, 57716], [8215, 16509, 24803, 33097, 41391, 49685, 57979],
    [8272, 16480, 24688, 32896, 41104, 49312, 57520], [8329, 16594, 24859, 33124, 41389, 49654, 57919],
    [8240, 16562, 24884, 33206, 41528, 49850, 58172], [8296, 16528, 24760, 32992, 41224, 49456, 57688],
    [8204, 16492, 24780, 33068, 41356, 49644, 57932], [8259, 16454, 24649, 32844, 41039, 49234, 57429],
    [8314, 16564, 24814, 33064, 41314, 49564, 57814], [8218, 16523, 24828, 33133, 41438, 49743, 58048],
    [8272, 16480, 24688, 32896, 41104, 49312, 57520], [8326, 16588, 24850, 33112, 41374, 49636, 57898],
    [8226, 16542, 24858, 33174, 41490, 49806, 58122], [8279, 16494, 24709, 32924, 41139, 49354, 57569],
    [8332, 16600, 24868, 33136, 41404, 49672, 57940], [8228, 16549, 24870, 33191, 41512, 49833, 58154],
    [8280, 16496, 24712, 32928, 41144, 49360, 57576], [8332, 16600, 24868, 33136, 41404, 49672, 57940],
    [8224, 16544, 24864, 33184, 41504, 49824, 58144], [8275, 16486, 24697, 32908, 41119, 49330, 57541],
    [8326, 16588, 24850, 33112, 41374, 49636, 57898], [8214, 16527, 24840, 33153, 41466, 49779, 58092],
    [8264, 16464, 24664, 32864, 41064, 49264, 57464], [8314, 16564, 24814, 33064, 41314, 49564, 57814],
    [8198, 16498, 24798, 33098, 41398, 49698, 57998], [8247, 16597, 24947, 33297, 41647, 49997, 58347],
    [8296, 16528, 24760, 32992, 41224, 49456, 57688], [8345, 16626, 24907, 33188, 41469, 49750, 58031],
    [8224, 16554, 24884, 33214, 41544, 49874, 58204], [8272, 16480, 24688, 32896, 41104, 49312, 57520],
    [8320, 16576, 24832, 33088, 41344, 49600, 57856], [8195, 16499, 24803, 33107, 41411, 49715, 58019],
    [8242, 16594, 24946, 33298, 41650, 50002, 58354], [8289, 16514, 24739, 32964, 41189, 49414, 57639],
    [8336, 16608, 24880, 33152, 41424, 49696, 57968], [8206, 16525, 24844, 33163, 41482, 49801, 58120],
    [8252, 16618, 24984, 33350, 41716, 50082, 58448], [8298, 16532, 24766, 33000, 41234, 49468, 57702],
    [8344, 16624, 24904, 33184, 41464, 49744, 58024], [8209, 16535, 24861, 33187, 41513, 49839, 58165],
    [8254, 16626, 24998, 33370, 41742, 50114, 58486], [8299, 16534, 24769, 33004, 41239, 49474, 57709],
    [8344, 16624, 24904, 33184, 41464, 49744, 58024], [8204, 16529, 24854, 33179, 41504, 49829, 58154],
    [8248, 16618, 24988, 33358, 41728, 50098, 58468], [8292, 16520, 24748, 32976, 41204, 49432, 57660],
    [8336, 16608, 24880, 33152, 41424, 49696, 57968], [8380, 16696, 25012, 33328, 41644, 49960, 58276],
    [8234, 16594, 24954, 33314, 41674, 50034, 58394], [8277, 16490, 24703, 32916, 41129, 49342, 57555],
    [8320, 16576, 24832, 33088, 41344, 49600, 57856], [8363, 16662, 24961, 33260, 41559, 49858, 58157],
    [8212, 16554, 24896, 33238, 41580, 49922, 58264], [8254, 16639, 25024, 33409, 41794, 50179, 58564],
    [8296, 16528, 24760, 32992, 41224, 49456, 57688], [8338, 16612, 24886, 33160, 41434, 49708, 57982],
    [8380, 16696, 25012, 33328, 41644, 49960, 58276], [8223, 16581, 24939, 33297, 41655, 50013, 58371],
    [8264, 16464, 24664, 32864, 41064, 49264, 57464], [8305, 16546, 24787, 33028, 41269, 49510, 57751],
    [8346, 16628, 24910, 33192, 41474, 49756, 58038], [8387, 16710, 25033, 33356, 41679, 50002, 58325],
    [8224, 16588, 24952, 33316, 41680, 50044, 58408], [8264, 16464, 24664, 32864, 41064, 49264, 57464],
    [8304, 16544, 24784, 33024, 41264, 49504, 57744], [8344, 16624, 24904, 33184, 41464, 49744, 58024],
    [8384, 16704, 25024, 33344, 41664, 49984, 58304], [8215, 16575, 24935, 33295, 41655, 50015, 58375],
    [8254, 16654, 25054, 33454, 41854, 50254, 58654], [8293, 16522, 24751, 32980, 41209, 49438, 57667],
    [8332, 16600, 24868, 33136, 41404, 49672, 57940], [8371, 16678, 24985, 33292, 41599, 49906, 58213],
    [8196, 16542, 24888, 33234, 41580, 49926, 58272], [8234, 16619, 25004, 33389, 41774, 50159, 58544],
    [8272, 16480, 24688, 32896, 41104, 49312, 57520], [8310, 16556, 24802, 33048, 41294, 49540, 57786],
    [8348, 16632, 24916, 33200, 41484, 49768, 58052], [8386, 16708, 25030, 33352, 41674, 49996, 58318],
    [8204, 16564, 24924, 33284, 41644, 50004, 58364], [8241, 16639, 25037, 33435, 41833, 50231, 58629],
    [8278, 16492, 24706, 32920, 41134, 49348, 57562], [8315, 16566, 24817, 33068, 41319, 49570, 57821],
    [8352, 16640, 24928, 33216, 41504, 49792, 58080], [8389, 16714, 25039, 33364, 41689, 50014, 58339],
    [8200, 16562, 24924, 33286, 41648, 50010, 58372], [8236, 16635, 25034, 33433, 41832, 50231, 58630],
    [8272, 16480, 24688, 32896, 41104, 49312, 57520], [8308, 16552, 24796, 33040, 41284, 49528, 57772],
    [8344, 16624, 24904, 33184, 41464, 49744, 58024], [8380, 16696, 25012, 33328, 41644, 49960, 58276],
    [8416, 16768, 25120, 33472, 41824, 50176, 58528], [8219, 16607, 24995, 33383, 41771, 50159, 58547],
    [8254, 16678, 25102, 33526, 41950, 50374, 58798], [8289, 16514, 24739, 32964, 41189, 49414, 57639],
    [8324, 16584, 24844, 33104, 41364, 49624, 57884], [8359, 16654, 24949, 33244, 41539, 49834, 58129],
    [8394, 16724, 25054, 33384, 41714, 50044, 58374], [8429, 16794, 25159, 33524, 41889, 50254, 58619],
    [8224, 16624, 25024, 33424, 41824, 50224, 58624], [8258, 16452, 24646, 32840, 41034, 49228, 57422],
    [8292, 16520, 24748, 32976, 41204, 49432, 57660], [8326, 16588, 24850, 33112, 41374, 49636, 57898],
    [8360, 16656, 24952, 33248, 41544, 49840, 58136], [8394, 16724, 25054, 33384, 41714, 50044, 58374],
    [8428, 16792, 25156, 33520, 41884, 50248, 58612], [8215, 16613, 25011, 33409, 41807, 50205, 58603],
    [8248, 16680, 25112, 33544, 41976, 50408, 58840], [8281, 16498, 24715, 32932, 41149, 49366, 57583],
    [8314, 16564, 24814, 33064, 41314, 49564, 57814], [8347, 16630, 24913, 33196, 41479, 49762, 58045],
    [8380, 16696, 25012, 33328, 41644, 49960, 58276], [8413, 16762, 25111, 33460, 41809, 50158, 58507],
    [8192, 16574, 24956, 33338, 41720, 50102, 58484], [8224, 16639, 25054, 33469, 41884, 50299, 58714],
]
# Rows that differ under the legacy rule (xet-core before fe71e3dd / PR #487).
TRIGGER_ENDS_LEGACY_DIFF = {
    1: [8191, 16447, 24703, 32959, 41215, 49471, 57727],
    12: [8324, 16452, 24704, 32832, 41084, 49212, 57464],
    17: [8329, 16457, 24714, 32842, 41099, 49227, 57484],
    24: [8128, 16328, 24536, 32744, 40952, 49160, 57368],
    29: [8128, 16392, 24713, 33034, 41355, 49676, 57997],
    53: [8209, 16337, 24680, 32808, 41151, 49279, 57622],
    61: [8191, 16507, 24823, 33139, 41455, 49771, 58087],
    75: [8387, 16515, 24830, 32958, 41273, 49401, 57716],
    78: [8128, 16338, 24578, 32818, 41058, 49298, 57538],
    84: [8128, 16388, 24656, 32924, 41192, 49460, 57728],
    86: [8196, 16324, 24674, 32802, 41152, 49280, 57630],
    89: [8128, 16339, 24585, 32831, 41077, 49323, 57569],
    104: [8416, 16544, 24888, 33016, 41360, 49488, 57832],
}
SPLITMIX_1MB_SEED0_ENDS = [
    84493, 134421, 144853, 243318, 271793, 336457, 467529, 494581, 582000, 596735,
    616815, 653164, 678202, 724510, 815591, 827760, 958832, 991092, 1000000,
]
CONST59_1MB_ENDS = [131072, 262144, 393216, 524288, 655360, 786432, 917504, 1000000]
