"""Sizes as people read them: 1024-based units, as every line p2pfast prints or reports shows them."""

from __future__ import annotations


def iec(n: float) -> str:
    """`n` bytes as "512 B", "1.5 KiB", … "3.2 TiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError
