"""Many nodes in one process, to measure membership past what real processes fit on one machine.

Each node is a real `Node`: its own data dir (on tmpfs when there is one), repo and keys, listening on
127.0.0.1 and talking Noise over real loopback sockets; only the process and the event loop are shared.
Node 0 starts first and every other node bootstraps from it, as `p2pfast serve --bootstrap` does (or,
with `--bootstrap any`, from a member started before it, taken at random: a network whose members hand
out the invites): one after another (a network that grows), or `--batch K` at a time started together (a
network that boots; with `--settle`, each batch once the views of the nodes before it agree: a network
that grows in steps, which one process's single core can follow past a few hundred nodes, where a
thousand nodes booting at once overload it until handshakes and requests time out).

It reports:

* `converged_s`: from the first start until every node's membership view (node/viewsync.py) holds
  every member, all views agree, every node has at most `max_links` sessions and the links form one
  connected graph; `view_converged_s`: until the views agree;
* `links_max`, `links_median`: sessions per node once converged (`links_max_after_idle` after the idle
  window);
* `gossip_bytes_per_node_s`: encrypted bytes all nodes wrote during an idle window after convergence,
  per node and second (anti-entropy, peer exchange samples, pings: whatever an idle network sends);
* `lookup_contacts_max`: the most `who_has` requests one get caused, over gets by key and by content id
  of a file stored on node 0, made from nodes that do not hold it (nor, where there are such nodes,
  keep its key's metadata: one that does asks nobody for the key); `lookup_contacts` lists them, key
  and content id in turn;
* `join_s`: one more node, bootstrapping from a member in the middle, until every view has it alive;
* every node runs with `replicas = 3` (4 copies of each file);
* `dilation`: with `--dilation K`, the process's clocks run K times slower than real time
  (bench/timewarp.py: a DieCast-style scale model, as if the one core were K cores), so every time above
  is in simulated seconds; `real_s` is the run's wall time until then, and `cpu_busy` the process's CPU
  seconds per real second while converging (near 1 or above: CPU-bound, the figure is the core's, not the
  protocol's; a raise of K that leaves the figures where they were shows they are the protocol's);
  `--idle-dilation K2` runs the idle window at K2 instead (`cpu_busy_idle` tells whether it was enough);
* with `--kill F`: `--files` files (default 100) are stored through random members,
  then F of the members crash at once (connections reset, nothing said); `declared_dead_s` until every
  survivor's view has each dead (against `detector_bound_s`, suspect_after + dead_after),
  `dials_to_dead_per_member` the failed dials all survivors made to them meanwhile; `repaired_s` from
  then until every file has 4 copies on the survivors again (repair's grace here: 5 s), and
  `files_lost_first_kill` the files whose every copy was on the crashed members; then F of the
  survivors crash (`second_kill`), and `files_lost` counts the files a get from a random survivor no
  longer returns.

With `--procs P` the nodes run in P worker processes (bench/simprocs.py: node i in worker i mod P,
all on one simulated time), for networks past what one process holds (its 20,000 file descriptors, a
node keeping 20-25 open) and to use more than one core; `cpu_busy` is then per worker, and
`peak_rss_mib` the largest worker's. Not with `--kill`.

Figures relate to real processes as follows: the protocol work is the same, but N nodes share one
event loop and one core here, so times grow with N faster than on N machines; links and bytes do not
depend on that (tests/cli/test_join.py runs real processes; compare both at 100).

Run: python bench/simulate.py --nodes 100 [--json] [--idle 65] [--gossip-interval 30] [--kill 0.2]
[--max-links 16] [--batch 1] [--bootstrap first|any] [--settle] [--dilation 1] [--idle-dilation K2]
[--procs 1]
With --json the last line is one JSON object with the figures above and `nodes`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETKEY = bytes(range(32))
# Copies besides the storing node's: 3, so 4 in all (the kill-20%-twice scenario).
REPLICAS = 3
# Repair's grace in the simulation: a dead member's copies stop counting this long after its death.
GRACE = 5.0
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


def _freeze() -> None:
    """Keep the nodes' long-lived objects (repos, keys, views, sessions) out of the collector's full
    passes from now on: each pass walks the whole heap, and a heap of N nodes makes it N times what a
    node's own process pays (21% of the CPU of a 150-node run before this). Garbage first: what is frozen
    is never freed."""
    gc.collect()
    gc.freeze()


def _raise_fd_limit(nodes: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 64 * nodes + 256))  # sockets both ways, repos, WAL files
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def simulate(
    n: int,
    idle: float,
    gossip_interval: float,
    timeout: float,
    kill: float,
    max_links: int,
    files: int,
    batch: int = 1,
    bootstrap: str = "first",
    settle: bool = False,
    dilation: float = 1.0,
    clock: Any = None,
    idle_dilation: float | None = None,
) -> dict[str, Any]:
    import random
    import time

    from inproc import count_who_has, linked

    from p2pfast.counters import COUNTERS
    from p2pfast.errors import P2PError
    from p2pfast.node import Node
    from p2pfast.node.sources import BufferSink, BytesSource

    limits = limits_for(n, gossip_interval, max_links)
    nodes: list[Node] = []
    loop = asyncio.get_running_loop()

    async def wait(cond: Any, what: str, since: float) -> float:
        """Until `cond()` holds; returns the seconds since `since`. The timeout counts from the call (a
        run whose starts took longer than it still gets its whole wait)."""
        deadline = loop.time() + timeout
        while not cond():
            if loop.time() > deadline:
                raise SystemExit(f"{what}: not {timeout:g} s after the wait began")
            await asyncio.sleep(0.05)  # polls this process's own state; bounded by the timeout
        took = loop.time() - since
        print(f"sim: {what} after {took:.1f} s", file=sys.stderr, flush=True)
        return took

    with base_dir() as base:
        try:
            t0 = loop.time()
            real0, cpu0 = time.perf_counter(), _cpu_s()  # perf_counter is not dilated
            nodes.append(await _node(base / "n0", None, limits))
            # then the others, `batch` at a time starting together (each bootstraps from node 0, or
            # from one started before its batch): one at a time is a network growing; a batch of
            # hundreds is a network booting at once
            boots = random.Random(3)
            for first in range(1, n, batch):
                group = [
                    _node(
                        base / f"n{i}",
                        (nodes[0] if bootstrap == "first" else boots.choice(nodes)).peers.listen_addr,
                        limits,
                    )
                    for i in range(first, min(n, first + batch))
                ]
                nodes.extend(await asyncio.gather(*group))
                _freeze()  # after each batch, the last one included
                if settle and len(nodes) < n:  # a network growing in steps: each batch joins a settled one
                    await wait(lambda: _views_agree(nodes, len(nodes)), f"{len(nodes)} in every view", t0)
            started_s = loop.time() - t0
            view_s = await wait(lambda: _views_agree(nodes, n), "views agree", t0)
            # converged: every view holds every member and agrees, the links are within their bound
            # (what the join burst opened to the bootstrap node closed once idle), and connected
            converged_s = await wait(
                lambda: _views_agree(nodes, n) and _bounded(nodes, max_links) and linked(nodes),
                "links within the bound",
                t0,
            )
            real_converge = time.perf_counter() - real0
            cpu_busy = (_cpu_s() - cpu0) / real_converge
            links = sorted(len(x.peers.sessions) for x in nodes)
            if clock is not None and idle_dilation is not None:
                clock.set_factor(idle_dilation)  # an idle network needs less CPU: less wall time
            out0, real1, cpu1 = COUNTERS.bytes_out, time.perf_counter(), _cpu_s()
            await asyncio.sleep(idle)  # the idle window being measured, not a wait for a peer
            gossip = (COUNTERS.bytes_out - out0) / n / idle
            cpu_busy_idle = (_cpu_s() - cpu1) / (time.perf_counter() - real1)
            if clock is not None:
                clock.set_factor(dilation)
            links_after_idle = sorted(len(x.peers.sessions) for x in nodes)
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
            # one more member, bootstrapping from a member taken at random: until every view has it
            t1 = loop.time()
            joiner = await _node(base / "joiner", nodes[len(nodes) // 2].peers.listen_addr, limits)
            nodes.append(joiner)
            join_s = await wait(lambda: all(_alive_in(x, joiner.node_id) for x in nodes), "join", t1)
            result = figures(
                Settings(n, batch, bootstrap, settle, max_links, gossip_interval, dilation, idle_dilation),
                started_s=started_s,
                converged_s=converged_s,
                view_s=view_s,
                links=links,
                links_after_idle=links_after_idle,
                idle_s=idle,
                gossip=gossip,
                contacts=contacts,
                join_s=join_s,
                cpu_busy=cpu_busy,
                cpu_busy_idle=cpu_busy_idle,
                real_converge=real_converge,
            )
            if kill > 0:
                # files stored through random members, 3 copies each: what the kills must not lose
                rnd = random.Random(7)
                keys = [f"sim/kept/{i}" for i in range(files)]
                t_put = loop.time()
                for k in keys:
                    t_one = loop.time()
                    await rnd.choice(nodes).put(k, BytesSource(k.encode() * 100))
                    if loop.time() - t_one > 5:
                        print(
                            f"sim: store of {k} took {loop.time() - t_one:.1f} s", file=sys.stderr, flush=True
                        )
                took = loop.time() - t_put
                print(f"sim: {files} files stored in {took:.1f} s", file=sys.stderr, flush=True)
                first = await _kill(nodes, kill, limits, wait)
                victims = first.pop("victims")
                result.update(first)
                alive = [x for x in nodes if x.node_id not in victims]
                # repair brings every file back to 3 copies on the survivors (the grace is `grace`)
                t2 = loop.time()
                repaired, gone = await _await_copies(alive, keys, REPLICAS + 1, t2, timeout)
                result.update({"repaired_s": round(repaired, 2), "files_lost_first_kill": gone})
                second = await _kill(alive, kill, limits, wait)
                victims = second.pop("victims")
                alive = [x for x in alive if x.node_id not in victims]
                result["second_kill"] = second
                lost = 0
                for k in keys:
                    try:
                        await rnd.choice(alive).get(k, BufferSink())
                    except P2PError:  # a file no survivor returns: lost
                        lost += 1
                result.update({"files": files, "files_lost": lost})
            result["real_s"] = round(time.perf_counter() - real0, 1)
            result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            # before the nodes close: closing hundreds, each saying it leaves, takes a while
            print(f"sim: {json.dumps(result)}", file=sys.stderr, flush=True)
            return result
        finally:
            for x in nodes:
                with contextlib.suppress(Exception):
                    await x.close()


@dataclass(frozen=True)
class Settings:
    """What a run was asked to do (both modes: here and bench/simprocs.py)."""

    nodes: int
    batch: int
    bootstrap: str
    settle: bool
    max_links: int
    gossip_interval: float
    dilation: float
    idle_dilation: float | None


def figures(
    run: Settings,
    *,
    started_s: float,
    converged_s: float,
    view_s: float,
    links: list[int],
    links_after_idle: list[int],
    idle_s: float,
    gossip: float,
    contacts: list[int],
    join_s: float,
    cpu_busy: float,
    cpu_busy_idle: float,
    real_converge: float,
) -> dict[str, Any]:
    """The report's figures (the module's docstring says what each is), in one form for both modes."""
    return {
        "nodes": run.nodes,
        "batch": run.batch,
        "bootstrap": run.bootstrap,
        "settle": run.settle,
        "max_links": run.max_links,
        "started_s": round(started_s, 2),
        "converged_s": round(converged_s, 2),
        "view_converged_s": round(view_s, 2),
        "links_max": links[-1],
        "links_median": statistics.median(links),
        "links_max_after_idle": links_after_idle[-1],
        "gossip_interval_s": run.gossip_interval,
        "idle_window_s": round(idle_s, 2),
        "gossip_bytes_per_node_s": round(gossip, 1),
        "lookup_contacts_max": max(contacts, default=0),  # 0: every node holds the file
        "lookup_contacts": contacts,
        "join_s": round(join_s, 2),
        "dilation": run.dilation,
        "cpu_busy": round(cpu_busy, 2),
        "idle_dilation": run.dilation if run.idle_dilation is None else run.idle_dilation,
        "cpu_busy_idle": round(cpu_busy_idle, 2),
        "real_converge_s": round(real_converge, 1),
    }


def limits_for(n: int, gossip_interval: float, max_links: int) -> Any:
    """Every node's limits in a simulated network of n. Every node here dials from 127.0.0.1, where real
    members come from hosts of their own: the per-address and per-prefix admission limits
    (net/admission.py) would treat the network's own join burst as a flood from one place, so they are
    lifted to the network's size."""
    from p2pfast.net.limits import NetLimits

    return NetLimits(
        gossip_interval=gossip_interval,
        max_links=max_links,
        max_connections=max(256, 2 * n),
        max_pre_handshake=max(32, n),
        max_pre_handshake_per_address=max(8, n),
        max_pre_handshake_per_prefix=max(16, n),
    )


