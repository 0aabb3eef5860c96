"""Self-healing with real node processes: how long a network of 6 takes to restore full redundancy.

6 nodes on tmpfs, `replicas = 2` (3 copies), 1 GiB in 100 files (P2PFAST_BENCH_REPAIR_MIB to change the
total), each node's repair copies throttled to `repair_bandwidth` (64 MiB/s here), `repair_grace` 5 s:

* kill 1 node: seconds until every file has 3 copies on the live nodes again;
* then kill 2 more at once: the same;
* user stores (50 x 4 MiB through one node's daemon) while that second repair runs, against the same
  stores before any node died.

Beside each time, the floor it is a ratio to: the bytes the lost copies hold at one node's repair
bandwidth (the copies are spread over the holders, each under its own limit, so a network can beat it),
plus the grace a member is given before its copies stop counting. Copy counts are read from each node's
repo (read-only) every 0.2 s.

Run: P2PFAST_REQUIRE_ACCEL=1 pytest bench/bench_repair.py --benchmark-only -s
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_replication as br

from p2pfast.datadir import Layout, init
from p2pfast.repo.repo import Repo

NODES = 6
FILES = 100
TOTAL = int(os.environ.get("P2PFAST_BENCH_REPAIR_MIB", "1024")) << 20
BANDWIDTH = 64 << 20
GRACE = 5.0
TARGET = 3
CONFIG = (
    f"replicas = 2\nrepair_grace = {GRACE:g}\nrepair_bandwidth = {BANDWIDTH}\nrepair_interval = 600\n"
    "gossip_interval = 2\n"
)
USER_FILES = 50
USER_SIZE = 4 << 20


def copies(nodes: list[br.Node]) -> dict[str, int]:
    """key -> how many of `nodes` hold it."""
    out: dict[str, int] = {}
    for n in nodes:
        with Repo.open(Layout.of(n.root).db, readonly=True) as repo:
            for f in repo.list_files():
                key = f.key.decode()
                out[key] = out.get(key, 0) + 1
    return out


def restore_time(live: list[br.Node], keys: list[str], timeout: float = 600.0) -> float:
    t0 = time.monotonic()
    while True:
        held = copies(live)
        if all(held.get(k, 0) >= TARGET for k in keys):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            short = sum(held.get(k, 0) < TARGET for k in keys)
            raise AssertionError(f"{short} files still short of {TARGET} copies after {timeout} s")
        time.sleep(0.2)  # polls the nodes' repos, bounded by the timeout


def lost_bytes(dead: list[br.Node], sizes: dict[str, int]) -> int:
    """The bytes of the copies the dead nodes held: what the repair must send again."""
    held = copies(dead)
    return sum(sizes[k] * n for k, n in held.items() if k in sizes)


def user_stores(node: br.Node, base: Path, tag: str) -> float:
    src = base / f"user-{tag}.bin"
    br.make_file(src, USER_SIZE)
    t0 = time.perf_counter()
    for i in range(USER_FILES):
        r = br.store(node, f"user/{tag}/{i}", src)
        assert len(r["replicated_to"]) >= 1, r
    return USER_FILES * USER_SIZE / (time.perf_counter() - t0)


def test_time_to_restore_redundancy(
    benchmark: Any, ref: dict[str, float], bench_report: Callable[[str], None]
) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    with br.base_dir("tmpfs") as base:
        key = os.urandom(32)
        nodes: list[br.Node] = []
        try:
            for i in range(NODES):
                root = base / f"n{i}"
                init(Layout.of(root), key)
                (root / "config").write_text(CONFIG)
                nodes.append(br.Node(root).start(nodes[0].listen if nodes else None))
            br.wait(lambda: all(n.connected() >= NODES - 1 for n in nodes), "full membership")
            size = TOTAL // FILES
            src = base / "file.bin"
            br.make_file(src, size)
            sizes: dict[str, int] = {}
            for i in range(FILES):
                # the same bytes would be one object: a different last byte makes each its own
                with open(src, "r+b") as f:
                    f.seek(size - 8)
                    f.write(i.to_bytes(8, "big"))
                k = f"data/{i:03d}"
                r = br.store(nodes[i % NODES], k, src)
                assert len(r["replicated_to"]) == 2, r
                sizes[k] = size
            keys = list(sizes)
            assert all(n == TARGET for n in copies(nodes).values())
            quiet_rate = user_stores(nodes[0], base, "quiet")
            results: list[tuple[str, float, int]] = []

            def scenario(kill: list[br.Node], name: str) -> None:
                lost = lost_bytes(kill, sizes)
                for n in kill:
                    n.kill()
                    nodes.remove(n)
                results.append((name, restore_time(nodes, keys), lost))

            benchmark.pedantic(lambda: scenario([nodes[-1]], "kill 1 of 6"), rounds=1, iterations=1)
            # two more at once; user stores run through a survivor while the repair copies
            doomed = nodes[-2:]
            lost = lost_bytes(doomed, sizes)
            for n in doomed:
                n.kill()
                nodes.remove(n)
            t0 = time.monotonic()
            # once the repair has begun (the grace is over and copies are landing), store as a user would
            before = sum(copies(nodes).get(k, 0) for k in keys)
            br.wait(lambda: sum(copies(nodes).get(k, 0) for k in keys) > before, "the repair to begin")
            busy_rate = user_stores(nodes[0], base, "busy")
            results.append(
                ("kill 2 more (3 of 6 left)", time.monotonic() - t0 + restore_time(nodes, keys), lost)
            )
        finally:
            for n in nodes:
                n.kill()
    for name, seconds, lost in results:
        floor = GRACE + lost / BANDWIDTH
        bench_report(
            f"repair, {name}: {FILES} files of {size >> 20} MiB back to {TARGET} copies in {seconds:.1f} s ="
            f" {seconds / floor:.2f}x the floor {floor:.1f} s (grace {GRACE:g} s + {lost / 2**20:.0f} MiB of"
            f" lost copies at one node's repair_bandwidth {BANDWIDTH >> 20} MiB/s)"
        )
    bench_report(
        f"user stores ({USER_FILES} x {USER_SIZE >> 20} MiB) during that repair {busy_rate / 1e6:.0f} MB/s,"
        f" without one {quiet_rate / 1e6:.0f} MB/s: {busy_rate / quiet_rate:.2f}x"
    )
