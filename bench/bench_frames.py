"""Frame parser throughput, compiled kernel vs pure twin, by payload size.

Run: PYTHONPATH=. pytest bench/bench_frames.py --benchmark-only -q   (compare rows within a group)

Each round feeds one pre-encoded blob of N frames (about 1 MiB, at least 256 frames) to a fresh parser
with one feed() and calls next_frame() until None, taking each payload's length as a consumer would.
The summary gives frames/s per case, the c/py ratio per size, and the parse rate in bytes/s beside this
machine's TCP loopback rate from the same run (can one core parse what the socket delivers?).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

SIZES = (16, 256, 4096)
_RATES: dict[tuple[str, int], float] = {}


@pytest.fixture
def frames(impl: Callable[[str], ModuleType]) -> ModuleType:
    return impl("frames")


def _blob(m: ModuleType, size: int) -> tuple[bytes, int]:
    count = max(256, (1 << 20) // (12 + size))
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return (m.pack_header(3, 0, 1, size) + payload) * count, count


def _parse(m: ModuleType, blob: bytes) -> int:
    parser = m.FrameParser()
    parser.feed(blob)
    next_frame = parser.next_frame
    n = total = 0
    while (frame := next_frame()) is not None:
        total += len(frame.payload)
        n += 1
    return n


@pytest.mark.parametrize("size", SIZES)
def test_parse(benchmark, frames, size, ref, bench_report) -> None:  # type: ignore[no-untyped-def]
    kind = frames.__name__.rsplit("_", 1)[1]
    benchmark.group = f"frames parse, {size} B payloads"
    blob, count = _blob(frames, size)
    assert benchmark(_parse, frames, blob) == count
    rate = count / benchmark.stats.stats.min  # best round: other processes only ever slow a round down
    benchmark.extra_info["frames_per_second"] = round(rate)
    _RATES[(kind, size)] = rate
    line = f"frames parse {size:5d} B payloads, {kind:2s}: {rate / 1e6:6.2f} M frames/s"
    line += f" = {rate * len(blob) / count / 1e6:7.1f} MB/s (loopback {ref['loopback'] / 1e6:.0f} MB/s)"
    if kind == "py" and ("c", size) in _RATES:
        line += f"; c/py {_RATES[('c', size)] / rate:.1f}x"
    bench_report(line)
