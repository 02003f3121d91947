"""Xet hashing: hash strings, xet-core's Merkle vectors (reference xet.md §2.2-2.3, §6.2), file
hashes against hf_xet (current client) and hf_xet 1.1.9 (legacy client), streaming, and the
on-disk chunk-index cache."""

import io
import os

import numpy as np
import pytest

from llama4ctl.xet import index as index_mod
from llama4ctl.xet.chunker import MAX_CHUNK_SIZE, chunk_boundaries
from llama4ctl.xet.hashing import (
    DATA_KEY, ZERO_HASH, chunk_and_hash, chunk_hash, file_hash, file_hash_bytes, file_hash_from_chunks,
    hash_chunks, hash_to_hex, hashes_to_hex, hex_to_hash, xorb_hash,
)
from llama4ctl.xet.index import ChunkIndex, build_index, cache_path, default_cache_dir

try:
    import hf_xet
except ImportError:  # pragma: no cover
    hf_xet = None
needs_hf_xet = pytest.mark.skipif(hf_xet is None or not hasattr(hf_xet, "hash_files"),
                                  reason="hf_xet (>= 1.3, with hash_files) not installed")


def splitmix64_bytes(n: int, seed: int) -> bytes:
    """xet-core's portable ``create_random_data(n, seed)`` (SplitMix64, little-endian words)."""
    s = np.arange(1, (n + 7) // 8 + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    z = (s ^ (s >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z.astype("<u8").tobytes()[:n]


def crafted_legacy_data() -> bytes:
    """A legacy client cuts this after 8128 bytes (gear[17] < 2**48); a current one does not."""
    data = bytearray(splitmix64_bytes(300_000, 2))
    data[8127] = 17
    return bytes(data)


# xet-core aggregated_hashes.rs::test_correctness. Leaf hashes, then per case the leaves as
# (index into LEAF_HASHES, size), the xorb hash and the file hash (zero salt).
LEAF_HASHES = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6",
    "c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72",
    "0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37",
    "adf8773496a9b7319b2e50dc98093f344053b17d8ad37100b9c07d9805988784",
    "4ac202caf347fc1e9c874b1ef6a1c5e619141eb775a6f43f0f0124ccd0060d9e",
    "b3b28636f65c149ea52eb1f94669466f70f033b54cea792824c696ba6ef3c389",
    "0e2c1a002aae913d2c0fc8ddfa4e9e14b7b311b3b0d458726d5d9f6a6318013c",
    "4bb8167baa56fe2e2c9bd231c17da8103d0e5880952f5f95ece4ba36f12f780e",
    "264fa414472e8c6a7db4cf4d09e98b06b3dbadbc0b0a22998c37e5a3266cbaeb",
    "0143189512fc8ff13863dd29cddfd27843fb33a1eb2d74bb1e88376ad314514d",
    "5bd05c0a044e37de8dee2a661c006c4d38cbe2f52b7dfb7886c0e4fe643f1320",
    "98b8f089d87826e97d9372589354df5b13d5c44128e42a107d81c2f5ca5b9935",
    "41a664ad7bcde31caeb2326def866d21c3e6af93eea93c2e97341954a99645d5",
    "1a07f38ecc220857e2ae8992c9dbf687b420b8e6b78ed18553db6107096e6674",
    "3e284cd4c5d3742c9c2a30d38592da97db560db3f7b300ed99e2cf0f57493fc8",
    "2876ca5532dfd7ee48cd45b397640454156d73a9d9eb8c495d1c946cec641b8d",
    "f861844b7cc10d2cb9c8496ec38ab761610ac71494c96e914b477a86a13beee1",
    "b90535aa19f785f289cd8a414b27f1eb2862c287ee5352412cfab21a5991d4d0",
    "cba9e36df25bac3059e8c40e733365b51d28cff9fe8f2cfd0b8166a21880706e",
    "0542bc8841498c90fc6c502cca431f455267fd55b70b57adab64562836c7cff9",
    "a43c0a53ff26d2174d9124a6fdeac1ec56775993cf890a0e8a5f23ef0047936e",
    "9acb79956803fabf3ad62f3509d472e2b854a0a603c2b1f4fad265bb2086efa6",
    "32689cb7dca6b1168f98d627ce793a3fc0f2774ada4014be1ee4a64fb56287af",
    "94fdf9880e23103cd1b271e49fa73e6863982772025080a2a33e566dd0ce92c8",
    "c689977f4153226f41217ed8a4b2d4a8e77b0767fa3ce2c9aaaba88c852007a9",
    "2cdc473fae65555c10cb8e0c8612c1ae7a98f315c63ef022dbc70e447767dd44",
    "027717d5c1ead1d2b3794d5c0ff6271712be541c10d402232c2f14d64a03ffd3",
    "a54d9bdf618c585ce4b841093a84efc90919ce42e465f30919957e34c144c3bb",
    "bda4c65c7d357bcfb15e8de64adfee01bdac58941712b1f3dbd79d56dba2e9ab",
    "ac6ced48dcb39ba66edcf2eef64b3e1056efc651babbc1942a8bc2c291a8d912",
    "11e3670cb291e19455346923effb9af28e637b0d6bf5829c173b6a702df142d8",
    "262cee84de1583b570f7c8ca62657d7bf6805dbd937e3b15899beede88e6d033",
    "d7bf4b9589f88e27910726714bedbd3fdf8bc22d6dd5584cbe9e917d81d16d98",
    "7746419c6931e1b71995d3b03a9757c0431886bf1e84b6353a8d6a8d4a6acf83",
    "b64f118e4db3652e5d729b621c7e1810bcc3ccdd6fdaf11397a24cfe50a5cc0c",
    "55a21c2a6c4b547e44abd598ab763af93553f84c7ecee06bb381a1e228a67c40",
    "cc956735a3d3e6cbdb5c1f352b3047ba1d43cb0170fe56edef5b1883307d8544",
    "ccbf9573bd67c4dcb2bb18faec1a5dcd9930ad7ac44c5fef343502213013d6eb",
    "7addab5065154e0af972acdb3381e6dd1d74553ddd34c1aa7e1221e4b5b296b2",
    "aa3bc51b8edc616972cda20e2e7c014530dcb32ec8692dc3cdad5f35a462bb96",
    "9bdea725dacdbfdfb4e2044c5acceadf5d0c49485fcab89b6ef896d52a4a09d1",
    "edde7b9880ec5303ccc8401cc9ec5e6a6a18c62353746da14da3b2bbdd524cad",
    "9d15f7098eda6921ca6c26da00ede3d8fc6320aec400ff8b067a7be125602d6b",
    "262f8c4fb624bea0a8beb3b95e911fe5050be9702a29319069f4afdbe0044105",
    "22efff126110192a0ad352e44df8d2bb1b5e1b2aab20c4c046d8c290081814dc",
    "39d72f71defd8cf7ec971c8367cbb89dc4042a5520978c139375fc60fc96c594",
    "b99b719c74883275baa7ef5971d64e6ce897ad66ded1801a5a0cf3decae9feb7",
    "19f4d995747b316f17e575c365884672345843b689b466a2419a7fe731d1ff33",
    "e02df52e816323bbd259f2c98d99e07ddfba0170005915b09cca07ec46493dea",
    "47cc8acc3eab9d7e57e3b4b36c452b29817d837ba0744233f66d5abb397066a7",
    "eb586c3af09fbaa913969d5d221e79e94262729d7dc7424d4afa54c4ea41c798",
    "58819a31ac66ea0e59def9fcdca5910811f9a8076402da15b879b2de6b58dca7",
    "124a6d441350fdbf089656a5bc634aa3108013db2460283087c0b2f9698d064a",
    "f54815a68307bd7999ca071138041449ac4a06403d1f882b159ca91b0fdb15eb",
    "f9fd25cf5ed50d96051b2e093d3e7bffd95e4d8e5bab2bf0a4c0abd44b432e5d",
    "f3a84473e24579a7d66abd673bf1c2799f6a7578d243d177a7a5ddec1def524e",
    "8a9ef2d746f6a3ee37b03960d8aa04d345f13887d91b16944089f318c3a5db79",
    "47d738e05820835e441ccefa363e3674766a8ed9d503d1ca1d088a4eadf81368",
    "e72960cf3cb781e96a93cffaa17347a9de98b8ae8c44caf9a277155d26accc4b",
    "d2a7a4ab1ca5aa155a4236b9cb70224fa71283787747f0e4c9b92bd353addaf5",
    "da077b2eec352d6a06d3113421f29718f49067f4c7fefda0d1c92f02568a0c8d",
    "348e59244d0c798ed5e948e53d0adb33b1a333ba742aa2629bc57634ec1c4145",
    "c6d5b78963db3be2eb72d5f50e0863905f031a8153a0192014fc70deeffda18d",
    "1e0270a4723d0b5137d32963bf698d8d75c6ddbc45b43012ead3d74df421b43a",
    "3d9f4da6df392205a748f2dc805d9d528dded20fbeb8d8ee8b08ad98ad012772",
    "03b41bc24a857342b05957bccf58c0a5f6ff6892ad0ff286d215dd7b78cb1916",
    "79ff727cb6227413efdf3ef49e8b8da518aee0eb4981d0bb8e5121394ee97e8a",
    "32453e5156a6e091e7e86a05c4771a84d7d44a1674015a6053f80e339a6f409f",
    "9352139ebc1ee29a887c2c421b3b8f4f6a9c411e73856751a058153b90e11a2f",
    "f252ef14829f0300aca6f722d2eb77e71bf103aacf5c5b66e1811336e7192697",
    "1faa98fd5be526bf554f43bbe725faaa5efc290d6b2399526876a60377df1f0d",
    "2f11884b48aec3bcccc12bdb150c2eb410643242d8575168c6a5ba75530053a3",
    "e19626b6e8c662266d0b88b4e2d2c04b7985fd27a8c2080eddf1679482aede70",
    "ef68559f9f949ebc30fbde3fdc5df52cee3babd722abb40e0fd1b19b26a6c5fd",
    "4c0f078b5206b52b2c740810d74c31cf669f87145ecd6a866b53c0fdc92ed545",
    "2ba6fbdc8531a945ce767db224542f4bdf68ea23a1d39d6660b93f0b4ac3c886",
    "0ca69a8a1045003e23f30de516fd833ea1147e53c71125f6de680ae580bb0b2a",
    "0d9ce05040f092adf4c48a8753558d1b003f2a64eef2fc24cdc6a065b42200eb",
    "e41d9f14a678ceed00680679664ff7a95ef8e5e2a691b74c7493d36dcd5cce6e",
    "fd5e47e45413eaa4ea4455c7e8a508beea9da2ff63e334f809964e5da1d35eb1",
    "255fe31523e7f14e854a56a46492dff3fe0a92b13ecb8c5e3c41911cb9802df4",
    "1baa420f0e1c2b5b79c05661fc7b15365321599b3cf28629410ba484f3a526be",
    "4b904af6bb31a324998f5ed7f8c3961b3c6cfa2fb797a16e9427f32c57c45937",
    "07b802a04568538068a9db24a0ce06794fa0ebd59f8b3c284f362b2d62abb6cf",
    "915f764361e496714a26c1c314bfd4b3a1e1d5cf2cdb1fea3ce2a46c49d84bfc",
    "515971f1ff66b929c173fd423aa17fa3a7f9f26239d5029dcad68a4b8140fdb4",
    "e5a9e2625e21de37d2e6886640ef3a6a3d7b4b0f0f360653cc54d69d66f80b3b",
    "41601754f8ef7dee3c248e981c3cd0590b6f413ee082b6fdbf678c15142f5e4d",
    "693ba2c7b0930ac2d64464c4e33952a2e79866c38b70540b9671fdcc9be78f50",
    "09eaefa1e2e8ed20344dfaeae186170cc0d76dc32b80997026609fb981a75ab2",
    "6288ca28b610996253ffabd14b47870ef8c1c4c32fa96dabbee50b127dee2387",
    "44aa1b86bfd96d5aaed4cf12b8562d4d126a33f33c48ae4513fb538bd397c8be",
    "f1a6350bebd252c9413754d80df17a10f91ce7ec662e98f4cee1c82ba4fbede6",
    "a1f557153593f38d94d7f6e24c01fc941d9567d17af67e8539f1b81bc51ee264",
    "a18a395a1e5e7025f7f37f46f8aef8e0b32fa892b0f4e869b05c7f45c72cb064",
    "51b39cb7f3e8b88067fcb4ed7fffd681516dfb55b383a8b413f4237fa773c4ce",
    "05d80656464074580c40cfbac2e2e60d761c0600675862ee63701d7a5d3433a2",
    "fa80e2c99389bcb0c43228a14b0035a2d885b05f04c3895c92dbb8ef8e00e29a",
    "8968e28ce21a2507f55ab8ae865c669ca1d2104cdd911604f6f73927fb7b3d35",
    "4a1fc357463fd231064bc5ee6eb32bcc749750072d85e81e2cfbebde4f7e0018",
    "4f8fbbf4d8654203636f5f639ddf0c78f2f9575a825f00acbfba1552c6b91dca",
    "b38a53037470a9f90fb0a3df72caf9cf58642ee8750bb7244d60efdeb598f79c",
    "96dc535b16ea51143ed885e92d7e5e0e010b86e3f93c992ddf52af537e3c4f4c",
    "4e6faa2b9c3c8f7075cb12d069ac2cb07f13cfc506239f715e9e8c071ecaf878",
    "87ba523ddb6112bf72d5dcff817919312f2650cb4742f47b289ba2345da5daf6",
    "34a7e7b01ef534717ac938a586f871a2549cf38adc776557e6d91cf0bf4046ad",
    "32d60c12ce51cd05bbdd8d1a192963686523e638015ccbc68c2065eb54232934",
]
EIGHT = [(k, 100 * k) for k in range(8)]
AGGREGATED_CASES = [
    ([],
     "0000000000000000000000000000000000000000000000000000000000000000",
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ([(0, 0)],
     "0000000000000000000000000000000000000000000000000000000000000000",
     "638a6bc391964a85939d48f008e8bdbae6a7975e7ca2d87a3ce2492f4e4d8a4c"),
    ([(1, 100)],
     "cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6",
     "8e16257caa3fe079d484d872a8975264b2ff683b0d6db9028cc7c0f968a45661"),
    ([(1, 100), (2, 200), (3, 300)],
     "71ec1275fca074724e2dd666921b3277c7cee603e4d025bcab2d4050015be2bc",
     "54e55dccc6653c612bdb5576c5d3cb34bb31bc4e100248abccf4c908b3ef7715"),
    ([(1, 100), (1, 100), (1, 100), (1, 100)],
     "89f2ada89ff8c96763c6b25010e6dd76a4c05b1466207633ea559acf2093211b",
     "2cdba690d0e09563596e0cda626d43eb4c96ef1e994fe72d9b2f5a83cfcd36dd"),
    ([(1, 100), (2, 200), (1, 100), (2, 200)],
     "90f8313ef12df385d237a067aded02562c35ded12116e32eba401dbc86c38031",
     "284ea045e5a579e99c21ec597c20de1fc0c09e7168162aac00db8f61b3d82dbb"),
    ([(1, 100), (2, 200), (1, 100), (2, 200), (3, 300), (4, 400)],
     "52c826f99507aa05d0b45e9837fa1709e0485425cfbcb1e80db3905cf98b3ee9",
     "91d21684db364c8883ab8209fa5eb2e781cf07f37e1fa43e731c30839afe422f"),
    ([(0, 0), (1, 100), (0, 0), (1, 100)],
     "e1755c85be07fd6b7a8d7becc85e6d8c5f507f2a3d38b316bcb6f97855e72188",
     "207caf24fce045ac6d873b4c6186a5a435d600d103e1ae345e55ddf1f4b7f7ef"),
    ([(0, 0), (1, 100), (0, 0), (1, 100), (0, 0)],
     "f36c6a6374a567efd36ed087aeb680b57e3af4e0b5b8e7be2593df4cb647a2de",
     "ab2f46d31855e1133b3b5b70e78f841394a648710a208923b221c1a8a0572a1f"),
    ([(1, 100), (0, 0)],
     "e8660f81494ca836a58e395c1395ef97870ed71e2b113eec1fab6b3361f46dd6",
     "274d92f7e2acebaa2b8d63c0b5e7a4fc15814a606e3e3825d55609e671bcc5d9"),
    ([(3, 300), (4, 400), (5, 500), (3, 300)],
     "73b9dc802ab03a0855c66823a18d95c2a785af594535756abf405038b6270cb8",
     "c7d5be75ef5ec12888027ad305141e4109e599494477661177475c84e12de48b"),
    ([(3, 300), (4, 400), (5, 500), (5, 500), (5, 500)],
     "2c1fd1eca47e284512fcb40fcf45a1874939f9b91c774d46aeba5d004d9d263d",
     "0799ba7ee2c3fed173a8e8d832cd13970ddc16070ffbc8aa6dcd77476f66dc73"),
    (EIGHT,
     "f62abe77e3fb9c954fe52b0028027ddc90c064c45951a4fd2211d87e5c0011db",
     "d1b068be5bbdb38992269e8efe61f601881e39f7a7585fd76883cc6ea5c23b44"),
    (EIGHT * 8,
     "6554007c9b5d0a5e7918f79596a1b68815c1407535585435f5735db761f21b88",
     "a8640ab81d48854e00078e12b1ea8be5d90be0ffb5f73a15b7009981d093ddd8"),
    ([(1, 100)] * 32,
     "0a0123c1617921883b7e13902095fcb86676e77c49120c33b233003b0af0e0a6",
     "53af4711fd1d5e5bdc7f931b6be932314d8d673cb16ad2482f6f5222eaf9e63d"),
    (EIGHT + [(1, 100)] * 4,
     "e7fc30b73ec9930593f80fe777b334e9d3bb73e45e6a79fa5784b2603446158b",
     "69e1af2fd6023ce133e0d1b90e32d1d42ef79f5a710f2b0accfc3a735e98de9d"),
    ([leaf for leaf in EIGHT for _ in range(2)],
     "636c65db520ec16e8166f9ec7a0cf9f74b26369077ac60160ec0221c86bc9f77",
     "6a90ad0d6f5246ac61f1de898c6944c03e14004a1368e6fb23387108c4d039e0"),
    ([(8 + k, 858993459200 + 100 * k) for k in range(100)],
     "c51247b5782028a5b8fd8191c855e46c02ba5923ceeed828b167614d47fb6686",
     "4bacfd61a7f5401a3a55770234bf6ab0ce9a44446d81e9ce9977220fb9022406"),
]
# Salted file hashes (file_hash_with_salt) for three of the cases: (case, salt, hash).
SALTED_FILE_HASHES = [
    (1, "f4aa7219b7bc6145df344b930c1cf63680037e13236f4b3b8f439aba1520d443",
        "3e44e4a200e05a69afc979eb2e0507817e4f0ddff128a97e563c0e05fed3bd25"),
    (1, "51d15f80fa3c9b0c42673a3e27206741e6b8881ae902614a8dd45e6e0e4ab1d2",
        "7a6c58ad3831f6ac16727ebe8e1a4e7d9f509ba8e1f75f5f31c5e67c66a94486"),
    (3, "b286606709ef32a1cfede1e603a39f83fef56772d8234c0e35d8920071d80b69",
        "337f1f046e4cfc1057f0f3edbd87cf977fdfaf3c2b0c0031ca2d1d2a34aa2270"),
    (3, "20f7357cdb2f6d3727375656e4eaf464fa195094ff501edc08aaccfb1419a07b",
        "82c5359ad947e91e4da6a00034f94a9159bd3bf24d005ef167648b9d3ba77f8c"),
    (17, "fc2ec3634962518fcccf69fa901b930a1e71bc859a0d877799fbd1d0dddc10d7",
        "b451a0e35458e1d21445735852844d3776cef13f255a875c4fa37fd76c7f2637"),
    (17, "9c9a3e2c77df0b1f4292d0c34b7c9752c01479bc6953656527aafef81fee6c45",
        "8ce603595da4bd4518ee33a0e58c28309f78ef5cce23f1b53ad048f360cd25e5"),
]


# --- hash strings ----------------------------------------------------------------------------

def test_hex_string_endianness():
    raw = bytes([22, 175, 58, 132, 4, 75, 131, 214, 190, 153, 138, 66, 226, 3, 153, 242,
                 204, 86, 80, 234, 249, 153, 80, 99, 159, 80, 65, 138, 236, 231, 149, 78])
    assert hash_to_hex(raw) == "d6834b04843aaf16f29903e2428a99be635099f9ea5056cc4e95e7ec8a41509f"
    assert hash_to_hex(bytes(range(32))) == "07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918"
    assert hex_to_hash(hash_to_hex(raw)) == raw
    rows = np.random.default_rng(0).integers(0, 256, (5, 32), dtype=np.uint8)
    assert hashes_to_hex(rows) == [hash_to_hex(r.tobytes()) for r in rows]


# --- Merkle aggregation ----------------------------------------------------------------------

def leaves(case):
    return [hex_to_hash(LEAF_HASHES[i]) for i, _ in case], [size for _, size in case]


@pytest.mark.parametrize("case, xorb, file", AGGREGATED_CASES)
def test_aggregated_hashes(case, xorb, file):
    hashes, sizes = leaves(case)
    assert hash_to_hex(xorb_hash(hashes, sizes)) == xorb
    assert hash_to_hex(file_hash_from_chunks(hashes, sizes)) == file
    arr = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, 32)
    assert hash_to_hex(file_hash_from_chunks(arr, np.array(sizes, np.uint64))) == file


