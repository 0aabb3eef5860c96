"""Real node processes on 127.0.0.1: discovery by gossip, membership by network key, restarts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import cli_env

from p2pfast.datadir import Layout, init


def _full_mesh(nodes: list[NodeProc]) -> bool:
    ids = {n.node_id for n in nodes}
    return all(n.connected() >= ids - {n.node_id} for n in nodes)


def _start_from_bootstrap(
    nodes: list[NodeProc], *opts: str, env: dict[str, str] | None = None, timeout: float = 30
) -> float:
    """Start nodes[0], then the rest with it as bootstrap; wait for full membership. Returns the time
    that took after the last node started."""
    boot = nodes[0].start(*opts, env=env)
    for n in nodes[1:]:
        n.start("--bootstrap", boot.listen, *opts, env=env)
    return wait_until(lambda: _full_mesh(nodes), timeout, f"{len(nodes)}-node full membership", nodes)


@pytest.mark.parametrize("count", [3, 20])
def test_network_converges_from_one_bootstrap(
    tmp_path: Path, count: int, report_figure: Callable[[str], None]
) -> None:
    nodes = make_nodes(tmp_path, count)
    # Gossip every 5 s instead of 30, so that the test also sees the periodic exchange heal the mesh;
    # debug logs say what each dialer did if it does not converge.
    cfg = tmp_path / "cfg"
    cfg.write_text("gossip_interval=5\n")
    opts = ("--config", str(cfg), "--log-level", "debug")
    with running(nodes):
        took = _start_from_bootstrap(nodes, *opts, timeout=30 + count * 3)
        report_figure(f"{count}-node network converged to full membership in {took:.2f} s")
        for n in nodes:
            assert n.stop() == 0
    for n in nodes:
        assert "event=loop_exception" not in n.log() and "Traceback" not in n.log(), n.log()


@pytest.mark.parametrize("loop", ["asyncio", "asyncio-debug"])
def test_network_on_plain_asyncio(tmp_path: Path, loop: str) -> None:
    """The same network on asyncio's own loop (once in debug mode): uvloop is not load-bearing, and no
    exception reaches either loop's handler."""
    env = cli_env(P2PFAST_LOOP="asyncio")
    if loop == "asyncio-debug":
        env["PYTHONASYNCIODEBUG"] = "1"
    nodes = make_nodes(tmp_path, 3)
    with running(nodes):
        _start_from_bootstrap(nodes, env=env)
        for n in nodes:
            assert n.stop() == 0
    for n in nodes:
        assert "event=loop_exception" not in n.log() and "Traceback" not in n.log(), n.log()


def test_wrong_network_key_gets_nowhere(tmp_path: Path) -> None:
    good = make_nodes(tmp_path / "good", 2)
    bad = make_nodes(tmp_path / "bad", 1, network_key=os.urandom(32))
    with running([*good, *bad]):
        boot = good[0].start()
        good[1].start("--bootstrap", boot.listen)
        wait_until(lambda: _full_mesh(good), 20, "the good pair to connect", good)
        bad[0].start("--bootstrap", boot.listen)
        # The outsider is refused at the handshake: the bootstrap says why in one log line.
        wait_until(lambda: "event=peer_dropped" in boot.log(), 20, "the bootstrap to drop the outsider", good)
        assert bad[0].connected() == set()
        assert bad[0].node_id not in boot.known() | good[1].known()
        assert _full_mesh(good)
        assert boot.proc is not None and boot.proc.poll() is None


