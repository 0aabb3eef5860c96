"""The peers table's verified addresses (schema step 5) on real SQLite files: an old repo upgrades with its
rows kept and unverified, a verification and a failed dial move the flag, and gossip cannot rewrite what
this node verified."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pfast.repo import LATEST, PeerRow, Repo, db, schema

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

N1, N2 = "ab" * 32, "cd" * 32


def test_a_version_4_repo_upgrades_with_its_peers_unverified(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    conn = db.open_db(path)
    try:
        assert schema.migrate(conn, schema.MIGRATIONS[:4]) == 4
        with conn:
            conn.execute("INSERT INTO peers VALUES ('127.0.0.1:7000', ?, 5.0, 'connected')", (N1,))
            conn.execute("INSERT INTO peers VALUES ('127.0.0.1:7001', NULL, 6.0, 'known')")
    finally:
        conn.close()
    with Repo.open(path) as repo:
        assert repo._conn is not None
        assert repo._conn.pragma("user_version") == LATEST >= 5
        # before step 5 nothing was verified: the rows stay, and none is gossiped until a handshake
        assert repo.list_peers() == [
            PeerRow("127.0.0.1:7001", None, 6.0, "known", None, None),
            PeerRow("127.0.0.1:7000", N1, 5.0, "connected", None, None),
        ]
        assert not any(r.verified for r in repo.list_peers())
        repo.upsert_peer("127.0.0.1:7000", N1, 9.0, "connected", verified=True)
        (row,) = [r for r in repo.list_peers() if r.node_id == N1]
        assert row.verified and row.verified_at == 9.0
    with Repo.open(path) as repo:  # reopened at the latest version: no step runs again, the flag stays
        assert repo._conn is not None
        assert repo._conn.pragma("user_version") == LATEST
        assert [r.address for r in repo.list_peers() if r.verified] == ["127.0.0.1:7000"]


def test_a_failed_dial_unverifies_until_the_next_verification(tmp_path: Path) -> None:
    with Repo.open(tmp_path / "p2p.db") as repo:
        repo.upsert_peer("127.0.0.1:1", N1, 10.0, "connected", verified=True)
        repo.upsert_peer("127.0.0.1:1", N1, 11.0, "disconnected")  # not verified again: the flag stays
        assert repo.list_peers()[0].verified
        repo.peer_dial_failed("127.0.0.1:1", 12.0)
        (row,) = repo.list_peers()
        assert (row.verified, row.verified_at, row.failed_at) == (False, 10.0, 12.0)
        repo.touch_peers([("127.0.0.1:1", N1, False)], 13.0)  # connected, but not at a verified address
        assert not repo.list_peers()[0].verified
        repo.touch_peers([("127.0.0.1:1", N1, True)], 14.0)
        (row,) = repo.list_peers()
        assert (row.verified, row.verified_at, row.failed_at) == (True, 14.0, None)
        repo.peer_dial_failed("127.0.0.1:9", 15.0)  # an address not in the table is not added
        assert [r.address for r in repo.list_peers()] == ["127.0.0.1:1"]


def test_gossip_never_renames_a_verified_address(tmp_path: Path) -> None:
    """Hearsay may name a new node id for an address only this node's own handshake has not verified."""
    with Repo.open(tmp_path / "p2p.db") as repo:
        repo.upsert_peer("127.0.0.1:1", N1, 10.0, "connected", verified=True)
        repo.learn_peer("127.0.0.1:1", N2, 20.0)
        (row,) = repo.list_peers()
        assert (row.node_id, row.verified, row.last_seen) == (N1, True, 20.0)
        repo.learn_peer("127.0.0.1:2", N1, 7.0)
        repo.learn_peer("127.0.0.1:2", N2, 8.0)  # heard only: the latest word wins, and it stays unverified
        (heard,) = [r for r in repo.list_peers() if r.address == "127.0.0.1:2"]
        assert (heard.node_id, heard.status, heard.verified) == (N2, "known", False)


def test_a_sample_is_drawn_from_the_verified_rows_seen_since(tmp_path: Path) -> None:
    with Repo.open(tmp_path / "p2p.db") as repo:
        for i in range(40):
            repo.upsert_peer(f"127.0.0.1:{7000 + i}", f"{i:064x}", 100.0 + i, "connected", verified=True)
        repo.upsert_peer("127.0.0.1:6999", N1, 500.0, "connected")  # not verified
        repo.learn_peers([("127.0.0.1:6998", N2, 500.0)])  # heard of only
        repo.peer_dial_failed("127.0.0.1:7039", 600.0)  # verified once, a dial failed since
        picks = [{r.address for r in repo.sample_peers(110.0, 8)} for _ in range(20)]
        assert all(len(p) == 8 for p in picks)
        seen = set().union(*picks)
        # seen since 110 at a verified address, no failed dial since: 7010 … 7038, at random
        assert seen <= {f"127.0.0.1:{7000 + i}" for i in range(10, 39)}
        assert len(seen) > 16  # not the same 8 every time
        everything = {r.address for r in repo.sample_peers(110.0, 100, failed=True)}
        assert everything == {f"127.0.0.1:{7000 + i}" for i in range(10, 40)}
        assert repo.sample_peers(1000.0, 8) == []
