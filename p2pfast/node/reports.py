"""What the node's operations return, and what they report progress to.

The reports' fields are the `--json` results of store, get and delete (docs/cli.md): node ids are
`peer_id`s, a list is named for what it holds and a count says it counts, keys are the exact string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoreReport:
    key: str
    cid: str
    size: int
    deduplicated: bool
    replicated_to: list[str]  # peer ids that acknowledged a durable copy
    failed: dict[str, str]  # peer id -> why it holds no copy
    replica_target: int  # peers chosen as replicas


@dataclass(frozen=True, slots=True)
class GetReport:
    key: str
    cid: str
    size: int
    source: str  # "local" (this node's copy) or "peer" (fetched)
    peer_id: str | None = None  # with source "peer": the holder that served the most bytes
    kept: bool = False  # a local replica was stored (get --keep)
    holder_count: int = 0  # peers that served part of it (a get fetches from several at once)
    repaired: bool = False  # the local copy failed its check; a peer's verified copy replaced it


@dataclass(frozen=True, slots=True)
class FileStat:
    """What a key names, without reading it (Node.stat)."""

    key: str
    cid: str
    size: int
    created: float | None  # when it was stored here; None when only peers hold it
    local: bool


@dataclass(frozen=True, slots=True)
class DeleteReport:
    key: str
    cid: str
    local: bool  # this node held the file
    object_removed: bool  # its object went too (no other key here referred to it)
    confirmed_by: list[str]  # peer ids that confirmed the delete


class Progress(Protocol):
    """What a store or get reports its progress to (commands._Meter): bytes as they are done, in phases
    (docs/cli.md, "Progress")."""

    def __call__(self, n: int) -> None: ...

    def begin(self, phase: str, total: int | None, peers: int = 1) -> None: ...
