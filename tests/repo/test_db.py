"""The connection factory, the schema migrations and the open-time checks, on real SQLite files."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import apsw
import pytest

from p2pfast.errors import InternalError, StorageError
from p2pfast.repo import LATEST, ObjectRow, Repo, db, schema

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

CID = "b3:" + "1" * 64


def obj(cid: str = CID, size: int = 1) -> ObjectRow:
    return ObjectRow(cid=cid, size=size, segment_size=65536, segments=1, refcount=0, created=1.0)


def one_line_storage_error(exc: pytest.ExceptionInfo[StorageError], path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


# -- pragmas ---------------------------------------------------------------------------------------


def assert_pragmas(conn: apsw.Connection, busy: int = 5000) -> None:
    assert conn.pragma("journal_mode") == "wal"
    assert conn.pragma("synchronous") == 2  # FULL
    assert conn.pragma("busy_timeout") == busy
    assert conn.pragma("foreign_keys") == 1
    assert conn.pragma("wal_autocheckpoint") == 1000
    assert conn.pragma("recursive_triggers") == 1
    assert conn.transaction_mode == "IMMEDIATE"


def test_open_db_sets_pragmas(tmp_path: Path) -> None:
    conn = db.open_db(tmp_path / "p2p.db")
    try:
        assert_pragmas(conn)
        # double-quoted strings are identifiers only (apsw connection_dqs)
        with pytest.raises(apsw.SQLError):
            conn.execute('SELECT "no such column"').fetchall()
    finally:
        conn.close()


def test_repo_pragmas_and_version(tmp_path: Path) -> None:
    with Repo.open(tmp_path / "p2p.db") as repo:
        assert repo._conn is not None
        assert_pragmas(repo._conn)
        assert repo._conn.pragma("user_version") == LATEST


def test_busy_timeout_keyword(tmp_path: Path) -> None:
    with Repo.open(tmp_path / "p2p.db", busy_timeout_ms=250) as repo:
        assert repo._conn is not None
        assert repo._conn.pragma("busy_timeout") == 250


def test_open_db_readonly(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    with Repo.open(path) as repo:
        repo.add_file(b"k", CID, 1, 1.0, obj(), b"w", "a")
    ro = db.open_db(path, readonly=True)
    try:
        assert ro.execute("SELECT count(*) FROM files").fetchall() == [(1,)]
        with pytest.raises(apsw.ReadOnlyError):
            ro.execute("DELETE FROM files")
    finally:
        ro.close()


def test_readonly_missing_file_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(StorageError) as exc:
        db.open_db(path, readonly=True)
    one_line_storage_error(exc, path)
    assert not path.exists()


def test_missing_directory_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "p2p.db"
    with pytest.raises(StorageError) as exc:
        Repo.open(path)
    one_line_storage_error(exc, path)


# -- migrations ------------------------------------------------------------------------------------


def tables(conn: apsw.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()


def schema_sql(conn: apsw.Connection) -> list[tuple[Any, ...]]:
    # sqlite_stat1 may appear after `PRAGMA optimize` at close: SQLite's own, not part of our schema
    return conn.execute(
        "SELECT sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()


def test_migrate_from_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    path.write_bytes(b"")  # an empty file is an empty database
    with Repo.open(path) as repo:
        assert repo._conn is not None
        assert tables(repo._conn) == [
            ("index", "files_cid"),
            ("index", "keymeta_recorded_at"),
            ("index", "peers_last_seen"),
            ("index", "tombstones_deleted_at"),
            ("table", "files"),
            ("table", "key_rotations"),
            ("table", "keymeta"),
            ("table", "keys"),
            ("table", "objects"),
            ("table", "owner"),
            ("table", "peers"),
            ("table", "revocations"),
            ("table", "shares"),
            ("table", "tombstones"),
        ]
        strict = repo._conn.execute("SELECT name FROM pragma_table_list WHERE strict = 1 ORDER BY name")
        want = [
            "files",
            "key_rotations",
            "keymeta",
            "keys",
            "objects",
            "owner",
            "peers",
            "revocations",
            "shares",
            "tombstones",
        ]
        assert [r[0] for r in strict] == want


def test_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    with Repo.open(path) as repo:
        repo.add_file(b"k", CID, 1, 1.0, obj(), b"w", "a")
        assert repo._conn is not None
        before = schema_sql(repo._conn)
    for _ in range(2):
        with Repo.open(path) as repo:
            assert repo._conn is not None
            assert repo._conn.pragma("user_version") == LATEST
            assert schema_sql(repo._conn) == before
            assert [f.key for f in repo.list_files()] == [b"k"]


def test_migrate_steps_one_transaction_each(tmp_path: Path) -> None:
    conn = db.open_db(tmp_path / "p2p.db")
    try:
        steps = (*schema.MIGRATIONS, "CREATE TABLE extra (x INTEGER) STRICT;")
        assert schema.migrate(conn, steps) == LATEST + 1
        assert conn.pragma("user_version") == LATEST + 1
        assert conn.table_exists(None, "extra")
        # a failing step rolls back entirely, version included
        bad = (*steps, "CREATE TABLE half (x INTEGER) STRICT; CREATE TABLE objects (y INTEGER);")
        with pytest.raises(apsw.SQLError):
            schema.migrate(conn, bad)
        assert conn.pragma("user_version") == LATEST + 1
        assert not conn.table_exists(None, "half")
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    raw = apsw.Connection(str(path))
    raw.pragma("user_version", LATEST + 5)
    raw.close()
    with pytest.raises(StorageError) as exc:
        Repo.open(path)
    msg = one_line_storage_error(exc, path)
    assert f"repo schema version {LATEST + 5} is newer than this p2pfast supports ({LATEST})" in msg
    raw = apsw.Connection(str(path))
    assert raw.pragma("user_version") == LATEST + 5  # untouched
    raw.close()


# -- damaged files ---------------------------------------------------------------------------------


def test_garbage_file_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    path.write_bytes(random.Random(7).randbytes(3 * 4096))
    with pytest.raises(StorageError) as exc:
        Repo.open(path)
    msg = one_line_storage_error(exc, path)
    assert "not a database" in msg
    assert isinstance(exc.value.__cause__, apsw.NotADBError)


def test_text_file_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    path.write_text("this is not\na database\n" * 100)
    with pytest.raises(StorageError) as exc:
        db.open_db(path)
    one_line_storage_error(exc, path)


def test_corrupt_page_fails_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    with Repo.open(path) as repo:
        repo.add_file(b"k", CID, 1, 1.0, obj(), b"w", "a")
        for i in range(1500):
            repo.add_file(b"k%05d" % i + b"x" * 100, CID, 1, 1.0)
    assert db.wal_size(path) == 0  # all pages are in the main file
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    for page in range(pages // 2, pages):
        off = page * page_size
        if data[off] in (0x02, 0x05, 0x0A, 0x0D):  # a b-tree page (interior/leaf, index/table)
            data[off + 8 : off + 40] = b"\xff" * 32  # its cell pointer array now points past the page
            break
    else:
        pytest.fail("no b-tree page found in the second half of the file")
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError) as exc:
        Repo.open(path)
    msg = one_line_storage_error(exc, path)
    assert "quick_check" in msg


# -- error translation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected", "text"),
    [
        (apsw.BusyError("database is locked"), StorageError, "repo is busy: database is locked"),
        (apsw.LockedError("table locked"), StorageError, "repo is busy"),
        (apsw.CorruptError("database disk image is malformed"), StorageError, "malformed"),
        (apsw.NotADBError("file is not a database"), StorageError, "not a database"),
        (apsw.IOError("disk I/O error"), StorageError, "disk I/O error"),
        (apsw.ConstraintError("CHECK constraint failed"), InternalError, "CHECK constraint failed"),
        (apsw.SQLError("near x: syntax error"), InternalError, "syntax error"),
    ],
)
def test_translate(exc: apsw.Error, expected: type[Exception], text: str) -> None:
    out = db.translate(exc, "/x/p2p.db")
    assert type(out) is expected
    assert text in str(out)
    assert "/x/p2p.db" in str(out)
    assert "\n" not in str(out)


def test_translate_full_is_disk_full() -> None:
    from p2pfast.errors import DiskFull

    out = db.translate(apsw.FullError("database or disk is full\nsecond line"))
    assert isinstance(out, DiskFull)
    assert "\n" not in str(out)


# -- checkpoints and WAL ---------------------------------------------------------------------------


def test_checkpoint_helpers(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    assert db.wal_size(path) == 0
    conn = db.open_db(path)
    try:
        with conn:
            conn.execute("CREATE TABLE t (x INTEGER) STRICT")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        assert db.wal_size(path) > 0
        db.checkpoint(conn)  # TRUNCATE by default
        assert db.wal_size(path) == 0
        db.checkpoint(conn, "passive")
        with pytest.raises(InternalError):
            db.checkpoint(conn, "SOMETIMES")
    finally:
        conn.close()


def test_second_connection_in_thread_sees_commits(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    with Repo.open(path) as repo:
        repo.add_file(b"k", CID, 1, 1.0, obj(), b"w", "a")
        assert repo.wal_size() > 0  # the row is only in the WAL so far
        seen: list[object] = []

        def read() -> None:
            ro = db.open_db(path, readonly=True)
            try:
                seen.extend(ro.execute("SELECT key, cid FROM files").fetchall())
            finally:
                ro.close()

        t = threading.Thread(target=read)
        t.start()
        t.join(10)
        assert seen == [(b"k", CID)]


def test_no_global_apsw_hooks(tmp_path: Path) -> None:
    # the factory applies best practices per connection, never through bestpractice.apply()
    before = list(apsw.connection_hooks)
    db.open_db(tmp_path / "p2p.db").close()
    assert apsw.connection_hooks == before
    assert not any("best_practise" in getattr(h, "__name__", "") for h in apsw.connection_hooks)


def test_revocations_and_rotations_are_kept(tmp_path: Path) -> None:
    a, b, signer, sig = "ab" * 32, "cd" * 32, "ef" * 32, "01" * 64
    with Repo.open(tmp_path / "p2p.db") as repo:
        assert repo.list_revocations() == [] and repo.last_key_rotation() is None
        assert repo.add_revocation(a, b, 5.0, signer, sig, 6.0)
        assert not repo.add_revocation(a, a, 7.0, signer, sig, 8.0)  # the first record stays
        repo.add_key_rotation(1, 100.0, b, 40.0)
        repo.add_key_rotation(2, 200.0, a, 50.0)
    with Repo.open(tmp_path / "p2p.db") as repo:
        assert repo.list_revocations() == [(a, b, 5.0, signer, sig)]
        assert repo.last_key_rotation() == (2, 200.0, a, 50.0)
        with pytest.raises(InternalError):  # CHECKed: a node id is 64 characters (a bug of the caller)
            repo.add_revocation("ab", b, 5.0, signer, sig, 6.0)