@pytest.mark.parametrize("case_no, salt, expected", SALTED_FILE_HASHES)
def test_salted_file_hashes(case_no, salt, expected):
    hashes, sizes = leaves(AGGREGATED_CASES[case_no][0])
    assert hash_to_hex(file_hash_from_chunks(hashes, sizes, hex_to_hash(salt))) == expected


def test_empty_file_hash_is_zero_whatever_the_salt():
    assert file_hash_from_chunks([], [], salt=b"\x01" * 32) == ZERO_HASH
    assert file_hash_bytes(b"") == "0" * 64


# --- file hashes -----------------------------------------------------------------------------

# (data, file hash from hf_xet 1.8.0 `hash_files`, from hf_xet 1.1.9 `upload_files`). The
# legacy values were taken from a pre-#487 client uploading to a stub CAS server; the 4 MB
# case has 7 legacy chunks of 8128 bytes.
CLIENT_FILE_HASHES = [
    (lambda: splitmix64_bytes(1_000_000, 0),
     "3d17b2d7d64a0e011b6717a52d9a16bd2c3f05b743fa8adf52a7d75dafab6d89",
     "3d17b2d7d64a0e011b6717a52d9a16bd2c3f05b743fa8adf52a7d75dafab6d89"),
    (lambda: splitmix64_bytes(4_000_000, 2),
     "62e09e03c5a0f524ed334391890bbebdadb0a5562abd6e8c3a32ab12392254bc",
     "bd1397bb13d4c52361b12d2b9d27f2a673eebf2679986cc3332fd347b41b2560"),
    (crafted_legacy_data,
     "9cd264ed61e8cee0b435d6517eb28d93347a9a8c9a8182b63143c93ee9797ebf",
     "c839054f1aab383a29f66c78d889cc8dee959f5f24db3a1775fd048d57a86ac6"),
]


