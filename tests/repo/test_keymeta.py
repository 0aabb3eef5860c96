"""The keymeta table (schema step 6) on real SQLite files: an old repo upgrades with its rows kept, the
newer store wins whatever order entries arrive in, the same content takes the latest holders, a
tombstone beats what it is no older than (removing it, refusing it later, hiding it), and expiry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pfast.repo import LATEST, FileRow, KeyMetaRow, PeerRow, Repo, db, schema

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

A, B = f"b3:{0xA:064x}", f"b3:{0xB:064x}"
N1, N2, N3 = "1" * 64, "2" * 64, "3" * 64


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    with Repo.open(tmp_path / "p2p.db") as r:
        yield r


def test_a_version_5_repo_upgrades_to_6_with_its_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    conn = db.open_db(path)
    try:
        assert schema.migrate(conn, schema.MIGRATIONS[:5]) == 5
        assert not conn.table_exists(None, "keymeta")
        with conn:
            conn.execute("INSERT INTO objects VALUES (?, 10, 65536, 1, 1, 1.0)", (A,))
            conn.execute("INSERT INTO files VALUES (?, ?, 10, 2.0, NULL)", (b"k", A))
            conn.execute("INSERT INTO peers VALUES ('127.0.0.1:7000', ?, 5.0, 'up', 5.0, NULL)", (N1,))
    finally:
        conn.close()
    with Repo.open(path) as repo:
        assert repo._conn is not None
        assert repo._conn.pragma("user_version") == LATEST >= 6
        assert repo.list_files() == [FileRow(b"k", A, 10, 2.0)]
        assert repo.list_peers() == [PeerRow("127.0.0.1:7000", N1, 5.0, "up", 5.0, None)]
        strict = repo._conn.execute("SELECT strict FROM pragma_table_list WHERE name = 'keymeta'")
        assert strict.fetchall() == [(1,)]
        assert repo.get_keymeta(b"k") is None
        assert repo.put_keymeta([(b"k", A, 10, 2.0, (N1,))], 3.0) == 1
    with Repo.open(path) as repo:  # reopened at the latest version: no step runs again, the row stays
        assert repo.get_keymeta(b"k") == KeyMetaRow(b"k", A, 10, 2.0, (N1,), 3.0)


def test_the_newer_store_wins_in_either_order(tmp_path: Path) -> None:
    old, new = (b"k", A, 10, 5.0, (N1,)), (b"k", B, 20, 6.0, (N2,))
    for i, order in enumerate([(old, new), (new, old)]):
        with Repo.open(tmp_path / f"{i}.db") as repo:
            for entry in order:
                repo.put_keymeta([entry], 9.0)
            assert repo.get_keymeta(b"k") == KeyMetaRow(b"k", B, 20, 6.0, (N2,), 9.0)


def test_the_same_content_keeps_the_later_store_and_takes_the_latest_holders(repo: Repo) -> None:
    assert repo.put_keymeta([(b"k", A, 10, 5.0, (N1, N2))], 7.0) == 1
    # a replica's pass: its own files row is younger; the holders it just counted replace the old
    assert repo.put_keymeta([(b"k", A, 10, 6.0, (N2, N3))], 8.0) == 1
    assert repo.get_keymeta(b"k") == KeyMetaRow(b"k", A, 10, 6.0, (N2, N3), 8.0)
    # the origin again, with its older stored_at: the holders and the recording time refresh, not the age
    assert repo.put_keymeta([(b"k", A, 10, 5.0, (N1,))], 9.0) == 1
    assert repo.get_keymeta(b"k") == KeyMetaRow(b"k", A, 10, 6.0, (N1,), 9.0)
    assert repo.get_keymeta(b"other") is None


def test_a_tombstone_removes_the_metadata_it_is_no_older_than(repo: Repo) -> None:
    repo.put_keymeta([(b"k", A, 10, 5.0, (N1,)), (b"j", A, 10, 5.0, (N1,)), (b"i", A, 10, 7.0, ())], 6.0)
    repo.delete_file_with_tombstone(b"k", A, 5.0, N2, 8.0)  # a delete at the store's time wins
    repo.add_tombstone(b"j", B, 9.0, N2, 9.0)  # of other content: this metadata stays
    repo.add_tombstone(b"i", A, 6.0, N2, 9.0)  # older than the store (a re-store after it): stays
    assert repo.get_keymeta(b"k") is None
    assert repo.get_keymeta(b"j") is not None and repo.get_keymeta(b"i") is not None
    assert repo._conn is not None
    assert repo._conn.execute("SELECT count(*) FROM keymeta").fetchall() == [(2,)]  # the row went


def test_an_entry_a_tombstone_beats_is_never_recorded_and_a_newer_one_is(repo: Repo) -> None:
    repo.add_tombstone(b"k", A, 5.0, N2, 5.0)
    assert repo.put_keymeta([(b"k", A, 10, 4.0, (N1,)), (b"k", A, 10, 5.0, (N1,))], 6.0) == 0
    assert repo.get_keymeta(b"k") is None
    assert repo.put_keymeta([(b"k", A, 10, 5.5, (N1,))], 7.0) == 1  # stored again after the delete
    assert repo.get_keymeta(b"k") == KeyMetaRow(b"k", A, 10, 5.5, (N1,), 7.0)


def test_expiry_forgets_what_nobody_republished(repo: Repo) -> None:
    repo.put_keymeta([(b"old", A, 1, 1.0, ())], 10.0)
    repo.put_keymeta([(b"new", B, 1, 1.0, ())], 20.0)
    assert repo.expire_keymeta(20.0) == 1
    assert repo.get_keymeta(b"old") is None and repo.get_keymeta(b"new") is not None
    plan = repo._conn.execute(  # type: ignore[union-attr]
        "EXPLAIN QUERY PLAN DELETE FROM keymeta WHERE recorded_at < ?", (0.0,)
    ).fetchall()
    assert any("keymeta_recorded_at" in str(row) for row in plan)
