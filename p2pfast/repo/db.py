"""The one SQLite connection factory of the node, and its WAL checkpoint helpers.

Every connection to the node's ``p2p.db`` is made by :func:`open_db`, which sets (reasons in
``docs/schema.md``):

* apsw's per-connection best practices, called one by one (never the global
  ``apsw.bestpractice.apply()``, which would hook every connection in the process, including ones this
  module does not own): WAL, foreign keys, no double-quoted string literals, recursive triggers, the
  query planner's ``optimize`` on open;
* ``busy_timeout`` 5000 ms (apsw's best practice sets 100 ms, too short for a writer that fsyncs);
* ``journal_mode=WAL``, checked: readers never block the writer nor the writer the readers;
* ``synchronous=FULL``: in WAL mode ``NORMAL`` syncs the WAL only at checkpoints, so the last commits can
  be lost on power loss. The node acknowledges a store only after its row is committed, so a commit must
  be durable: ``FULL`` fsyncs the WAL at every commit;
* ``wal_autocheckpoint(1000)`` pages, stated explicitly rather than inherited from the build;
* ``transaction_mode = "IMMEDIATE"``: ``with conn:`` then starts with ``BEGIN IMMEDIATE``, so a writer
  takes the write lock up front (waiting up to the busy timeout) instead of failing with ``SQLITE_BUSY``
  when a read transaction upgrades to a write. The repo's own writes go through :func:`transaction`,
  which issues the same ``BEGIN IMMEDIATE`` without holding the GIL while it waits;
* ``PRAGMA quick_check`` at open: anything but ``ok`` is a :class:`StorageError` naming the file.

apsw exceptions never leave this package: :func:`translate` maps them onto ``p2pfast.errors``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import apsw
import apsw.bestpractice

from p2pfast.errors import DiskFull, InternalError, P2PError, StorageError

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another connection's lock before failing (apsw's default is 100 ms)."""

WAL_AUTOCHECKPOINT_PAGES = 1000
"""Commit-time PASSIVE checkpoint once the WAL holds this many pages (SQLite's default, set explicitly)."""

CHECKPOINT_MODES: dict[str, int] = {
    "PASSIVE": apsw.SQLITE_CHECKPOINT_PASSIVE,
    "FULL": apsw.SQLITE_CHECKPOINT_FULL,
    "RESTART": apsw.SQLITE_CHECKPOINT_RESTART,
    "TRUNCATE": apsw.SQLITE_CHECKPOINT_TRUNCATE,
}

