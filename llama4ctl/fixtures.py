"""Llama-4-shaped checkpoints with random weights, built locally (no Hub, no network): test fixtures and benchmarks.

`build_tiny_checkpoint` writes a complete, loadable checkpoint directory (0.6–0.7 MB) in about 0.1 s:
weights, `config.json`, `generation_config.json`, a small byte-level BPE tokenizer with the Llama 4 special
tokens and chat template, and (multimodal) the processor files. `build_random_checkpoint` writes the same
layout at any size for benchmarks, with peak memory of about one chunk of one tensor (see below), and by
default no tokenizer.

On-disk layout (checked against transformers 5.17 by tests/unit/test_fixtures.py):

* Tensor names and shapes come from the transformers model built on the meta device, so they are exactly the
  names `save_pretrained` writes. Llama 4 has no checkpoint conversion mapping: routed experts are stored fused,
  input-major, without a `.weight` suffix: `feed_forward.experts.gate_up_proj [E, H, 2I]` and
  `feed_forward.experts.down_proj [E, I, H]`.
* Multimodal (`Llama4ForConditionalGeneration`): `language_model.model.…`, `language_model.lm_head.weight`,
  `vision_model.…`, `multi_modal_projector.…`. Text-only (`Llama4ForCausalLM`, also chosen by `vision=False`,
  since a Llama 4 checkpoint without a vision tower is a text-only one): `model.…`, `lm_head.weight`.
* Shards are split exactly as transformers does it (huggingface_hub `split_state_dict_into_shards_factory`
  over the state-dict order, decimal size units), named `model-0000N-of-0000M.safetensors`, with
  `model.safetensors.index.json` (`json.dumps(indent=2, sort_keys=True)` + newline,
  `metadata = {total_parameters, total_size}`); a single shard is `model.safetensors` without an index.
* Each shard is written by a streaming writer that produces the same bytes as `safetensors.torch.save_file(...,
  metadata={"format": "pt"})` (compact JSON header, `__metadata__` first, tensors sorted by name, header padded
  with spaces to a multiple of 8; the test compares the files byte for byte with transformers' own
  `save_pretrained`). Tensor data is generated chunk by chunk while it is written, so peak memory is one chunk
  (8 Mi elements), not one shard or one tensor, whatever the checkpoint size. Files get ordinary 0644-style
  permissions (safetensors itself creates 0600 files).

Weights: every tensor has its own numpy PCG64 stream seeded from sha256(seed, tensor name), so a tensor's values
do not depend on the sharding, and the same seed gives byte-identical files. Linear weights, embeddings and
biases are N(0, 0.02); RMSNorm/LayerNorm weights are 1 + N(0, 0.02); then cast to `dtype`.

Token ids mirror the real Llama 4 vocabulary: the last 128 ids of the vocabulary are the special-token block at
the same offsets as in the real tokenizer (real base 200000, here `vocab_size - 128`): `<|begin_of_text|>` +0,
`<|end_of_text|>` +1, `<|header_start|>` +5, `<|header_end|>` +6, `<|eom|>` +7, `<|eot|>` +8,
`<|python_start|>` +16, `<|python_end|>` +17, `<|finetune_right_pad|>` +18, `<|image_start|>` +80 (boi),
`<|image_end|>` +81 (eoi), `<|tile_x_separator|>` +84, `<|tile_y_separator|>` +85, `<|image|>` +90 and
`<|patch|>` +92 (the config's `image_token_index`, as in the real 200092). The rest are reserved tokens. With
the default vocabulary of 512: bos 384, eos [385, 391, 392] (end_of_text, eom, eot), pad 402, boi 464, eoi 465,
image token 476. Ids below the block: 256 byte tokens, then BPE merges learned (deterministically, in pure
Python) from a small built-in English corpus, then unreachable filler tokens if the corpus runs out of merges.

Processor without torchvision: transformers 5.17's only Llama 4 image processor (`Llama4ImageProcessor`, a
TorchvisionBackend) imports torchvision at module import, and torchvision has no CPU build for torch 2.13
here, so `Llama4Processor` cannot be instantiated. The processor files are therefore written by hand, with
the content `Llama4Processor.save_pretrained` writes in transformers 5.17 (checked byte for byte once, with a
stand-in torchvision module that only satisfies the imports): `processor_config.json` with the image processor
nested under `"image_processor"` (`Llama4ImageProcessor`, `size` 28×28 = the tiny vision `image_size`,
`max_patches` 4) and `chat_template.jinja`.
A Hub-style `preprocessor_config.json` (`image_processor_type: Llama4ImageProcessorFast`, what the real repos
carry, written by transformers 4.51) is written too; transformers 5.x prefers the nested block when both exist.
Both are written the same way whether or not torchvision is installed, so the output never depends on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_VISION_CONFIG",
    "build_random_checkpoint",
    "build_tiny_checkpoint",
    "special_token_ids",
]

# ---------------------------------------------------------------------------------------------------------------
# Tokens

#: The special-token block, offset -> token, at the same offsets as in the real Llama 4 tokenizer (base 200000).
SPECIAL_TOKENS: tuple[str, ...] = tuple(
    ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
     "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>"]
    + [f"<|text_post_train_reserved_special_token_{i}|>" for i in range(6)]
    + ["<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>"]
    + [f"<|text_post_train_reserved_special_token_{i}|>" for i in range(6, 67)]
    + ["<|image_start|>", "<|image_end|>", "<|vision_reserved_special_token_0|>",
       "<|vision_reserved_special_token_1|>", "<|tile_x_separator|>", "<|tile_y_separator|>"]
    + [f"<|vision_reserved_special_token_{i}|>" for i in range(2, 6)]
    + ["<|image|>", "<|vision_reserved_special_token_6|>", "<|patch|>"]
    + [f"<|vision_reserved_special_token_{i}|>" for i in range(7, 42)]
)
_NUM_SPECIAL = len(SPECIAL_TOKENS)  # 128
_MIN_TOKENIZER_VOCAB = 256 + _NUM_SPECIAL  # 384: every byte plus the special block

#: A Llama-4-style chat template (the real one without the tool-calling branches).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}"
    "{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}"
    "{{- content['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|eot|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|header_start|>assistant<|header_end|>\n\n' }}"
    "{%- endif %}"
)

# The pre-tokenizer regex of the real Llama 4 tokenizer (o200k).
_O200K_PATTERN = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
    r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# BPE merges are learned from this text (deterministically), so common words become single tokens.
_CORPUS = """\
Hello, world! Hello there. How are you today? I am fine, thank you. What is the capital of France?
The capital of France is Paris. The quick brown fox jumps over the lazy dog. Tell me a story about a llama.
Once upon a time there was a llama who lived in the mountains with the other llamas and their friends.
Describe this image. The image shows a cat sitting on a red chair next to the window in the afternoon sun.
You are a helpful assistant. Answer the question in one sentence, and then explain your answer.
Llama 4 Scout has sixteen experts and Llama 4 Maverick has one hundred and twenty eight experts.
Every expert is a small feed forward network, and the router picks one expert for each token.
The shared expert is always used. Mixture of experts models are large, but only part of them runs per token.
def hello(name):
    return "Hello, " + name + "!"