@pytest.mark.parametrize("make, current, legacy", CLIENT_FILE_HASHES)
def test_file_hashes_of_real_clients(make, current, legacy):
    data = make()
    assert file_hash_bytes(data) == current
    assert file_hash_bytes(data, chunker="legacy") == legacy


def test_chunk_hash_is_keyed_blake3():
    import blake3

    assert chunk_hash(b"abc") == blake3.blake3(b"abc", key=DATA_KEY).digest()


@pytest.mark.parametrize("block", [1000, MAX_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 1 << 20, 4 << 20])
def test_streamed_chunk_and_hash_matches_in_memory(tmp_path, block):
    data = splitmix64_bytes(2_500_000, 9) + bytes(400_000) + splitmix64_bytes(100_000, 10)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    ends, hashes = chunk_and_hash(data)
    for source in (path, io.BytesIO(data)):
        e, h = chunk_and_hash(source, block_size=block)
        assert np.array_equal(e, ends) and np.array_equal(h, hashes)
    assert np.array_equal(ends, chunk_boundaries(data))
    assert bytes(hashes[3]) == chunk_hash(data[int(ends[2]):int(ends[3])])


def test_threaded_hashing_matches_single_thread():
    data = splitmix64_bytes(3_000_000, 11)
    ends = chunk_boundaries(data)
    assert np.array_equal(hash_chunks(data, ends, threads=1), hash_chunks(data, ends, threads=3))


