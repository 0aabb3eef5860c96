"""The repo's DDL and its migrations, stepped on ``PRAGMA user_version`` (described in docs/schema.md).

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``: step 1 creates objects, files, keys,
peers and shares; step 2 adds tombstones, step 3 files.origin, step 4 the owner row, step 5 the peers'
verified_at and failed_at, step 6 keymeta, step 7 revocations and key_rotations. Each step runs in
its own ``BEGIN IMMEDIATE`` transaction (``db.transaction``: ``with conn:`` without holding the GIL)
together with the ``user_version`` bump, so a
step is all-or-nothing and a crash between steps leaves a valid, older version. The version is read again
inside the transaction, so two processes opening the same file at once apply each step once.

Rules for new steps: append, never edit a released step; one step per schema change; a database newer
than :data:`LATEST` is refused (an older p2pfast must not write a schema it does not know).

Tables (all STRICT, so a wrong type is an error rather than a silent coercion)::

    objects  one row per stored content object (an encrypted file on disk, named by its content id)
      cid           TEXT PK    content id, "b3:" + 64 hex digits (BLAKE3 of the plaintext)
      size          INTEGER    plaintext size in bytes
      segment_size  INTEGER    plaintext bytes per AEAD segment
      segments      INTEGER    number of segments
      refcount      INTEGER    number of files rows pointing here (>= 0)
      created       REAL       unix time the object was first stored

    files    the user's names: key -> object
      key      BLOB PK      the user key's UTF-8 bytes, compared byte for byte
      cid      TEXT         -> objects(cid)   (indexed: refcounts, reconcile)
      size     INTEGER      size in bytes
      created  REAL         unix time the key was (re)pointed
      origin   TEXT         node id it came from; NULL when a user stored it here (version 3)

    keys     the object's random data key, wrapped by the node master key
      cid        TEXT PK    -> objects(cid) ON DELETE CASCADE
      wrapped    BLOB       wrapped data key
      algorithm  TEXT       wrapping/content algorithm name
      created    REAL

    peers    known peers
      address    TEXT PK    "host:port"
      node_id    TEXT       the peer's id once known, else NULL
      last_seen  REAL       (indexed: stale-peer cleanup, newest-first listing)
      status     TEXT       e.g. "up", "down"
      verified_at  REAL     unix time this node last verified the address (a handshake there, or the
                            peer's own connection from its host); NULL never (version 5)
      failed_at    REAL     unix time a dial there last failed, NULL since a later verification (version 5)

    shares   which peer acknowledged storing which object
      cid, peer  TEXT       PK (cid, peer)
      acked_at   REAL

    tombstones  deletes this node knows of, so a copy offered back by a peer that missed one is refused
      key          BLOB PK    the deleted file's key (as files.key); one tombstone per key, newest wins
      cid          TEXT       the content the delete removed, "b3:" + 64 lowercase hex (CHECKed)
      deleted_at   REAL       unix time of the delete at its origin (indexed: expiry)
      origin       TEXT       node id of the node that issued it, 64 lowercase hex (CHECKed)
      recorded_at  REAL       unix time this node recorded it

    keymeta  metadata of keys this node ranks for (rendezvous on the key; node/keymeta.py) (version 6)
      key          BLOB PK    the file's key (as files.key)
      cid          TEXT       the content the key names, "b3:" + 64 lowercase hex (CHECKed)
      size         INTEGER    plaintext size in bytes
      stored_at    REAL       unix time the key was stored, at the holder that sent it (its files.created)
      holders      TEXT       node ids known to hold the object, best first, space-separated (CHECKed)
      recorded_at  REAL       unix time this node last recorded it (indexed: expiry)

    owner    one row (id 1): whose repo this is (version 4)
      node_id           TEXT   the data dir's node id (node.key), NULL if it had none when recorded
      master_key_check  BLOB   16 bytes: HMAC of a fixed label under a key derived from the master key
      created           REAL   unix time it was recorded
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from p2pfast.errors import ConfigError, StorageError
from p2pfast.repo import db

SCHEMA_V1 = """
CREATE TABLE objects (
    cid          TEXT PRIMARY KEY,
    size         INTEGER NOT NULL CHECK (size >= 0),
    segment_size INTEGER NOT NULL CHECK (segment_size > 0),
    segments     INTEGER NOT NULL CHECK (segments >= 0),
    refcount     INTEGER NOT NULL CHECK (refcount >= 0),
    created      REAL NOT NULL
) STRICT;

