"""A checkpoint as seen from its headers: every tensor's name, dtype, shape and byte range, plus config.

Opening a checkpoint reads the index and each shard's header, cross-checks them, and never touches tensor
bytes, so it costs the same for a 1 MB test model and for Maverick's 800 GB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from llama4ctl.checkpoint.header import MAX_HEADER_BYTES, Header, TensorRef, load_json, read_header, short_repr
from llama4ctl.checkpoint.layout import TextConfig, normalize_config, parse_text_config
from llama4ctl.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
MAX_JSON_BYTES = MAX_HEADER_BYTES  # index and config files are read whole: bounded like a header
# Files copied next to the weights of every output: config, generation, tokenizer, chat template, processor.
EXTRA_FILE_NAMES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
)


@dataclass(frozen=True)
class Checkpoint:
    source: str                      # local path or Hub repo id, as given
    root: Path | None                # local directory (None for remote headers)
    tensors: tuple[TensorRef, ...]   # shard by shard, each in file order
    shards: tuple[str, ...]          # shard file names in order
    config: dict[str, Any] | None    # normalized config.json (None when absent)
    config_notes: tuple[str, ...] = ()
    extra_files: tuple[str, ...] = ()
    revision: str | None = None
    shard_sizes: dict[str, int] = field(default_factory=dict)

    @cached_property
    def by_name(self) -> dict[str, TensorRef]:
        return {t.name: t for t in self.tensors}

    @cached_property
    def text(self) -> TextConfig | None:
        if self.config is None:
            return None
        try:
            return parse_text_config(self.config)
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:
            raise CheckpointError(f"config.json is not a Llama 4 config: missing or bad field {e}",
                                  self._path("config.json")) from None

    @property
    def is_multimodal(self) -> bool:
        return any(t.name.startswith("language_model.") for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def _path(self, name: str) -> str:
        return str(self.root / name) if self.root else f"{self.source}/{name}"

    # ------------------------------------------------------------------------------------------ open

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """Open a local checkpoint directory (sharded or single file) or one .safetensors file."""
        try:
            return cls._open(path)
        except OSError as e:  # e.g. a name too long for the filesystem, a directory that cannot be listed
            where = e.filename if e.filename and len(str(e.filename)) <= 1024 else path
            raise CheckpointError(f"cannot read: {e.strerror or e}", where) from None

    @classmethod
    def _open(cls, path: str | Path) -> Checkpoint:
        p = Path(path)
        if not p.exists():
            raise CheckpointError("no such file or directory", p)
        if not p.is_file() and not p.is_dir():
            raise CheckpointError("not a checkpoint directory or .safetensors file", p)
        if p.is_file():
            if p.suffix in PICKLE_SUFFIXES:
                raise _pickle_refusal(p)
            if p.suffix != ".safetensors":
                raise CheckpointError("not a checkpoint directory or .safetensors file", p)
            header = read_header(p)
            config, notes = read_config(p.parent)
            return cls(str(path), p.parent, header.tensors, (p.name,), config, tuple(notes),
                       shard_sizes={p.name: header.file_size})

        index_path = p / INDEX_FILE
        if index_path.exists():
            shard_names, weight_map = read_index(index_path)
        elif (p / SINGLE_FILE).exists():
            shard_names, weight_map = [SINGLE_FILE], None
        else:
            found = sorted(f.name for f in p.glob("*.safetensors"))
            if len(found) == 1:
                shard_names, weight_map = found, None
            elif found:
                raise CheckpointError(f"{len(found)} .safetensors files but no {INDEX_FILE}", p)
            else:
                pickles = sorted(f for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
                if pickles:
                    raise _pickle_refusal(pickles[0])
                raise CheckpointError("no .safetensors weights found", p)

        def header(shard: str) -> Header:
            if not (p / shard).is_file():
                raise CheckpointError(f"shard {short_repr(shard)} named in the index does not exist", index_path)
            return read_header(p / shard)

        headers = [(shard, header(shard)) for shard in shard_names]
        tensors = tensors_of(headers, weight_map, index_path)
        sizes = {shard: h.file_size for shard, h in headers}
        config, notes = read_config(p)
        extras = tuple(n for n in EXTRA_FILE_NAMES if (p / n).is_file())
        return cls(str(path), p, tuple(tensors), tuple(shard_names), config, tuple(notes), extras,
                   shard_sizes=sizes)


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        "pickle checkpoints (.bin/.pth) are refused: llama4ctl never unpickles files; use the safetensors weights",
        path,
        hint="convert it to safetensors in a trusted environment first",
    )


def _read_json(path: Path, what: str) -> Any:
    """A small JSON file, read whole only below MAX_JSON_BYTES."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON_BYTES:
                raise CheckpointError(f"{what} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit", path)
            raw = f.read(size)
    except OSError as e:
        raise CheckpointError(f"cannot read {what}: {e.strerror or e}", path) from None
    return load_json(raw, what=what, path=path)


