"""`bench/simulate.py --procs P`: the simulated network spread over P worker processes.

One process cannot hold a thousand nodes here: each node keeps ~20-25 file descriptors open (its repo's
database, WAL, shared-memory and lock files, its listener, both ends of its sessions) and a process may
have 20,000 at most (the hard limit, which only root raises); one core is also 1/N of a core per node.
So the parent starts P workers (`python bench/simprocs.py --worker`), each running its share of the
nodes (node i in worker i mod P) in one event loop as simulate.py does, all on real loopback sockets
between them, and drives them over their stdin/stdout, one JSON object per line each way. The parent
computes the figures from what the workers report of their nodes: view sizes and roots, sessions and
their peers, bytes written, who_has requests served.

With `--dilation K` every worker and the parent install a clock with the same real anchor (the
machine's monotonic clock is one for all processes), so all of them live on one simulated time; the
idle window's factor changes in every process at one real instant chosen ahead.

Not with `--kill` (the crash scenarios run in one process: simulate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
POLL = 0.25  # real seconds between the parent's looks at the workers' state
PROGRESS = 30.0  # real seconds between progress lines while waiting


class Worker:
    """One worker process, asked one thing at a time (the parent sends to all, then reads each)."""

    def __init__(self, index: int, config: dict[str, Any]) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(HERE / "simprocs.py"), "--worker", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"sim: worker {self.index} ended (exit {self.proc.wait()}); see its stderr")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise SystemExit(f"sim: worker {self.index}: {reply['error']}")
        return reply

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.recv()

    def end(self) -> None:
        """Wait for it to close its nodes (told by `send("close")`), bounded; kill it past that."""
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def all_ask(workers: list[Worker], op: str, **args: Any) -> list[dict[str, Any]]:
    for w in workers:
        w.send(op, **args)
    return [w.recv() for w in workers]


def run(args: Any) -> dict[str, Any]:
    """The parent: the same run as simulate.simulate, its nodes in `args.procs` workers."""
    sys.path.insert(0, str(HERE))
    import simulate

    clock = None
    anchor = (time.monotonic(), time.time())
    if args.dilation > 1:
        import timewarp

        clock = timewarp.Clock(args.dilation)
        clock.install(anchor)
    n, procs, timeout = args.nodes, args.procs, args.timeout
    with simulate.base_dir() as base:
        config = {
            "base": str(base),
            "nodes": n,
            "procs": procs,
            "gossip_interval": args.gossip_interval,
            "max_links": args.max_links,
            "dilation": args.dilation,
            "anchor": anchor,
        }
        workers = [Worker(i, config) for i in range(procs)]
        try:
            result = _drive(args, workers, clock, timeout, n)
            # before the nodes close, which takes a while for hundreds
            print(f"sim: {json.dumps(result)}", file=sys.stderr, flush=True)
            return result
        finally:
            for w in workers:  # all told at once, then each waited for
                with contextlib.suppress(OSError, ValueError):
                    w.send("close")
            for w in workers:
                w.end()


def _drive(args: Any, workers: list[Worker], clock: Any, timeout: float, n: int) -> dict[str, Any]:
    import simulate
    from inproc import graph_connected

    procs, max_links = len(workers), args.max_links
    ids: list[str] = []
    addrs: list[str] = []

    def now() -> float:
        return time.monotonic()  # dilated when the clock is installed: simulated seconds

    def cpu_all(states: list[dict[str, Any]]) -> float:
        return float(sum(s["cpu"] for s in states))

    def wait(cond: Any, what: str, since: float) -> float:
        deadline = now() + timeout
        while not cond():
            if now() > deadline:
                raise SystemExit(f"{what}: not {timeout:g} s after the wait began")
            time.sleep(POLL)  # polls the workers' state (real seconds); bounded by the timeout
        took = now() - since
        print(f"sim: {what} after {took:.1f} s", file=sys.stderr, flush=True)
        return took

    def start(indices: list[int], boots: list[str | None]) -> None:
        shares: dict[int, tuple[list[str], list[str | None]]] = {}
        for i, boot in zip(indices, boots, strict=True):
            names, bs = shares.setdefault(i % procs, ([], []))
            names.append(f"n{i}")
            bs.append(boot)
        for w, (names, bs) in shares.items():
            workers[w].send("start", names=names, boots=bs)
        for w in shares:
            for node in workers[w].recv()["nodes"]:
                i = int(node["name"][1:])
                while len(ids) <= i:
                    ids.append("")
                    addrs.append("")
                ids[i], addrs[i] = node["id"], node["addr"]

    def views_agree(states: list[dict[str, Any]], size: int) -> bool:
        nodes = [x for s in states for x in s["nodes"]]
        return all(x["n"] == size for x in nodes) and len({x["root"] for x in nodes}) == 1

    def converged(states: list[dict[str, Any]]) -> bool:
        nodes = [x for s in states for x in s["nodes"]]
        if not views_agree(states, n) or any(len(x["links"]) > max_links for x in nodes):
            return False
        return graph_connected({x["id"]: x["links"] for x in nodes})  # short ids: the first 12 hex digits

    def switch(factor: float) -> None:
        """Every process to `factor` at one real instant a second ahead (changed then, not before: a
        clock changed early would go back)."""
        at = clock.real_monotonic() + 1.0
        all_ask(workers, "set_factor", factor=factor, at=at)
        while clock.real_monotonic() < at:
            time.sleep(0.01)
        clock.set_factor(factor, at=at)

    last: list[list[dict[str, Any]]] = [[]]

    said = [time.perf_counter()]

    def state_holds(pred: Any) -> Any:
        def cond() -> bool:
            last[0] = all_ask(workers, "state")
            if time.perf_counter() - said[0] > PROGRESS:
                said[0] = time.perf_counter()
                _progress(now() - t0, last[0])
            return bool(pred(last[0]))

        return cond

    t0 = now()
    real0 = time.perf_counter()
    cpu0 = cpu_all(all_ask(workers, "state"))
    start([0], [None])
    boots = random.Random(3)
    for first in range(1, n, args.batch):
        batch = list(range(first, min(n, first + args.batch)))
        start(
            batch, [addrs[0] if args.bootstrap == "first" else addrs[boots.randrange(first)] for _ in batch]
        )
        if args.settle and first + len(batch) < n:
            size = first + len(batch)
            wait(state_holds(lambda s, size=size: views_agree(s, size)), f"{size} in every view", t0)
    started_s = now() - t0
    view_s = wait(state_holds(lambda s: views_agree(s, n)), "views agree", t0)
    converged_s = wait(state_holds(converged), "links within the bound", t0)
    real_converge = time.perf_counter() - real0
    cpu_busy = (cpu_all(last[0]) - cpu0) / real_converge
    links = sorted(len(x["links"]) for s in last[0] for x in s["nodes"])

    if clock is not None and args.idle_dilation is not None:
        switch(args.idle_dilation)
    s1 = all_ask(workers, "state")
    out0, cpu1, real1, t_idle = sum(s["bytes_out"] for s in s1), cpu_all(s1), time.perf_counter(), now()
    while now() - t_idle < args.idle:  # the idle window being measured, not a wait for a peer
        time.sleep(min(POLL, max(0.0, args.idle - (now() - t_idle))))
    s2 = all_ask(workers, "state")
    idle_s = now() - t_idle
    gossip = (sum(s["bytes_out"] for s in s2) - out0) / n / idle_s
    cpu_busy_idle = (cpu_all(s2) - cpu1) / (time.perf_counter() - real1)
    if clock is not None and args.idle_dilation is not None:
        switch(args.dilation)
    links_after_idle = sorted(len(x["links"]) for s in s2 for x in s["nodes"])

    # lookups: a file stored on node 0, got by key and by content id from nodes that do not hold it
    # (nor keep its key's metadata, where there are such nodes), counting the who_has requests served
    all_ask(workers, "count_who_has")
    report = workers[0].ask("put", name="n0", key="sim/file", size=10_000)
    holders = {ids[0], *report["replicated_to"]}
    meta = {i for r in all_ask(workers, "keymeta", key="sim/file") for i in r["ids"]}
    others = [i for i in range(n) if ids[i] not in holders]
    getters = [i for i in others if ids[i] not in meta] or others
    contacts = []
    for g in getters[:3]:
        for name in ("sim/file", report["cid"]):
            before = sum(r["asked"] for r in all_ask(workers, "asked"))
            workers[g % procs].ask("get", name=f"n{g}", key=name)
            contacts.append(sum(r["asked"] for r in all_ask(workers, "asked")) - before)

    t1 = now()
    joined = workers[0].ask("start", names=["joiner"], boots=[addrs[n // 2]])["nodes"][0]
    join_s = wait(
        lambda: all(r["alive"] == r["of"] for r in all_ask(workers, "alive", id=joined["id"])), "join", t1
    )
    peak = max(r["peak_rss_mib"] for r in all_ask(workers, "state"))
    a = args
    result: dict[str, Any] = simulate.figures(
        simulate.Settings(
            n, a.batch, a.bootstrap, a.settle, max_links, a.gossip_interval, a.dilation, a.idle_dilation
        ),
        started_s=started_s,
        converged_s=converged_s,
        view_s=view_s,
        links=links,
        links_after_idle=links_after_idle,
        idle_s=idle_s,
        gossip=gossip,
        contacts=contacts,
        join_s=join_s,
        # CPU seconds of all workers per real second, over procs: per core, as in one process
        cpu_busy=cpu_busy / procs,
        cpu_busy_idle=cpu_busy_idle / procs,
        real_converge=real_converge,
    )
    result["procs"] = procs
    result["real_s"] = round(time.perf_counter() - real0, 1)
    result["peak_rss_mib"] = peak  # the largest worker's
    return result


def _progress(at: float, states: list[dict[str, Any]]) -> None:
    """How far the views are, on stderr: a long run's only sign of life."""
    nodes = [x for s in states for x in s["nodes"]]
    sizes = sorted(x["n"] for x in nodes)
    links = sorted(len(x["links"]) for x in nodes)
    print(
        f"sim: at {at:.1f} s: views {sizes[0]}..{sizes[-1]} (median {statistics.median(sizes):g}),"
        f" {len({x['root'] for x in nodes})} distinct, links {links[0]}..{links[-1]},"
        f" rss {'/'.join(str(s['rss_mib']) for s in states)} MiB",
        file=sys.stderr,
        flush=True,
    )


