"""Operating a node, with real processes: the systemd notify protocol against a real datagram socket
standing in for NOTIFY_SOCKET, SIGTERM during a large store (drained, or aborted at the deadline, never a
partial object), a second signal, `status --json`, and a Prometheus scrape."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc, make_nodes, running, scrape, wait_until
from nodetools import cli_argv, cli_env, file_hash, object_files, one_error_line, pattern, run_cli, temp_files

from p2pfast.repo.repo import Repo


# -- helpers -------------------------------------------------------------------------------------------
@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: sun_path holds 108 bytes, and pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="p2pn", dir="/tmp")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)


def messages(sock: socket.socket, until: str, timeout: float) -> list[dict[str, str]]:
    """Datagrams as {KEY: value}, up to and including the first carrying the key `until`."""
    out: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {until}= within {timeout} s; got {out!r}")
        sock.settimeout(left)
        try:
            raw = sock.recv(4096).decode()
        except TimeoutError:
            continue
        msg = dict(line.split("=", 1) for line in raw.splitlines())
        out.append(msg)
        if until in msg:
            return out


@contextlib.contextmanager
def store_in_flight(node: NodeProc, key: str, first: bytes) -> Iterator[subprocess.Popen[bytes]]:
    """`p2pfast store KEY -` from a pipe the test feeds: `first` is written, and the block starts once
    the daemon holds a temp file for it (the store is in flight, and stays so until the pipe ends). The
    client is killed at the end if it still runs."""
    client = subprocess.Popen(
        cli_argv("store", key, "-", "--json", "--data-dir", node.root),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert client.stdin is not None
        client.stdin.write(first)
        client.stdin.flush()
        wait_until(lambda: bool(temp_files(node.root)), 20, "the store to be in flight")
        yield client
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=20)


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p2p.conf"
    path.write_text(text)
    return str(path)


def status(node: NodeProc) -> dict[str, object]:
    out = run_cli("status", "--json", "--data-dir", node.root)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def repo_is_consistent(node: NodeProc) -> None:
    """integrity_check passes, every file row's object is on disk, and no temp file is left."""
    with Repo.open(node.layout.db, readonly=True) as repo:
        assert repo._conn is not None
        assert repo._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        cids = {r.cid for r in repo.list_objects()}
    on_disk = {f.rsplit("/", 1)[1] for f in object_files(node.root)}
    assert len(on_disk) == len(cids)
    assert temp_files(node.root) == []


# -- systemd notify ------------------------------------------------------------------------------------
def test_notify_ready_status_watchdog_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    (a,) = make_nodes(tmp_path, 1)
    env = cli_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="300000")
    with running([a]):
        a.start(env=env)
        assert a.proc is not None
        ready = messages(sock, "READY", 20)[-1]
        # READY comes only once the node listens and its control socket (so its repo) answers
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(a.proc.pid)
        assert "0 peers connected" in ready["STATUS"] and "0 files" in ready["STATUS"]
        host, port = a.listen.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()
        assert status(a)["running"] is True
        # WATCHDOG=1 at half of WATCHDOG_USEC: two pings within a second or so
        t0 = time.monotonic()
        pings = [m for m in messages(sock, "WATCHDOG", 5) if "WATCHDOG" in m]
        pings += [m for m in messages(sock, "WATCHDOG", 5) if "WATCHDOG" in m]
        assert len(pings) == 2 and time.monotonic() - t0 < 5
        os.kill(a.proc.pid, signal.SIGTERM)
        stopping = messages(sock, "STOPPING", 20)[-1]
        assert stopping["STOPPING"] == "1"
        assert a.proc.wait(timeout=30) == 0
    assert "event=stopped" in a.log()


