"""Tombstones on real SQLite files: the v1 -> v2 migration, newer-wins, expiry, deletes and re-add checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from p2pfast.errors import InternalError
from p2pfast.repo import LATEST, FileRow, ObjectRow, PeerRow, Repo, ShareRow, TombstoneRow, db, schema

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free


def cid_of(n: int) -> str:
    return f"b3:{n:064x}"


A, B, C = cid_of(0xA), cid_of(0xB), cid_of(0xC)
N1, N2 = "1" * 64, "2" * 64  # node ids; N2 > N1


def obj(cid: str) -> ObjectRow:
    return ObjectRow(cid=cid, size=10, segment_size=65536, segments=1, refcount=0, created=1.0)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    with Repo.open(tmp_path / "p2p.db") as r:
        yield r


def add_new(repo: Repo, key: bytes, cid: str, now: float = 1.0) -> None:
    assert repo.add_file(key, cid, 10, now, obj(cid), b"wrapped-" + cid.encode(), "aes-256-gcm") is None


def refcount(repo: Repo, cid: str) -> int | None:
    row = repo.get_object(cid)
    return None if row is None else row.refcount


# -- migration ---------------------------------------------------------------------------------------


def test_migrations_2_and_3_keep_v1_rows(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    conn = db.open_db(path)
    try:
        assert schema.migrate(conn, schema.MIGRATIONS[:1]) == 1
        assert not conn.table_exists(None, "tombstones")
        with conn:
            conn.execute("INSERT INTO objects VALUES (?, 10, 65536, 1, 2, 1.0)", (A,))
            conn.execute("INSERT INTO keys VALUES (?, x'00ff', 'aes-256-gcm', 1.0)", (A,))
            conn.executemany("INSERT INTO files VALUES (?, ?, 10, ?)", [(b"a\x00b", A, 2.0), (b"c", A, 3.0)])
            conn.execute("INSERT INTO peers VALUES ('10.0.0.1:7000', ?, 5.0, 'up')", (N1,))
            conn.execute("INSERT INTO shares VALUES (?, '10.0.0.1:7000', 6.0)", (A,))
    finally:
        conn.close()

    with Repo.open(path) as repo:
        assert repo._conn is not None
        assert repo._conn.pragma("user_version") == LATEST
        assert repo.owner() is None  # recorded by the data dir's first open (datadir.py), not by migration
        assert repo.list_files() == [FileRow(b"a\x00b", A, 10, 2.0), FileRow(b"c", A, 10, 3.0)]
        assert repo.get_object(A) == ObjectRow(A, 10, 65536, 1, 2, 1.0)
        assert repo.get_key(A) == (b"\x00\xff", "aes-256-gcm")
        assert repo.list_peers() == [PeerRow("10.0.0.1:7000", N1, 5.0, "up")]
        assert repo.list_shares() == [ShareRow(A, "10.0.0.1:7000", 6.0)]
        strict = repo._conn.execute("SELECT strict FROM pragma_table_list WHERE name = 'tombstones'")
        assert strict.fetchall() == [(1,)]
        assert repo.list_tombstones() == []
        assert repo.add_tombstone(b"gone", B, 7.0, N1, 8.0) is True
        # the old rows still work with the new code: the refcounts remove_file keeps are the v1 ones
        assert repo.remove_file(b"c") == (A, False)
        assert refcount(repo, A) == 1

    with Repo.open(path) as repo:  # reopening at the latest version runs no step again
        assert repo._conn is not None
        assert repo._conn.pragma("user_version") == LATEST
        assert repo.list_tombstones() == [TombstoneRow(b"gone", B, 7.0, N1, 8.0)]


def test_expiry_uses_the_deleted_at_index(repo: Repo) -> None:
    assert repo._conn is not None
    plan = repo._conn.execute("EXPLAIN QUERY PLAN DELETE FROM tombstones WHERE deleted_at < ?", (1.0,))
    details = " ".join(str(row[3]) for row in plan)
    assert "USING INDEX tombstones_deleted_at" in details


# -- rows --------------------------------------------------------------------------------------------


def test_tombstone_row_is_frozen_and_slotted() -> None:
    row = TombstoneRow(b"k", A, 1.0, N1, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.cid = B  # type: ignore[misc]
    assert not hasattr(row, "__dict__")
    assert [f.name for f in dataclasses.fields(row)] == ["key", "cid", "deleted_at", "origin", "recorded_at"]


# -- add_tombstone: newer wins -----------------------------------------------------------------------


def test_first_tombstone_is_stored(repo: Repo) -> None:
    assert repo.get_tombstone(b"k") is None
    assert repo.add_tombstone(b"k", A, 10.0, N1, 11.0) is True
    assert repo.get_tombstone(b"k") == TombstoneRow(b"k", A, 10.0, N1, 11.0)
    assert repo.get_tombstone(b"k\x00") is None  # keys compare byte for byte


def test_newer_replaces_older(repo: Repo) -> None:
    assert repo.add_tombstone(b"k", A, 10.0, N1, 11.0) is True
    assert repo.add_tombstone(b"k", B, 20.0, N2, 21.0) is True
    assert repo.get_tombstone(b"k") == TombstoneRow(b"k", B, 20.0, N2, 21.0)
    assert repo.list_tombstones() == [TombstoneRow(b"k", B, 20.0, N2, 21.0)]


def test_older_never_replaces_newer(repo: Repo) -> None:
    assert repo.add_tombstone(b"k", B, 20.0, N2, 21.0) is True
    assert repo.add_tombstone(b"k", A, 10.0, N1, 30.0) is False
    assert repo.get_tombstone(b"k") == TombstoneRow(b"k", B, 20.0, N2, 21.0)


def test_same_tombstone_again_changes_nothing(repo: Repo) -> None:
    assert repo.add_tombstone(b"k", A, 10.0, N1, 11.0) is True
    # heard again later from another peer: the first recording time stays
    assert repo.add_tombstone(b"k", A, 10.0, N1, 50.0) is False
    assert repo.get_tombstone(b"k") == TombstoneRow(b"k", A, 10.0, N1, 11.0)


@pytest.mark.parametrize(
    ("first", "second", "replaced"),
    [((A, N1), (B, N2), True), ((B, N2), (A, N1), False)],
)
def test_tie_in_time_settles_the_same_in_either_order(
    repo: Repo, first: tuple[str, str], second: tuple[str, str], replaced: bool
) -> None:
    assert repo.add_tombstone(b"k", first[0], 10.0, first[1], 11.0) is True
    assert repo.add_tombstone(b"k", second[0], 10.0, second[1], 12.0) is replaced
    # the greater origin wins whichever arrives first, so every node keeps the same tombstone
    assert repo.get_tombstone(b"k") == TombstoneRow(b"k", B, 10.0, N2, 12.0 if replaced else 11.0)


def test_tombstones_are_per_key(repo: Repo) -> None:
    assert repo.add_tombstone(b"a", A, 10.0, N1, 11.0) is True
    assert repo.add_tombstone(b"b", A, 5.0, N1, 11.0) is True  # older, but another key
    assert repo.get_tombstone(b"a") == TombstoneRow(b"a", A, 10.0, N1, 11.0)
    assert repo.get_tombstone(b"b") == TombstoneRow(b"b", A, 5.0, N1, 11.0)


# -- list / expire -----------------------------------------------------------------------------------


def test_list_is_ordered_by_deleted_at(repo: Repo) -> None:
    repo.add_tombstone(b"a", A, 30.0, N1, 1.0)
    repo.add_tombstone(b"b", A, 10.0, N1, 2.0)
    repo.add_tombstone(b"c", B, 20.0, N2, 3.0)
    repo.add_tombstone(b"d", B, 10.0, N2, 4.0)
    assert [(t.key, t.deleted_at) for t in repo.list_tombstones()] == [
        (b"b", 10.0),
        (b"d", 10.0),
        (b"c", 20.0),
        (b"a", 30.0),
    ]


def test_expire_deletes_strictly_before_cutoff(repo: Repo) -> None:
    for i, at in enumerate((1.0, 2.0, 3.0)):
        repo.add_tombstone(b"k%d" % i, A, at, N1, 100.0)
    assert repo.expire_tombstones(2.0) == 1
    assert [t.deleted_at for t in repo.list_tombstones()] == [2.0, 3.0]
    assert repo.get_tombstone(b"k0") is None
    assert repo.expire_tombstones(2.0) == 0
    assert repo.expire_tombstones(10.0) == 2
    assert repo.list_tombstones() == []
    assert repo.expire_tombstones(10.0) == 0


def test_expired_tombstone_no_longer_blocks_and_can_come_back(repo: Repo) -> None:
    repo.add_tombstone(b"k", A, 5.0, N1, 6.0)
    assert repo.expire_tombstones(6.0) == 1
    assert repo.get_tombstone(b"k") is None
    assert repo.add_tombstone(b"k", A, 5.0, N1, 7.0) is True  # news again after expiry


# -- delete_file_with_tombstone ----------------------------------------------------------------------


def test_delete_removes_file_and_reports_orphan(repo: Repo) -> None:
    add_new(repo, b"a", A)
    repo.add_share(A, "10.0.0.1:7000", 2.0)
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 11.0) == (A, True, True)
    assert repo.get_file(b"a") is None
    assert repo.get_object(A) is None
    assert repo.get_key(A) is None
    assert repo.shares_for(A) == []
    assert repo.get_tombstone(b"a") == TombstoneRow(b"a", A, 10.0, N1, 11.0)
    assert repo.stats() == {"files": 0, "objects": 0, "bytes": 0}


def test_delete_keeps_object_still_referenced(repo: Repo) -> None:
    add_new(repo, b"a", A)
    repo.add_file(b"b", A, 10, 1.0)
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 11.0) == (A, False, True)
    assert repo.get_file(b"a") is None
    assert repo.get_file(b"b") == FileRow(b"b", A, 10, 1.0)
    assert refcount(repo, A) == 1
    assert repo.get_key(A) is not None


def test_delete_leaves_a_file_with_other_content(repo: Repo) -> None:
    add_new(repo, b"a", B, now=12.0)  # stored again with new content after the delete was issued
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 13.0) == (None, False, True)
    assert repo.get_file(b"a") == FileRow(b"a", B, 10, 12.0)
    assert refcount(repo, B) == 1
    assert repo.get_tombstone(b"a") == TombstoneRow(b"a", A, 10.0, N1, 13.0)


def test_delete_leaves_the_same_content_stored_again_after_it(repo: Repo) -> None:
    add_new(repo, b"a", A, now=12.0)  # a re-store of the same content after the delete was issued
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 13.0) == (None, False, True)
    assert repo.get_file(b"a") == FileRow(b"a", A, 10, 12.0)
    assert refcount(repo, A) == 1
    # the same delete heard again is no news
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 14.0) == (None, False, False)


def test_delete_of_missing_file_records_tombstone(repo: Repo) -> None:
    assert repo.delete_file_with_tombstone(b"never", A, 10.0, N1, 11.0) == (None, False, True)
    assert repo.get_tombstone(b"never") == TombstoneRow(b"never", A, 10.0, N1, 11.0)
    assert repo.list_files() == []


def test_delete_with_an_older_tombstone_still_drops_the_named_content(repo: Repo) -> None:
    add_new(repo, b"a", A)
    repo.add_tombstone(b"a", B, 20.0, N2, 21.0)
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 22.0) == (A, True, False)
    assert repo.get_file(b"a") is None
    assert repo.get_tombstone(b"a") == TombstoneRow(b"a", B, 20.0, N2, 21.0)  # the newer one stays


def test_delete_is_one_transaction(repo: Repo) -> None:
    """The file row goes first and the tombstone insert then fails its CHECK: the whole delete, object
    rows included, is rolled back."""
    add_new(repo, b"a", A)
    repo.add_share(A, "10.0.0.1:7000", 2.0)
    with pytest.raises(InternalError, match="CHECK constraint failed"):
        repo.delete_file_with_tombstone(b"a", A, 10.0, "not-a-node-id", 11.0)
    assert repo.get_file(b"a") == FileRow(b"a", A, 10, 1.0)
    assert repo.get_object(A) == ObjectRow(A, 10, 65536, 1, 1, 1.0)
    assert repo.get_key(A) == (b"wrapped-" + A.encode(), "aes-256-gcm")
    assert repo.shares_for(A) == [ShareRow(A, "10.0.0.1:7000", 2.0)]
    assert repo.get_tombstone(b"a") is None
    assert repo.delete_file_with_tombstone(b"a", A, 10.0, N1, 11.0) == (
        A,
        True,
        True,
    )  # nothing left half-done


# -- invalid input -----------------------------------------------------------------------------------

BAD_CIDS = [
    "b3:" + "A" * 64,  # upper-case hex
    "b3:" + "a" * 63,
    "b3:" + "a" * 65,
    "B3:" + "a" * 64,
    "b3:" + "a" * 63 + "g",
    "b3:" + "a" * 63 + "\u00e9",
    "b3:" + "a" * 63 + "\n",
    "",
]
BAD_ORIGINS = ["1" * 63, "1" * 65, "F" * 64, "1" * 63 + "\u00e9", "1" * 63 + " ", ""]


@pytest.mark.parametrize("cid", BAD_CIDS)
def test_bad_cid_is_refused(repo: Repo, cid: str) -> None:
    with pytest.raises(InternalError, match="CHECK constraint failed"):
        repo.add_tombstone(b"k", cid, 10.0, N1, 11.0)
    assert repo.get_tombstone(b"k") is None
    add_new(repo, b"f", A)
    with pytest.raises(InternalError, match="CHECK constraint failed"):
        repo.delete_file_with_tombstone(b"f", cid, 10.0, N1, 11.0)
    assert repo.list_tombstones() == []
    assert repo.get_file(b"f") == FileRow(b"f", A, 10, 1.0)


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_bad_origin_is_refused(repo: Repo, origin: str) -> None:
    with pytest.raises(InternalError, match="CHECK constraint failed"):
        repo.add_tombstone(b"k", A, 10.0, origin, 11.0)
    assert repo.list_tombstones() == []


def test_bad_input_is_refused_even_when_it_would_lose(repo: Repo) -> None:
    # the CHECK runs on the offered row before the newer-wins comparison, so an old malformed delete is
    # an error rather than silently dropped
    repo.add_tombstone(b"k", A, 10.0, N1, 11.0)
    with pytest.raises(InternalError):
        repo.add_tombstone(b"k", "b3:bad", 1.0, N1, 11.0)
    with pytest.raises(InternalError):
        repo.add_tombstone(b"k", A, 1.0, "bad", 11.0)
    assert repo.get_tombstone(b"k") == TombstoneRow(b"k", A, 10.0, N1, 11.0)


def test_wrong_types_are_bugs(repo: Repo) -> None:
    with pytest.raises(InternalError):
        repo.add_tombstone("k", A, 10.0, N1, 11.0)  # type: ignore[arg-type]
    with pytest.raises(InternalError):
        repo.add_tombstone(b"k", A, "yesterday", N1, 11.0)  # type: ignore[arg-type]
    with pytest.raises(InternalError):
        repo.add_tombstone(b"k", A, float("nan"), N1, 11.0)  # SQLite stores NaN as NULL
    assert repo.list_tombstones() == []


def test_raw_constraint_is_what_refuses(tmp_path: Path) -> None:
    # the rule lives in the table, so a write that bypasses Repo is held to it as well
    with Repo.open(tmp_path / "p2p.db") as repo:
        assert repo._conn is not None
        with pytest.raises(apsw.ConstraintError):
            repo._conn.execute("INSERT INTO tombstones VALUES (x'00', 'b3:00', 1.0, ?, 1.0)", (N1,))


# -- origin (migration 3) and the under-replicated count ---------------------------------------------


def test_origin_and_under_replicated(tmp_path: Path) -> None:
    with Repo.open(tmp_path / "p2p.db") as repo:
        now = 1.0
        repo.add_file(b"mine", A, 10, now, obj(A), b"w", "aes-256-gcm")
        repo.add_file(b"theirs", B, 10, now, obj(B), b"w", "aes-256-gcm", holders=[N1])
        assert [r.origin for r in repo.list_files()] == [None, N1]
        # B came from N1: its one share is not a shortfall of ours; A has no replica yet
        assert repo.count_under_replicated(1) == 1
        repo.add_shares(A, [N1], now)
        assert repo.count_under_replicated(1) == 0
        assert repo.count_under_replicated(2) == 1
        # a user storing the received key again makes it this node's to replicate
        repo.add_file(b"theirs", B, 10, now + 1)
        assert repo.get_file(b"theirs") == FileRow(b"theirs", B, 10, now + 1, None)
        assert repo.count_under_replicated(1) == 0  # N1, which sent it, holds it
        assert repo.count_under_replicated(2) == 2
        # keys under the prefix asked to skip (the scratch files) are one copy by design
        repo.add_file(b".scratch/part", C, 10, now, obj(C), b"w", "aes-256-gcm")
        assert repo.count_under_replicated(1) == 1
        assert repo.count_under_replicated(1, b".scratch/") == 0
        assert repo.count_under_replicated(1, b".scratch/x") == 1
