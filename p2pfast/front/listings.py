"""What `files`, `shares` and `peers` list, as JSON-ready rows: read from the repo by the daemon (on its DB
thread, answering the control socket) or by the CLI itself when no daemon runs. One shape for both, so
`--json` output does not depend on whether a daemon was running. The fields are docs/cli.md's vocabulary:
node ids as `peer_id`, times as RFC 3339 strings (`*_at`), keys as the exact stored string."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from p2pfast.repo.repo import Repo
from p2pfast.units import rfc3339


def files(repo: Repo) -> list[dict[str, Any]]:
    # The key itself, not its display escape: every key is UTF-8 (encode_key), so it round-trips as a
    # JSON string, and two keys never print the same.
    return [
        {"key": r.key.decode("utf-8"), "cid": r.cid, "size": r.size, "created_at": rfc3339(r.created)}
        for r in repo.list_files()
    ]


def shares(repo: Repo) -> list[dict[str, Any]]:
    return [{"cid": r.cid, "peer_id": r.peer, "acked_at": rfc3339(r.acked_at)} for r in repo.list_shares()]


def peers(repo: Repo, connected: Collection[str] | None = None) -> list[dict[str, Any]]:
    """With `connected` (the daemon's live sessions), a peer's status is what it is now, not what the
    table last recorded."""
    rows = []
    for r in repo.list_peers():
        status = r.status
        if connected is not None and r.node_id:
            status = "connected" if r.node_id in connected else "disconnected"
        rows.append(
            {
                "peer_id": r.node_id,
                "address": r.address,
                "last_seen_at": rfc3339(r.last_seen),
                "status": status,
                "verified": r.verified,
            }
        )
    return rows