# apsw errors that mean our code (SQL text, bindings, use after close) is wrong, not the disk.
_BUG_ERRORS: tuple[type[apsw.Error], ...] = (
    apsw.ConstraintError,
    apsw.SQLError,
    apsw.MisuseError,
    apsw.BindingsError,
    apsw.ConnectionClosedError,
    apsw.CursorClosedError,
    apsw.MismatchError,
    apsw.RangeError,
    apsw.ThreadingViolationError,
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def translate(exc: apsw.Error, path: str | os.PathLike[str] | None = None) -> P2PError:
    """Map an apsw exception onto the p2pfast tree, with a one-line message naming the file.

    Busy/locked -> StorageError("repo is busy: ..."); full -> DiskFull; corrupt, not a database, I/O,
    cannot open, read-only, permissions -> StorageError; constraint violations, SQL errors and misuse
    (bugs) -> InternalError. Use as ``raise translate(exc, path) from exc``.
    """
    where = f" ({os.fspath(path)})" if path is not None else ""
    detail = _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
        return StorageError(f"repo is busy: {detail}{where}")
    if isinstance(exc, apsw.FullError):
        return DiskFull(f"{detail}{where}")
    if isinstance(exc, _BUG_ERRORS):
        return InternalError(f"{type(exc).__name__}: {detail}{where}")
    return StorageError(f"{detail}{where}")


@contextlib.contextmanager
def sql_errors(path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Context manager: any ``apsw.Error`` raised inside leaves as :func:`translate`'s exception."""
    try:
        yield
    except apsw.Error as exc:
        raise translate(exc, path) from exc


@contextlib.contextmanager
def transaction(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: commit when the block ends, roll back on any exception.

    Equivalent to ``with conn:`` under ``transaction_mode = "IMMEDIATE"``, but issued through
    ``conn.execute``, which releases the GIL while SQLite waits on the busy handler and fsyncs the commit.
    apsw 3.54's ``Connection.__enter__`` runs its ``BEGIN`` holding the GIL: a writer waiting up to the busy
    timeout for another process's lock froze every Python thread of the node, event loop included (see
    ``tests/repo/test_repo.py::test_busy_wait_releases_the_gil``). Not nestable (SQLite has no nested
    BEGIN); apsw errors propagate untranslated.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: apsw.Connection) -> None:
    # A failed ROLLBACK (the transaction already ended) must not hide the error being raised.
    if not conn.get_autocommit():
        with contextlib.suppress(apsw.Error):
            conn.execute("ROLLBACK")


def open_db(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> apsw.Connection:
    """Open (creating it if missing, unless ``readonly``) the SQLite file at ``path``, configured.

    Raises :class:`StorageError` (never a raw apsw exception) if the file cannot be opened, is not a
    database, or fails ``PRAGMA quick_check``; the message is one line naming the file.
    """
    name = os.fspath(path)
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(name, flags=flags)
    except apsw.Error as exc:
        raise translate(exc, name) from exc
    try:
        _configure(conn, name, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, apsw.Error):
            raise translate(exc, name) from exc
        raise
    return conn


def _configure(conn: apsw.Connection, name: str, *, readonly: bool, busy_timeout_ms: int) -> None:
    # The busy timeout goes first: switching to WAL and the checks below may wait on another process.
    apsw.bestpractice.connection_busy_timeout(conn, busy_timeout_ms)
    conn.set_busy_timeout(busy_timeout_ms)  # explicit: the best-practice default would be 100 ms
    apsw.bestpractice.connection_enable_foreign_keys(conn)
    apsw.bestpractice.connection_dqs(conn)
    apsw.bestpractice.connection_recursive_triggers(conn)
    if not readonly:
        apsw.bestpractice.connection_wal(conn)
        mode = conn.pragma("journal_mode", "WAL")
        if str(mode).lower() != "wal":
            raise StorageError(f"{name}: cannot use WAL journal mode (got {mode!r})")
        # FULL, not NORMAL: in WAL mode NORMAL fsyncs only at checkpoints, so the last commits may be lost
        # on power loss. A store is acknowledged only after its row is committed, so every commit must be
        # durable: FULL fsyncs the WAL at each commit.
        conn.pragma("synchronous", "FULL")
        conn.wal_autocheckpoint(WAL_AUTOCHECKPOINT_PAGES)
        # BEGIN IMMEDIATE for `with conn:` so that writers take the write lock first and never deadlock
        # (SQLITE_BUSY without waiting) upgrading a read transaction to a write.
        conn.transaction_mode = "IMMEDIATE"
    conn.pragma("foreign_keys", "ON")
    if conn.pragma("foreign_keys") != 1:
        raise StorageError(f"{name}: this SQLite cannot enforce foreign keys")
    first = conn.execute("PRAGMA quick_check(1)").fetchall()
    problem = _one_line(str(first[0][0])) if first else "no result"
    if problem != "ok":
        raise StorageError(f"{name}: quick_check failed: {problem}")
    if not readonly:
        # After quick_check: optimize may read statistics tables, which must be sound first.
        apsw.bestpractice.connection_optimize(conn)


def checkpoint(conn: apsw.Connection, mode: str = "TRUNCATE") -> tuple[int, int]:
    """Checkpoint the WAL into the database file; TRUNCATE also empties the -wal file.

    Returns SQLite's (WAL frames, frames checkpointed). Raises StorageError("repo is busy: ...") when a
    blocking mode cannot finish within the busy timeout (another connection holds a read snapshot).
    """
    try:
        code = CHECKPOINT_MODES[mode.upper()]
    except KeyError:
        raise InternalError(f"unknown checkpoint mode {mode!r}") from None
    with sql_errors(conn.filename or None):
        return conn.wal_checkpoint(mode=code)


def wal_path(path: str | os.PathLike[str]) -> Path:
    """The WAL file beside the database at ``path``."""
    return Path(os.fspath(path) + "-wal")


def wal_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes of the database's -wal file, 0 if there is none."""
    try:
        return wal_path(path).stat().st_size
    except FileNotFoundError:
        return 0