EDGE_SIZES = [0, 1, 8191, 8192, 8193, MAX_CHUNK_SIZE - 1, MAX_CHUNK_SIZE, MAX_CHUNK_SIZE + 1,
              1 << 20, (1 << 20) + 1, 3 << 20]


@needs_hf_xet
def test_file_hash_equals_hf_xet(tmp_path):
    rng = np.random.default_rng(12)
    paths = []
    for n in EDGE_SIZES:
        paths.append(tmp_path / f"random-{n}")
        paths[-1].write_bytes(rng.bytes(n))
    paths.append(tmp_path / "zeros")  # all forced 128 KiB cuts
    paths[-1].write_bytes(bytes(5 * MAX_CHUNK_SIZE + 3))
    paths.append(tmp_path / "repeated")  # a repeated region, as in fine-tuned checkpoints
    block = rng.bytes(700_000)
    paths[-1].write_bytes(block + rng.bytes(1000) + block + block[:300_000])
    expected = [r.hash for r in hf_xet.hash_files([str(p) for p in paths])]
    for p, want in zip(paths, expected):
        assert file_hash(p) == want, p.name
        assert file_hash(p, block_size=1 << 20) == want, p.name  # sizes at and around block multiples


# --- chunk index and its cache ---------------------------------------------------------------

