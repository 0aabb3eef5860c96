"""Real `p2pfast serve` processes on 127.0.0.1, to measure membership as an operator would see it and to
set the in-process simulator's figures beside (bench/simulate.py; docs/protocol.md, "Membership that
scales"). Node 0 starts first and every other node bootstraps from it.

It reports, from outside the processes (their control sockets, metrics listeners, logs and /proc):

* `converged_s`: from the first start until every node's view holds every member alive and every node
  has at most `max_links` sessions (what the join burst opened to node 0 closes once idle, 30 s);
  `view_converged_s`: until the views are complete;
* `links_max`, `links_median`: sessions per node then;
* `gossip_bytes_per_node_s`: bytes all nodes sent to peers during an idle window, per node and second
  (their `p2pfast_network_transmit_bytes`);
* `rss_mib_median`, `rss_mib_max`: resident memory per node process, idle;
* `join_s`: one more node, bootstrapping from a member in the middle, until every view has it;
* with `--kill F`: F of the members get SIGKILL at once; `declared_dead_s` until every survivor's view
  counts them dead (against `detector_bound_s`), and `dials_to_dead_per_member`, the failed dials to
  their addresses in all survivors' logs meanwhile.

Run: python bench/real_network.py --nodes 50 [--kill 0.2] [--idle 65] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NETKEY = bytes(range(32))


@contextlib.contextmanager
def base_dir() -> Iterator[Path]:
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="p2pfast-real-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, root: Path, cfg: Path, boot: str | None) -> None:
        from p2pfast.datadir import Layout, init

        self.root = root
        init(Layout.of(root), NETKEY)
        self.metrics = free_port()
        args = [sys.executable, "-P", "-m", "p2pfast", "serve", "--data-dir", str(root), "--config", str(cfg)]
        args += [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics}",
            "--log-level",
            "info",
        ]
        if boot:
            args += ["--bootstrap", boot]
        self.log = root.parent / f"{root.name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.listen = self.node_id = ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        info = self.root / "node.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"node exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(info.read_text())
                if data["pid"] == self.proc.pid:
                    self.listen, self.node_id = data["listen"], data["node_id"]
                    return
            time.sleep(0.05)  # polling a process's start-up, bounded by the deadline
        raise SystemExit(f"node did not start: {self.log.read_text()[-2000:]}")

    def status(self) -> dict[str, Any]:
        from p2pfast.front import ctl

        return ctl.call(self.root / ctl.SOCKET_NAME, {"cmd": "status"}, timeout=20)

    def sent(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("p2pfast_network_transmit_bytes_total"):
                    return float(line.split()[-1])
        return 0.0

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait(cond: Callable[[], bool], what: str, since: float, timeout: float) -> float:
    while not cond():
        if time.monotonic() - since > timeout:
            raise SystemExit(f"{what}: not after {timeout:g} s")
        time.sleep(0.5)  # polls the processes' state over their sockets; bounded by the timeout
    return time.monotonic() - since


def run(n: int, idle: float, kill: float, max_links: int, timeout: float) -> dict[str, Any]:
    procs: list[Proc] = []
    with base_dir() as base:
        cfg = base / "config"
        cfg.write_text(f"max_links={max_links}\nreplicas=2\n")
        try:
            t0 = time.monotonic()
            procs.append(Proc(base / "n0", cfg, None))
            procs[0].wait_ready()
            for i in range(1, n):
                procs.append(Proc(base / f"n{i}", cfg, procs[0].listen))
            for p in procs:
                p.wait_ready()
            started_s = time.monotonic() - t0

            def alive(ps: list[Proc], count: int) -> bool:
                return all(p.status()["members"]["alive"] == count for p in ps)

            view_s = wait(lambda: alive(procs, n), "views complete", t0, timeout)
            links: list[int] = []

            def bounded() -> bool:
                links[:] = sorted(p.status()["peers_connected"] for p in procs)
                return links[-1] <= max_links

            converged_s = wait(bounded, "links within the bound", t0, timeout)
            sent0 = sum(p.sent() for p in procs)
            time.sleep(idle)  # the idle window being measured, not a wait for a peer
            gossip = (sum(p.sent() for p in procs) - sent0) / n / idle
            rss = sorted(p.rss_mib() for p in procs)
            t1 = time.monotonic()
            procs.append(Proc(base / "joiner", cfg, procs[n // 2].listen))
            procs[-1].wait_ready()
            join_s = wait(lambda: alive(procs, n + 1), "join", t1, timeout)
            out: dict[str, Any] = {
                "nodes": n,
                "max_links": max_links,
                "started_s": round(started_s, 2),
                "view_converged_s": round(view_s, 2),
                "converged_s": round(converged_s, 2),
                "links_max": links[-1],
                "links_median": statistics.median(links),
                "idle_window_s": idle,
                "gossip_bytes_per_node_s": round(gossip, 1),
                "rss_mib_median": round(statistics.median(rss), 1),
                "rss_mib_max": round(rss[-1], 1),
                "join_s": round(join_s, 2),
            }
            if kill > 0:
                out.update(_kill(procs, kill, timeout))
            return out
        finally:
            for p in procs:
                p.stop()


def _kill(procs: list[Proc], fraction: float, timeout: float) -> dict[str, Any]:
    import random

    victims = random.Random(14).sample(procs[1:], max(1, int(len(procs) * fraction)))
    survivors = [p for p in procs if p not in victims]
    before = {p: p.log.stat().st_size for p in survivors}
    t = time.monotonic()
    for v in victims:
        v.proc.kill()
        v.proc.wait()

    def dead() -> bool:
        return all(p.status()["members"]["dead"] >= len(victims) for p in survivors)

    dead_s = wait(dead, "victims declared dead", t, timeout)
    addrs = [v.listen for v in victims]
    dials = 0
    for p in survivors:
        with p.log.open("rb") as f:
            f.seek(before[p])
            text = f.read().decode(errors="replace")
        dials += sum(text.count(f"event=dial_failed addr={a} ") for a in addrs)
    return {
        "killed": len(victims),
        "declared_dead_s": round(dead_s, 2),
        "detector_bound_s": _bound(),
        "dials_to_dead_per_member": round(dials / len(victims), 1),
    }


def _bound() -> float:
    from p2pfast.net.limits import NetLimits
    from p2pfast.node.viewsync import PROBE_TIMEOUT

    lim = NetLimits()  # the suspicion timeout, the indirect probes' wait, the death timeout
    return lim.suspect_after + 2 * PROBE_TIMEOUT + lim.dead_after


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--idle", type=float, default=65.0, help="idle window measured after convergence (s)")
    p.add_argument("--kill", type=float, default=0.0, help="then SIGKILL this fraction of the members (0.2)")
    p.add_argument("--max-links", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args(argv)
    result = run(args.nodes, args.idle, args.kill, args.max_links, args.timeout)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:26} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