async def _await_copies(
    nodes: list[Any], keys: list[str], copies: int, t: float, timeout: float
) -> tuple[float, int]:
    """Until every key that `nodes` hold at all is held by `copies` of them; returns the seconds that
    took and how many keys none of them holds (every copy was on the crashed members)."""
    loop = asyncio.get_running_loop()
    while True:
        held = {k: 0 for k in keys}
        for x in nodes:
            for row in await x.db(x.repo.list_files):
                k = row.key.decode()
                if k in held:
                    held[k] += 1
        if all(n >= copies or n == 0 for n in held.values()):
            return loop.time() - t, sum(1 for n in held.values() if n == 0)
        if loop.time() - t > timeout:
            short = sum(1 for n in held.values() if n < copies)
            raise SystemExit(f"{short} files below {copies} copies after {timeout:g} s")
        await asyncio.sleep(0.5)  # polls this process's own state; bounded by the timeout


async def _node(root: Path, boot: str | None, limits: Any) -> Any:
    """A started node in `root`, bootstrapping from the address `boot` (None: the first node)."""
    from p2pfast import identity
    from p2pfast.datadir import Layout, init
    from p2pfast.node import Node
    from p2pfast.node.repair import Settings

    layout = Layout.of(root)
    init(layout, NETKEY)
    ident = identity.load(layout.node_key, layout.network_key)
    bootstrap = (boot,) if boot is not None else ()
    node = Node(
        layout,
        ident,
        listen="127.0.0.1:0",
        bootstrap=bootstrap,
        limits=limits,
        replicas=REPLICAS,
        repair=Settings(grace=GRACE),
    )
    await node.start()
    return node


