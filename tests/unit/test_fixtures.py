"""The tiny Llama 4 checkpoints are what transformers 5.17 writes and loads, and they run on CPU."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llama4ctl import fixtures  # noqa: E402
from llama4ctl.fixtures import build_random_checkpoint, build_tiny_checkpoint, special_token_ids  # noqa: E402

H, I, I_MLP, E, VOCAB = 64, 48, 96, 4, 512
MULTIMODAL = ["scout_dir", "maverick_dir"]
TEXT_ONLY = ["scout_text_only_dir", "text_only_dir"]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
RENDERED = ("<|begin_of_text|><|header_start|>user<|header_end|>\n\nWhat is the capital of France?<|eot|>"
            "<|header_start|>assistant<|header_end|>\n\n")


def headers(ckpt: Path) -> dict[str, dict]:
    """tensor name -> {dtype, shape, shard}, read from the shard headers (no tensor data)."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape()), "shard": shard.name}
    return out


def load(ckpt: Path):
    from transformers import Llama4ForCausalLM, Llama4ForConditionalGeneration

    config = json.loads((ckpt / "config.json").read_text())
    cls = Llama4ForCausalLM if config["architectures"] == ["Llama4ForCausalLM"] else Llama4ForConditionalGeneration
    model, info = cls.from_pretrained(ckpt, output_loading_info=True)
    return model, info


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# --- loading and running with transformers -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", MULTIMODAL + TEXT_ONLY)
def test_loads_with_no_missing_or_unexpected_keys_and_generates(fixture, request):
    from transformers import AutoTokenizer

    ckpt = request.getfixturevalue(fixture)
    model, info = load(ckpt)
    assert {k: v for k, v in info.items() if v} == {}, info
    assert model.dtype == torch.bfloat16
    expected = "Llama4ForCausalLM" if fixture in TEXT_ONLY else "Llama4ForConditionalGeneration"
    assert type(model).__name__ == expected
    tok = AutoTokenizer.from_pretrained(ckpt)
    enc = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 4 and int(new.max()) < VOCAB
    again = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, again)  # greedy by default and deterministic


