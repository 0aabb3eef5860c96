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


def test_network_converges_from_one_bootstrap(tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    nodes = make_nodes(tmp_path, 3)
    # Gossip every 5 s instead of 30, so that the test also sees the periodic exchange heal the mesh;
    # debug logs say what each dialer did if it does not converge.
    cfg = tmp_path / "cfg"
    cfg.write_text("gossip_interval=5\n")
    opts = ("--config", str(cfg), "--log-level", "debug")
    with running(nodes):
        took = _start_from_bootstrap(nodes, *opts, timeout=40)
        report_figure(f"3-node network converged to full membership in {took:.2f} s")
        for n in nodes:
            assert n.stop() == 0
    for n in nodes:
        assert "event=loop_exception" not in n.log() and "Traceback" not in n.log(), n.log()


def test_a_larger_network_converges_with_its_links_under_the_bound(
    tmp_path: Path, report_figure: Callable[[str], None]
) -> None:
    """20 nodes from one bootstrap, max_links = 8: every member in every view, at most 8 sessions per
    node once idle (target min(8 - 4, log2 20 + 2) = 4; node/links.py). A get's contacts are counted
    in-process (tests/node/test_links.py)."""
    count, max_links = 20, 8
    nodes = make_nodes(tmp_path, count)
    cfg = tmp_path / "cfg"
    cfg.write_text(f"max_links={max_links}\nreplicas=2\n")
    opts = ("--config", str(cfg), "--log-level", "debug")
    t0 = time.monotonic()
    with running(nodes):
        boot = nodes[0].start(*opts)
        for n in nodes[1:]:
            n.start("--bootstrap", boot.listen, *opts)

        def views() -> bool:
            return all(n.status()["members"]["alive"] == count for n in nodes)

        wait_until(views, 60, f"{count} members in every view", nodes)
        took = time.monotonic() - t0
        # the joins all went to the bootstrap node: what is over the bound closes once idle (30 s)
        links: list[int] = []

        def bounded() -> bool:
            links[:] = [n.status()["peers_connected"] for n in nodes]
            return max(links) <= max_links

        wait_until(bounded, 90, f"at most {max_links} links per node", nodes)
        report_figure(
            f"{count}-node network: every view complete in {took:.2f} s; links per node {min(links)}-"
            f"{max(links)} (bound {max_links}, target {nodes[0].status()['link_target']})"
        )
        assert min(links) >= 1
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


def test_a_peer_list_larger_than_one_message_is_cut_to_fit_not_dropped() -> None:
    """For a peer of an older build, which learns members from peer exchange alone: the freshest
    entries, as many as one control message holds (a message that failed to encode would leave it with
    no exchange at all)."""
    from types import SimpleNamespace

    import orjson

    from p2pfast import wire
    from p2pfast.net import gossip
    from p2pfast.net.limits import NetLimits
    from p2pfast.proto import messages as m

    now = time.time()
    known = [(f"{LONG_LOOPBACK}:{20000 + i}", os.urandom(32).hex(), now - i) for i in range(150)]
    manager = SimpleNamespace(sessions={}, limits=NetLimits())
    msg, left_out = gossip.pex_message(known, manager, exclude="")  # type: ignore[arg-type]
    assert 80 < len(msg.peers) < 150 and left_out == 150 - len(msg.peers)
    assert [p.addr for p in msg.peers] == [k[0] for k in known[: len(msg.peers)]]  # the freshest first
    assert len(orjson.dumps(m.to_wire(msg))) <= wire.MAX_CONTROL_SIZE


def test_a_member_that_speaks_the_view_is_sent_a_sample_of_the_peer_list(tmp_path: Path) -> None:
    """A member learns the others from the membership view: a's exchange names a bounded sample of the
    150 members it verified, not as many as fit."""
    from p2pfast.node.membership import PEX_SAMPLE
    from p2pfast.repo.repo import Repo

    a, b = make_nodes(tmp_path, 2)
    now = time.time()
    with Repo.open(a.layout.db) as repo:
        for i in range(150):
            # as if a had reached them before (only verified addresses are gossiped); nothing listens
            # there now: the dials to them fail on loopback and back off
            addr, node_id = f"{LONG_LOOPBACK}:{20000 + i}", os.urandom(32).hex()
            repo.upsert_peer(addr, node_id, now - i, "disconnected", verified=True)
    with running([a, b]):
        a.start()
        b.start("--bootstrap", a.listen)
        wait_until(lambda: len(b.known()) > 1, 20, "b learning some of a's peers", [a, b])
        with Repo.open(b.layout.db, readonly=True) as repo:
            learned = [r for r in repo.list_peers() if r.address.startswith(LONG_LOOPBACK)]
        assert 0 < len(learned) <= PEX_SAMPLE, learned
    assert "event=pex_truncated" not in a.log()
