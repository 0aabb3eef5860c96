"""Repo: every query the node makes against its metadata database (tables in schema.py, docs/schema.md).

Threading: a Repo has one owner, the node's DB thread. apsw connections are themselves thread-safe
(calls are serialised on the connection's mutex), but one owner keeps transactions from interleaving and
keeps SQLite off the event loop. Other threads or processes that want to read open their own connection
with :func:`p2pfast.repo.db.open_db` (``readonly=True``); WAL lets them read while the owner writes.

Every write method is one ``BEGIN IMMEDIATE`` transaction (:func:`p2pfast.repo.db.transaction`, which
is ``with conn:`` minus holding the GIL while waiting for the lock), all-or-nothing: an exception inside
rolls everything back. Time is always a parameter (``now``, ``last_seen``, ...), never read from a clock here.
apsw errors are translated (:func:`p2pfast.repo.db.translate`): busy -> StorageError("repo is busy: ..."),
full -> DiskFull, corrupt -> StorageError, constraint violations (a bug) -> InternalError.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import apsw

from p2pfast.errors import ConfigError, InternalError, NotFound, StorageError
from p2pfast.repo import db, schema


@dataclass(frozen=True, slots=True)
class FileRow:
    key: bytes
    cid: str
    size: int
    created: float
    origin: str | None = None  # the node it came from; None when a user stored it here


@dataclass(frozen=True, slots=True)
class ObjectRow:
    cid: str
    size: int
    segment_size: int
    segments: int
    refcount: int
    created: float


@dataclass(frozen=True, slots=True)
class PeerRow:
    address: str
    node_id: str | None
    last_seen: float
    status: str
    verified_at: float | None = None  # when this node last verified the address; None: never
    failed_at: float | None = None  # when a dial there last failed, if after the last verification

    @property
    def verified(self) -> bool:
        """This node verified the address and no dial there failed since: the only kind it gossips."""
        return self.verified_at is not None and self.failed_at is None


@dataclass(frozen=True, slots=True)
class ShareRow:
    cid: str
    peer: str
    acked_at: float


@dataclass(frozen=True, slots=True)
class TombstoneRow:
    key: bytes
    cid: str
    deleted_at: float
    origin: str
    recorded_at: float


@dataclass(frozen=True, slots=True)
class KeyMetaRow:
    """A key's metadata this node keeps for the network (node/keymeta.py)."""

    key: bytes
    cid: str
    size: int
    stored_at: float  # when the key was stored, at the holder that sent it
    holders: tuple[str, ...]  # node ids known to hold the object, best first
    recorded_at: float  # when this node last recorded it (expiry)


class EmptyRepo(ConfigError):
    """config error: {}"""


@dataclass(frozen=True, slots=True)
class OwnerRow:
    node_id: str | None
    master_key_check: bytes
    created: float


_FILE_COLS = "key, cid, size, created, origin"
_OBJECT_COLS = "cid, size, segment_size, segments, refcount, created"
_PEER_COLS = "address, node_id, last_seen, status, verified_at, failed_at"
_SHARE_COLS = "cid, peer, acked_at"
_TOMBSTONE_COLS = "key, cid, deleted_at, origin, recorded_at"
_KEYMETA_COLS = "key, cid, size, stored_at, holders, recorded_at"

_KEY_TEXT_MAX = 200


def key_text(key: bytes) -> str:
    """A one-line, printable rendering of a user key for messages (escaped, truncated)."""
    text = bytes(key).decode("utf-8", errors="backslashreplace")
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= _KEY_TEXT_MAX else out[:_KEY_TEXT_MAX] + "..."


