"""Two processes, one 1 GiB stream over an authenticated, encrypted session (Noise XXpsk3, AES-256-GCM
frames, credit flow control), against raw uvloop TCP loopback and AES-256-GCM measured in the same run.

Target (issue 4): >= 60% of the smaller of the two references. Peak RSS of each process is reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

SIZE = 1 << 30
PEER = str(Path(__file__).with_name("transfer_peer.py"))


def _pair(server_args: list[str], client_args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    env = dict(os.environ, P2PFAST_BENCH_NETKEY=os.urandom(32).hex())
    server = subprocess.Popen([sys.executable, PEER, *server_args], stdout=subprocess.PIPE, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode().split()
        assert line and line[0] == "PORT", line
        client = subprocess.run(
            [sys.executable, PEER, client_args[0], line[1], *client_args[1:]],
            capture_output=True,
            env=env,
            timeout=300,
            check=True,
        )
        server_out = server.stdout.read()
        server.wait(timeout=60)
        return orjson.loads(client.stdout.splitlines()[-1]), orjson.loads(server_out.splitlines()[-1])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)


def test_stream_1gib_over_session(
    benchmark: Any, ref: dict[str, float], bench_report: Callable[[str], None]
) -> None:
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def run() -> None:
        results.append(_pair(["session-server"], ["session-client", str(SIZE)]))

    benchmark.pedantic(run, rounds=2, iterations=1)
    raw = [_pair(["raw-server", str(SIZE)], ["raw-client"]) for _ in range(2)]
    best = min(results, key=lambda r: r[0]["seconds"])
    best_raw = min(raw, key=lambda r: r[0]["seconds"])
    assert best[0]["bytes"] == SIZE and best_raw[0]["bytes"] == SIZE
    rate = SIZE / best[0]["seconds"]
    raw_rate = SIZE / best_raw[0]["seconds"]
    limit = min(raw_rate, ref["aes256gcm"])
    bench_report(
        f"session stream 1 GiB: {rate / 1e6:.0f} MB/s = {rate / limit:.0%} of min(raw uvloop loopback "
        f"{raw_rate / 1e6:.0f} MB/s, AES-256-GCM {ref['aes256gcm'] / 1e6:.0f} MB/s); peak RSS sender "
        f"{best[1]['maxrss_mib']:.0f} MiB, receiver {best[0]['maxrss_mib']:.0f} MiB "
        f"(raw: {best_raw[1]['maxrss_mib']:.0f} / {best_raw[0]['maxrss_mib']:.0f} MiB)"
    )


if __name__ == "__main__":
    pytest.main([__file__, "--benchmark-only", "-q"])
