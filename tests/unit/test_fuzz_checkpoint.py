"""Fuzzing Checkpoint.open: the index, the shard headers and config.json of a small checkpoint made hostile.

Properties (tests/fuzzkit.check_checkpoint_dir): only CheckpointError escapes, with one line naming a file of
the checkpoint; no file outside the checkpoint directory is ever opened; nothing is read beyond a file's size;
an accepted checkpoint's index, shard list and headers agree exactly.
"""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama4ctl.checkpoint.checkpoint import INDEX_FILE, MAX_JSON_BYTES, Checkpoint
from llama4ctl.errors import CheckpointError
from tests import fuzzkit


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-ckpt") / "ckpt"
    return root, fuzzkit.build_checkpoint(root, random.Random(0))


def test_the_base_checkpoint_is_accepted(base):
    root, files = base
    fuzzkit.hostile_checkpoint(root, random.Random(0), files)  # then restore it untouched:
    for name, data in files.items():
        (root / name).write_bytes(data)
    assert fuzzkit.check_checkpoint_dir(root) == "accepted"
    assert len(Checkpoint.open(root).shards) == 3


@settings(deadline=None, database=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_hostile_checkpoint_directories_are_opened_or_refused_cleanly(base, rng):
    root, files = base
    fuzzkit.hostile_checkpoint(root, rng, files)
    fuzzkit.check_checkpoint_dir(root)


def test_checkpoint_campaign(tmp_path, long_run):
    seed = int(os.environ.get("LLAMA4CTL_FUZZ_SEED", random.randrange(2**32)))
    cases = 20_000 if long_run else 1000
    stats = fuzzkit.checkpoint_campaign(tmp_path, seed, cases)
    assert stats["cases"] == cases and stats["accepted"] > 0 and stats["refused"] > 0.5 * cases


@pytest.mark.parametrize("shard", fuzzkit.HOSTILE_SHARD_NAMES)
def test_index_naming_a_hostile_shard_is_refused_without_opening_anything_outside(tmp_path, shard):
    root = tmp_path / "ckpt"
    files = fuzzkit.build_checkpoint(root, random.Random(1))
    (tmp_path / "outside.safetensors").write_bytes(files["model-00001-of-00003.safetensors"])
    index = json.loads(files[INDEX_FILE])
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    (root / INDEX_FILE).write_text(json.dumps(index))
    assert fuzzkit.check_checkpoint_dir(root) == "refused"


def test_an_oversized_index_is_refused_without_being_read(tmp_path):
    root = tmp_path / "ckpt"
    fuzzkit.build_checkpoint(root, random.Random(2))
    with open(root / INDEX_FILE, "r+b") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: no disk used
    with fuzzkit.guarded_io(root) as log, pytest.raises(CheckpointError, match="limit"):
        Checkpoint.open(root)
    assert log["reads"] == 0


@pytest.mark.parametrize("path", ["/dev/null", "fifo", "n" * 5000], ids=["char-device", "fifo", "name-too-long"])
def test_paths_that_are_neither_file_nor_directory_are_refused(tmp_path, path):
    if path == "fifo":
        os.mkfifo(tmp_path / "fifo")
        path = str(tmp_path / "fifo")
    elif not path.startswith("/"):
        path = str(tmp_path / path)
    with pytest.raises(CheckpointError) as err:  # was NotADirectoryError / OSError(ENAMETOOLONG)
        Checkpoint.open(path)
    assert err.value.path == path and "\n" not in str(err.value)


@pytest.mark.parametrize("config", [b'{"text_config": {"num_hidden_layers": 1e300}}',
                                    (b'{"num_hidden_layers": 4, "no_rope_layer_interval": 0, "hidden_size": 8,'
                                     b' "intermediate_size": 8, "vocab_size": 8}'),    # was ZeroDivisionError
                                    (b'{"num_hidden_layers": 1000000000000, "hidden_size": 8,'
                                     b' "intermediate_size": 8, "vocab_size": 8}'),    # was a 8 TB list
                                    b'{"num_hidden_layers": "x"}', b'{"text_config": 5}', b"[]"])
def test_a_hostile_config_fails_as_a_checkpoint_error(tmp_path, config):
    root = tmp_path / "ckpt"
    fuzzkit.build_checkpoint(root, random.Random(3))
    (root / "config.json").write_bytes(config)
    with pytest.raises(CheckpointError, match="config") as err:
        Checkpoint.open(root).text  # noqa: B018 - parsing the text config is the point
    fuzzkit.check_error(err.value)