@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA4CTL_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = index_mod.chunk_and_hash

    def counting(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(index_mod, "chunk_and_hash", counting)
    return calls


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA4CTL_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a" / "xet-index"
    monkeypatch.delenv("LLAMA4CTL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "llama4ctl" / "xet-index"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "llama4ctl" / "xet-index"


def test_index_contents(tmp_path, cache_env):
    data = splitmix64_bytes(1_500_000, 13)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    idx = build_index(path)
    ends, hashes = chunk_and_hash(data)
    assert np.array_equal(idx.ends, ends) and np.array_equal(idx.hashes, hashes)
    assert idx.ends.dtype == np.uint64 and idx.hashes.shape == (len(idx), 32)
    assert idx.nbytes == 40 * len(idx) and int(idx.sizes.sum()) == idx.file_size == len(data)
    assert idx.starts[0] == 0 and np.array_equal(idx.starts[1:], idx.ends[:-1])
    assert idx.file_hash() == file_hash(path)
    assert idx.chunk_hash_hex(0) == hash_to_hex(chunk_hash(data[:int(ends[0])]))


def test_cache_hit_miss_and_invalidation(tmp_path, cache_env):
    path = tmp_path / "m.bin"
    path.write_bytes(splitmix64_bytes(600_000, 14))
    first = build_index(path)
    entry = cache_path(path)
    assert entry.exists() and entry.parent == default_cache_dir() and len(cache_env) == 1
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp")]

    again = build_index(path)  # hit
    assert len(cache_env) == 1
    assert np.array_equal(again.ends, first.ends) and np.array_equal(again.hashes, first.hashes)

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: miss
    build_index(path)
    assert len(cache_env) == 2 and cache_path(path) != entry

    st = os.stat(path)  # same size and mtime, different first bytes: miss
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = build_index(path)
    assert len(cache_env) == 3 and not np.array_equal(changed.hashes[0], first.hashes[0])

    build_index(path, chunker="legacy")  # a separate entry per chunker
    assert len(cache_env) == 4 and cache_path(path, "legacy") != cache_path(path)
    build_index(path, cache=False)
    assert len(cache_env) == 5


def test_corrupt_cache_entry_is_rebuilt(tmp_path, cache_env):
    path = tmp_path / "m.bin"
    path.write_bytes(splitmix64_bytes(300_000, 15))
    good = build_index(path)
    cache_path(path).write_bytes(b"not a zip file")
    rebuilt = build_index(path)
    assert len(cache_env) == 2 and np.array_equal(rebuilt.hashes, good.hashes)
    loaded, meta = ChunkIndex.load(cache_path(path))  # rewritten, loadable without pickle
    assert np.array_equal(loaded.ends, good.ends) and int(meta["file_size"]) == 300_000


def test_empty_file_index(tmp_path, cache_env):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    idx = build_index(path)
    assert len(idx) == 0 and idx.file_size == 0 and idx.file_hash() == "0" * 64
    assert len(build_index(path)) == 0 and len(cache_env) == 1
