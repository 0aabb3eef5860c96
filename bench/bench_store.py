"""Local store and get of 256 MiB against the machine's AES-256-GCM + BLAKE3 over the same bytes.

Target (issue 3): store >= 50% of the combined rate 1 / (1/aes + 1/blake3), i.e. the cost of encrypting
and hashing every byte once, on one core. Run on tmpfs (/dev/shm) to measure the software, and on disk.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pfast import _accel
from p2pfast.datadir import Layout, LocalNode, init

SIZE = 256 << 20


def _where(kind: str) -> str | None:
    if kind == "shm":
        return "/dev/shm" if os.path.isdir("/dev/shm") else None
    return None  # the default temp dir, on disk


@pytest.fixture(params=["shm", "disk"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[str, LocalNode, Path]]:
    kind = request.param
    if kind == "shm" and _where(kind) is None:
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(prefix="p2pfast-bench-", dir=_where(kind)) as tmp:
        layout = Layout.of(Path(tmp) / "node")
        init(layout)
        src = Path(tmp) / "input.bin"
        with open(src, "wb") as f:
            for _ in range(SIZE // (16 << 20)):
                f.write(os.urandom(16 << 20))
        with LocalNode(layout) as n:
            yield kind, n, src


def _disk_rate(directory: Path) -> float:
    """Raw sequential write + fdatasync of SIZE bytes in `directory`: what the filesystem allows."""
    block = memoryview(os.urandom(4 << 20))
    best = float("inf")
    for _ in range(2):
        path = directory / "disk-ref.bin"
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, SIZE)
            for _ in range(SIZE // len(block)):
                os.write(fd, block)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        best = min(best, time.perf_counter() - t0)
        path.unlink()
    return SIZE / best


def _combined(ref: dict[str, float]) -> float:
    return 1 / (1 / ref["aes256gcm"] + 1 / ref["blake3"])


def test_store_256mib(benchmark, ref, node, bench_report, peak_rss) -> None:  # type: ignore[no-untyped-def]
    kind, n, src = node
    counter = iter(range(1_000_000))

    def store() -> None:
        n.store.put_path(f"bench/{next(counter)}", src)

    def cleanup() -> tuple[tuple[object, ...], dict[str, object]]:
        for row in n.repo.list_files():
            n.store.delete(row.key)
        return (), {}

    benchmark.pedantic(store, setup=cleanup, rounds=3, iterations=1)
    rate = SIZE / benchmark.stats.stats.min
    combined = _combined(ref)
    disk = _disk_rate(src.parent)
    bench_report(
        f"store 256 MiB [{kind}, accel={_accel.ACCELERATED}]: {rate / 1e6:.0f} MB/s = "
        f"{rate / combined:.0%} of AES-GCM+BLAKE3 ({combined / 1e6:.0f} MB/s), "
        f"{rate / disk:.0%} of raw write+fdatasync there ({disk / 1e6:.0f} MB/s); "
        f"peak RSS {peak_rss():.0f} MiB"
    )


def test_get_256mib(benchmark, ref, node, bench_report, peak_rss) -> None:  # type: ignore[no-untyped-def]
    kind, n, src = node
    n.store.put_path("bench/get", src)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        benchmark.pedantic(lambda: n.store.read("bench/get", devnull), rounds=3, iterations=1)
    finally:
        os.close(devnull)
    rate = SIZE / benchmark.stats.stats.min
    combined = _combined(ref)
    bench_report(
        f"get 256 MiB [{kind}, accel={_accel.ACCELERATED}]: {rate / 1e6:.0f} MB/s = "
        f"{rate / combined:.0%} of AES-GCM+BLAKE3 ({combined / 1e6:.0f} MB/s); peak RSS {peak_rss():.0f} MiB"
    )