class Repo:
    """The node's metadata repo over one SQLite file. Open with :meth:`Repo.open`; one owning thread."""

    __slots__ = ("_conn", "_readonly", "path")

    def __init__(self, conn: apsw.Connection, path: Path) -> None:
        self._readonly = False
        self._conn: apsw.Connection | None = conn
        self.path = path

    # -- life cycle -------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = db.BUSY_TIMEOUT_MS,
        readonly: bool = False,
        create: bool = True,
    ) -> Repo:
        """Open the repo at ``path``, creating the file if missing; quick_check, then migrate to LATEST.

        ``create=False`` refuses (:class:`EmptyRepo`) a database with no schema yet (a 0-byte file, or one
        SQLite just made) instead of creating one in it: only ``init`` makes a repo, since an empty repo
        over existing objects would disown them. A database with tables that are not a p2pfast schema is
        always refused (ConfigError).

        ``readonly`` opens an existing repo for reading beside a running node: no migration, and no
        optimize or checkpoint at close, so a reader never takes the write lock the node needs.
        Raises StorageError if the file is not a sound database or its schema is not this code's.
        """
        p = Path(os.fspath(path))
        conn = db.open_db(p, busy_timeout_ms=busy_timeout_ms, readonly=readonly)
        try:
            with db.sql_errors(p):
                schema.refuse_foreign(conn)
                version = schema.user_version(conn)
                if version == 0 and (readonly or not create):
                    raise EmptyRepo(_empty(p))
                if not readonly:
                    schema.migrate(conn)
                elif version != schema.LATEST:
                    raise StorageError(
                        f"repo schema version {version} is not {schema.LATEST}: open it read-write first: {p}"
                    )
        except BaseException:
            conn.close()
            raise
        repo = cls(conn, p)
        repo._readonly = readonly
        return repo

    def close(self) -> None:
        """TRUNCATE-checkpoint the WAL, then close. Idempotent.

        The connection is closed even when the checkpoint cannot finish (another reader holds an old
        snapshot); the committed data is safe in the WAL either way.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._readonly:
            with db.sql_errors(self.path):
                conn.close()
            return
        try:
            with contextlib.suppress(apsw.Error):
                # refresh planner statistics if needed (apsw best practice); may write, so before the
                # checkpoint
                conn.pragma("optimize")
            try:
                db.checkpoint(conn, "TRUNCATE")
            except StorageError as exc:
                if not _busy(exc):  # a reader blocked it: harmless, anything else is reported
                    raise
        finally:
            with db.sql_errors(self.path):
                conn.close()

    def checkpoint(self) -> bool:
        """TRUNCATE checkpoint, for when the node is idle. False if readers kept it from finishing."""
        conn = self._live()
        try:
            db.checkpoint(conn, "TRUNCATE")
        except StorageError as exc:
            if not _busy(exc):
                raise
            return False
        return True

    def wal_size(self) -> int:
        return db.wal_size(self.path)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> Repo:
        return self

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Repo {str(self.path)!r}{' closed' if self._conn is None else ''}>"

    # -- plumbing -----------------------------------------------------------------------------------------

    def _live(self) -> apsw.Connection:
        if self._conn is None:
            raise InternalError(f"repo is closed: {self.path}")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[apsw.Connection]:
        """One BEGIN IMMEDIATE transaction; commit on success, roll back on any exception."""
        conn = self._live()
        with db.sql_errors(self.path), db.transaction(conn):
            yield conn

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._live()
        with db.sql_errors(self.path):
            return conn.execute(sql, params).fetchall()

    # -- reads --------------------------------------------------------------------------------------------

    def get_file(self, key: bytes) -> FileRow | None:
        rows = self._rows(f"SELECT {_FILE_COLS} FROM files WHERE key = ?", (key,))
        return FileRow(*rows[0]) if rows else None

    def list_files(self) -> list[FileRow]:
        """All files, ordered by key bytes (memcmp order)."""
        return [FileRow(*r) for r in self._rows(f"SELECT {_FILE_COLS} FROM files ORDER BY key")]

    def list_files_after(self, after: bytes | None, limit: int) -> list[FileRow]:
        """At most `limit` files whose key sorts after `after` (None: from the first), by key bytes: a page
        of a listing that a key cursor walks (a peer's `list_files`)."""
        if after is None:
            rows = self._rows(f"SELECT {_FILE_COLS} FROM files ORDER BY key LIMIT ?", (limit,))
        else:
            rows = self._rows(
                f"SELECT {_FILE_COLS} FROM files WHERE key > ? ORDER BY key LIMIT ?", (after, limit)
            )
        return [FileRow(*r) for r in rows]

    def get_object(self, cid: str) -> ObjectRow | None:
        rows = self._rows(f"SELECT {_OBJECT_COLS} FROM objects WHERE cid = ?", (cid,))
        return ObjectRow(*rows[0]) if rows else None

    def list_objects(self) -> list[ObjectRow]:
        """All objects, ordered by cid."""
        return [ObjectRow(*r) for r in self._rows(f"SELECT {_OBJECT_COLS} FROM objects ORDER BY cid")]

    def stored_bytes(self) -> int:
        """The plaintext bytes of every object here (max_storage's measure)."""
        (row,) = self._rows("SELECT coalesce(sum(size), 0) FROM objects")
        return int(row[0])

    def held_files(self, files: Sequence[tuple[bytes, str]]) -> dict[tuple[bytes, str], bool]:
        """Which of ``files`` (key, cid) are here (the key names that cid), each with whether a user stored
        it here (origin NULL: pinned) rather than it arriving as a copy (a peer's `holds`)."""
        if not files:
            return {}
        marks = ", ".join("?" * len(files))
        rows = self._rows(
            f"SELECT key, cid, origin IS NULL FROM files WHERE key IN ({marks})", tuple(k for k, _ in files)
        )
        asked = set(files)
        return {(bytes(k), c): bool(p) for k, c, p in rows if (bytes(k), c) in asked}

    def get_key(self, cid: str) -> tuple[bytes, str] | None:
        """The object's (wrapped data key, algorithm), or None."""
        rows = self._rows("SELECT wrapped, algorithm FROM keys WHERE cid = ?", (cid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def stats(self) -> dict[str, int]:
        """{"files": count, "objects": count, "bytes": sum of object sizes}, in one snapshot."""
        (row,) = self._rows(
            "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM objects),"
            " (SELECT coalesce(sum(size), 0) FROM objects)"
        )
        return {"files": row[0], "objects": row[1], "bytes": row[2]}

    def count_under_replicated(self, target: int, skip: bytes = b"") -> int:
        """Files stored here by a user (origin NULL) with fewer than ``target`` peers in ``shares``.
        Replicas a node received are not counted: placing copies is the storing node's job; nor are
        keys starting with ``skip`` (the scratch files, one copy by design: store/userkey.py)."""
        (row,) = self._rows(
            "SELECT count(*) FROM files f WHERE f.origin IS NULL"
            " AND (length(?) = 0 OR substr(f.key, 1, length(?)) != ?)"
            " AND (SELECT count(*) FROM shares s WHERE s.cid = f.cid) < ?",
            (skip, skip, skip, target),
        )
        return int(row[0])

    def owner(self) -> OwnerRow | None:
        """Whose repo this is (node id, master key check), or None if it was never recorded."""
        rows = self._rows("SELECT node_id, master_key_check, created FROM owner WHERE id = 1")
        return OwnerRow(*rows[0]) if rows else None

    def any_wrapped_key(self) -> tuple[str, bytes] | None:
        """One (cid, wrapped data key), to check a master key against what it wrapped; None if none."""
        rows = self._rows("SELECT cid, wrapped FROM keys LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else None

    # -- writes -------------------------------------------------------------------------------------------

    def set_owner(self, node_id: str | None, master_key_check: bytes, now: float) -> None:
        """Record whose repo this is; only where none is recorded yet (an owner is never replaced)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO owner (id, node_id, master_key_check, created) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (node_id, master_key_check, now),
            )

    def forget_peers(self) -> int:
        """Delete every peer row (a node that adopts another network cannot reach its old peers)."""
        with self._write() as conn:
            conn.execute("DELETE FROM peers")
            return conn.changes()

    def add_file(
        self,
        key: bytes,
        cid: str,
        size: int,
        now: float,
        new_object: ObjectRow | None = None,
        wrapped_key: bytes | None = None,
        algorithm: str | None = None,
        holders: Sequence[str] = (),
    ) -> str | None:
        """Point ``key`` at ``cid``, in one transaction. Returns a cid whose object became orphaned, or None.

        * The object row exists: its refcount goes up by one (``new_object``/``wrapped_key`` are ignored).
        * It does not: ``new_object`` is inserted with refcount 1, with its key row (``wrapped_key``,
          ``algorithm``, both required); ``new_object`` None raises NotFound(cid) and writes nothing.
        * ``key`` pointed at another cid: that object's refcount goes down; at 0 its object, key and shares
          rows are deleted and its cid returned, so the caller unlinks the file after this commit.
        * ``key`` already pointed at ``cid``: no refcount change, ``size`` and ``created`` updated.
        * ``holders``: peers known to hold ``cid`` too, recorded in ``shares`` in the same transaction (a
          replica records the node that sent it the object).
        """
        with self._write() as conn:
            # A file with holders came from them (a replica, get --keep): replicating it is not our job.
            origin = holders[0] if holders else None
            orphan = _add_file(conn, key, cid, size, now, new_object, wrapped_key, algorithm, origin)
            if holders:
                conn.executemany(
                    f"INSERT INTO shares ({_SHARE_COLS}) VALUES (?, ?, ?)"
                    " ON CONFLICT (cid, peer) DO UPDATE SET acked_at = excluded.acked_at",
                    [(cid, peer, now) for peer in holders],
                )
            return orphan

    def remove_file(self, key: bytes) -> tuple[str, bool]:
        """Delete ``key``; returns (its cid, orphaned). Orphaned: the object's last reference went, so its
        object, key and shares rows were deleted in the same transaction and the caller unlinks the file.
        A missing key raises NotFound.
        """
        with self._write() as conn:
            removed = _unlink_file(conn, key)
            if removed is None:
                raise NotFound(key_text(key))
            return removed

    def drop_copy(self, key: bytes, cid: str, created: float) -> tuple[str, bool] | None:
        """Drop a surplus copy (node/repair.py): the files row of ``key`` goes only if it still names
        ``cid``, still is a copy received from a peer (origin not NULL: never a user's store here), and
        was not stored again since the caller looked (``created`` unchanged). Returns (cid, orphaned) as
        :meth:`remove_file` does, or None when the row no longer qualifies and stays."""
        with self._write() as conn:
            row = conn.execute("SELECT cid, created, origin FROM files WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] != cid or float(row[1]) != created or row[2] is None:
                return None
            return _unlink_file(conn, key, cid)

    def delete_object_rows(self, cid: str) -> None:
        """For reconcile: drop the object, key and shares rows of ``cid``.

        Raises StorageError if files still reference it; deleting rows that do not exist is a no-op.
        """
        with self._write() as conn:
            n = _scalar(conn, "SELECT count(*) FROM files WHERE cid = ?", (cid,))
            if n:
                raise StorageError(f"object {cid} is still referenced by {n} file(s)")
            _delete_object(conn, cid)

    def replace_object(self, row: ObjectRow, wrapped_key: bytes, algorithm: str) -> None:
        """Re-seat a lost object: its file was written anew under a new data key, so the object's
        size/segment fields and its key row are replaced; refcount and created are kept."""
        with self._write() as conn:
            if _scalar(conn, "SELECT count(*) FROM objects WHERE cid = ?", (row.cid,)) == 0:
                raise NotFound(f"object {row.cid}")
            conn.execute(
                "UPDATE objects SET size = ?, segment_size = ?, segments = ? WHERE cid = ?",
                (row.size, row.segment_size, row.segments, row.cid),
            )
            conn.execute(
                "INSERT OR REPLACE INTO keys (cid, wrapped, algorithm, created) VALUES (?, ?, ?, ?)",
                (row.cid, wrapped_key, algorithm, row.created),
            )

    def fix_refcounts(self) -> list[tuple[str, int, int]]:
        """Set each object's refcount to its number of files rows; returns (cid, old, new) for each change.

        Objects left at 0 keep their rows: the caller decides (delete_object_rows and unlink).
        """
        with self._write() as conn:
            changed = [
                (str(c), int(old), int(new))
                for c, old, new in conn.execute(
                    "SELECT o.cid, o.refcount, count(f.key) AS n FROM objects AS o"
                    " LEFT JOIN files AS f ON f.cid = o.cid"
                    " GROUP BY o.cid HAVING o.refcount != n ORDER BY o.cid"
                )
            ]
            conn.executemany(
                "UPDATE objects SET refcount = ? WHERE cid = ?", [(new, c) for c, _, new in changed]
            )
            return changed

    # -- tombstones ---------------------------------------------------------------------------------------
    #
    # A tombstone says "key was deleted at deleted_at by origin, and named cid then". One per key; of two
    # for the same key the one with the greater (deleted_at, origin, cid) is kept, so every node ends up
    # with the same tombstone whatever order the deletes reach it in. cid and origin are CHECKed against
    # their wire forms: a malformed one is a caller's bug (InternalError), as for the other tables' CHECKs.

    def add_tombstone(self, key: bytes, cid: str, deleted_at: float, origin: str, recorded_at: float) -> bool:
        """Record a delete of ``key``, unless the stored tombstone for it is as new or newer.

        Newer means a greater ``(deleted_at, origin, cid)``: the later delete wins, and the rare tie in
        time is settled the same way on every node. ``recorded_at`` is stored with a tombstone that wins
        and otherwise ignored (the same delete heard twice keeps its first recording time). Returns True
        when the stored tombstone changed (inserted or replaced).
        """
        with self._write() as conn:
            return _put_tombstone(conn, key, cid, deleted_at, origin, recorded_at)

    def get_tombstone(self, key: bytes) -> TombstoneRow | None:
        rows = self._rows(f"SELECT {_TOMBSTONE_COLS} FROM tombstones WHERE key = ?", (key,))
        return TombstoneRow(*rows[0]) if rows else None

    def list_tombstones(self) -> list[TombstoneRow]:
        """All tombstones, oldest delete first (ties by key)."""
        rows = self._rows(f"SELECT {_TOMBSTONE_COLS} FROM tombstones ORDER BY deleted_at, key")
        return [TombstoneRow(*r) for r in rows]

    def expire_tombstones(self, cutoff: float) -> int:
        """Delete the tombstones of deletes made strictly before ``cutoff``; returns how many."""
        with self._write() as conn:
            conn.execute("DELETE FROM tombstones WHERE deleted_at < ?", (cutoff,))
            return conn.changes()

    def delete_file_with_tombstone(
        self, key: bytes, cid: str, deleted_at: float, origin: str, recorded_at: float
    ) -> tuple[str | None, bool, bool]:
        """Apply a delete of ``key`` naming ``cid``: drop the file and record the tombstone, in one txn.

        The files row goes only if it names ``cid`` and was stored no later than ``deleted_at``: a row
        naming other content, or stored after the delete was issued (a re-store of the same content),
        stays. Its object loses a reference as in :meth:`remove_file`. The tombstone is recorded as
        :meth:`add_tombstone` does, whether or not a row went; if that fails (e.g. a malformed
        ``origin``), the file row stays too. Returns (``cid``, orphaned, tombstone changed) when the row
        went, orphaned meaning the object's rows went with it and the caller unlinks its file after this
        commit; (None, False, tombstone changed) when nothing was removed.
        """
        with self._write() as conn:
            removed = _unlink_file(conn, key, cid, stored_by=deleted_at)
            changed = _put_tombstone(conn, key, cid, deleted_at, origin, recorded_at)
            gone, orphaned = removed if removed is not None else (None, False)
            return gone, orphaned, changed

    # -- key metadata -------------------------------------------------------------------------------------
    #
    # Which content id a key names, kept by the members ranked first for the key (node/keymeta.py). Of two
    # entries for a key naming different content the greater (stored_at, cid) wins, as for tombstones, so
    # every member ends up with the same whatever order the entries reach it in. A tombstone naming the
    # same content and no older than the entry beats it: such an entry is removed with the tombstone
    # (_put_tombstone) and never recorded after it.

    def put_keymeta(
        self, entries: Sequence[tuple[bytes, str, int, float, Sequence[str]]], recorded_at: float
    ) -> int:
        """Record (key, cid, size, stored_at, holders) entries in one transaction; returns how many rows
        changed. For the content a row already names, the later stored_at is kept and the holders are
        the ones just sent (the latest word on who holds it), and recorded_at is refreshed; other content
        replaces the row only with a greater (stored_at, cid). An entry a tombstone beats is skipped."""
        if not entries:
            return 0
        changed = 0
        with self._write() as conn:
            for key, cid, size, stored_at, holders in entries:
                if (
                    _scalar(
                        conn,
                        "SELECT 1 FROM tombstones WHERE key = ? AND cid = ? AND deleted_at >= ?",
                        (key, cid, stored_at),
                    )
                    is not None
                ):
                    continue
                changed += (
                    _scalar(
                        conn,
                        f"INSERT INTO keymeta ({_KEYMETA_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET"
                        " stored_at = CASE WHEN cid = excluded.cid THEN max(stored_at, excluded.stored_at)"
                        " ELSE excluded.stored_at END,"
                        " cid = excluded.cid, size = excluded.size, holders = excluded.holders,"
                        " recorded_at = excluded.recorded_at"
                        " WHERE cid = excluded.cid OR (excluded.stored_at, excluded.cid) > (stored_at, cid)"
                        " RETURNING 1",
                        (key, cid, size, stored_at, " ".join(holders), recorded_at),
                    )
                    is not None
                )
        return changed

    def get_keymeta(self, key: bytes) -> KeyMetaRow | None:
        """The metadata of ``key`` kept here, unless a tombstone beats it (then None)."""
        rows = self._rows(
            f"SELECT {_KEYMETA_COLS} FROM keymeta AS k WHERE key = ? AND NOT EXISTS ("
            " SELECT 1 FROM tombstones AS t WHERE t.key = k.key AND t.cid = k.cid"
            " AND t.deleted_at >= k.stored_at)",
            (key,),
        )
        if not rows:
            return None
        key, cid, size, stored_at, holders, recorded_at = rows[0]
        return KeyMetaRow(bytes(key), cid, size, stored_at, tuple(holders.split()), recorded_at)

    def expire_keymeta(self, cutoff: float) -> int:
        """Forget the metadata last recorded strictly before ``cutoff`` (nobody republished it: this node
        no longer ranks for the key, or no member holds the file); returns how many rows went."""
        with self._write() as conn:
            conn.execute("DELETE FROM keymeta WHERE recorded_at < ?", (cutoff,))
            return conn.changes()

    # -- peers and shares ---------------------------------------------------------------------------------

    def upsert_peer(
        self, address: str, node_id: str | None, last_seen: float, status: str, verified: bool = False
    ) -> None:
        """Insert or update a peer. A None ``node_id`` keeps a node id already known for the address.
        ``verified``: this node just verified the address (a handshake there, or the peer's own connection
        from its host): verified_at becomes ``last_seen`` and a failure before it is forgotten; False
        leaves what the row says."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO peers (address, node_id, last_seen, status, verified_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE SET node_id = coalesce(excluded.node_id, node_id),"
                " last_seen = excluded.last_seen, status = excluded.status,"
                " verified_at = coalesce(excluded.verified_at, verified_at),"
                " failed_at = CASE WHEN excluded.verified_at IS NULL THEN failed_at END",
                (address, node_id, last_seen, status, last_seen if verified else None),
            )

    def learn_peer(self, address: str, node_id: str, seen: float) -> None:
        self.learn_peers([(address, node_id, seen)])

    def learn_peers(self, peers: Sequence[tuple[str, str, float]]) -> None:
        """Record peers heard of through gossip, (address, node id, last seen) each, in one transaction
        (a peer exchange's worth): a new one is `known` and unverified; for one already in the table
        only a later last_seen is taken, and the node id unless this node verified the address (what
        our own handshake there said is not overwritten by hearsay); the status is never touched
        (gossip about a peer must not overwrite what our own connection to it says)."""
        if not peers:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO peers (address, node_id, last_seen, status) VALUES (?, ?, ?, 'known')"
                " ON CONFLICT (address) DO UPDATE SET"
                " node_id = CASE WHEN verified_at IS NULL THEN excluded.node_id ELSE node_id END,"
                " last_seen = max(last_seen, excluded.last_seen)",
                peers,
            )

    def peer_dial_failed(self, address: str, when: float) -> None:
        """A dial to ``address`` failed: it is no longer verified (not gossiped) until a handshake there
        succeeds again. An address not in the table stays out of it."""
        with self._write() as conn:
            conn.execute("UPDATE peers SET failed_at = ? WHERE address = ?", (when, address))

    def list_peers(self, since: float | None = None) -> list[PeerRow]:
        """Peers seen at or after ``since`` (all if None), newest first (ties by address)."""
        if since is None:
            rows = self._rows(f"SELECT {_PEER_COLS} FROM peers ORDER BY last_seen DESC, address")
        else:
            rows = self._rows(
                f"SELECT {_PEER_COLS} FROM peers WHERE last_seen >= ? ORDER BY last_seen DESC, address",
                (since,),
            )
        return [PeerRow(*r) for r in rows]

    def sample_peers(self, since: float, n: int, failed: bool = False) -> list[PeerRow]:
        """Up to ``n`` peers seen at or after ``since`` at an address this node verified, taken at random
        (with ``failed``, also those a dial failed to since): a peer exchange's sample, read without
        building a row per member of the network (the table holds every member a node heard of)."""
        rows = self._rows(
            f"SELECT {_PEER_COLS} FROM peers WHERE last_seen >= ? AND verified_at IS NOT NULL"
            f"{'' if failed else ' AND failed_at IS NULL'} ORDER BY random() LIMIT ?",
            (since, n),
        )
        return [PeerRow(*r) for r in rows]

    def touch_peers(self, peers: Sequence[tuple[str, str, bool]], seen: float) -> None:
        """(address, node id, verified) of peers connected now: seen now, status connected, in one
        transaction (verified as in upsert_peer). The node calls it every gossip round, so a peer
        connected for hours is never 'unseen' (cleanup)."""
        if not peers:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO peers (address, node_id, last_seen, status, verified_at)"
                " VALUES (?, ?, ?, 'connected', ?)"
                " ON CONFLICT (address) DO UPDATE SET node_id = excluded.node_id,"
                " last_seen = max(last_seen, excluded.last_seen), status = 'connected',"
                " verified_at = coalesce(excluded.verified_at, verified_at),"
                " failed_at = CASE WHEN excluded.verified_at IS NULL THEN failed_at END",
                [(addr, node_id, seen, seen if verified else None) for addr, node_id, verified in peers],
            )

    def remove_peers_older_than(self, cutoff: float, keep: Collection[str] = ()) -> int:
        """Delete peers last seen strictly before ``cutoff``, except those whose node id is in ``keep``
        (the ones a running daemon is connected to); returns how many."""
        kept = sorted(keep)
        spare = f" AND (node_id IS NULL OR node_id NOT IN ({','.join('?' * len(kept))}))" if kept else ""
        with self._write() as conn:
            conn.execute(f"DELETE FROM peers WHERE last_seen < ?{spare}", (cutoff, *kept))
            return conn.changes()

    def add_share(self, cid: str, peer: str, acked_at: float) -> None:
        """Record that ``peer`` acknowledged storing ``cid`` (a repeat updates ``acked_at``)."""
        self.add_shares(cid, [peer], acked_at)

    def add_shares(self, cid: str, peers: Sequence[str], acked_at: float) -> None:
        """add_share for several peers in one transaction (a store's replicas answer together)."""
        self.add_share_rows([(cid, peer, acked_at) for peer in peers])

    def add_share_rows(self, rows: Sequence[tuple[str, str, float]]) -> None:
        """(cid, peer, acked_at) rows, of any number of stores, in one transaction."""
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO shares ({_SHARE_COLS}) VALUES (?, ?, ?)"
                " ON CONFLICT (cid, peer) DO UPDATE SET acked_at = excluded.acked_at",
                rows,
            )

    def remove_share_rows(self, rows: Sequence[tuple[str, str]]) -> None:
        """Forget (cid, peer) shares a peer no longer backs (it said it does not hold the object)."""
        if not rows:
            return
        with self._write() as conn:
            conn.executemany("DELETE FROM shares WHERE cid = ? AND peer = ?", rows)

    def shares_for(self, cid: str) -> list[ShareRow]:
        rows = self._rows(f"SELECT {_SHARE_COLS} FROM shares WHERE cid = ? ORDER BY peer", (cid,))
        return [ShareRow(*r) for r in rows]

    def list_shares(self) -> list[ShareRow]:
        return [ShareRow(*r) for r in self._rows(f"SELECT {_SHARE_COLS} FROM shares ORDER BY cid, peer")]

    # -- revocations and key rotations (node/revocation.py) ----------------------------------------------
    def add_revocation(
        self, node_id: str, by: str, at: float, signer: str, sig: str, received_at: float
    ) -> bool:
        """Record that ``node_id`` is revoked; False if it was already (the first record stays)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO revocations (node_id, revoked_by, revoked_at, signer, sig, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO NOTHING",
                (node_id, by, at, signer, sig, received_at),
            )
            return conn.changes() > 0

    def list_revocations(self) -> list[tuple[str, str, float, str, str]]:
        """Every revocation as (node id, by, at, signer, sig), oldest first."""
        rows = self._rows(
            "SELECT node_id, revoked_by, revoked_at, signer, sig FROM revocations"
            " ORDER BY revoked_at, node_id"
        )
        return [(str(a), str(b), float(c), str(d), str(e)) for a, b, c, d, e in rows]

    def add_key_rotation(self, gen: int, old_until: float, by: str, at: float) -> None:
        """Record the rotation this node took as its generation ``gen`` (replacing one of that gen)."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO key_rotations (gen, old_until, rotated_by, rotated_at)"
                " VALUES (?, ?, ?, ?)",
                (gen, old_until, by, at),
            )

    def last_key_rotation(self) -> tuple[int, float, str, float] | None:
        """(gen, old_until, by, at) of the newest rotation taken, None if the key never rotated."""
        rows = self._rows(
            "SELECT gen, old_until, rotated_by, rotated_at FROM key_rotations ORDER BY gen DESC LIMIT 1"
        )
        return None if not rows else (int(rows[0][0]), float(rows[0][1]), str(rows[0][2]), float(rows[0][3]))


