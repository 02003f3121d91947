"""Name -> Format class; a failed lookup lists the valid names."""

from __future__ import annotations

from llama4ctl.errors import FormatError
from llama4ctl.formats.base import Format

_FORMATS: dict[str, type[Format]] = {}


def register(cls: type[Format]) -> type[Format]:
    _FORMATS[cls.name] = cls
    return cls


def get(name: str) -> type[Format]:
    _load_builtin()
    if name not in _FORMATS:
        raise FormatError(f"unknown format {name!r}; valid formats: {', '.join(names())}")
    return _FORMATS[name]


def names() -> list[str]:
    _load_builtin()
    return sorted(_FORMATS)


def _load_builtin() -> None:
    import importlib

    for module in ("bf16", "fbgemm_fp8", "compressed_tensors", "compressed_tensors_int", "bnb"):
        importlib.import_module(f"llama4ctl.formats.{module}")
