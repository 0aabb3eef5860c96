"""The metadata repo: all SQL of the node, through apsw (one SQLite file, ``p2p.db``; docs/schema.md)."""

from __future__ import annotations

from p2pfast.repo.db import checkpoint, open_db, wal_size
from p2pfast.repo.repo import FileRow, KeyMetaRow, ObjectRow, PeerRow, Repo, ShareRow, TombstoneRow
from p2pfast.repo.schema import LATEST

__all__ = [
    "LATEST",
    "FileRow",
    "KeyMetaRow",
    "ObjectRow",
    "PeerRow",
    "Repo",
    "ShareRow",
    "TombstoneRow",
    "checkpoint",
    "open_db",
    "wal_size",
]