async def _kill(nodes: list[Any], fraction: float, limits: Any, wait: Any) -> dict[str, Any]:
    """Crash `fraction` of the members at once (connections reset, nothing said first, as kill -9 looks
    from outside): until every survivor's view says each is dead, and the dials that went to them."""
    import random

    from inproc import crash, dial_failures, linked

    from p2pfast.proto import view

    rnd = random.Random(14)
    victims = rnd.sample(nodes[1:], max(1, int(len(nodes) * fraction)))
    survivors = [x for x in nodes if x not in victims]
    addrs = {v.peers.listen_addr for v in victims}
    failures = [dial_failures(x) for x in survivors]  # from now on: this kill's own count
    t = asyncio.get_running_loop().time()
    for v in victims:
        await crash(v)

    def all_dead() -> bool:
        for x in survivors:
            for v in victims:
                r = x.viewsync.view.get(v.node_id)
                if r is None or r.state != view.State.DEAD:
                    return False
        return True

    dead_s = await wait(all_dead, "victims declared dead", t)
    dials = sum(1 for f in failures for a in f if a in addrs)
    return {
        "victims": {v.node_id for v in victims},
        "killed": len(victims),
        "declared_dead_s": round(dead_s, 2),
        "detector_bound_s": _detector_bound(limits),
        "dials_to_dead_per_member": round(dials / len(victims), 1),
        "links_connected_after_kill": linked(survivors),
    }


