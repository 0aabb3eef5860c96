"""Sizes as people read them: 1024-based units, as every line p2pfast prints or reports shows them."""

from __future__ import annotations


def iec(n: float) -> str:
    """`n` bytes as "512 B", "1.5 KiB", … "3.2 TiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 in UTC, to the millisecond (docs/cli.md, "Times"): the `*_at` fields."""
    import datetime  # only where a time is shown: a command that prints none does not pay for it

    when = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
