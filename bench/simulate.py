"""Many nodes in one process, to measure membership past what real processes fit on one machine.

Each node is a real `Node`: its own data dir (on tmpfs when there is one), repo and keys, listening on
127.0.0.1 and talking Noise over real loopback sockets; only the process and the event loop are shared.
Node 0 starts first and every other node bootstraps from it, as `p2pfast serve --bootstrap` does.

It reports:

* `converged_s`: from the first start until every node is connected to every other one (today's
  discovery); `view_converged_s`: until every node's membership view (node/viewsync.py) holds every
  member and all views agree;
* `links_max`, `links_median`: sessions per node once converged;
* `gossip_bytes_per_node_s`: encrypted bytes all nodes wrote during an idle window after convergence,
  per node and second (peer exchange, pings: whatever an idle network sends);
* `lookup_contacts_max`: the most `who_has` requests one get caused, over gets by key and by content id
  of a file stored on node 0, made from nodes that do not hold it (nor, where there are such nodes,
  keep its key's metadata: one that does asks nobody for the key); `lookup_contacts` lists them, key
  and content id in turn.

Figures relate to real processes as follows: the protocol work is the same, but N nodes share one
event loop and one core here, so times grow with N faster than on N machines; links and bytes do not
depend on that (tests/cli/test_join.py runs real processes; compare both at 100).

Run: python bench/simulate.py --nodes 100 [--json] [--idle 65] [--gossip-interval 30]
With --json the last line is one JSON object with the figures above and `nodes`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NETKEY = bytes(range(32))
# the lookup counter the tests use (tests/helpers/inproc.py): the same instrument for both
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))


@contextlib.contextmanager
def base_dir() -> Iterator[Path]:
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="p2pfast-sim-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _raise_fd_limit(nodes: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 64 * nodes + 256))  # sockets both ways, repos, WAL files
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def simulate(n: int, idle: float, gossip_interval: float, timeout: float) -> dict[str, Any]:
    from inproc import count_who_has

    from p2pfast import identity
    from p2pfast.counters import COUNTERS
    from p2pfast.datadir import Layout, init
    from p2pfast.net.limits import NetLimits
    from p2pfast.node import Node
    from p2pfast.node.sources import BufferSink, BytesSource

    # Every node here dials from 127.0.0.1, where real members come from hosts of their own: the
    # per-address and per-prefix admission limits (net/admission.py) would treat the network's own join
    # burst as a flood from one place, so they are lifted to the network's size.
    limits = NetLimits(
        gossip_interval=gossip_interval,
        max_connections=max(256, 2 * n),
        max_pre_handshake=max(32, n),
        max_pre_handshake_per_address=max(8, n),
        max_pre_handshake_per_prefix=max(16, n),
    )
    nodes: list[Node] = []
    with base_dir() as base:
        try:
            t0 = time.monotonic()
            for i in range(n):
                layout = Layout.of(base / f"n{i}")
                init(layout, NETKEY)
                ident = identity.load(layout.node_key, layout.network_key)
                boot = (nodes[0].peers.listen_addr,) if nodes else ()
                node = Node(layout, ident, listen="127.0.0.1:0", bootstrap=boot, limits=limits, replicas=2)
                await node.start()
                nodes.append(node)
            started_s = time.monotonic() - t0
            view_s = None
            while not all(len(x.peers.sessions) == n - 1 for x in nodes):
                if view_s is None and _views_agree(nodes, n):
                    view_s = time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise SystemExit(f"not converged after {timeout:g} s")
                await asyncio.sleep(0.05)  # polls this process's own state; bounded by the timeout
            converged_s = time.monotonic() - t0
            while not _views_agree(nodes, n):
                if time.monotonic() - t0 > timeout:
                    raise SystemExit(f"views do not agree after {timeout:g} s")
                await asyncio.sleep(0.05)
            view_s = time.monotonic() - t0 if view_s is None else view_s
            links = sorted(len(x.peers.sessions) for x in nodes)
            out0 = COUNTERS.bytes_out
            await asyncio.sleep(idle)  # the idle window being measured, not a wait for a peer
            gossip = (COUNTERS.bytes_out - out0) / n / idle
            asked = count_who_has(nodes)
            report = await nodes[0].put("sim/file", BytesSource(b"simulated " * 1000))
            holders = {nodes[0].node_id, *report.replicated_to}
            contacts = []
            others = [x for x in nodes if x.node_id not in holders]
            # those that do not keep the key's metadata either (node/keymeta.py), when there are any
            getters = [x for x in others if x.repo.get_keymeta(b"sim/file") is None] or others
            for getter in getters[:3]:
                for name in ("sim/file", report.cid):
                    before = sum(asked.values())
                    await getter.get(name, BufferSink())
                    contacts.append(sum(asked.values()) - before)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return {
                "nodes": n,
                "started_s": round(started_s, 2),
                "converged_s": round(converged_s, 2),
                "view_converged_s": round(view_s, 2),
                "links_max": links[-1],
                "links_median": statistics.median(links),
                "gossip_interval_s": gossip_interval,
                "idle_window_s": idle,
                "gossip_bytes_per_node_s": round(gossip, 1),
                "lookup_contacts_max": max(contacts),
                "lookup_contacts": contacts,
                "peak_rss_mib": round(rss, 1),
            }
        finally:
            for x in nodes:
                with contextlib.suppress(Exception):
                    await x.close()


def _views_agree(nodes: list[Any], n: int) -> bool:
    """Every node's membership view holds all n members, and all views are the same."""
    views = [x.viewsync.view for x in nodes]
    return all(len(v) == n for v in views) and len({v.root() for v in views}) == 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--idle", type=float, default=65.0, help="idle window measured after convergence (s)")
    p.add_argument("--gossip-interval", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=600.0, help="give up converging after this long (s)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args(argv)
    _raise_fd_limit(args.nodes)
    from p2pfast import runtime

    result = runtime.run(simulate(args.nodes, args.idle, args.gossip_interval, args.timeout))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:26} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