def _detector_bound(limits: Any) -> float:
    """A crashed member's death is declared this long after its links broke, at the latest: the
    suspicion timeout, the indirect probes' wait, the death timeout (node/viewsync.py)."""
    from p2pfast.node.viewsync import PROBE_TIMEOUT

    return float(limits.suspect_after + 2 * PROBE_TIMEOUT + limits.dead_after)


def _alive_in(node: Any, node_id: str) -> bool:
    from p2pfast.proto import view

    r = node.viewsync.view.get(node_id)
    return r is not None and r.state == view.State.ALIVE


def _bounded(nodes: list[Any], max_links: int) -> bool:
    return all(len(x.peers.sessions) <= max_links for x in nodes)


def _cpu_s() -> float:
    """CPU seconds this process has used, all its threads (the DB threads too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
    p.add_argument("--kill", type=float, default=0.0, help="then crash this fraction of the members (0.2)")
    p.add_argument("--max-links", type=int, default=16, help="the max_links setting of every node")
    p.add_argument("--files", type=int, default=100, help="with --kill: files stored before the kills")
    p.add_argument(
        "--batch", type=int, default=1, help="nodes started together after the first (1: one at a time)"
    )
    p.add_argument(
        "--bootstrap",
        choices=("first", "any"),
        default="first",
        help="each node bootstraps from node 0, or from any member started before its batch",
    )
    p.add_argument(
        "--settle",
        action="store_true",
        help="start each batch once the views of the nodes before it agree (a network growing in steps)",
    )
    p.add_argument(
        "--dilation",
        type=float,
        default=1.0,
        help="run the clocks this many times slower than real time (timewarp.py; times in the report are "
        "simulated seconds)",
    )
    p.add_argument(
        "--idle-dilation",
        type=float,
        default=None,
        help="the factor during the idle window only (default: --dilation's)",
    )
    p.add_argument(
        "--procs",
        type=int,
        default=1,
        help="spread the nodes over this many worker processes (simprocs.py; not with --kill)",
    )
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args(argv)
    if args.procs < 1 or (args.procs > 1 and args.kill > 0):
        p.error("--procs is at least 1, and 1 with --kill (the crash scenarios run in one process)")
    if args.dilation < 1:
        p.error(f"--dilation is at least 1, not {args.dilation:g}")
    if args.idle_dilation is not None and (args.idle_dilation < 1 or args.dilation == 1):
        p.error("--idle-dilation is at least 1, and needs --dilation above 1")
    args.batch = max(1, args.batch)
    if args.procs > 1:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # -P leaves the script's directory out
        import simprocs

        result = simprocs.run(args)
        _print(result, args.json)
        return 0
    _raise_fd_limit(args.nodes)
    from p2pfast import runtime

    factory = clock = None
    if args.dilation > 1:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # -P leaves the script's directory out
        import timewarp

        clock = timewarp.Clock(args.dilation)
        clock.install()
        factory = timewarp.loop_factory(clock)

    result = runtime.run(
        simulate(
            args.nodes,
            args.idle,
            args.gossip_interval,
            args.timeout,
            args.kill,
            args.max_links,
            args.files,
            args.batch,
            args.bootstrap,
            args.settle,
            args.dilation,
            clock,
            args.idle_dilation,
        ),
        loop_factory=factory,
    )
    _print(result, args.json)
    return 0


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:26} {v}")


if __name__ == "__main__":
    sys.exit(main())