def tensors_of(headers: list[tuple[str, Header]], weight_map: dict[str, str] | None,
               index_path: Path) -> list[TensorRef]:
    """Every tensor of the shards' headers, in shard order, after checking that no tensor sits in two shards and
    that the index (when there is one) maps each tensor to the shard that holds it. Shared by local and Hub
    checkpoints."""
    tensors: list[TensorRef] = []
    seen: dict[str, str] = {}
    for shard, header in headers:
        for t in header.tensors:
            if t.name in seen:
                raise CheckpointError(
                    f"tensor {short_repr(t.name)} appears in two shards: {seen[t.name]} and {shard}", header.path)
            seen[t.name] = shard
            if weight_map is not None and weight_map.get(t.name) != shard:
                where = weight_map.get(t.name)
                raise CheckpointError(
                    f"tensor {short_repr(t.name)} is in {shard} but the index "
                    + (f"maps it to {short_repr(where)}" if where else "does not list it"),
                    index_path,
                )
        tensors.extend(header.tensors)
    if weight_map is not None:
        for name, shard in weight_map.items():
            if seen.get(name) != shard:
                raise CheckpointError(f"tensor {short_repr(name)} is not in its shard {shard}",
                                      index_path.parent / shard)
    return tensors


def read_index(index_path: Path) -> tuple[list[str], dict[str, str]]:
    """(sorted shard names, weight_map) from a model.safetensors.index.json, refusing names that leave the folder."""
    doc = _read_json(index_path, "index")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError("index has no valid 'weight_map' (tensor name -> shard file)", index_path)
    shards: list[str] = []
    for shard in weight_map.values():
        if shard not in shards:
            _check_shard_name(shard, index_path)
            shards.append(shard)
    return sorted(shards), weight_map


def _check_shard_name(shard: str, index_path: Path) -> None:
    parts = Path(shard).parts
    if Path(shard).is_absolute() or shard.startswith(("/", "\\")) or ".." in parts or "\\" in shard or not parts:
        raise CheckpointError(f"index names shard {short_repr(shard)}, which escapes the checkpoint directory",
                              index_path)
    if len(parts) != 1 or parts[0] != shard:
        raise CheckpointError(f"index names shard {short_repr(shard)}, not a plain file name; shards must sit "
                              "beside the index", index_path)
    if not shard.endswith(".safetensors"):
        if shard.endswith(PICKLE_SUFFIXES):
            raise _pickle_refusal(index_path.parent / shard)
        raise CheckpointError(f"index names shard {short_repr(shard)}, which is not a .safetensors file", index_path)


def read_config(root: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(normalized config, notes) from root/config.json, or (None, []) when there is none."""
    path = root / "config.json"
    if not path.is_file():
        return None, []
    doc = _read_json(path, "config")
    if not isinstance(doc, dict):
        raise CheckpointError("config.json is not a JSON object", path)
    return normalize_config(doc)
