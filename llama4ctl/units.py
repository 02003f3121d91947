"""Byte counts for people: decimal units, as the rest of the toolkit (5GB = 5e9 bytes)."""

from __future__ import annotations

from typing import Any


def human_size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{int(n)} B"