def test_multimodal_forward_with_pixel_values(scout_dir):
    from transformers import AutoTokenizer

    model, _ = load(scout_dir)
    tok = AutoTokenizer.from_pretrained(scout_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "<|image|>" in prompt
    # What Llama4Processor expands one 28x28 tile to: 2x2 patches, pixel shuffle 0.5 -> one <|patch|> token.
    prompt = prompt.replace("<|image|>", "<|image_start|><|image|><|patch|><|image_end|>")
    enc = tok(prompt, add_special_tokens=False, return_tensors="pt")
    assert (enc.input_ids == model.config.image_token_index).sum() == 1
    pixel_values = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        with_image = model(**enc, pixel_values=pixel_values).logits
        without = model(**enc).logits
    assert with_image.shape == (1, enc.input_ids.shape[1], VOCAB)
    assert torch.isfinite(with_image).all()
    assert not torch.equal(with_image, without)  # the image features reached the language model
    out = model.generate(**enc, pixel_values=pixel_values, max_new_tokens=2, do_sample=False)
    assert out.shape[1] > enc.input_ids.shape[1]


def test_files_are_byte_identical_to_transformers_save_pretrained(maverick_dir, tmp_path):
    """Same weights through transformers' own writer: same shard split, names, headers, bytes, index, config."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, Llama4ForConditionalGeneration

    model = Llama4ForConditionalGeneration(AutoConfig.from_pretrained(maverick_dir))
    state = {}
    for shard in maverick_dir.glob("*.safetensors"):
        state.update({k: v.clone() for k, v in load_file(shard).items()})
    model.load_state_dict(state, strict=True, assign=True)  # fresh storages, like a model built in memory
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "generation_config.json")
    assert written == sorted([p.name for p in maverick_dir.glob("model*")] + ["config.json"])
    for name in written:
        assert filecmp.cmp(maverick_dir / name, tmp_path / name, shallow=False), name


# --- layout --------------------------------------------------------------------------------------------------


def test_scout_and_maverick_layer_patterns(scout_dir, maverick_dir):
    scout = json.loads((scout_dir / "config.json").read_text())["text_config"]
    maverick = json.loads((maverick_dir / "config.json").read_text())["text_config"]
    assert scout["moe_layers"] == [0, 1, 2, 3] and scout["interleave_moe_layer_step"] == 1 and scout["use_qk_norm"]
    assert maverick["moe_layers"] == [1, 3] and maverick["interleave_moe_layer_step"] == 2
    assert maverick["use_qk_norm"] is False
    for cfg in (scout, maverick):
        assert cfg["no_rope_layers"] == [1, 1, 1, 0]  # layer 3 is NoPE, as every 4th layer of the real models
        assert cfg["layer_types"][3] == "full_attention"
    names = headers(maverick_dir)
    assert "language_model.model.layers.0.feed_forward.gate_proj.weight" in names
    assert "language_model.model.layers.0.feed_forward.experts.gate_up_proj" not in names
    assert "language_model.model.layers.1.feed_forward.experts.gate_up_proj" in names


@pytest.mark.parametrize("fixture,prefix", [("scout_dir", "language_model.model"), ("text_only_dir", "model")])
def test_fused_expert_tensors_have_the_real_names_and_axes(fixture, prefix, request):
    names = headers(request.getfixturevalue(fixture))
    assert H != 2 * I
    layer = f"{prefix}.layers.1.feed_forward"
    assert names[f"{layer}.experts.gate_up_proj"]["shape"] == [E, H, 2 * I]
    assert names[f"{layer}.experts.down_proj"]["shape"] == [E, I, H]
    assert names[f"{layer}.router.weight"]["shape"] == [E, H]
    assert names[f"{layer}.shared_expert.gate_proj.weight"]["shape"] == [I, H]
    assert not any(n.endswith(("gate_up_proj.weight", "experts.down_proj.weight")) for n in names)
    assert {v["dtype"] for v in names.values()} == {"BF16"}
    lm_head = "language_model.lm_head.weight" if prefix.startswith("language_model") else "lm_head.weight"
    assert names[lm_head]["shape"] == [VOCAB, H]


def test_prefixes_of_multimodal_and_text_only(scout_dir, text_only_dir):
    multimodal = {n.split(".")[0] for n in headers(scout_dir)}
    assert multimodal == {"language_model", "vision_model", "multi_modal_projector"}
    assert {n.split(".")[0] for n in headers(text_only_dir)} == {"model", "lm_head"}
    assert json.loads((text_only_dir / "config.json").read_text())["model_type"] == "llama4_text"
    assert not (text_only_dir / "processor_config.json").exists()


def test_several_shards_and_a_consistent_index(scout_dir):
    index = json.loads((scout_dir / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in scout_dir.glob("*.safetensors"))
    assert len(shards) >= 3
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    names = headers(scout_dir)
    assert index["weight_map"] == {n: v["shard"] for n, v in names.items()}
    sizes = {n: 2 * torch.Size(v["shape"]).numel() for n, v in names.items()}
    assert index["metadata"] == {"total_size": sum(sizes.values()), "total_parameters": sum(sizes.values()) // 2}
    assert all(p.stat().st_size <= 100_000 + 4096 for p in scout_dir.glob("*.safetensors"))


def test_hidden_size_equal_to_twice_the_expert_width_is_refused(tmp_path):
    with pytest.raises(ValueError, match="axis"):
        build_tiny_checkpoint(tmp_path / "x", hidden_size=96, expert_intermediate_size=48)


def test_weights_have_a_sane_scale(scout_dir):
    from safetensors.torch import load_file

    state = {}
    for shard in scout_dir.glob("*.safetensors"):
        state.update(load_file(shard))
    norm = state["language_model.model.layers.0.input_layernorm.weight"].float()
    assert abs(norm.mean().item() - 1) < 0.01 and norm.std().item() < 0.05
    w = state["language_model.model.layers.0.feed_forward.experts.gate_up_proj"].float()
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


# --- determinism ---------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_other_weights(tmp_path, maverick_dir):
    a = files(build_tiny_checkpoint(tmp_path / "a", shape="maverick"))
    assert a == files(maverick_dir)
    b = files(build_tiny_checkpoint(tmp_path / "b", shape="maverick", seed=1))
    assert a.keys() == b.keys()
    assert all(a[n] == b[n] for n in a if not n.endswith(".safetensors"))
    assert all(a[n] != b[n] for n in a if n.endswith(".safetensors"))


def test_weights_do_not_depend_on_the_chunking_or_the_shard_size(tmp_path, monkeypatch, scout_text_only_dir):
    monkeypatch.setattr(fixtures, "_CHUNK_ELEMENTS", 1000)  # every large tensor spans several chunks
    small = build_tiny_checkpoint(tmp_path / "chunked", shape="scout", text_only=True)
    assert files(small) == files(scout_text_only_dir)
    one = build_tiny_checkpoint(tmp_path / "one", shape="scout", text_only=True, max_shard_size="10MB")
    assert not (one / "model.safetensors.index.json").exists()
    from safetensors.torch import load_file

    merged = {}
    for shard in scout_text_only_dir.glob("*.safetensors"):
        merged.update(load_file(shard))
    single = load_file(one / "model.safetensors")
    assert single.keys() == merged.keys() and all(torch.equal(single[k], merged[k]) for k in single)


def test_refuses_a_non_empty_destination_unless_overwrite(tmp_path):
    dst = build_tiny_checkpoint(tmp_path / "c", shape="maverick")
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(dst, shape="maverick")
    build_tiny_checkpoint(dst, shape="maverick", text_only=True, max_shard_size="10MB", overwrite=True)
    assert sorted(p.name for p in dst.glob("model*")) == ["model.safetensors"]  # stale shards removed
    assert not (dst / "processor_config.json").exists()  # and stale side files


# --- config, tokenizer, processor ----------------------------------------------------------------------------


def test_legacy_config_writes_the_int_4_that_transformers_5_refuses(legacy_config_dir, scout_dir):
    legacy = json.loads((legacy_config_dir / "config.json").read_text())
    value = legacy["text_config"]["attn_temperature_tuning"]
    assert value == 4 and type(value) is int
    assert json.loads((scout_dir / "config.json").read_text())["text_config"]["attn_temperature_tuning"] is True
    with pytest.raises(Exception, match="attn_temperature_tuning"):
        transformers.AutoConfig.from_pretrained(legacy_config_dir)
    legacy["text_config"]["attn_temperature_tuning"] = True
    assert legacy == json.loads((scout_dir / "config.json").read_text())  # nothing else differs


def test_chat_template_renders_and_tokenizes(scout_dir, text_only_dir):
    from transformers import AutoTokenizer

    ids = special_token_ids(VOCAB)
    for ckpt in (scout_dir, text_only_dir):
        tok = AutoTokenizer.from_pretrained(ckpt)
        assert tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == RENDERED
        enc = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert enc[0] == ids["<|begin_of_text|>"] and enc.count(ids["<|begin_of_text|>"]) == 1
        assert enc[1] == ids["<|header_start|>"] and ids["<|eot|>"] in enc and max(enc) < VOCAB
        assert tok.decode(enc) == RENDERED
        assert tok("Hello world").input_ids[0] == ids["<|begin_of_text|>"]  # BOS added like the real tokenizer
        assert len(tok("Hello world", add_special_tokens=False).input_ids) < len("Hello world")  # BPE merges
        assert len(tok) == VOCAB
        for token in fixtures.SPECIAL_TOKENS:
            assert tok.convert_tokens_to_ids(token) == ids[token]
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot|>",
                                                                "<|finetune_right_pad|>")


@pytest.mark.parametrize("fixture", ["scout_dir", "text_only_dir"])
def test_token_ids_agree_across_config_generation_config_and_tokenizer(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    ids = special_token_ids(VOCAB)
    config = json.loads((ckpt / "config.json").read_text())
    text = config.get("text_config", config)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    expected = {"bos_token_id": 384, "eos_token_id": [385, 391, 392], "pad_token_id": 402}
    assert {k: text[k] for k in expected} == expected == {k: gen[k] for k in expected}
    assert expected["eos_token_id"] == [ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]]
    assert text["vocab_size"] == VOCAB and "do_sample" not in gen
    if "text_config" in config:
        assert (config["boi_token_index"], config["eoi_token_index"], config["image_token_index"]) == (
            ids["<|image_start|>"], ids["<|image_end|>"], ids["<|patch|>"])


def test_processor_files(scout_dir):
    proc = json.loads((scout_dir / "processor_config.json").read_text())
    assert proc["processor_class"] == "Llama4Processor" and proc["patch_size"] == 14
    assert proc["image_processor"]["size"] == {"height": 28, "width": 28}
    pre = json.loads((scout_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Llama4ImageProcessorFast" and pre["size"] == {"height": 28, "width": 28}
    vision = json.loads((scout_dir / "config.json").read_text())["vision_config"]
    assert vision["image_size"] == 28 and vision["intermediate_size"] == vision["hidden_size"] / 0.5**2
    assert (scout_dir / "chat_template.jinja").read_text() == fixtures.CHAT_TEMPLATE
    assert json.loads((scout_dir / "tokenizer_config.json").read_text())["processor_class"] == "Llama4Processor"


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="transformers' Llama4ImageProcessor needs torchvision")
def test_processor_loads_and_expands_an_image(scout_dir):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(scout_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[Image.new("RGB", (28, 28), "red")], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (28, 28)
    model, _ = load(scout_dir)
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == inputs["pixel_values"].shape[0]
    model(**inputs)


# --- benchmark builder ---------------------------------------------------------------------------------------


def test_random_checkpoint_defaults_to_text_only_weights_only(tmp_path):
    ckpt = build_random_checkpoint(tmp_path / "r", shape="maverick", hidden_size=96, expert_intermediate_size=32,
                                   mlp_intermediate_size=64, num_experts=8, num_layers=6, vocab_size=256,
                                   max_shard_size="50KB", seed=3)
    names = sorted(p.name for p in ckpt.iterdir())
    assert "tokenizer.json" not in names and "config.json" in names and len(names) > 10
    config = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == ["Llama4ForCausalLM"] and config["moe_layers"] == [1, 3, 5]
    assert headers(ckpt)["model.layers.5.feed_forward.experts.gate_up_proj"]["shape"] == [8, 96, 64]
    model, info = load(ckpt)
    assert {k: v for k, v in info.items() if v} == {}


def test_random_checkpoint_with_vision_loads(tmp_path):
    ckpt = build_random_checkpoint(tmp_path / "r", shape="scout", hidden_size=128, expert_intermediate_size=80,
                                   mlp_intermediate_size=160, num_experts=2, num_layers=2, vocab_size=1024,
                                   max_shard_size="1MB", vision=True, tokenizer=True)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["text_config"]["no_rope_layers"] == [1, 0]
    assert (ckpt / "processor_config.json").exists()
    model, info = load(ckpt)
    assert {k: v for k, v in info.items() if v} == {}
    assert model.config.text_config.hidden_size == 128


def test_importing_the_module_does_not_import_torch():
    code = "import sys, llama4ctl.fixtures; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
