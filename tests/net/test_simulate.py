"""bench/simulate.py, the many-nodes-in-one-process harness, runs and reports what its docstring promises
(a small run: the figures at scale are the bench's business, not a test's)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "simulate.py"


def simulate(*args: str, timeout: float = 120) -> dict[str, Any]:
    """A run of the simulator with `args` (and --json): its report."""
    r = subprocess.run(
        [sys.executable, "-P", str(SCRIPT), *args, "--json"], capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def test_simulate_reports_its_figures_as_one_json_line() -> None:
    out = simulate("--nodes", "6", "--idle", "0.5", "--gossip-interval", "1")
    for field in (
        "nodes",
        "converged_s",
        "view_converged_s",
        "links_max",
        "links_median",
        "gossip_bytes_per_node_s",
        "lookup_contacts_max",
        "join_s",
    ):
        assert field in out, out
    assert out["nodes"] == 6 and out["links_max"] == 5  # a network this small is a full mesh (node/links.py)
    assert out["gossip_bytes_per_node_s"] > 0  # an idle network still pings
    # a get by content id asks replicas + 2 = 5 members (the simulator runs replicas = 3); by key too
    # (the key's metadata is on the 4 ranked first for it), or none from a getter that keeps it itself
    by_key, by_cid = out["lookup_contacts"][0::2], out["lookup_contacts"][1::2]
    assert set(by_cid) == {5} and set(by_key) <= {0, 5}, out


def _timewarp() -> Any:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import timewarp
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return timewarp


def test_dilated_clocks_run_factor_times_slower_and_come_back() -> None:
    timewarp = _timewarp()
    real_monotonic, real_time = time.monotonic, time.time
    clock = timewarp.Clock(8)
    clock.install()
    try:
        r0 = time.perf_counter()  # perf_counter is not dilated
        m0, t0 = time.monotonic(), time.time()
        inner0 = time.perf_counter()
        while time.perf_counter() - inner0 < 0.2:
            pass
        inner1 = time.perf_counter()
        m1, t1 = time.monotonic(), time.time()
        r1 = time.perf_counter()
    finally:
        clock.uninstall()
    assert time.monotonic is real_monotonic and time.time is real_time
    for elapsed in (m1 - m0, t1 - t0):
        # within what the real seconds around the reads allow, divided by 8
        assert (inner1 - inner0) / 8 - 1e-6 <= elapsed <= (r1 - r0) / 8 + 1e-6, elapsed
    with pytest.raises(ValueError, match="at least 1"):
        timewarp.Clock(0.5)


def test_a_change_of_factor_keeps_the_clocks_continuous() -> None:
    timewarp = _timewarp()
    clock = timewarp.Clock(100)
    clock.install()
    try:
        m0, t0 = time.monotonic(), time.time()
        clock.set_factor(2)
        r1 = time.perf_counter()
        m1, t1 = time.monotonic(), time.time()
        inner0 = time.perf_counter()
        while time.perf_counter() - inner0 < 0.2:
            pass
        inner1 = time.perf_counter()
        m2 = time.monotonic()
        r2 = time.perf_counter()
        with pytest.raises(ValueError, match="at least 1"):
            clock.set_factor(0)
    finally:
        clock.uninstall()
    # no jump at the change (at 100x, well under a millisecond of real time went by), then 2x slower
    assert 0 <= m1 - m0 < 1e-3 and 0 <= t1 - t0 < 1e-3, (m1 - m0, t1 - t0)
    assert (inner1 - inner0) / 2 - 1e-6 <= m2 - m1 <= (r2 - r1) / 2 + 1e-6, m2 - m1
    assert clock.factor == 2


def test_a_dilated_loop_waits_in_simulated_seconds() -> None:
    timewarp = _timewarp()
    clock = timewarp.Clock(5)
    clock.install()
    try:
        loop = timewarp.loop_factory(clock)()
        try:
            r0 = time.perf_counter()
            s0 = loop.time()
            loop.run_until_complete(asyncio.sleep(0.1))
            slept = loop.time() - s0
            real = time.perf_counter() - r0
        finally:
            loop.close()
    finally:
        clock.uninstall()
    # a 0.1 s sleep on the loop's clock is 0.5 s of real time, waited in the selector, not spun
    assert slept >= 0.1 and real >= 0.5, (slept, real)


def test_a_dilated_simulation_reports_simulated_seconds() -> None:
    out = simulate("--nodes", "6", "--idle", "1", "--gossip-interval", "1", "--dilation", "3", timeout=180)
    assert out["dilation"] == 3 and out["links_max"] == 5, out
    # the convergence took 3 real seconds for every simulated one (more when the CPU was busy)
    assert out["real_converge_s"] >= 3 * out["converged_s"] * 0.95, out
    assert 0 <= out["cpu_busy"] < 1, out  # 6 nodes leave the core mostly idle
    assert out["gossip_bytes_per_node_s"] > 0


def test_clocks_with_one_anchor_share_one_time_across_a_change_of_factor() -> None:
    timewarp = _timewarp()
    real_monotonic = time.monotonic
    anchor = (time.monotonic() - 5.0, time.time() - 5.0)  # as a parent's, taken 5 s before
    a, b = timewarp.Clock(10), timewarp.Clock(10)
    a.install(anchor)
    try:
        # 5 real seconds since the anchor are half a simulated one
        assert 0.5 <= time.monotonic() - anchor[0] <= 0.5 + 1e-3
        b._m0, b._t0, b._sm0, b._st0 = a._m0, a._t0, a._sm0, a._st0  # b: another process's install
        at = real_monotonic() + 0.01
        while real_monotonic() < at:
            pass
        a.set_factor(2, at=at)
        b.set_factor(2, at=at)  # made later, as if at `at`: the same time from then on
        r = real_monotonic()
        assert abs(a.simulated(r) - b.simulated(r)) < 1e-9 and a.factor == b.factor == 2
        assert abs(a.simulated(at) - (anchor[0] + (at - anchor[0]) / 10)) < 1e-9  # continuous at `at`
    finally:
        a.uninstall()


def test_simulate_over_two_worker_processes() -> None:
    out = simulate(
        *("--nodes", "8", "--procs", "2", "--batch", "4", "--bootstrap", "any"),
        *("--idle", "0.5", "--gossip-interval", "1"),
    )
    assert out["nodes"] == 8 and out["procs"] == 2, out
    # converged means one connected graph of links over all 8, so some links cross the processes
    assert 1 <= out["links_median"] <= out["links_max"] <= 7, out
    assert out["gossip_bytes_per_node_s"] > 0 and out["join_s"] >= 0
    # a get by content id asks replicas + 2 = 5 members, wherever they run
    assert set(out["lookup_contacts"][1::2]) == {5}, out
    refused = subprocess.run(
        [sys.executable, "-P", str(SCRIPT), "--nodes", "8", "--procs", "2", "--kill", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--kill" in refused.stderr, refused.stderr
