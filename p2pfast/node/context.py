"""What the node's services share: the open data dir, the peers, the worker threads and the settings.
The composition root (root.py) makes one once the data dir is open and hands it to every service; a
service holds it instead of the node, so no service reaches into another through the node."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from p2pfast.datadir import Layout, LocalNode
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerManager
from p2pfast.node.executors import Executors
from p2pfast.node.flow import Activity
from p2pfast.node.links import Links
from p2pfast.repo.repo import Repo
from p2pfast.store.objects import ContentStore


@dataclass(slots=True)
class Context:
    node_id: str
    layout: Layout
    local: LocalNode
    ex: Executors
    peers: PeerManager
    limits: NetLimits
    replicas: int | None  # None: every connected peer, as the original system does
    max_object: int | None
    tombstone_grace: float
    # background work, cancelled when the node closes
    spawn: Callable[[Coroutine[Any, Any, Any]], None]
    # marks the current task as work a graceful stop lets finish; refuses once draining
    working: Callable[[str], contextlib.AbstractContextManager[None]]
    # the node is stopping: no new transfer is taken
    draining: Callable[[], bool]
    # the members this node keeps sessions with, and the sessions a request opens to others
    links: Links
    # user transfers under way, that repair yields to
    activity: Activity = field(default_factory=Activity)

    @property
    def store(self) -> ContentStore:
        return self.local.store

    @property
    def repo(self) -> Repo:
        return self.local.repo
