"""A node drops peers that stall or exceed its limits, with one log line, and keeps serving the rest.
Real node processes; the misbehaving peer is this test, speaking the protocol through proto.Connection
over a plain socket (sans-IO makes a scripted peer easy)."""

from __future__ import annotations

import collections
import errno
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from netnodes import NodeProc, make_nodes, running, scrape, wait_until

from p2pfast import wire
from p2pfast.frames import pack_header
from p2pfast.proto import noise
from p2pfast.proto.connection import Connection, Role
from p2pfast.proto.events import NEED_DATA, HandshakeComplete


def _config(path: Path, **values: object) -> str:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return str(path)


def _addr(node: NodeProc) -> tuple[str, int]:
    host, port = node.listen.rsplit(":", 1)
    return host, int(port)


def _read_until_closed(sock: socket.socket, timeout: float) -> float:
    """Read (and drop) whatever comes until the peer closes; returns when that happened."""
    sock.settimeout(timeout)
    t0 = time.monotonic()
    while True:
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except ConnectionResetError:
            return time.monotonic() - t0


def _handshake(sock: socket.socket, network_key: bytes) -> Connection:
    conn = Connection(
        Role.INITIATOR,
        noise.generate_keypair(),
        network_key,
        {"v": 1, "listen": "", "agent": "t"},
        now=time.monotonic(),
    )
    conn.initiate()
    sock.settimeout(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for chunk in conn.data_to_send():
            sock.sendall(chunk)
        conn.receive_data(sock.recv(65536))
        while (event := conn.next_event(time.monotonic())) is not NEED_DATA:
            if isinstance(event, HandshakeComplete):
                for chunk in conn.data_to_send():
                    sock.sendall(chunk)
                return conn
    raise AssertionError("handshake did not complete")


def test_stalled_handshake_is_dropped_at_the_deadline(tmp_path: Path) -> None:
    (node,) = make_nodes(tmp_path, 1)
    with running([node]):
        node.start("--config", _config(tmp_path / "cfg", handshake_timeout=1.5))
        with socket.create_connection(_addr(node)) as sock:
            sock.sendall(pack_header(wire.FrameType.HANDSHAKE, 0, 0, 32)[:5])  # half a header, then nothing
            took = _read_until_closed(sock, 15)
        assert 1.0 <= took <= 10, took
        wait_until(lambda: "code=13" in node.log(), 10, "the drop to be logged", [node])
        line = next(ln for ln in node.log().splitlines() if "event=peer_dropped" in ln)
        assert "handshake" in line.lower() and "unauthenticated" in line


def test_peer_stalling_mid_frame_is_dropped_at_idle_timeout(tmp_path: Path) -> None:
    (node,) = make_nodes(tmp_path, 1)
    network_key = (node.root / "network.key").read_bytes()
    with running([node]):
        node.start("--config", _config(tmp_path / "cfg", idle_timeout=2))
        with socket.create_connection(_addr(node)) as sock:
            _handshake(sock, network_key)
            # A data frame header announcing 1000 bytes, and 10 of them: then silence.
            sock.sendall(pack_header(wire.FrameType.DATA, 0, 1, 1000) + bytes(10))
            took = _read_until_closed(sock, 20)
        assert 1.5 <= took <= 12, took
        wait_until(lambda: "code=12" in node.log(), 10, "the idle drop to be logged", [node])
        assert node.proc is not None and node.proc.poll() is None


def test_pre_handshake_limit_evicts_the_oldest_and_serves_members(tmp_path: Path) -> None:
    """At max_pre_handshake, a newcomer is admitted and the oldest connection still in its handshake is
    closed for it (it was refused, so that two stalled sockets kept every new peer out); a member's
    session is never touched."""
    nodes = make_nodes(tmp_path, 2)
    a, b = nodes
    network_key = (a.root / "network.key").read_bytes()
    with running(nodes):
        cfg = _config(tmp_path / "cfg", max_pre_handshake=2, handshake_timeout=30)
        a.start("--config", cfg, "--metrics-listen", "127.0.0.1:0")
        b.start("--bootstrap", a.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "b to join a", nodes)
        # accepted in the order they connect (one listening socket's queue is first in, first out)
        stalled = [socket.create_connection(_addr(a)) for _ in range(2)]
        try:
            with socket.create_connection(_addr(a)) as newcomer:
                assert _read_until_closed(stalled[0], 10) < 5, "the oldest must go at once"
                _handshake(newcomer, network_key)  # admitted, and served through its handshake
            wait_until(lambda: "event=connection_evicted" in a.log(), 10, "the eviction to be logged", nodes)
            line = next(ln for ln in a.log().splitlines() if "event=connection_evicted" in ln)
            assert "reason=max_pre_handshake " in line and "evicted_peer=127.0.0.1" in line, line
            metrics = scrape(a)
            assert metrics[("p2pfast_connections_evicted_total", (("limit", "max_pre_handshake"),))] == 1
            # The member is still served: its session is up and it answers as before.
            assert b.node_id in a.connected()
        finally:
            for s in stalled:
                s.close()


def test_oversized_frame_from_a_member_closes_only_that_connection(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 2)
    a, b = nodes
    network_key = (a.root / "network.key").read_bytes()
    with running(nodes):
        a.start()
        b.start("--bootstrap", a.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "b to join a", nodes)
        with socket.create_connection(_addr(a)) as sock:
            _handshake(sock, network_key)
            sock.sendall(pack_header(wire.FrameType.DATA, 0, 1, 65535)[:8] + (1 << 30).to_bytes(4, "big"))
            assert _read_until_closed(sock, 10) < 5
        wait_until(lambda: "code=2" in a.log(), 10, "the drop to be logged", nodes)
        assert b.node_id in a.connected()


# A flood of this many sockets from one address, as issue 14 asks, when this process may hold them.
FLOOD = 10_000
FLOOD_SOURCE = "127.0.0.2"  # on loopback (Linux routes 127/8 to lo); the member's 127.0.0.1 shares its /24


class _Flood:
    """A thread that connects from FLOOD_SOURCE and sends nothing, holding up to `hold` connected sockets
    open; past that it closes its oldest for each new one, so the flood goes on (at `hold` held) until
    stopped. Connects are non-blocking, WINDOW of them in flight: more than the node's listen backlog, so
    SYNs wait in the kernel's queues or are dropped and resent, as in a real flood, and the rate is the
    node's, not one blocking connect's at a time."""

    WINDOW = 512
    CONNECT_TIMEOUT = 10.0

    def __init__(self, addr: tuple[str, int], hold: int) -> None:
        self.addr, self.hold = addr, hold
        self.socks: collections.deque[socket.socket] = collections.deque()
        self.opened = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._pending: dict[int, tuple[socket.socket, float]] = {}

    def _connect(self, poller: select.poll, now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        # pick the source port at connect time, by the whole 4-tuple, not at bind: 10,000 binds to port
        # 0 would each need a port free for every destination
        s.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((FLOOD_SOURCE, 0))
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.failed.append(os.strerror(err))
            return
        self._pending[s.fileno()] = (s, now)
        poller.register(s, select.POLLOUT)

    def _run(self) -> None:
        poller = select.poll()
        while not self.stop.is_set():
            now = time.monotonic()
            while len(self._pending) < self.WINDOW:
                self._connect(poller, now)
            for fd, _events in poller.poll(50):
                s, _ = self._pending.pop(fd)
                poller.unregister(fd)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    s.close()
                    self.failed.append(os.strerror(err))
                    continue
                self.socks.append(s)  # connected, and held open whatever the node does with it
                self.opened += 1
                if len(self.socks) > self.hold:
                    self.socks.popleft().close()
            for fd, (s, since) in list(self._pending.items()):
                if now - since > self.CONNECT_TIMEOUT:
                    del self._pending[fd]
                    poller.unregister(fd)
                    s.close()
                    self.failed.append("connect timed out")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        for s, _ in self._pending.values():
            s.close()
        self._pending.clear()
        while self.socks:
            self.socks.popleft().close()


def _fds(node: NodeProc) -> int:
    assert node.proc is not None
    return len(os.listdir(f"/proc/{node.proc.pid}/fd"))


def _joined(a: NodeProc, b: NodeProc) -> bool:
    return b.node_id in a.connected() and a.node_id in b.connected()


def test_flood_from_one_address_does_not_keep_a_member_out(
    tmp_path: Path, report_figure: Callable[[str], None]
) -> None:
    """10,000 sockets from 127.0.0.2 that connect and send nothing, held open, while a member joins
    from 127.0.0.1: the member's join succeeds (a generous bound; the time with and without the flood
    is reported, not asserted), the flood holds no more than its per-address slots of the node's fds,
    and the node goes on serving. With a global pre-handshake limit only, 32 such sockets kept every
    new peer out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # this process holds the flood's sockets; the node holds only the ones still in their handshake
    flood_size = min(FLOOD, max(hard, soft) - _Flood.WINDOW - 1000)
    if flood_size < FLOOD:
        report_figure(f"flood cut to {flood_size} sockets: RLIMIT_NOFILE here is {soft} (hard {hard})")
    if soft < flood_size + _Flood.WINDOW + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, flood_size + _Flood.WINDOW + 1000), hard))
    nodes = make_nodes(tmp_path, 3)
    a, b, c = nodes
    network_key = (a.root / "network.key").read_bytes()
    flood: _Flood | None = None
    try:
        with running(nodes):
            a.start("--metrics-listen", "127.0.0.1:0")
            idle_fds = _fds(a)
            # the join without a flood, measured the same way: from launching the member to both ends
            # recording the session
            t0 = time.monotonic()
            b.start("--bootstrap", a.listen)
            wait_until(lambda: _joined(a, b), 30, "b to join a", nodes)
            quiet = time.monotonic() - t0
            b.stop()

            flood = _Flood(_addr(a), flood_size)
            flood_began = time.monotonic()
            flood.thread.start()
            peak = 0

            def flooded(n: int) -> bool:
                """The flood has made n connections (or gave up); the node's fds sampled meanwhile."""
                nonlocal peak
                assert flood is not None
                peak = max(peak, _fds(a))
                return flood.opened >= n or not flood.thread.is_alive()

            wait_until(lambda: flooded(flood_size // 2), 120, "half the flood to connect", nodes)
            t0 = time.monotonic()
            c.start("--bootstrap", a.listen)
            wait_until(lambda: flooded(0) and _joined(a, c), 60, "c to join a under the flood", nodes)
            under_flood = time.monotonic() - t0
            opened_at_join = flood.opened
            wait_until(lambda: flooded(flood_size), 120, "the whole flood to connect", nodes)
            flood_took = time.monotonic() - flood_began
            flood.stop.set()
            flood.thread.join(30)
            assert flood.opened >= flood_size, f"the flood gave up: {flood.failed[:3]}"
            held = len(flood.socks)
            assert held == flood_size

            # With every flood socket still held open: the node is up, within its fds, and serves a
            # new peer through its handshake as well as the member that joined.
            assert a.proc is not None and a.proc.poll() is None
            peak = max(peak, _fds(a))
            with socket.create_connection(_addr(a)) as newcomer:
                _handshake(newcomer, network_key)
            assert c.node_id in a.connected()
            metrics = scrape(a)
            evictions = {
                labels: n
                for (name, labels), n in metrics.items()
                if name == "p2pfast_connections_evicted_total"
            }
            evicted = evictions.get((("limit", "max_pre_handshake_per_address"),), 0)
            with open(a.log_path, errors="replace") as f:
                eviction_lines = sum("event=connection_evicted" in ln for ln in f)
            report_figure(
                f"join from 127.0.0.1: {quiet:.2f} s alone, {under_flood:.2f} s under a flood from "
                f"{FLOOD_SOURCE} ({opened_at_join} of its sockets connected by then; {flood.opened} in "
                f"{flood_took:.1f} s in all, {held} held open at the end, {len(flood.failed)} connects "
                f"failed); node fds: {idle_fds} idle, {peak} at most during the flood; {evicted:.0f} "
                f"evictions in {eviction_lines} log lines"
            )
            # The flood recycled its own slots only: every eviction was at the per-address limit, none
            # at the prefix or global one (the member's 127.0.0.1 shares the flood's /24). A connect the
            # client saw complete may never have reached the node (a full accept queue drops the
            # handshake's last ACK), so fewer evictions than connects is no fault.
            assert evicted > 0 and set(evictions) == {(("limit", "max_pre_handshake_per_address"),)}, (
                evictions
            )
            assert not any(
                name == "p2pfast_connections_refused_total" and n for (name, _), n in metrics.items()
            )
            assert peak < idle_fds + 200, (peak, idle_fds)
            assert eviction_lines < 1 + flood_size // 100, eviction_lines
    finally:
        if flood is not None:
            flood.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