# --- the worker --------------------------------------------------------------------------------------


async def _serve(config: dict[str, Any], clock: Any, out: IO[str]) -> None:
    import simulate
    from inproc import count_who_has

    from p2pfast.counters import COUNTERS
    from p2pfast.node.sources import BufferSink, BytesSource

    n = config["nodes"]
    limits = simulate.limits_for(n, config["gossip_interval"], config["max_links"])
    base = Path(config["base"])
    nodes: dict[str, Any] = {}
    asked: list[dict[str, int]] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    async def start(names: list[str], boots: list[str | None]) -> dict[str, Any]:
        started = await asyncio.gather(
            *(simulate._node(base / name, b, limits) for name, b in zip(names, boots, strict=True))
        )
        for name, node in zip(names, started, strict=True):
            nodes[name] = node
        simulate._freeze()
        return {
            "nodes": [
                {"name": a, "id": x.node_id, "addr": x.peers.listen_addr}
                for a, x in zip(names, started, strict=True)
            ]
        }

    def state() -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "id": x.node_id[:12],
                    "n": len(x.viewsync.view),
                    "root": x.viewsync.view.root().hex(),
                    "links": [p[:12] for p in x.peers.sessions],
                }
                for name, x in nodes.items()
                if name != "joiner"
            ],
            "bytes_out": COUNTERS.bytes_out,
            "cpu": simulate._cpu_s(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mib": _rss_mib(),
        }

    def set_factor(factor: float, at: float) -> None:
        when = clock.simulated(at)  # the loop's time at that real instant
        loop.call_at(when, clock.set_factor, factor, at)

    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "start":
                    reply(await start(cmd["names"], cmd["boots"]))
                elif op == "state":
                    reply(state())
                elif op == "set_factor":
                    set_factor(cmd["factor"], cmd["at"])
                    reply({})
                elif op == "count_who_has":
                    asked.append(count_who_has(list(nodes.values())))
                    reply({})
                elif op == "asked":
                    reply({"asked": sum(sum(a.values()) for a in asked)})
                elif op == "put":
                    r = await nodes[cmd["name"]].put(
                        cmd["key"], BytesSource(b"simulated " * (cmd["size"] // 10))
                    )
                    reply({"cid": r.cid, "replicated_to": list(r.replicated_to)})
                elif op == "keymeta":
                    key = cmd["key"].encode()
                    reply({"ids": [x.node_id for x in nodes.values() if x.repo.get_keymeta(key) is not None]})
                elif op == "get":
                    await nodes[cmd["name"]].get(cmd["key"], BufferSink())
                    reply({})
                elif op == "alive":
                    from simulate import _alive_in

                    reply({"alive": sum(_alive_in(x, cmd["id"]) for x in nodes.values()), "of": len(nodes)})
                elif op == "close":
                    if clock is not None:
                        # closing's own waits (a leave said to each link, its grace) at real speed: at
                        # K = 50 closing 500 nodes took minutes
                        clock.set_factor(1)
                    break
                else:
                    reply({"error": f"no such op {op!r}"})
            except Exception as e:  # said to the parent, which stops the run
                reply({"error": f"{op}: {e!r}"})
    finally:
        for x in nodes.values():
            # closing hundreds: one that fails must not keep the others open
            with contextlib.suppress(Exception):
                await x.close()
        reply({})


def _rss_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


def worker_main(config: dict[str, Any]) -> int:
    sys.path.insert(0, str(HERE))
    import simulate

    # the replies own the real stdout; anything else printed goes to stderr
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    simulate._raise_fd_limit(-(-config["nodes"] // config["procs"]) + 1)
    from p2pfast import runtime

    clock = factory = None
    if config["dilation"] > 1:
        import timewarp

        clock = timewarp.Clock(config["dilation"])
        clock.install(tuple(config["anchor"]))
        factory = timewarp.loop_factory(clock)
    runtime.run(_serve(config, clock, out), loop_factory=factory)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(json.loads(sys.argv[2])))
    sys.exit("bench/simprocs.py is started by bench/simulate.py --procs P")
