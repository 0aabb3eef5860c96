"""Joins (node/membership.py): a joiner whose bootstrap node is not up yet dials it again after 1, 2, 4 …
s, not a gossip interval later, and keeps doing so while it has sessions only to members that joined
through it, so such an island merges with the network once the bootstrap node is up; and a peer
exchange makes a node dial only what its link target and slack lack, not every peer it names."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from inproc import NETKEY, cluster, dial_failures, run, start_node, wait_until

from p2pfast import identity
from p2pfast.datadir import Layout, init
from p2pfast.net.limits import NetLimits
from p2pfast.node import Node
from p2pfast.node.links import SLACK
from p2pfast.proto import messages as m

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


def test_a_peer_exchange_dials_only_what_the_link_target_and_its_slack_lack(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2, limits=LIM, replicas=2) as (a, b):
            assert a.links is not None and a.membership is not None
            session = a.peers.sessions[b.node_id]
            # 40 peers b says it verified, at ports where nobody listens: every dial fails, and is counted
            ports = [_free_port() for _ in range(40)]
            pex = m.Pex(
                tuple(m.PexPeer(f"127.0.0.1:{p}", f"{i + 1:064x}", time.time()) for i, p in enumerate(ports))
            )
            failed = dial_failures(a)
            room = a.links.target() + SLACK - len(a.peers.sessions) - a.peers.pending()
            await a.membership.on_pex(session, pex)
            await wait_until(lambda: a.peers.pending() == 0 and len(failed) > 0)
            assert 0 < len(failed) <= room < 40
            # all of them recorded, heard of only (a dial verifies one; none was dialled again)
            rows = await a.db(a.repo.list_peers)
            heard = {r.address for r in rows if r.status == "known"}
            assert {f"127.0.0.1:{p}" for p in ports} <= heard | set(failed)

    run(main())
