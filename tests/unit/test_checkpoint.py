"""Opening a checkpoint cross-checks index and headers and refuses unsafe or inconsistent layouts."""

import json

import numpy as np
import pytest

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.errors import CheckpointError
from tests.rawfiles import write_checkpoint, write_tensors

A = {"a.weight": np.zeros((2, 3), np.float32)}
B = {"b.weight": np.ones(4, np.float32)}


def test_sharded_checkpoint_lists_every_tensor_with_its_shard(tmp_path):
    ck = Checkpoint.open(write_checkpoint(tmp_path / "c", {"s1.safetensors": A, "s2.safetensors": B}))
    assert {t.name: t.shard for t in ck.tensors} == {"a.weight": "s1.safetensors", "b.weight": "s2.safetensors"}
    assert ck.shards == ("s1.safetensors", "s2.safetensors")
    assert ck.total_bytes == 24 + 16


def test_single_file_checkpoint_without_index(tmp_path):
    ck = Checkpoint.open(write_checkpoint(tmp_path / "c", {"model.safetensors": A}, index=False))
    assert [t.name for t in ck.tensors] == ["a.weight"]


def test_index_naming_a_missing_shard_is_refused(tmp_path):
    root = write_checkpoint(tmp_path / "c", {"s1.safetensors": A, "s2.safetensors": B})
    (root / "s2.safetensors").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(root)


@pytest.mark.parametrize("name, shard", [("ghost.weight", "s1.safetensors"),   # absent from its shard
                                         ("a.weight", "s2.safetensors")])      # mapped to the wrong shard
def test_index_entries_that_disagree_with_the_shards_are_refused(tmp_path, name, shard):
    root = write_checkpoint(tmp_path / "c", {"s1.safetensors": A, "s2.safetensors": B})
    idx = json.loads((root / "model.safetensors.index.json").read_text())
    idx["weight_map"][name] = shard
    (root / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match=name):
        Checkpoint.open(root)


def test_same_tensor_in_two_shards_is_refused(tmp_path):
    root = write_checkpoint(tmp_path / "c", {"s1.safetensors": A, "s2.safetensors": B})
    write_tensors(root / "s2.safetensors", {**B, **A})
    with pytest.raises(CheckpointError, match="two shards"):
        Checkpoint.open(root)


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/evil.safetensors", "sub/../../x.safetensors",
                                   "..\\x.safetensors"])
def test_index_names_that_escape_the_directory_are_refused(tmp_path, shard):
    root = tmp_path / "c"
    root.mkdir()
    write_tensors(tmp_path / "evil.safetensors", A)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": shard}}))
    with pytest.raises(CheckpointError, match="escapes"):
        Checkpoint.open(root)


def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "pytorch_model.bin").write_bytes(b"\x80\x04this would run code if unpickled")
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint.open(root)
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint.open(root / "pytorch_model.bin")
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model.bin"}}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint.open(root)


@pytest.mark.parametrize("doc", ["{bad json", "[]", json.dumps({"weight_map": {"a": 3}}), json.dumps({"x": 1})])
def test_malformed_index_is_refused(tmp_path, doc):
    root = write_checkpoint(tmp_path / "c", {"s1.safetensors": A})
    (root / "model.safetensors.index.json").write_text(doc)
    with pytest.raises(CheckpointError) as err:
        Checkpoint.open(root)
    assert err.value.path.endswith("model.safetensors.index.json")


def test_legacy_attn_temperature_tuning_is_normalized(tmp_path):
    cfg = {"model_type": "llama4", "text_config": {"attn_temperature_tuning": 4, "hidden_size": 8,
           "intermediate_size": 4, "num_hidden_layers": 2, "vocab_size": 10, "num_local_experts": 2}}
    ck = Checkpoint.open(write_checkpoint(tmp_path / "c", {"s1.safetensors": A}, config=cfg))
    assert ck.config["text_config"]["attn_temperature_tuning"] is True
    assert any("attn_temperature_tuning" in n for n in ck.config_notes)


def test_invalid_config_json_names_the_file(tmp_path):
    root = write_checkpoint(tmp_path / "c", {"s1.safetensors": A})
    (root / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError) as err:
        Checkpoint.open(root)
    assert err.value.path.endswith("config.json")


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        Checkpoint.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .safetensors"):
        Checkpoint.open(tmp_path / "empty")