def _empty(path: Path) -> str:
    return (
        f"{path} is empty (no p2pfast schema): restore this node's p2p.db from a backup or point 'db' "
        "at it; 'p2pfast init' makes a repo only in a new data dir"
    )


def _busy(exc: StorageError) -> bool:
    return isinstance(exc.__cause__, (apsw.BusyError, apsw.LockedError))


def _scalar(conn: apsw.Connection, sql: str, params: tuple[Any, ...]) -> Any:
    rows = conn.execute(sql, params).fetchall()
    return rows[0][0] if rows else None


def _unlink_file(
    conn: apsw.Connection, key: bytes, cid: str | None = None, stored_by: float | None = None
) -> tuple[str, bool] | None:
    """Delete the files row of ``key`` (only if it names ``cid``, and was created no later than
    ``stored_by``, when given) and release its object.

    Returns (its cid, orphaned) as :func:`_release` says, or None when no row went (inside a txn).
    """
    row = conn.execute("SELECT cid, created FROM files WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    current, created = str(row[0]), float(row[1])
    if (cid is not None and current != cid) or (stored_by is not None and created > stored_by):
        return None
    conn.execute("DELETE FROM files WHERE key = ?", (key,))
    return current, _release(conn, current)


def _put_tombstone(
    conn: apsw.Connection, key: bytes, cid: str, deleted_at: float, origin: str, recorded_at: float
) -> bool:
    """Insert, or replace a smaller (deleted_at, origin, cid); True if the row changed (inside a txn).
    The key's metadata naming that content, stored no later than the delete, goes with it: the delete
    wins, as it does over a files row of that age."""
    conn.execute("DELETE FROM keymeta WHERE key = ? AND cid = ? AND stored_at <= ?", (key, cid, deleted_at))
    # RETURNING yields a row only when the insert or the update happened, so the WHERE that keeps the
    # newer tombstone is also what tells the caller whether anything changed.
    return (
        _scalar(
            conn,
            f"INSERT INTO tombstones ({_TOMBSTONE_COLS}) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET cid = excluded.cid, deleted_at = excluded.deleted_at,"
            " origin = excluded.origin, recorded_at = excluded.recorded_at"
            " WHERE (excluded.deleted_at, excluded.origin, excluded.cid) > (deleted_at, origin, cid)"
            " RETURNING 1",
            (key, cid, deleted_at, origin, recorded_at),
        )
        is not None
    )


def _release(conn: apsw.Connection, cid: str) -> bool:
    """Drop one reference to ``cid``; at zero delete its rows. True if it was orphaned (inside a txn)."""
    left = _scalar(
        conn, "UPDATE objects SET refcount = refcount - 1 WHERE cid = ? RETURNING refcount", (cid,)
    )
    if left is None:
        raise InternalError(f"file row points at missing object {cid}")
    if left == 0:
        _delete_object(conn, cid)
        return True
    return False


def _delete_object(conn: apsw.Connection, cid: str) -> None:
    conn.execute("DELETE FROM shares WHERE cid = ?", (cid,))
    conn.execute("DELETE FROM objects WHERE cid = ?", (cid,))  # the keys row goes by ON DELETE CASCADE


def _add_file(
    conn: apsw.Connection,
    key: bytes,
    cid: str,
    size: int,
    now: float,
    new_object: ObjectRow | None,
    wrapped_key: bytes | None,
    algorithm: str | None,
    origin: str | None,
) -> str | None:
    """Repo.add_file's work inside its transaction."""
    old = _scalar(conn, "SELECT cid FROM files WHERE key = ?", (key,))
    if old == cid:
        conn.execute(
            "UPDATE files SET size = ?, created = ?, origin = ? WHERE key = ?", (size, now, origin, key)
        )
        return None
    if _scalar(conn, "SELECT 1 FROM objects WHERE cid = ?", (cid,)) is not None:
        conn.execute("UPDATE objects SET refcount = refcount + 1 WHERE cid = ?", (cid,))
    else:
        if new_object is None:
            raise NotFound(f"object {cid} is not in the repo")
        if new_object.cid != cid:
            raise InternalError(f"add_file: new_object.cid {new_object.cid} != cid {cid}")
        if wrapped_key is None or algorithm is None:
            raise InternalError(f"add_file: new object {cid} needs wrapped_key and algorithm")
        o = new_object
        conn.execute(
            f"INSERT INTO objects ({_OBJECT_COLS}) VALUES (?, ?, ?, ?, 1, ?)",
            (cid, o.size, o.segment_size, o.segments, o.created),
        )
        conn.execute(
            "INSERT INTO keys (cid, wrapped, algorithm, created) VALUES (?, ?, ?, ?)",
            (cid, wrapped_key, algorithm, o.created),
        )
    if old is None:
        conn.execute(
            f"INSERT INTO files ({_FILE_COLS}) VALUES (?, ?, ?, ?, ?)", (key, cid, size, now, origin)
        )
        return None
    conn.execute(
        "UPDATE files SET cid = ?, size = ?, created = ?, origin = ? WHERE key = ?",
        (cid, size, now, origin, key),
    )
    return old if _release(conn, old) else None
