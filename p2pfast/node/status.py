"""What `p2pfast status` reports about a data dir's repo and disk. The daemon adds what only a running node
knows (Node.status); with no daemon the CLI reports this part alone.

Runs on the thread that owns the repo (the node's DB thread, or the CLI's own).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from p2pfast.datadir import Layout
from p2pfast.errors import StorageError
from p2pfast.node import scrub
from p2pfast.repo.repo import Repo
from p2pfast.store.userkey import SCRATCH_PREFIX


def replica_target(replicas: int | None, known_peers: int) -> int:
    """Copies a file stored here should have on peers: `replicas`, or every known peer (replicas=all),
    and never more than the peers there are."""
    return known_peers if replicas is None else min(replicas, known_peers)


def of_repo(repo: Repo, layout: Layout, node_id: str, replicas: int | None) -> dict[str, Any]:
    stats = repo.stats()
    known = sum(1 for p in repo.list_peers() if p.node_id and p.node_id != node_id)
    target = replica_target(replicas, known)
    try:
        vfs = os.statvfs(layout.objects if layout.objects.exists() else layout.root)
    except OSError as exc:
        raise StorageError(f"cannot read free space of {layout.root}: {exc.strerror}") from exc
    return {
        "node_id": node_id,
        "data_dir": str(layout.root),
        "peers_known": known,
        "files": stats["files"],
        "objects": stats["objects"],
        "bytes_stored": stats["bytes"],
        "bytes_free": vfs.f_bavail * vfs.f_frsize,
        "replica_target": target,
        "under_replicated": repo.count_under_replicated(target, SCRATCH_PREFIX.encode()) if target else 0,
        "wal_bytes": repo.wal_size(),
        **quarantine(layout),
        "scrub": scrub.report_of_file(layout),  # the running node reports its own (Node.status)
    }


def quarantine(layout: Layout) -> dict[str, Any]:
    """What reconcile moved to quarantine/ (object files no repo row accounted for): kept for the
    operator to look at, never deleted by p2pfast."""
    count = size = 0
    for dirpath, _dirs, files in os.walk(layout.quarantine):
        for fn in files:
            count += 1
            with contextlib.suppress(OSError):
                size += os.stat(os.path.join(dirpath, fn)).st_size
    return {"quarantined": count, "quarantined_bytes": size, "quarantine_dir": str(layout.quarantine)}