CREATE TABLE files (
    key     BLOB PRIMARY KEY,
    cid     TEXT NOT NULL REFERENCES objects(cid),
    size    INTEGER NOT NULL CHECK (size >= 0),
    created REAL NOT NULL
) STRICT;
CREATE INDEX files_cid ON files(cid);

CREATE TABLE keys (
    cid       TEXT PRIMARY KEY REFERENCES objects(cid) ON DELETE CASCADE,
    wrapped   BLOB NOT NULL,
    algorithm TEXT NOT NULL,
    created   REAL NOT NULL
) STRICT;

CREATE TABLE peers (
    address   TEXT PRIMARY KEY,
    node_id   TEXT,
    last_seen REAL NOT NULL,
    status    TEXT NOT NULL
) STRICT;
CREATE INDEX peers_last_seen ON peers(last_seen);

CREATE TABLE shares (
    cid      TEXT NOT NULL,
    peer     TEXT NOT NULL,
    acked_at REAL NOT NULL,
    PRIMARY KEY (cid, peer)
) STRICT;
"""

# No foreign keys: a tombstone outlives the files and objects rows of what it deleted. The CHECKs hold
# cid and origin to the wire's forms, since a tombstone is compared with what peers send and sent on again.
SCHEMA_V2 = """
CREATE TABLE tombstones (
    key         BLOB PRIMARY KEY,
    cid         TEXT NOT NULL CHECK (
                    length(cid) = 67 AND substr(cid, 1, 3) = 'b3:' AND substr(cid, 4) NOT GLOB '*[^0-9a-f]*'
                ),
    deleted_at  REAL NOT NULL,
    origin      TEXT NOT NULL CHECK (length(origin) = 64 AND origin NOT GLOB '*[^0-9a-f]*'),
    recorded_at REAL NOT NULL
) STRICT;
CREATE INDEX tombstones_deleted_at ON tombstones(deleted_at);
"""

# Who a file came from, so that `status` can count the files this node must keep replicated (origin NULL:
# a user stored it here) apart from the replicas it holds for others. Rows from before are taken as local.
SCHEMA_V3 = """
ALTER TABLE files ADD COLUMN origin TEXT;
"""

# Whose repo this is: the node id of the data dir's node.key and a check value of the master key that
# wrapped its data keys. A repo opened beside another node's keys (a DB copied from another node, a new
# master key minted by mistake) is refused before anything is reconciled against it (datadir.py).
SCHEMA_V4 = """
CREATE TABLE owner (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    node_id          TEXT CHECK (
                         node_id IS NULL OR (length(node_id) = 64 AND node_id NOT GLOB '*[^0-9a-f]*')
                     ),
    master_key_check BLOB NOT NULL CHECK (length(master_key_check) = 16),
    created          REAL NOT NULL
) STRICT;
"""

# Which addresses this node verified itself (docs/protocol.md, Discovery): only those go out in its peer
# exchange, so one member cannot make the network dial a host and port it names. Rows from before were
# never verified: they are dialled once more, not gossiped, until a handshake there verifies them.
SCHEMA_V5 = """
ALTER TABLE peers ADD COLUMN verified_at REAL;
ALTER TABLE peers ADD COLUMN failed_at REAL;
"""

# Which content id a key names, kept by the members that rank first for the key (node/keymeta.py), so a
# get of a key this node does not hold asks those few, not every member. No foreign keys: the node
# holds neither the file nor the object of most of these rows. Newer stored_at wins, and a tombstone
# naming the same content and no older removes the row (Repo.put_keymeta, _put_tombstone).
SCHEMA_V6 = """
CREATE TABLE keymeta (
    key         BLOB PRIMARY KEY,
    cid         TEXT NOT NULL CHECK (
                    length(cid) = 67 AND substr(cid, 1, 3) = 'b3:' AND substr(cid, 4) NOT GLOB '*[^0-9a-f]*'
                ),
    size        INTEGER NOT NULL CHECK (size >= 0),
    stored_at   REAL NOT NULL,
    holders     TEXT NOT NULL CHECK (holders NOT GLOB '*[^0-9a-f ]*'),
    recorded_at REAL NOT NULL
) STRICT;
CREATE INDEX keymeta_recorded_at ON keymeta(recorded_at);
"""


# Revocations (node/revocation.py): one row per revoked node id, kept for ever (a revoked node stays
# out; the rows are a few hundred bytes). The signed record is kept whole so it can be re-sent to members
# that connect. key_rotations: one row per network key rotation this node took; the previous key itself
# is a file beside the network key (layout.py network_key_old), not a row.
SCHEMA_V7 = """
CREATE TABLE revocations (
    node_id     TEXT PRIMARY KEY CHECK (length(node_id) = 64),
    revoked_by  TEXT NOT NULL CHECK (length(revoked_by) = 64),
    revoked_at  REAL NOT NULL,
    signer      TEXT NOT NULL CHECK (length(signer) = 64),
    sig         TEXT NOT NULL CHECK (length(sig) = 128),
    received_at REAL NOT NULL
) STRICT;
CREATE TABLE key_rotations (
    gen         INTEGER PRIMARY KEY,
    old_until   REAL NOT NULL,
    rotated_by  TEXT NOT NULL CHECK (length(rotated_by) = 64),
    rotated_at  REAL NOT NULL
) STRICT;
"""

OUR_TABLES = frozenset(
    {
        "objects",
        "files",
        "keys",
        "peers",
        "shares",
        "tombstones",
        "owner",
        "keymeta",
        "revocations",
        "key_rotations",
    }
)
"""Every table some version of this schema creates: a database holding any other is not a p2pfast repo."""

MIGRATIONS: tuple[str, ...] = (
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_V6,
    SCHEMA_V7,
)
"""MIGRATIONS[i] is the SQL script taking user_version i to i + 1."""

LATEST = len(MIGRATIONS)
"""The schema version this p2pfast writes."""


def user_version(conn: apsw.Connection) -> int:
    return int(conn.pragma("user_version"))


def tables(conn: apsw.Connection) -> set[str]:
    """Names of the database's own tables (SQLite's internal ones left out)."""
    rows = conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def refuse_foreign(conn: apsw.Connection) -> None:
    """A database that some other program made (tables that are not ours, or ours at version 0) must
    not be migrated into a repo: the node would then reconcile its objects against the wrong rows."""
    found = tables(conn)
    strange = sorted(found - OUR_TABLES)
    if strange or (found and user_version(conn) == 0):
        listed = ", ".join(strange or sorted(found))
        raise ConfigError(
            f"{conn.filename} is not a p2pfast repo (it holds tables {listed}"
            f"{'' if user_version(conn) else ' and no schema version'}): point 'db' at this node's p2p.db"
        )


def migrate(conn: apsw.Connection, steps: Sequence[str] = MIGRATIONS) -> int:
    """Bring the database up to ``len(steps)``, one transaction per step; return the version reached.

    Raises StorageError if the database is newer than ``steps`` know. apsw errors propagate (the caller
    translates them).
    """
    latest = len(steps)
    version = user_version(conn)
    _refuse_newer(conn, version, latest)
    while version < latest:
        with db.transaction(conn):
            # Re-read under the write lock: another process may have migrated since we looked.
            version = user_version(conn)
            _refuse_newer(conn, version, latest)
            if version < latest:
                conn.execute(steps[version])
                version += 1
                conn.pragma("user_version", version)
    return version


def _refuse_newer(conn: apsw.Connection, version: int, latest: int) -> None:
    if version > latest:
        raise StorageError(
            f"repo schema version {version} is newer than this p2pfast supports ({latest}): {conn.filename}"
        )