for i in range(10):
    print(i, i * i)
1 2 3 4 5 6 7 8 9 10 100 2025 3.14 0.5 -1 == != <= >= () [] {} : ; , . ? !
"""


def special_token_ids(vocab_size: int = 512) -> dict[str, int]:
    """Token -> id of the special-token block, which fills the last 128 ids of `vocab_size`."""
    if vocab_size < _NUM_SPECIAL:
        raise ValueError(f"vocab_size must be at least {_NUM_SPECIAL} (the special-token block), got {vocab_size}")
    base = vocab_size - _NUM_SPECIAL
    return {tok: base + i for i, tok in enumerate(SPECIAL_TOKENS)}


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (index = byte value), as tokenizers' ByteLevel uses it."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def _pre_tokenizer() -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_O200K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def _learn_bpe(n_regular: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary of exactly n_regular ids (256 bytes + merges + filler), learned from _CORPUS."""
    byte_chars = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(byte_chars)}
    words = Counter(piece for piece, _ in _pre_tokenizer().pre_tokenize_str(_CORPUS))
    splits = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    while len(vocab) < n_regular:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, count in words.items():
            s = splits[w]
            for pair in zip(s, s[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties by lexical order: deterministic
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        for w, s in splits.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    filler = 0
    while len(vocab) < n_regular:  # unreachable placeholder tokens keep the special block at the top
        vocab[f"<|unused_{filler}|>"] = len(vocab)
        filler += 1
    return vocab, merges


def _build_tokenizer(vocab_size: int, model_max_length: int) -> Any:
    """A PreTrainedTokenizerFast (transformers 5: TokenizersBackend) with the Llama 4 special-token block."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size < _MIN_TOKENIZER_VOCAB:
        raise ValueError(f"a tokenizer needs vocab_size >= {_MIN_TOKENIZER_VOCAB} (256 bytes + {_NUM_SPECIAL} "
                         f"special tokens), got {vocab_size}")
    ids = special_token_ids(vocab_size)
    vocab, merges = _learn_bpe(vocab_size - _NUM_SPECIAL)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, ids[bos])]),
    ])
    for t, i in ids.items():  # the block must land exactly on the top ids
        if tok.token_to_id(t) != i:
            raise AssertionError(f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<|eot|>", pad_token="<|finetune_right_pad|>",
        model_max_length=model_max_length, chat_template=CHAT_TEMPLATE,
    )


# ---------------------------------------------------------------------------------------------------------------
# Configs

#: The tiny vision tower (intermediate_size must equal hidden_size / pixel_shuffle_ratio**2, and the adapter
#: needs projector_input_dim == projector_output_dim == vision_output_dim; 80 differs from every text width).
TINY_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "image_size": 28,
    "patch_size": 14,
    "pixel_shuffle_ratio": 0.5,
    "vision_output_dim": 80,
    "projector_input_dim": 80,
    "projector_output_dim": 80,
}
_IMAGE_MAX_PATCHES = 4

_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class _Spec:
    shape: str
    text_only: bool
    num_layers: int
    hidden_size: int
    expert_intermediate_size: int
    mlp_intermediate_size: int
    num_experts: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    dtype: str
    seed: int
    legacy_config: bool


def _resolve(*, shape: str, vision: bool, text_only: bool, num_layers: int, hidden_size: int,
             expert_intermediate_size: int, mlp_intermediate_size: int, num_experts: int, vocab_size: int,
             num_attention_heads: int | None, num_key_value_heads: int | None, head_dim: int | None,
             dtype: str, seed: int, legacy_config: bool) -> _Spec:
    if shape not in ("scout", "maverick"):
        raise ValueError(f"shape must be 'scout' or 'maverick', got {shape!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    for name, value in (("num_layers", num_layers), ("hidden_size", hidden_size), ("num_experts", num_experts),
                        ("expert_intermediate_size", expert_intermediate_size),
                        ("mlp_intermediate_size", mlp_intermediate_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if shape == "maverick" and num_layers < 2:
        raise ValueError("a maverick-shaped checkpoint needs num_layers >= 2 (layer 0 dense, layer 1 MoE)")
    if vocab_size < _NUM_SPECIAL:
        raise ValueError(f"vocab_size must be at least {_NUM_SPECIAL}, got {vocab_size}")
    if head_dim is None:
        head_dim = 16 if hidden_size < 512 else 128
    if num_attention_heads is None:
        num_attention_heads = max(1, hidden_size // head_dim)
    if num_key_value_heads is None:
        num_key_value_heads = max(1, num_attention_heads // (4 if num_attention_heads >= 8 else 2))
    if num_attention_heads % num_key_value_heads:
        raise ValueError(f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                         f"num_key_value_heads ({num_key_value_heads})")
    return _Spec(shape=shape, text_only=bool(text_only or not vision), num_layers=int(num_layers),
                 hidden_size=int(hidden_size), expert_intermediate_size=int(expert_intermediate_size),
                 mlp_intermediate_size=int(mlp_intermediate_size), num_experts=int(num_experts),
                 vocab_size=int(vocab_size), num_attention_heads=int(num_attention_heads),
                 num_key_value_heads=int(num_key_value_heads), head_dim=int(head_dim), dtype=dtype, seed=int(seed),
                 legacy_config=bool(legacy_config))


def _text_config_kwargs(spec: _Spec) -> dict[str, Any]:
    ids = special_token_ids(spec.vocab_size)
    n = spec.num_layers
    interval = min(4, n)  # real: NoPE every 4th layer; always at least one NoPE layer
    kwargs: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.expert_intermediate_size,
        "intermediate_size_mlp": spec.mlp_intermediate_size,
        "num_hidden_layers": n,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "num_local_experts": spec.num_experts,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 1 if spec.shape == "scout" else 2,
        "use_qk_norm": spec.shape == "scout",
        "no_rope_layers": [int((i + 1) % interval != 0) for i in range(n)],
        "attention_chunk_size": 16,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "bos_token_id": ids["<|begin_of_text|>"],
        "eos_token_id": [ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]],
        "pad_token_id": ids["<|finetune_right_pad|>"],
        "tie_word_embeddings": False,
    }
    if spec.shape == "scout":  # Scout carries llama3 rope scaling (base-model values), Maverick none
        kwargs["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 256}
    else:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    return kwargs


def _make_config(spec: _Spec) -> Any:
    from transformers import Llama4Config, Llama4TextConfig

    text = _text_config_kwargs(spec)
    if spec.text_only:
        config = Llama4TextConfig(**text)
        config.architectures = ["Llama4ForCausalLM"]
    else:
        ids = special_token_ids(spec.vocab_size)
        config = Llama4Config(text_config=text, vision_config=dict(TINY_VISION_CONFIG),
                              boi_token_index=ids["<|image_start|>"], eoi_token_index=ids["<|image_end|>"],
                              image_token_index=ids["<|patch|>"], tie_word_embeddings=False)
        config.architectures = ["Llama4ForConditionalGeneration"]
        config.text_config.dtype = config.vision_config.dtype = spec.dtype
    config.dtype = spec.dtype  # as model.save_pretrained records it (also in the sub-configs)
    return config


def _tensor_shapes(config: Any, text_only: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor save_pretrained would write, in state-dict order, from the model built on the meta device."""
    import torch
    from transformers import Llama4ForCausalLM, Llama4ForConditionalGeneration

    cls = Llama4ForCausalLM if text_only else Llama4ForConditionalGeneration
    with torch.device("meta"):
        model = cls(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# Weights and shards


def _is_norm(name: str) -> bool:
    """RMSNorm / LayerNorm scales (`input_layernorm.weight`, `model.norm.weight`, `layernorm_pre.weight`, …)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and "norm" in parts[-2]


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little")


def _tensor_chunks(name: str, numel: int, dtype: str, seed: int) -> Iterator[memoryview]:
    """The tensor's bytes, generated chunk by chunk (deterministic in (seed, name, numel, dtype))."""
    import numpy as np
    import torch

    rng = np.random.Generator(np.random.PCG64(_tensor_seed(seed, name)))
    norm = _is_norm(name)
    size = min(_CHUNK_ELEMENTS, numel)
    buf = np.empty(size, dtype=np.float32)  # reused: the caller writes each chunk before asking for the next
    half = np.empty(size, dtype=np.float16) if dtype == "float16" else None
    bf16 = torch.empty(size, dtype=torch.bfloat16) if dtype == "bfloat16" else None
    for start in range(0, numel, _CHUNK_ELEMENTS):
        n = min(_CHUNK_ELEMENTS, numel - start)
        x = buf[:n]
        rng.standard_normal(dtype=np.float32, out=x)
        x *= np.float32(0.02)
        if norm:
            x += np.float32(1.0)
        if bf16 is not None:
            y = bf16[:n]
            y.copy_(torch.from_numpy(x))  # round to nearest even, as Tensor.to(torch.bfloat16)
            yield memoryview(y.view(torch.int16).numpy()).cast("B")
        elif half is not None:
            half[:n] = x
            yield memoryview(half[:n]).cast("B")
        else:
            yield memoryview(x).cast("B")


def _write_shard(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str, seed: int) -> None:
    """Write one .safetensors file byte-identical to safetensors' save_file(..., metadata={"format": "pt"})."""
    st_dtype, itemsize = _DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    order = sorted(shapes)  # save_file order for a single dtype: by name
    for name in order:
        nbytes = math.prod(shapes[name]) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            for chunk in _tensor_chunks(name, math.prod(shapes[name]), dtype, seed):
                f.write(chunk)
    os.replace(tmp, path)


def _write_weights(dst: Path, shapes: dict[str, tuple[int, ...]], dtype: str, seed: int,
                   max_shard_size: int | str) -> list[str]:
    from huggingface_hub import split_state_dict_into_shards_factory

    itemsize = _DTYPES[dtype][1]
    split = split_state_dict_into_shards_factory(
        shapes, get_storage_size=lambda shape: math.prod(shape) * itemsize,
        filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        _write_shard(dst / filename, {n: shapes[n] for n in names}, dtype, seed)
    if split.is_sharded:
        index = {"metadata": {"total_parameters": sum(math.prod(s) for s in shapes.values()), **split.metadata},
                 "weight_map": split.tensor_to_filename}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return list(split.filename_to_tensors)


# ---------------------------------------------------------------------------------------------------------------
# Side files


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_configs(dst: Path, spec: _Spec, config: Any) -> None:
    from transformers import GenerationConfig

    config.save_pretrained(dst)
    if spec.legacy_config:
        # Old Hub configs (transformers 4.51) have the int 4 here; transformers 5.x refuses it, our reader normalises.
        path = dst / "config.json"
        doc = json.loads(path.read_text())
        (doc if spec.text_only else doc["text_config"])["attn_temperature_tuning"] = 4
        _write_json(path, doc)
    text = config if spec.text_only else config.text_config
    # Like the real generation_config.json but without sampling settings, so generate() is greedy by default.
    GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                     pad_token_id=text.pad_token_id).save_pretrained(dst)


def _write_tokenizer(dst: Path, spec: _Spec, *, processor: bool) -> None:
    tokenizer = _build_tokenizer(spec.vocab_size, model_max_length=1024)
    if processor:
        tokenizer._set_processor_class("Llama4Processor")  # what Llama4Processor.save_pretrained does
    tokenizer.save_pretrained(dst)


def _image_processor_dict() -> dict[str, Any]:
    v = TINY_VISION_CONFIG
    return {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "max_patches": _IMAGE_MAX_PATCHES, "resample": 2, "rescale_factor": 1 / 255,
        "resize_to_max_canvas": False, "size": {"height": v["image_size"], "width": v["image_size"]},
    }


def _write_processor(dst: Path) -> None:
    image = _image_processor_dict()
    # transformers 5.17 Llama4Processor.save_pretrained: one processor_config.json with the image processor nested.
    _write_json(dst / "processor_config.json", {
        "fake_image_token": "<|image|>",
        "image_processor": {**image, "image_processor_type": "Llama4ImageProcessor"},
        "image_token": "<|image|>",
        "patch_size": TINY_VISION_CONFIG["patch_size"],
        "processor_class": "Llama4Processor",
    })
    # What the real Hub repos carry (written by transformers 4.51's fast image processor).
    _write_json(dst / "preprocessor_config.json", {
        **image, "crop_size": None, "data_format": "channels_first", "default_to_square": True, "device": None,
        "do_center_crop": None, "image_processor_type": "Llama4ImageProcessorFast", "input_data_format": None,
        "processor_class": "Llama4Processor", "return_tensors": None,
    })
    (dst / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


_SIDE_FILES = ("model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "processor_config.json", "preprocessor_config.json")


def _prepare_dst(dst: str | os.PathLike[str], overwrite: bool) -> Path:
    if sys.byteorder != "little":
        raise RuntimeError("safetensors data is little-endian; this writer only runs on little-endian hosts")
    path = Path(dst)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} is not empty (pass overwrite=True to replace the checkpoint in it)")
        for f in list(path.glob("model*.safetensors")) + [path / n for n in _SIDE_FILES]:
            if f.is_file():
                f.unlink()  # stale shards or side files of an earlier layout would confuse readers
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build(dst: str | os.PathLike[str], spec: _Spec, *, max_shard_size: int | str, tokenizer: bool,
           overwrite: bool) -> Path:
    path = _prepare_dst(dst, overwrite)
    config = _make_config(spec)
    shapes = _tensor_shapes(config, spec.text_only)
    _write_weights(path, shapes, spec.dtype, spec.seed, max_shard_size)
    _write_configs(path, spec, config)
    if tokenizer:
        _write_tokenizer(path, spec, processor=not spec.text_only)
        if not spec.text_only:
            _write_processor(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Public API


def build_tiny_checkpoint(
    dst: str | os.PathLike[str],
    *,
    shape: str = "scout",
    vision: bool = True,
    text_only: bool = False,
    num_layers: int | None = None,
    hidden_size: int = 64,
    expert_intermediate_size: int = 48,
    mlp_intermediate_size: int = 96,
    num_experts: int = 4,
    vocab_size: int | None = None,
    max_shard_size: int | str = "100KB",
    seed: int = 0,
    dtype: str = "bfloat16",
    legacy_config: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a tiny, complete Llama-4-shaped checkpoint (weights, configs, tokenizer, processor) into `dst`.

    shape: "scout" (every layer MoE, qk-norm, llama3 rope scaling) or "maverick" (layer 0 dense, 1 MoE, …; no
    qk-norm). Both have 4 layers by default, NoPE on layer 3 (every 4th layer, or the last one with fewer).
    text_only=True (or vision=False) writes a `Llama4ForCausalLM` checkpoint, otherwise
    `Llama4ForConditionalGeneration` with a tiny working vision tower (28×28 images, one image token per tile).
    vocab_size defaults to 512 (at least 384: 256 byte tokens + the 128-token special block). The defaults give
    0.6–0.7 MB in 6–8 shards of at most max_shard_size (decimal units, like transformers).
    legacy_config=True writes `"attn_temperature_tuning": 4` (as old Hub configs; transformers 5.x refuses it).
    Raises ValueError if hidden_size == 2 * expert_intermediate_size (tests must be able to tell the axes of
    `gate_up_proj [E, H, 2I]` apart), FileExistsError if dst is not empty and overwrite is False.
    """
    if hidden_size == 2 * expert_intermediate_size:
        raise ValueError(f"hidden_size ({hidden_size}) must differ from 2 * expert_intermediate_size "
                         f"({2 * expert_intermediate_size}) so that axis mix-ups in gate_up_proj are caught")
    spec = _resolve(shape=shape, vision=vision, text_only=text_only, num_layers=4 if num_layers is None else num_layers,
                    hidden_size=hidden_size, expert_intermediate_size=expert_intermediate_size,
                    mlp_intermediate_size=mlp_intermediate_size, num_experts=num_experts,
                    vocab_size=512 if vocab_size is None else vocab_size, num_attention_heads=None,
                    num_key_value_heads=None, head_dim=None, dtype=dtype, seed=seed, legacy_config=legacy_config)
    return _build(dst, spec, max_shard_size=max_shard_size, tokenizer=True, overwrite=overwrite)


def build_random_checkpoint(
    dst: str | os.PathLike[str],
    *,
    hidden_size: int,
    expert_intermediate_size: int,
    mlp_intermediate_size: int,
    num_experts: int,
    num_layers: int,
    shape: str,
    vocab_size: int,
    max_shard_size: int | str,
    seed: int = 0,
    vision: bool = False,
    text_only: bool = False,
    dtype: str = "bfloat16",
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    legacy_config: bool = False,
    tokenizer: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a Llama-4-shaped checkpoint of any size for benchmarks, with peak memory of one 8 Mi-element chunk.

    Same layout, naming, index and weights recipe as build_tiny_checkpoint. vision=False (the default) writes a
    text-only `Llama4ForCausalLM` checkpoint; vision=True a `Llama4ForConditionalGeneration` one with the tiny
    vision tower (its size does not grow with hidden_size; the projector maps it to hidden_size). Attention
    geometry defaults: head_dim 16 below hidden 512, else 128; heads = hidden // head_dim; kv heads = heads / 2
    (fewer than 8 heads) or heads / 4. Token ids: the special block fills the last 128 ids of vocab_size
    (vocab_size >= 128; >= 384 with tokenizer=True, which also writes the tokenizer and processor files).
    Speed: about 60 M parameters/s including the writes (≈ 9 s per GB of BF16) on one core.
    """
    spec = _resolve(shape=shape, vision=vision, text_only=text_only, num_layers=num_layers, hidden_size=hidden_size,
                    expert_intermediate_size=expert_intermediate_size, mlp_intermediate_size=mlp_intermediate_size,
                    num_experts=num_experts, vocab_size=vocab_size, num_attention_heads=num_attention_heads,
                    num_key_value_heads=num_key_value_heads, head_dim=head_dim, dtype=dtype, seed=seed,
                    legacy_config=legacy_config)
    return _build(dst, spec, max_shard_size=max_shard_size, tokenizer=tokenizer, overwrite=overwrite)
