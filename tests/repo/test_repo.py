"""Repo queries on real SQLite files: refcounts, keys, peers, shares, durability and locking."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from p2pfast.errors import InternalError, NotFound, P2PError, StorageError
from p2pfast.repo import FileRow, ObjectRow, PeerRow, Repo, ShareRow

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free


def cid_of(n: int) -> str:
    return f"b3:{n:064x}"


A, B, C = cid_of(0xA), cid_of(0xB), cid_of(0xC)


def obj(cid: str, size: int = 10, created: float = 1.0) -> ObjectRow:
    return ObjectRow(cid=cid, size=size, segment_size=65536, segments=1, refcount=0, created=created)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    with Repo.open(tmp_path / "p2p.db") as r:
        yield r


def add_new(repo: Repo, key: bytes, cid: str, now: float = 1.0) -> str | None:
    return repo.add_file(key, cid, 10, now, obj(cid), b"wrapped-" + cid.encode(), "aes-256-gcm")


def refcount(repo: Repo, cid: str) -> int | None:
    row = repo.get_object(cid)
    return None if row is None else row.refcount


# -- rows ------------------------------------------------------------------------------------------


def test_rows_are_frozen_and_slotted() -> None:
    for row in (FileRow(b"k", A, 1, 1.0), obj(A), PeerRow("h:1", None, 1.0, "up"), ShareRow(A, "h:1", 1.0)):
        name = dataclasses.fields(row)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(row, name, "x")
        assert not hasattr(row, "__dict__")


# -- add_file / remove_file ------------------------------------------------------------------------


def test_add_new_object(repo: Repo) -> None:
    assert add_new(repo, b"a", A, now=5.0) is None
    assert repo.get_file(b"a") == FileRow(b"a", A, 10, 5.0)
    assert repo.get_object(A) == ObjectRow(A, 10, 65536, 1, 1, 1.0)  # refcount 1, whatever new_object said
    assert repo.get_key(A) == (b"wrapped-" + A.encode(), "aes-256-gcm")
    assert repo.stats() == {"files": 1, "objects": 1, "bytes": 10}


def test_dedup_two_keys_one_cid(repo: Repo) -> None:
    add_new(repo, b"a", A)
    # the object exists: new_object and wrapped_key are ignored
    assert repo.add_file(b"b", A, 10, 2.0, obj(A, size=999), b"other", "other") is None
    assert refcount(repo, A) == 2
    assert repo.get_object(A) == ObjectRow(A, 10, 65536, 1, 2, 1.0)
    assert repo.get_key(A) == (b"wrapped-" + A.encode(), "aes-256-gcm")
    assert repo.stats() == {"files": 2, "objects": 1, "bytes": 10}
    assert repo.remove_file(b"a") == (A, False)
    assert refcount(repo, A) == 1
    assert repo.remove_file(b"b") == (A, True)
    assert repo.get_object(A) is None
    assert repo.get_key(A) is None
    assert repo.stats() == {"files": 0, "objects": 0, "bytes": 0}


def test_add_existing_object_without_new_object(repo: Repo) -> None:
    add_new(repo, b"a", A)
    assert repo.add_file(b"b", A, 10, 2.0) is None
    assert refcount(repo, A) == 2


def test_same_key_same_cid_updates_created_only(repo: Repo) -> None:
    add_new(repo, b"a", A, now=1.0)
    assert repo.add_file(b"a", A, 10, 7.0) is None
    assert refcount(repo, A) == 1
    assert repo.get_file(b"a") == FileRow(b"a", A, 10, 7.0)


def test_repoint_key_orphans_old_object(repo: Repo) -> None:
    add_new(repo, b"a", A)
    repo.add_share(A, "peer:1", 3.0)
    assert add_new(repo, b"a", B, now=2.0) == A  # caller unlinks A's file after the commit
    assert repo.get_file(b"a") == FileRow(b"a", B, 10, 2.0)
    assert repo.get_object(A) is None
    assert repo.get_key(A) is None
    assert repo.shares_for(A) == []
    assert refcount(repo, B) == 1


def test_repoint_key_keeps_shared_old_object(repo: Repo) -> None:
    add_new(repo, b"a", A)
    repo.add_file(b"b", A, 10, 1.0)
    add_new(repo, b"c", B)
    assert repo.add_file(b"a", B, 10, 2.0) is None  # A still referenced by b
    assert refcount(repo, A) == 1
    assert refcount(repo, B) == 2


def test_add_unknown_cid_without_new_object_is_not_found(repo: Repo) -> None:
    add_new(repo, b"a", A)
    with pytest.raises(NotFound, match=B):
        repo.add_file(b"b", B, 10, 1.0)
    # ... and when re-pointing, nothing of the transaction stays behind
    with pytest.raises(NotFound):
        repo.add_file(b"a", B, 10, 1.0)
    assert repo.get_file(b"b") is None
    assert repo.get_file(b"a") == FileRow(b"a", A, 10, 1.0)
    assert refcount(repo, A) == 1
    assert repo.get_object(B) is None
    assert repo.stats() == {"files": 1, "objects": 1, "bytes": 10}


def test_new_object_needs_its_key(repo: Repo) -> None:
    with pytest.raises(InternalError):
        repo.add_file(b"a", A, 10, 1.0, obj(A))
    with pytest.raises(InternalError):
        repo.add_file(b"a", A, 10, 1.0, obj(B), b"w", "a")
    assert repo.list_objects() == []
    assert repo.list_files() == []


def test_failed_insert_rolls_back_everything(repo: Repo) -> None:
    add_new(repo, b"a", A)
    # the new object is inserted, then the files row violates its CHECK: all of it must go
    with pytest.raises(InternalError, match="CHECK"):
        repo.add_file(b"a", B, -1, 2.0, obj(B), b"w", "a")
    assert repo.get_object(B) is None
    assert repo.get_key(B) is None
    assert repo.get_file(b"a") == FileRow(b"a", A, 10, 1.0)
    assert refcount(repo, A) == 1


def test_remove_missing_key_is_not_found(repo: Repo) -> None:
    with pytest.raises(NotFound) as exc:
        repo.remove_file(b"nope\nline")
    assert str(exc.value) == "not found: nope\\nline"


def test_strict_types_are_bugs(repo: Repo) -> None:
    with pytest.raises(InternalError):
        repo.add_file("text key", A, 10, 1.0, obj(A), b"w", "a")  # type: ignore[arg-type]
    assert repo.list_files() == []


# -- hostile keys ----------------------------------------------------------------------------------

HOSTILE = [
    b"../../etc/passwd",
    b"a\x00b",
    b"a",
    "\U0001f600 emoji \u00e9".encode(),
    b"\xff\xfe not utf-8",
    b"x" * 1024,
    b"",
    b"a\x00",
    b"A",
]


def test_hostile_keys_round_trip_and_sort(repo: Repo) -> None:
    add_new(repo, HOSTILE[0], A)
    for key in HOSTILE[1:]:
        repo.add_file(key, A, 10, 1.0)
    for key in HOSTILE:
        row = repo.get_file(key)
        assert row is not None
        assert row.key == key
        assert type(row.key) is bytes
    assert [f.key for f in repo.list_files()] == sorted(HOSTILE)
    assert repo.get_file(b"a\x00c") is None
    assert repo.get_file(b"a\x00b\x00") is None
    assert refcount(repo, A) == len(HOSTILE)
    for key in HOSTILE:
        repo.remove_file(key)
    assert repo.list_objects() == []


def test_not_found_message_is_one_line_for_any_key(repo: Repo) -> None:
    for key in (b"a\x00b\n\r", b"\xff" * 3000, "\u2028".encode()):
        with pytest.raises(NotFound) as exc:
            repo.remove_file(key)
        assert "\n" not in str(exc.value)
        assert len(str(exc.value)) < 300


# -- reconcile helpers -----------------------------------------------------------------------------


def test_delete_object_rows(repo: Repo) -> None:
    add_new(repo, b"a", A)
    with pytest.raises(StorageError, match="still referenced"):
        repo.delete_object_rows(A)
    assert refcount(repo, A) == 1
    repo.remove_file(b"a")
    repo.delete_object_rows(A)  # already gone: no-op
    # an object whose refcount drifted to 0 with no files (e.g. after fix_refcounts)
    add_new(repo, b"b", B)
    repo.add_share(B, "peer:1", 1.0)
    assert repo._conn is not None
    with repo._conn:
        repo._conn.execute("DELETE FROM files")
    repo.delete_object_rows(B)
    assert repo.get_object(B) is None
    assert repo.get_key(B) is None
    assert repo.shares_for(B) == []


def test_fix_refcounts(repo: Repo) -> None:
    add_new(repo, b"a", A)
    repo.add_file(b"b", A, 10, 1.0)
    add_new(repo, b"c", B)
    add_new(repo, b"d", C)
    assert repo.fix_refcounts() == []
    assert repo._conn is not None
    with repo._conn:
        repo._conn.execute("UPDATE objects SET refcount = 7 WHERE cid = ?", (A,))
        repo._conn.execute("UPDATE objects SET refcount = 0 WHERE cid = ?", (B,))
        repo._conn.execute("DELETE FROM files WHERE key = ?", (b"d",))
    assert repo.fix_refcounts() == [(A, 7, 2), (B, 0, 1), (C, 1, 0)]
    assert [(o.cid, o.refcount) for o in repo.list_objects()] == [(A, 2), (B, 1), (C, 0)]
    assert repo.fix_refcounts() == []


# -- peers and shares ------------------------------------------------------------------------------


def test_peers(repo: Repo) -> None:
    repo.upsert_peer("10.0.0.1:7000", None, 10.0, "up")
    repo.upsert_peer("10.0.0.2:7000", "node-b", 20.0, "up")
    repo.upsert_peer("10.0.0.3:7000", "node-c", 5.0, "down")
    assert [p.address for p in repo.list_peers()] == ["10.0.0.2:7000", "10.0.0.1:7000", "10.0.0.3:7000"]
    repo.upsert_peer("10.0.0.1:7000", "node-a", 30.0, "up")
    repo.upsert_peer("10.0.0.1:7000", None, 31.0, "down")  # a None node_id keeps the known one
    assert repo.list_peers(since=20.0) == [
        PeerRow("10.0.0.1:7000", "node-a", 31.0, "down"),
        PeerRow("10.0.0.2:7000", "node-b", 20.0, "up"),
    ]
    assert repo.remove_peers_older_than(20.0) == 1
    assert [p.address for p in repo.list_peers()] == ["10.0.0.1:7000", "10.0.0.2:7000"]
    assert repo.remove_peers_older_than(0.0) == 0


def test_shares(repo: Repo) -> None:
    add_new(repo, b"a", A)
    add_new(repo, b"b", B)
    repo.add_share(A, "p2:1", 1.0)
    repo.add_share(A, "p1:1", 2.0)
    repo.add_share(B, "p1:1", 3.0)
    repo.add_share(A, "p1:1", 4.0)  # a repeat ack updates the time
    assert repo.shares_for(A) == [ShareRow(A, "p1:1", 4.0), ShareRow(A, "p2:1", 1.0)]
    assert repo.list_shares() == [
        ShareRow(A, "p1:1", 4.0),
        ShareRow(A, "p2:1", 1.0),
        ShareRow(B, "p1:1", 3.0),
    ]
    assert repo.remove_file(b"a") == (A, True)
    assert repo.list_shares() == [ShareRow(B, "p1:1", 3.0)]


# -- life cycle, WAL and locking -------------------------------------------------------------------


def test_close_truncates_wal_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    other = apsw.Connection(str(path))  # keeps the WAL file from being deleted at the last close
    try:
        repo = Repo.open(path)
        other.execute("SELECT count(*) FROM files").fetchall()  # now attached to the WAL index
        for i in range(50):
            add_new(repo, b"k%d" % i, cid_of(i))
        assert repo.wal_size() > 0
        repo.close()
        assert repo.closed
        assert Path(str(path) + "-wal").exists()
        assert repo.wal_size() == 0
        repo.close()
        with pytest.raises(InternalError, match="closed"):
            repo.get_file(b"k1")
        assert other.execute("SELECT count(*) FROM files").fetchall() == [(50,)]
    finally:
        other.close()
    assert not Path(str(path) + "-wal").exists() or os.path.getsize(str(path) + "-wal") == 0


def test_checkpoint_when_idle(repo: Repo) -> None:
    add_new(repo, b"a", A)
    assert repo.wal_size() > 0
    assert repo.checkpoint() is True
    assert repo.wal_size() == 0


def test_checkpoint_blocked_by_reader_reports_false(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    with Repo.open(path, busy_timeout_ms=100) as repo:
        add_new(repo, b"a", A)
        reader = apsw.Connection(str(path))
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM files").fetchall()  # holds a read snapshot
            add_new(repo, b"b", B)
            assert repo.checkpoint() is False
            reader.execute("COMMIT")
            assert repo.checkpoint() is True
        finally:
            reader.close()


def test_other_process_sees_committed_rows(repo: Repo) -> None:
    add_new(repo, b"a\x00b", A)
    assert repo.wal_size() > 0  # committed, not yet checkpointed: only in the WAL
    code = (
        "import apsw, sys\n"
        "c = apsw.Connection(sys.argv[1], flags=apsw.SQLITE_OPEN_READONLY)\n"
        "print(c.execute('SELECT hex(key), cid FROM files').fetchall())\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code, str(repo.path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == repr([("610062", A)])


def test_busy_write_waits_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    with Repo.open(path, busy_timeout_ms=200) as repo:
        add_new(repo, b"a", A)
        other = apsw.Connection(str(path))
        try:
            other.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            with pytest.raises(StorageError, match="repo is busy") as exc:
                repo.add_file(b"b", A, 10, 2.0)
            elapsed = time.monotonic() - t0
            assert 0.15 <= elapsed < 5.0
            assert isinstance(exc.value.__cause__, apsw.BusyError)
            assert "\n" not in str(exc.value)
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert repo.add_file(b"b", A, 10, 2.0) is None  # nothing was half-written
        assert refcount(repo, A) == 2


def test_busy_wait_releases_the_gil(tmp_path: Path) -> None:
    """A write waiting on another connection's lock lets other Python threads run (here: the one that
    releases the lock). With apsw's `with conn:` the BEGIN held the GIL, so this deadlocked for the whole
    busy timeout and then failed; Repo writes use db.transaction to avoid that."""
    path = tmp_path / "p2p.db"
    with Repo.open(path, busy_timeout_ms=5000) as repo:
        add_new(repo, b"a", A)
        other = apsw.Connection(str(path))
        other.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.2, lambda: other.execute("ROLLBACK"))
        timer.start()
        try:
            t0 = time.monotonic()
            repo.add_file(b"b", A, 10, 2.0)
            assert time.monotonic() - t0 >= 0.1
        finally:
            timer.join()
            other.close()
        assert refcount(repo, A) == 2


def test_repr(tmp_path: Path) -> None:
    repo = Repo.open(tmp_path / "p2p.db")
    assert "p2p.db" in repr(repo)
    repo.close()
    assert "closed" in repr(repo)


def test_readonly_open_reads_beside_a_writer_and_never_writes(tmp_path: Path) -> None:
    """`p2pfast peers` and the network tests read the repo of a running node: a read-only open must not
    migrate, optimize or checkpoint (each takes the write lock the node needs), and cannot write."""
    path = tmp_path / "p2p.db"
    writer = Repo.open(path)
    try:
        writer.upsert_peer("127.0.0.1:1", "ab" * 32, 1.0, "connected")
        reader = Repo.open(path, readonly=True)
        assert [p.address for p in reader.list_peers()] == ["127.0.0.1:1"]
        wal_before = writer.wal_size()
        with pytest.raises(P2PError):
            reader.upsert_peer("127.0.0.1:2", None, 2.0, "known")
        reader.close()
        assert writer.wal_size() == wal_before > 0  # the reader's close did not checkpoint
        writer.upsert_peer("127.0.0.1:3", None, 3.0, "known")  # and left no lock behind
    finally:
        writer.close()
    with pytest.raises(StorageError):
        Repo.open(tmp_path / "missing.db", readonly=True)


def test_gossip_never_overwrites_a_peer_status(tmp_path: Path) -> None:
    """A peer exchange that lands after our own connection to that peer must not mark it `known`."""
    with Repo.open(tmp_path / "p2p.db") as repo:
        repo.upsert_peer("127.0.0.1:1", "ab" * 32, 10.0, "connected")
        repo.learn_peer("127.0.0.1:1", "ab" * 32, 5.0)
        (row,) = repo.list_peers()
        assert (row.status, row.last_seen) == ("connected", 10.0)
        repo.learn_peer("127.0.0.1:1", "ab" * 32, 20.0)
        assert repo.list_peers()[0].last_seen == 20.0 and repo.list_peers()[0].status == "connected"
        repo.learn_peer("127.0.0.1:2", "cd" * 32, 7.0)
        assert {(p.address, p.status) for p in repo.list_peers()} == {
            ("127.0.0.1:1", "connected"),
            ("127.0.0.1:2", "known"),
        }
