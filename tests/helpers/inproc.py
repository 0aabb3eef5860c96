"""Real nodes in one process and one event loop (tests/node/): each Node has its own data dir, repo and
store, and they talk over real TCP on 127.0.0.1, so a test can look inside each node between steps."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from p2pfast import identity
from p2pfast.datadir import Layout, init
from p2pfast.front.clientio import FdSource
from p2pfast.net.limits import NetLimits
from p2pfast.node import Node

T = TypeVar("T")
NETKEY = bytes(range(32))
WAIT = 20.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    from p2pfast import runtime

    return runtime.run(coro)


@contextlib.asynccontextmanager
async def cluster(tmp: Path, n: int, **kw: Any) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    try:
        for i in range(n):
            nodes.append(await start_node(tmp / f"n{i}", [nodes[0].peers.listen_addr] if nodes else [], **kw))
        await connected(nodes)
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.close()


async def start_node(root: Path, bootstrap: list[str], **kw: Any) -> Node:
    layout = Layout.of(root)
    if not layout.db.exists():  # a node restarted on its data dir keeps it
        init(layout, NETKEY)
    ident = identity.load(layout.node_key, layout.network_key)
    limits = kw.pop("limits", None) or NetLimits()
    node = Node(layout, ident, listen="127.0.0.1:0", bootstrap=tuple(bootstrap), limits=limits, **kw)
    await node.start()
    return node


async def connected(nodes: list[Node]) -> None:
    """Every node connected to every other (gossip from the first one's bootstrap), bounded."""
    await wait_until(lambda: all(len(n.peers.sessions) == len(nodes) - 1 for n in nodes))


async def wait_until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)  # polls state this process owns; bounded by the deadline


async def crash(node: Node) -> None:
    """As kill -9 looks from the outside, in one process: its connections reset, nothing said first."""
    node.peers.stop_listening()
    for t in node._tasks:
        t.cancel()
    node.membership.closing = True  # type: ignore[union-attr]  # it dials nobody again
    for proto in list(node.peers._protocols):
        if proto.transport is not None:
            proto.transport.abort()


def dial_failures(node: Node) -> list[str]:
    """The addresses `node` fails to dial from now on, one entry per failed dial (its own handler still
    runs)."""
    failed: list[str] = []
    real = node.peers.events.on_dial_failed

    async def counting(addr: str) -> None:
        failed.append(addr)
        if real is not None:
            await real(addr)

    node.peers.events.on_dial_failed = counting
    return failed


def linked(nodes: list[Node]) -> bool:
    """The links form one connected graph (news and anti-entropy reach everyone over it)."""
    return graph_connected({x.node_id: list(x.peers.sessions) for x in nodes})


def graph_connected(links: dict[str, list[str]]) -> bool:
    """Every member of `links` (member -> the peers it has sessions with) reaches every other over
    them; peers that are no members do not count (bench/simprocs.py builds this from its workers)."""
    first = next(iter(links))
    seen, todo = {first}, [first]
    while todo:
        for p in links[todo.pop()]:
            if p in links and p not in seen:
                seen.add(p)
                todo.append(p)
    return len(seen) == len(links)


def count_who_has(nodes: list[Node]) -> dict[str, int]:
    """Each node's who_has requests served from now on: its real handler, counted on the way in (the
    lookup tests and bench/simulate.py count a get's contacts this way)."""
    from p2pfast.proto import messages as m

    asked = {n.node_id: 0 for n in nodes}
    for n in nodes:
        assert n.router is not None
        real = n.router._routes[m.WhoHas]

        async def counting(session: Any, msg: Any, real: Any = real, me: str = n.node_id) -> Any:
            asked[me] += 1
            return await real(session, msg)

        n.router._routes[m.WhoHas] = counting
    return asked


def cid_of(data: bytes) -> str:
    """The content id a store of `data` gets (1 MiB segments), known before it is stored."""
    from p2pfast.store import contentid

    seg = 1024 * 1024
    parts = [data[i : i + seg] for i in range(0, len(data), seg)] or [b""]
    return contentid.root(len(data), b"".join(contentid.leaf(p) for p in parts))


def source(tmp: Path, size: int, seed: int = 1) -> Path:
    """A file of `size` bytes of a pattern that depends on `seed`."""
    path = tmp / f"src-{seed}-{size}"
    rnd = bytes((i * 131 + seed) & 0xFF for i in range(4096))
    path.write_bytes((rnd * (size // 4096 + 1))[:size])
    return path


async def store(node: Node, key: str, path: Path) -> Any:
    """`node.put` of a file, through the fd adapter the control socket uses."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return await node.put(key, FdSource(fd))
    finally:
        os.close(fd)
