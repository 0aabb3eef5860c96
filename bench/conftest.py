"""Reference rates of this machine, measured once per bench run and printed beside every figure:
machines here differ by up to 5x, so a figure means something only as a ratio to these."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import threading
import time
from collections.abc import Callable
from types import ModuleType

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pfast import _accel

REF_BYTES = 256 << 20
BLOCK = 1 << 20
_rates: dict[str, float] = {}


def _rate(fn: Callable[[], None], nbytes: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def _loopback(nbytes: int) -> float:
    """TCP over 127.0.0.1, one sender thread, one receiver, 1 MiB buffers."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    buf = bytearray(BLOCK)

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as c:
            view = memoryview(bytes(BLOCK))
            for _ in range(nbytes // BLOCK):
                c.sendall(view)

    t0 = time.perf_counter()
    th = threading.Thread(target=send)
    th.start()
    conn, _ = srv.accept()
    got = 0
    with conn:
        while got < nbytes:
            n = conn.recv_into(buf)
            if not n:
                break
            got += n
    th.join(timeout=30)
    srv.close()
    return got / (time.perf_counter() - t0)


def reference_rates() -> dict[str, float]:
    """Bytes per second: AES-256-GCM encrypt_into, BLAKE3, SHA-256 (1 MiB blocks), TCP loopback."""
    if _rates:
        return _rates
    data = memoryview(os.urandom(BLOCK))
    out = bytearray(BLOCK + 16)
    aead = AESGCM(AESGCM.generate_key(256))
    nonce = os.urandom(12)
    n = REF_BYTES // BLOCK

    def aes() -> None:
        for _ in range(n):
            aead.encrypt_into(nonce, data, b"", out)

    def b3() -> None:
        for _ in range(n):
            blake3.blake3(data).digest()

    def sha() -> None:
        for _ in range(n):
            hashlib.sha256(data).digest()

    _rates["aes256gcm"] = _rate(aes, REF_BYTES)
    _rates["blake3"] = _rate(b3, REF_BYTES)
    _rates["sha256"] = _rate(sha, REF_BYTES)
    _rates["loopback"] = _loopback(REF_BYTES)
    return _rates


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> Callable[[str], ModuleType]:
    """impl("frames") -> the compiled kernel or its pure twin, per parameter (as in tests/conftest.py)."""
    kind = request.param

    def load(name: str) -> ModuleType:
        try:
            return _accel.twin(name, kind)
        except ImportError:
            if _accel.REQUIRE:
                raise
            pytest.skip(f"p2pfast._{name}_{kind} is not built")

    return load


@pytest.fixture(scope="session")
def ref() -> dict[str, float]:
    return reference_rates()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _rates:
        return
    tr = terminalreporter
    tr.section("reference rates of this machine (same run)")
    for name, rate in _rates.items():
        tr.write_line(f"{name:<10} {rate / 1e6:10.1f} MB/s")
    tr.write_line(f"peak RSS of the bench process: {peak_rss_mib():.1f} MiB")
    for line in _report:
        tr.write_line(line)


_report: list[str] = []


@pytest.fixture(scope="session")
def bench_report() -> Callable[[str], None]:
    """report(line): add a line to the summary printed after the benchmark tables."""
    return _report.append


@pytest.fixture(scope="session")
def peak_rss() -> Callable[[], float]:
    """peak_rss() -> peak RSS of this process in MiB."""
    return peak_rss_mib