def test_restart_rejoins_from_its_peers_table(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    with running(nodes):
        _start_from_bootstrap(nodes)
        assert nodes[2].stop() == 0
        # Restarted without --bootstrap: it knows its peers from its own table.
        nodes[2].start()
        wait_until(lambda: _full_mesh(nodes), 30, "the restarted node to rejoin", nodes)


def test_sigterm_exits_cleanly_and_marks_peers(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 2)
    with running(nodes):
        _start_from_bootstrap(nodes)
        a, b = nodes
        t0 = time.monotonic()
        assert b.stop() == 0
        assert time.monotonic() - t0 < 10
        assert not (b.root / "node.json").exists()
        assert not (b.root / "dirty").exists()
        wait_until(lambda: b.node_id not in a.connected(), 20, "a to see b gone", nodes)
        assert "Traceback" not in b.log()


def test_invite_join(tmp_path: Path) -> None:
    import subprocess
    import sys

    a = make_nodes(tmp_path, 1)[0]
    with running([a]):
        a.start()
        out = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "p2pfast",
                "invite",
                "--data-dir",
                str(a.root),
                "--address",
                a.listen,
            ],
            env=cli_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out.startswith("p2p1:") and a.node_id in out
        assert (a.root / "network.key").read_bytes().hex() not in out  # base64url, and never logged:
        b = NodeProc(tmp_path / "joiner")
        with running([b]):
            b.start("--join", out)
            wait_until(lambda: _full_mesh([a, b]), 20, "the joiner to connect", [a, b])
            assert (b.root / "network.key").read_bytes() == (a.root / "network.key").read_bytes()
            assert oct((b.root / "network.key").stat().st_mode & 0o777) == "0o600"
            for n in (a, b):
                assert (n.root / "network.key").read_bytes().hex() not in n.log()


def test_uninitialised_serve_is_config_error(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path / "x")
    init(layout)
    (tmp_path / "x" / "network.key").unlink()
    n = NodeProc(tmp_path / "x")
    with pytest.raises(AssertionError, match="exited with 8"):
        n.start()


def test_peers_and_cleanup_commands(tmp_path: Path) -> None:
    import subprocess
    import sys

    import orjson

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-P", "-m", "p2pfast", *args, "--data-dir", str(nodes[0].root)],
            env=cli_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    nodes = make_nodes(tmp_path, 3)
    with running(nodes):
        _start_from_bootstrap(nodes)
        live = orjson.loads(cli("peers", "--json"))  # beside the running node
        connected = {p["peer_id"] for p in live if p["status"] == "connected"}
        assert connected == {nodes[1].node_id, nodes[2].node_id}
        assert all(p["verified"] for p in live)  # reached, or connected from the host they advertise
        assert "ADDRESS" in cli("peers")
        for n in nodes:
            assert n.stop() == 0
    after = orjson.loads(cli("peers", "--json"))
    assert len(after) == 2 and all(p["status"] == "disconnected" for p in after)
    assert "removed 0 peers" in cli("cleanup")  # default: unseen for more than 1 h
    assert "removed 2 peers" in cli("cleanup", "--older-than", "0s")
    assert orjson.loads(cli("peers", "--json")) == []


# ::1 spelled out in full: a 47-character address that is still loopback, like the long DNS names and
# IPv6 addresses of a real network, so 128 entries no longer fit one 16 KiB control message.
LONG_LOOPBACK = "[0000:0000:0000:0000:0000:0000:0000:0001]"


def test_a_peer_list_larger_than_one_message_is_cut_to_fit_not_dropped(tmp_path: Path) -> None:
    from p2pfast.repo.repo import Repo

    a, b = make_nodes(tmp_path, 2)
    now = time.time()
    with Repo.open(a.layout.db) as repo:
        for i in range(150):
            # as if a had reached them before (only verified addresses are gossiped); nothing listens
            # there now: a's dials at start and b's are refused on loopback and back off
            addr, node_id = f"{LONG_LOOPBACK}:{20000 + i}", os.urandom(32).hex()
            repo.upsert_peer(addr, node_id, now - i, "disconnected", verified=True)
    with running([a, b]):
        a.start()
        b.start("--bootstrap", a.listen)
        # b learns the freshest of a's entries from a's first peer exchange (none came at all before)
        wait_until(lambda: len(b.known()) > 80, 20, "b learning a's peers from one exchange", [a, b])
        known = b.known()
        assert len(known) < 150
        with Repo.open(b.layout.db, readonly=True) as repo:
            learned = [r for r in repo.list_peers() if r.address.startswith(LONG_LOOPBACK)]
        with Repo.open(a.layout.db, readonly=True) as repo:
            failed = {r.address for r in repo.list_peers() if r.failed_at is not None}
        # the freshest first: every entry b got is fresher than every one it did not, but for those a's
        # own dials had found dead by then (a gossips an address no more once a dial there failed)
        ports = sorted(int(r.address.rsplit(":", 1)[1]) for r in learned)
        assert ports == list(range(ports[0], ports[0] + len(ports)))
        assert {f"{LONG_LOOPBACK}:{p}" for p in range(20000, ports[0])} <= failed
    assert a.log().count("event=pex_truncated") == 1
