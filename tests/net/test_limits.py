"""A node drops peers that stall or exceed its limits, with one log line, and keeps serving the rest.
Real node processes; the misbehaving peer is this test, speaking the protocol through proto.Connection
over a plain socket (sans-IO makes a scripted peer easy)."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import orjson
from netnodes import NodeProc, make_nodes, running, wait_until
from prometheus_client.parser import text_string_to_metric_families

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


def _scrape(node: NodeProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    addr = orjson.loads((node.root / "node.json").read_bytes())["metrics"]
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=20) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


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
            metrics = _scrape(a)
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
