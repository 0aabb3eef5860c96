"""Real node processes on 127.0.0.1 for network tests: `p2pfast serve` on port 0 (the node writes the port
it bound to DATA_DIR/node.json), ready once its control socket answers `status`, bounded waits, and every
process killed by PID at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from nodetools import cli_env

from p2pfast.datadir import Layout, init
from p2pfast.errors import PeerUnavailable
from p2pfast.front import ctl
from p2pfast.repo.repo import Repo


@dataclass
class NodeProc:
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    listen: str = ""
    node_id: str = ""

    def __post_init__(self) -> None:
        self.log_path = self.root.parent / f"{self.root.name}.log"

    @property
    def layout(self) -> Layout:
        return Layout.of(self.root)

    def start(self, *args: str, env: dict[str, str] | None = None) -> NodeProc:
        argv = [sys.executable, "-P", "-m", "p2pfast", "serve", "--data-dir", str(self.root)]
        argv += [
            "--listen",
            "127.0.0.1:0",
            *(() if "--log-level" in args else ("--log-level", "info")),
            *args,
        ]
        runtime = self.root / "node.json"
        with contextlib.suppress(FileNotFoundError):
            runtime.unlink()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env or cli_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        STARTED.append(self)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = orjson.loads(runtime.read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                time.sleep(0.02)  # polling the node's own start-up, bounded by the deadline
                continue
            if info["pid"] == self.proc.pid:
                self.listen, self.node_id = info["listen"], info["node_id"]
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"node did not start listening within 20 s:\n{self.log()}")
        # The daemon writes node.json once ctl.sock answers (daemon.py; test_daemon checks that order).
        # Ready is still checked by what a test does next, talking to the daemon: its control socket
        # answers `status` for this very process (a stale ctl.sock of an earlier run must not count).
        sock = self.root / ctl.SOCKET_NAME
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if ctl.call(sock, {"cmd": "status"}, timeout=2)["pid"] == self.proc.pid:
                    return self
            except PeerUnavailable:  # DaemonNotRunning included: nothing accepts on ctl.sock yet
                pass
            time.sleep(0.02)  # polling the node's own start-up, bounded by the deadline
        raise AssertionError(f"node's control socket did not answer within 20 s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        """The running daemon's `status`, over its control socket (no CLI process per poll)."""
        return ctl.call(self.root / ctl.SOCKET_NAME, {"cmd": "status"}, timeout=10)

    def connected(self) -> set[str]:
        """Node ids this node's peers table marks connected (read beside the running node, WAL)."""
        with Repo.open(self.layout.db, readonly=True) as repo:
            return {r.node_id for r in repo.list_peers() if r.status == "connected" and r.node_id}

    def known(self) -> set[str]:
        with Repo.open(self.layout.db, readonly=True) as repo:
            return {r.node_id for r in repo.list_peers() if r.node_id}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


# Every node process a test started: the conftest kills what is still running when the test ends, so a
# node a test forgot to list in running() does not outlive it.
STARTED: list[NodeProc] = []


def kill_started() -> int:
    """Kill the started nodes still running; returns how many there were."""
    left = [n for n in STARTED if n.proc is not None and n.proc.poll() is None]
    for n in left:
        n.kill()
    STARTED.clear()
    return len(left)


def make_nodes(base: Path, n: int, network_key: bytes | None = None) -> list[NodeProc]:
    """n initialised data dirs sharing one network key (a fresh one unless given)."""
    nodes = []
    for i in range(n):
        root = base / f"n{i}"
        init(Layout.of(root), network_key)
        if network_key is None:
            network_key = (root / "network.key").read_bytes()
        nodes.append(NodeProc(root))
    return nodes


@contextlib.contextmanager
def running(nodes: Sequence[NodeProc]) -> Iterator[Sequence[NodeProc]]:
    try:
        yield nodes
    finally:
        for n in nodes:
            n.kill()


def diagnose(nodes: Sequence[NodeProc]) -> str:
    """Who is missing whom, and the last log lines (not routine connects) of the nodes missing someone."""
    ids = {n.node_id: n.root.name for n in nodes}
    out, lacking = [], []
    for n in nodes:
        try:
            missing = sorted(ids[i] for i in set(ids) - n.connected() - {n.node_id})
        except Exception as exc:  # the repo of a dead node may be unreadable: say so
            missing = [f"(unreadable: {exc})"]
        if missing:
            lacking.append(n)
            out.append(f"{n.root.name} ({n.node_id[:12]}) lacks {', '.join(missing)}")
    for n in lacking:
        lines = [ln for ln in n.log().splitlines() if "event=peer_connected" not in ln]
        out.append(f"--- {n.root.name}\n" + "\n".join(lines[-40:]))
    return "\n".join(out)


def wait_until(pred: Any, timeout: float, what: str, nodes: Sequence[NodeProc] = ()) -> float:
    """Poll pred() until true; returns the seconds it took. Bounded by timeout."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{diagnose(nodes)}")
        time.sleep(0.05)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: NodeProc) -> Samples:
    """The node's /metrics (its address from node.json), as (name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    addr = orjson.loads((node.root / "node.json").read_bytes())["metrics"]
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=20) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
