"""`cleanup --older-than` never forgets a connected peer, with real node processes: the daemon refreshes
its connected peers' last_seen every gossip round, and cleanup spares the peers it reports connected."""

from __future__ import annotations

import time
from pathlib import Path

from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import run_cli

from p2pfast.repo.repo import Repo


def last_seen(node: NodeProc, peer_id: str) -> float:
    with Repo.open(node.layout.db, readonly=True) as repo:
        (row,) = [r for r in repo.list_peers() if r.node_id == peer_id]
        return row.last_seen


def peer_ids(node: NodeProc) -> set[str | None]:
    with Repo.open(node.layout.db, readonly=True) as repo:
        return {r.node_id for r in repo.list_peers()}


def test_a_connected_peer_is_seen_every_gossip_round(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    conf = tmp_path / "p2p.conf"
    conf.write_text("gossip_interval = 0.2\n")
    with running([a, b]):
        b.start("--config", str(conf))
        a.start("--config", str(conf), "--bootstrap", b.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        connected_at = last_seen(a, b.node_id)
        # refreshed while connected (at connect only, it would stay where it was)
        wait_until(lambda: last_seen(a, b.node_id) > connected_at + 1.5, 20, "a to refresh b's last_seen")
        wait_until(lambda: time.time() - connected_at > 2, 5, "2 s since the connect")
        out = run_cli("cleanup", "--older-than", "1s", "--data-dir", a.root)
        assert out.returncode == 0, out.stderr
        assert b.node_id in peer_ids(a)


def test_cleanup_spares_the_peers_the_daemon_is_connected_to(tmp_path: Path) -> None:
    """With the default gossip round (30 s), b's row is older than 1 s before any refresh: cleanup keeps
    it because the daemon says b is connected, and removes a stale row beside it."""
    a, b = make_nodes(tmp_path, 2)
    with Repo.open(a.layout.db) as repo:  # a peer a heard of long ago, never reached since
        repo.learn_peer("127.0.0.1:9", "ab" * 32, time.time() - 3600)
    with running([a, b]):
        b.start()
        a.start("--bootstrap", b.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        connected_at = last_seen(a, b.node_id)
        wait_until(lambda: time.time() - connected_at > 1.5, 5, "1.5 s since the connect")
        out = run_cli("cleanup", "--older-than", "1s", "--data-dir", a.root)
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode().startswith("removed 1 peer unseen for more than 1 s (kept 1 connected)")
        assert peer_ids(a) == {b.node_id}
        assert a.stop() == 0
    # no daemon: nothing is connected, and an old row goes
    wait_until(lambda: time.time() - last_seen(a, b.node_id) > 1.5, 5, "1.5 s since a's stop")
    out = run_cli("cleanup", "--older-than", "1s", "--data-dir", a.root)
    assert out.returncode == 0 and out.stdout.decode().startswith("removed 1 peer ")
    assert peer_ids(a) == set()
