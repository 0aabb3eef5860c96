"""A join whose bootstrap node is not up yet (node/membership.py, _retry_join): the joiner dials it again
after 1, 2, 4 … s, not a gossip interval later, and keeps doing so while it has sessions only to members
that joined through it, so such an island merges with the network once the bootstrap node is up."""

from __future__ import annotations

import socket
from pathlib import Path

from inproc import NETKEY, run, start_node, wait_until

from p2pfast import identity
from p2pfast.datadir import Layout, init
from p2pfast.net.limits import NetLimits
from p2pfast.node import Node

# A gossip round (the only retry there was) far beyond the waits below.
LIM = NetLimits(gossip_interval=120.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_island_that_never_reached_its_bootstrap_node_merges_once_it_is_up(tmp_path: Path) -> None:
    async def main() -> None:
        port = _free_port()
        nodes: list[Node] = []
        try:
            # b's bootstrap node is not listening yet; c joins through b: an island of two
            b = await start_node(tmp_path / "b", [f"127.0.0.1:{port}"], limits=LIM)
            nodes.append(b)
            c = await start_node(tmp_path / "c", [b.peers.listen_addr], limits=LIM)
            nodes.append(c)
            await wait_until(lambda: c.node_id in b.peers.sessions)
            layout = Layout.of(tmp_path / "a")
            init(layout, NETKEY)
            ident = identity.load(layout.node_key, layout.network_key)
            a = Node(layout, ident, listen=f"127.0.0.1:{port}", limits=LIM)
            await a.start()
            nodes.append(a)
            # within a few of b's retries (1 + 2 + 4 + 8 s), far before its next gossip round
            await wait_until(lambda: all(len(x.viewsync.view) == 3 for x in nodes if x.viewsync), 20)
            assert a.node_id in b.peers.sessions
        finally:
            for x in nodes:
                await x.close()

    run(main())
