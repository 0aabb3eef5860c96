"""Real node processes on 127.0.0.1: discovery by gossip, membership by network key, restarts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from netnodes import NodeProc, make_nodes, running, wait_until

from p2pfast.datadir import Layout, init


def _full_mesh(nodes: list[NodeProc]) -> bool:
    ids = {n.node_id for n in nodes}
    return all(n.connected() >= ids - {n.node_id} for n in nodes)


@pytest.mark.parametrize("count", [3, 20])
def test_network_converges_from_one_bootstrap(tmp_path: Path, count: int) -> None:
    nodes = make_nodes(tmp_path, count)
    with running(nodes):
        boot = nodes[0].start()
        for n in nodes[1:]:
            n.start("--bootstrap", boot.listen)
        took = wait_until(lambda: _full_mesh(nodes), 30 + count * 3, f"{count}-node full membership", nodes)
        print(f"\n{count}-node network converged to full membership in {took:.2f} s")


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
        boot = nodes[0].start()
        for n in nodes[1:]:
            n.start("--bootstrap", boot.listen)
        wait_until(lambda: _full_mesh(nodes), 30, "3-node membership", nodes)
        assert nodes[2].stop() == 0
        # Restarted without --bootstrap: it knows its peers from its own table.
        nodes[2].start()
        wait_until(lambda: _full_mesh(nodes), 30, "the restarted node to rejoin", nodes)


def test_sigterm_exits_cleanly_and_marks_peers(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 2)
    with running(nodes):
        a = nodes[0].start()
        b = nodes[1].start("--bootstrap", a.listen)
        wait_until(lambda: _full_mesh(nodes), 20, "2-node membership", nodes)
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

    from nodetools import cli_env

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
