"""pump benchmarks, compiled vs pure, with same-run reference rates.

256 MiB from a file on /dev/shm (tmpfs: the source costs a memcpy) through [BLAKE3 update, AES-256-GCM
encrypt_into] into an fd sink on /dev/null, in 1 MiB chunks: the content store's write path. References, over
the same bytes in memory and the same chunking: AES-256-GCM encrypt_into alone, BLAKE3 alone, and both (the
pump's ceiling). A copy-only run (no transforms) and a 4 KiB-chunk run show the pump's own overhead.
The rates and ratios are printed at the end of the module.

Run: PYTHONPATH=. pytest bench/bench_pump.py --benchmark-only -q
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import ModuleType

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SIZE = 256 * 1024 * 1024
CHUNK = 1024 * 1024
SMALL_SIZE = 32 * 1024 * 1024
TAG = 16
KEY = os.urandom(32)
RATES: dict[str, float] = {}


@pytest.fixture
def pump(impl: Callable[[str], ModuleType]) -> ModuleType:
    return impl("pump")


@pytest.fixture(scope="module")
def source(request: pytest.FixtureRequest) -> Iterator[str]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd_path = os.path.join(base or "/tmp", f"p2pfast-bench-pump-{os.getpid()}")
    with open(fd_path, "wb") as f:
        block = os.urandom(CHUNK)
        for _ in range(SIZE // CHUNK):
            f.write(block)
    yield fd_path
    os.unlink(fd_path)
    _report(request)


@pytest.fixture(scope="module")
def payload(source: str) -> bytes:
    with open(source, "rb") as f:
        return f.read()


def nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def store_transforms() -> list[Callable[[memoryview, int, bool], memoryview | None]]:
    hasher = blake3.blake3()
    aes = AESGCM(KEY)
    out = memoryview(bytearray(CHUNK + TAG))

    def hash_update(view: memoryview, index: int, last: bool) -> None:
        hasher.update(view)

    def encrypt(view: memoryview, index: int, last: bool) -> memoryview:
        o = out[: len(view) + TAG]
        aes.encrypt_into(nonce(index, last), view, None, o)
        return o

    return [hash_update, encrypt]


def _record(benchmark, name: str, size: int = SIZE) -> None:
    RATES[name] = size / benchmark.stats.stats.min / 1e6


def _run_pump(pump: ModuleType, path: str, transforms) -> int:
    src = os.open(path, os.O_RDONLY)
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        return pump.Pump(CHUNK, transforms, [sink]).run_fd(src, 0)
    finally:
        os.close(src)
        os.close(sink)


def test_pump_hash_encrypt(benchmark, pump, source):
    benchmark.group = "pump 256 MiB: blake3 + aes-gcm -> /dev/null"
    n = benchmark.pedantic(lambda: _run_pump(pump, source, store_transforms()), rounds=5, iterations=1)
    assert n == SIZE
    _record(benchmark, f"pump[{pump.__name__.rsplit('_', 1)[-1]}] blake3+aes")


def test_pump_copy_only(benchmark, pump, source):
    benchmark.group = "pump 256 MiB: copy only -> /dev/null"
    assert benchmark.pedantic(lambda: _run_pump(pump, source, ()), rounds=5, iterations=1) == SIZE
    _record(benchmark, f"pump[{pump.__name__.rsplit('_', 1)[-1]}] copy only")


def test_pump_small_chunks(benchmark, pump, source):
    """Per-chunk overhead: 32 MiB in 4 KiB chunks through a no-op transform into /dev/null."""
    benchmark.group = "pump 32 MiB in 4 KiB chunks: no-op transform -> /dev/null"

    def run() -> int:
        src = os.open(source, os.O_RDONLY)
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            return pump.Pump(4096, [_noop], [sink]).run_fd(src, 0, SMALL_SIZE)
        finally:
            os.close(src)
            os.close(sink)

    assert benchmark.pedantic(run, rounds=5, iterations=1) == SMALL_SIZE
    _record(benchmark, f"pump[{pump.__name__.rsplit('_', 1)[-1]}] 4 KiB chunks", SMALL_SIZE)


def _noop(view: memoryview, index: int, last: bool) -> None:
    return None


def test_ref_aes_gcm(benchmark, payload):
    benchmark.group = "reference 256 MiB in memory"
    aes = AESGCM(KEY)
    out = memoryview(bytearray(CHUNK + TAG))
    data = memoryview(payload)

    def run() -> None:
        for i in range(0, SIZE, CHUNK):
            aes.encrypt_into(nonce(i, False), data[i : i + CHUNK], None, out)

    benchmark.pedantic(run, rounds=5, iterations=1)
    _record(benchmark, "ref aes-gcm encrypt_into")


def test_ref_blake3(benchmark, payload):
    benchmark.group = "reference 256 MiB in memory"
    data = memoryview(payload)

    def run() -> None:
        h = blake3.blake3()
        for i in range(0, SIZE, CHUNK):
            h.update(data[i : i + CHUNK])

    benchmark.pedantic(run, rounds=5, iterations=1)
    _record(benchmark, "ref blake3")


def test_ref_blake3_and_aes(benchmark, payload):
    benchmark.group = "reference 256 MiB in memory"
    aes = AESGCM(KEY)
    out = memoryview(bytearray(CHUNK + TAG))
    data = memoryview(payload)

    def run() -> None:
        h = blake3.blake3()
        for i in range(0, SIZE, CHUNK):
            h.update(data[i : i + CHUNK])
            aes.encrypt_into(nonce(i, False), data[i : i + CHUNK], None, out)

    benchmark.pedantic(run, rounds=5, iterations=1)
    _record(benchmark, "ref blake3+aes (ceiling)")


def _report(request: pytest.FixtureRequest) -> None:
    if not RATES:
        return
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:  # module teardown output is captured otherwise
        with capman.global_and_fixture_disabled():
            _print_rates()
    else:
        _print_rates()


def _print_rates() -> None:
    write = print
    ceiling = RATES.get("ref blake3+aes (ceiling)")
    write("")
    write("pump throughput, best of 5 (MB/s = 1e6 bytes/s):")
    for name, rate in RATES.items():
        ratio = ""
        if ceiling and "blake3+aes" in name and not name.startswith("ref"):
            ratio = f"  = {rate / ceiling:.2f} x ceiling"
        write(f"  {name:<28} {rate:10.0f} MB/s{ratio}")
    for what in ("blake3+aes", "copy only", "4 KiB chunks"):
        c, py = RATES.get(f"pump[c] {what}"), RATES.get(f"pump[py] {what}")
        if c and py:
            write(f"  c / py ({what}): {c / py:.2f}")