def test_no_notify_socket_no_messages(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    with running([a]):
        a.start()  # NOTIFY_SOCKET unset (cli_env keeps the test's environment, which has none)
        assert status(a)["running"] is True
        assert a.stop() == 0
    assert "notify_failed" not in a.log()


# -- graceful shutdown ---------------------------------------------------------------------------------
def test_sigterm_lets_a_store_in_flight_finish(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    data = pattern(24 << 20, seed=7)
    with running([a, b]):
        b.start()
        a.start("--bootstrap", b.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        with store_in_flight(a, "big", data[: 8 << 20]) as client:
            assert a.proc is not None
            os.kill(a.proc.pid, signal.SIGTERM)
            wait_until(lambda: "event=shutdown phase=drain in_flight=1" in a.log(), 20, "the drain to start")
            # draining: a new command is refused in one line, the one in flight goes on
            refused = run_cli("store", "late", "-", "--data-dir", a.root, input=b"x")
            assert refused.returncode == 10
            assert "shutting down" in one_error_line(refused)
            out, err = client.communicate(data[8 << 20 :], timeout=60)
        assert client.returncode == 0, err
        result = json.loads(out)
        assert result["size"] == len(data) and result["replicated_to"] == [b.node_id]
        assert a.proc.wait(timeout=30) == 0
        assert "event=shutdown phase=drained aborted=0" in a.log()
        repo_is_consistent(a)
        assert a.layout.db.with_name("p2p.db-wal").stat().st_size == 0  # checkpointed (TRUNCATE)
        got = run_cli("get", "big", "--data-dir", b.root)  # b's copy was acknowledged before a left
        assert got.returncode == 0 and got.stdout == data


def test_sigterm_aborts_a_stalled_store_at_the_deadline(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    conf = config_file(tmp_path, "shutdown_timeout = 0.5\n")
    with running([a]):
        a.start("--config", conf)
        with store_in_flight(a, "stalled", b"y" * (6 << 20)) as client:
            assert a.proc is not None
            t0 = time.monotonic()
            os.kill(a.proc.pid, signal.SIGTERM)
            assert a.proc.wait(timeout=30) == 0
            took = time.monotonic() - t0
            _, err = client.communicate(timeout=30)
        assert took < 15, f"the deadline was 0.5 s, the node took {took:.1f} s to stop"
        assert client.returncode == 10
        assert "shutting down" in err.decode()
        assert "event=shutdown phase=abort aborted=1" in a.log()
        repo_is_consistent(a)
        assert object_files(a.root) == []
        with Repo.open(a.layout.db, readonly=True) as repo:
            assert repo.list_files() == []


def test_second_signal_exits_at_once_and_loses_nothing(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    kept = tmp_path / "kept"
    kept.write_bytes(pattern(1 << 20, seed=3))
    with running([a]):
        a.start()
        assert run_cli("store", "kept", kept, "--data-dir", a.root).returncode == 0
        with store_in_flight(a, "stalled", b"z" * (6 << 20)) as client:
            assert a.proc is not None and client.stdin is not None
            os.kill(a.proc.pid, signal.SIGTERM)  # default deadline: 30 s
            wait_until(lambda: "phase=drain in_flight=1" in a.log(), 20, "the drain to start")
            os.kill(a.proc.pid, signal.SIGTERM)
            assert a.proc.wait(timeout=10) == 128 + signal.SIGTERM
            client.stdin.close()
            client.wait(timeout=30)
        assert client.returncode != 0  # the store was not acknowledged
        assert "event=second_signal" in a.log()
        left = temp_files(a.root)
        assert left  # the interrupted store's temp file, until the next start
        # The next start cleans it away (other temp files may come and go: the scrub writes its state
        # through the same directory); what was acknowledged is intact.
        a.start()
        assert not set(left) & set(temp_files(a.root)), left
        got = run_cli("get", "kept", "--data-dir", a.root)
        assert got.returncode == 0 and got.stdout == kept.read_bytes()
        assert a.stop() == 0
        repo_is_consistent(a)
        with Repo.open(a.layout.db, readonly=True) as repo:
            assert [r.key for r in repo.list_files()] == [b"kept"]


# -- status --------------------------------------------------------------------------------------------
STATUS_FIELDS = {
    "node_id",
    "data_dir",
    "running",
    "pid",
    "listen",
    "uptime_s",
    "peers_connected",
    "peers_known",
    "files",
    "objects",
    "bytes_stored",
    "bytes_free",
    "replica_target",
    "under_replicated",
    "wal_bytes",
    "in_flight",
    "version",
    "draining",
}


def test_status_json_from_the_daemon_and_without_it(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    f = tmp_path / "f"
    f.write_bytes(pattern(300_000, seed=1))
    with running([a, b]):
        b.start()
        a.start("--bootstrap", b.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        assert run_cli("store", "one", f, "--data-dir", a.root).returncode == 0
        s = status(a)
        assert s.keys() >= STATUS_FIELDS
        assert s["running"] is True and s["pid"] == a.proc.pid if a.proc else False
        assert s["node_id"] == a.node_id and s["listen"] == a.listen
        assert (s["peers_connected"], s["peers_known"]) == (1, 1)
        assert (s["files"], s["objects"], s["bytes_stored"]) == (1, 1, 300_000)
        assert (s["replica_target"], s["under_replicated"]) == (1, 0)  # b acknowledged its copy
        assert isinstance(s["bytes_free"], int) and s["bytes_free"] > 0
        assert isinstance(s["uptime_s"], float) and s["in_flight"] == 0
        # b holds a replica: not b's to replicate, so not counted against it
        sb = status(b)
        assert (sb["files"], sb["under_replicated"]) == (1, 0)

        # b goes away; a file stored now has no replica: under-replicated until b is back
        assert b.stop() == 0
        wait_until(lambda: status(a)["peers_connected"] == 0, 20, "a to see b gone")
        f.write_bytes(pattern(1000, seed=2))
        assert run_cli("store", "two", f, "--data-dir", a.root).returncode == 0
        s = status(a)
        assert (s["files"], s["peers_known"], s["under_replicated"]) == (2, 1, 1)
        assert a.stop() == 0

    # no daemon: what the repo and disk say, marked not running
    s = status(a)
    assert s.keys() >= STATUS_FIELDS
    assert s["running"] is False and s["pid"] is None and s["peers_connected"] == 0
    assert (s["files"], s["under_replicated"], s["wal_bytes"]) == (2, 1, 0)
    human = run_cli("status", "--data-dir", a.root)
    assert human.returncode == 0
    text = human.stdout.decode()
    for heading in ("==== NODE ====", "==== PEERS ====", "==== STORAGE ====", "UNDER-REPLICATED"):
        assert heading in text
    assert "not running" in text and "1 (target 1)" in text


# -- metrics -------------------------------------------------------------------------------------------
def test_metrics_scrape(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    f = tmp_path / "f"
    f.write_bytes(pattern(2 << 20, seed=5))
    with running([a, b]):
        b.start("--metrics-listen", "127.0.0.1:0")
        a.start("--bootstrap", b.listen, "--metrics-listen", ":0")  # no host: 127.0.0.1
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        assert json.loads((a.root / "node.json").read_bytes())["metrics"].startswith("127.0.0.1:")
        before = scrape(a)
        assert run_cli("store", "m", f, "--data-dir", a.root).returncode == 0

        # a peer that is not a member: garbage instead of a handshake
        host, port = b.listen.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"\xff" * 200)
            s.settimeout(10)
            while s.recv(4096):  # b drops it
                pass

        ma = scrape(a)
        assert ma[("p2pfast_transfers_total", (("kind", "store"), ("result", "ok")))] == 1
        assert ma[("p2pfast_store_duration_seconds_count", ())] == 1
        assert ma[("p2pfast_store_duration_seconds_bucket", (("le", "+Inf"),))] == 1
        sent = (
            ma[("p2pfast_network_transmit_bytes_total", ())]
            - before[("p2pfast_network_transmit_bytes_total", ())]
        )
        assert sent > 2 << 20  # the replica went out, encrypted
        assert ma[("p2pfast_objects", ())] == 1 and ma[("p2pfast_files", ())] == 1
        assert ma[("p2pfast_stored_bytes", ())] == 2 << 20
        assert ma[("p2pfast_peers", (("state", "connected"),))] == 1
        assert ma[("p2pfast_members", (("state", "alive"),))] == 2  # a and b, in a's membership view
        assert ma[("p2pfast_members", (("state", "dead"),))] == 0
        assert ma[("p2pfast_under_replicated_files", ())] == 0
        assert ma[("p2pfast_repair_queue_files", ())] == 0 and ("p2pfast_repair_copies_total", ()) in ma
        assert ma[("p2pfast_node_info", (("node_id", a.node_id), ("version", status(a)["version"])))] == 1

        mb = wait_until_scraped(b, ("p2pfast_handshake_failures_total", ()), 1)
        assert mb[("p2pfast_transfers_total", (("kind", "receive"), ("result", "ok")))] == 1
        assert mb[("p2pfast_network_receive_bytes_total", ())] > 2 << 20
        assert mb[("p2pfast_integrity_failures_total", ())] == 0

        # an object tampered with on disk: the get fails its check, and the metric counts it
        (obj,) = object_files(a.root)
        path = a.root / obj
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 1
        path.write_bytes(bytes(raw))
        got = run_cli("get", "m", "--data-dir", a.root)
        assert got.returncode == 4
        ma = scrape(a)
        assert ma[("p2pfast_integrity_failures_total", ())] == 1
        assert ma[("p2pfast_transfers_total", (("kind", "get"), ("result", "failed")))] == 1


def wait_until_scraped(
    node: NodeProc, sample: tuple[str, tuple[tuple[str, str], ...]], at_least: float
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def check() -> bool:
        nonlocal found
        found = scrape(node)
        return found.get(sample, 0) >= at_least

    wait_until(check, 20, f"{sample[0]} >= {at_least}")
    return found


# -- listings through the daemon -----------------------------------------------------------------------
def test_files_shares_peers_from_the_daemon_match_the_repo(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    f = tmp_path / "f"
    f.write_bytes(pattern(5000, seed=9))

    def listing(cmd: str) -> list[dict[str, object]]:
        out = run_cli(cmd, "--json", "--data-dir", a.root)
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, object]] = json.loads(out.stdout)
        return rows

    with running([a, b]):
        b.start("--log-level", "debug")
        a.start("--bootstrap", b.listen, "--log-level", "debug")
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        assert run_cli("store", "k", f, "--data-dir", a.root).returncode == 0
        live = {cmd: listing(cmd) for cmd in ("files", "shares", "peers")}
        for cmd in ("files", "shares", "peers"):
            assert f"event=ctl_request cmd={cmd}" in a.log()  # the daemon answered, not the repo
        assert [r["key"] for r in live["files"]] == ["k"]
        assert [r["peer_id"] for r in live["shares"]] == [b.node_id]
        assert [(r["peer_id"], r["status"]) for r in live["peers"]] == [(b.node_id, "connected")]
        assert a.stop() == 0
    # no daemon: the same rows from the repo (the peer is recorded disconnected at a's stop)
    assert listing("files") == live["files"] and listing("shares") == live["shares"]
    assert [(r["peer_id"], r["status"]) for r in listing("peers")] == [(b.node_id, "disconnected")]


def test_sigterm_on_a_replica_mid_receive_aborts_cleanly(tmp_path: Path) -> None:
    """A replica told to stop while a large object streams in: past its deadline it aborts the receive,
    keeps no partial object and exits 0; the store finishes on the other replica and says which failed."""
    a, b, c = make_nodes(tmp_path, 3)
    conf = config_file(tmp_path, "shutdown_timeout = 0.3\n")
    src = tmp_path / "big.bin"
    src.write_bytes(pattern(200 << 20, seed=11))
    with running([a, b, c]):
        b.start("--config", conf)
        c.start("--bootstrap", b.listen)
        a.start("--bootstrap", b.listen)
        wait_until(lambda: {b.node_id, c.node_id} <= a.connected(), 20, "a to reach b and c", [a, b, c])
        client = subprocess.Popen(
            cli_argv("store", "big", src, "--json", "--data-dir", a.root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        try:
            # b is receiving: freeze it there, so that most of the object is still to come when the
            # SIGTERM it finds on waking starts its drain (0.3 s: far less than the rest takes)
            wait_until(lambda: bool(temp_files(b.root)), 30, "b to start receiving")
            assert b.proc is not None
            os.kill(b.proc.pid, signal.SIGSTOP)
            os.kill(b.proc.pid, signal.SIGTERM)
            os.kill(b.proc.pid, signal.SIGCONT)
            assert b.proc.wait(timeout=30) == 0
            out, err = client.communicate(timeout=90)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=20)
        assert client.returncode == 0, err
        result = json.loads(out)
        assert result["replicated_to"] == [c.node_id] and b.node_id in result["failed"], result
        assert "event=shutdown phase=abort aborted=1" in b.log()
        repo_is_consistent(b)
        assert object_files(b.root) == []
        got = run_cli("get", "big", "-o", tmp_path / "got.bin", "--data-dir", c.root)
        assert got.returncode == 0 and file_hash(tmp_path / "got.bin") == file_hash(src)


def test_progress_lines_only_for_a_client_that_asks(tmp_path: Path) -> None:
    """A client showing a bar asks for progress lines ("progress": true); the others get none, which
    spares a small store a write and a wake-up each way."""
    from p2pfast.front import ctl

    (a,) = make_nodes(tmp_path, 1)
    src = tmp_path / "src"
    src.write_bytes(pattern(20 << 20, seed=13))
    with running([a]):
        a.start()
        seen: dict[str, list[dict[str, Any]]] = {"asked": [], "not asked": []}
        for name, extra in (("asked", {"progress": True}), ("not asked", {})):
            fd = os.open(src, os.O_RDONLY)
            try:
                request = {"cmd": "store", "key": name, "size": 20 << 20, **extra}
                ctl.call(a.root / ctl.SOCKET_NAME, request, [fd], on_progress=seen[name].append)
            finally:
                os.close(fd)
    assert [p["done"] for p in seen["asked"]] == [0, 8 << 20, 16 << 20, 20 << 20]
    assert {(p["phase"], p["total"]) for p in seen["asked"]} == {("store", 20 << 20)}  # no peer: one phase
    assert seen["not asked"] == []
