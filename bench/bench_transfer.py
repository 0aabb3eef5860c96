"""Two processes, one 1 GiB stream over an authenticated, encrypted session (Noise XXpsk3, AES-256-GCM
frames, credit flow control), against raw uvloop TCP loopback and AES-256-GCM measured in the same run.

Target (issue 4): >= 60% of the smaller of the two references. Peak RSS of each process is reported.

Both processes share this machine's cores, so the figure is also set against the CPU-bound limit the same
run implies: every byte is encrypted once (sender) and decrypted once (receiver) at the measured AES-GCM
rate, and costs what the raw loopback transfer cost each side in CPU time (kernel copies and TCP). One
process cannot go faster than its own AES + kernel time per byte, and both together not faster than their
summed CPU time per byte spread over the cores.
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
    aes = ref["aes256gcm"]
    limit = min(raw_rate, aes)
    cpu = cpu_bound_limit(aes, best_raw[1]["xfer_cpu_s"] / SIZE, best_raw[0]["xfer_cpu_s"] / SIZE)
    gib = SIZE / 2**30
    bench_report(
        f"session stream 1 GiB: {rate / 1e6:.0f} MB/s = {rate / limit:.0%} of min(raw uvloop loopback "
        f"{raw_rate / 1e6:.0f} MB/s, AES-256-GCM {aes / 1e6:.0f} MB/s) = {rate / cpu:.0%} of the CPU-bound "
        f"limit {cpu / 1e6:.0f} MB/s ({cpu / limit:.0%} of that min) on {CORES} cores; CPU s/GiB sender "
        f"{best[1]['xfer_cpu_s'] / gib:.2f}, receiver {best[0]['xfer_cpu_s'] / gib:.2f} (AES alone "
        f"{2**30 / aes:.2f}, raw loopback {best_raw[1]['xfer_cpu_s'] / gib:.2f} / "
        f"{best_raw[0]['xfer_cpu_s'] / gib:.2f}); peak RSS sender {best[1]['maxrss_mib']:.0f} MiB, receiver "
        f"{best[0]['maxrss_mib']:.0f} MiB (raw: {best_raw[1]['maxrss_mib']:.0f} / "
        f"{best_raw[0]['maxrss_mib']:.0f} MiB)"
    )


CORES = len(os.sched_getaffinity(0))


def cpu_bound_limit(aes: float, send_kernel: float, recv_kernel: float) -> float:
    """Bytes/s: the fastest an encrypted stream can go here, from per-byte CPU costs (seconds per byte)."""
    sender = 1 / (1 / aes + send_kernel)  # one process, one core: its AES plus its kernel work
    receiver = 1 / (1 / aes + recv_kernel)
    both = CORES / (2 / aes + send_kernel + recv_kernel)  # the two processes share the cores
    return min(sender, receiver, both)


if __name__ == "__main__":
    pytest.main([__file__, "--benchmark-only", "-q"])
