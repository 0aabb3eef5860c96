"""A bounded set of links per node, and sessions opened for what a request needs (node/links.py; issue
14: links per node stay under the configured bound, a get contacts at most replicas + 2 members, the
copies of a store go to the members ranked first among all, connected or not)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from inproc import count_who_has, crash, dial_failures, linked, run, start_node, wait_until

from p2pfast.net.limits import NetLimits
from p2pfast.node import Node, placement
from p2pfast.node.links import SLACK
from p2pfast.node.sources import BufferSink, BytesSource
from p2pfast.proto import view

N = 20
# target = min(8 - 4, ceil(log2 20) + 2) = 4 links, at most 8 once idle. Every node here dials from
# 127.0.0.1, so the per-address admission limits are lifted to the network's size (as bench/simulate.py).
LIM = NetLimits(
    max_links=8,
    idle_close=0.5,
    suspect_after=0.5,
    dead_after=1.0,
    max_pre_handshake_per_address=64,
    max_pre_handshake_per_prefix=64,
    max_pre_handshake=64,
)
DATA = b"linked " * 5000


async def network(tmp: Path, n: int = N) -> list[Node]:
    nodes: list[Node] = []
    for i in range(n):
        boot = [nodes[0].peers.listen_addr] if nodes else []
        nodes.append(await start_node(tmp / f"n{i}", boot, limits=LIM, replicas=2))
    await wait_until(lambda: views_agree(nodes), 60)
    return nodes


def views_agree(nodes: list[Node]) -> bool:
    views = [x.viewsync.view for x in nodes if x.viewsync is not None]
    return all(len(v) == len(nodes) for v in views) and len({v.root() for v in views}) == 1


def bounded(nodes: list[Node]) -> bool:
    return all(len(x.peers.sessions) <= LIM.max_links for x in nodes)


async def close_all(nodes: list[Node]) -> None:
    for x in nodes:
        await x.close()


def test_links_stay_under_the_bound_and_the_network_stays_connected(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await network(tmp_path)
        try:
            # the bootstrap node took every join: once idle, what is over its bound closes
            await wait_until(lambda: bounded(nodes), 30)
            assert linked(nodes)
            target = nodes[0].links.target() if nodes[0].links is not None else 0
            assert target == LIM.max_links - SLACK
            assert all(len(x.peers.sessions) >= 1 for x in nodes)
            assert max(len(x.peers.sessions) for x in nodes) <= LIM.max_links
            assert sum(len(x.peers.sessions) for x in nodes) < N * (N - 1)  # far from a full mesh
        finally:
            await close_all(nodes)

    run(main())


def test_a_store_goes_to_the_members_ranked_first_and_a_get_opens_sessions_to_them(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await network(tmp_path)
        try:
            await wait_until(lambda: bounded(nodes), 30)
            origin = nodes[3]
            others = [x.node_id for x in nodes if x is not origin]
            report = await origin.put("linked/file", BytesSource(DATA))
            # the first two of all members for this content, connected to the origin before or not
            assert set(report.replicated_to) == set(placement.order(report.cid, others)[:2])
            holders = {origin.node_id, *report.replicated_to}
            getter = next(
                x
                for x in nodes
                if x.node_id not in holders
                and not holders & set(x.peers.sessions)
                and (x.keymeta is None or x.repo.get_keymeta(b"linked/file") is None)
            )
            asked = count_who_has(nodes)
            for name in ("linked/file", report.cid):
                sink = BufferSink()
                before = sum(asked.values())
                await getter.get(name, sink)
                assert bytes(sink.data) == DATA
                assert sum(asked.values()) - before <= 2 + 2  # replicas + 2
            assert getter.links is not None and getter.links.opened > 0
            # what the get opened closes once idle beyond the bound
            await wait_until(lambda: bounded(nodes), 30)
        finally:
            await close_all(nodes)

    run(main())


def test_a_member_that_crashes_is_declared_dead_by_all_without_a_dial_storm(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await network(tmp_path)
        try:
            await wait_until(lambda: bounded(nodes), 30)
            victim = next(x for x in nodes[1:] if len(x.peers.sessions) >= 2)
            survivors = [x for x in nodes if x is not victim]
            addr = victim.peers.listen_addr
            failures = [dial_failures(x) for x in survivors]  # every failed dial, at every survivor
            await crash(victim)

            def dead_everywhere() -> bool:
                return all(
                    x.viewsync is not None
                    and (r := x.viewsync.view.get(victim.node_id)) is not None
                    and r.state == view.State.DEAD
                    for x in survivors
                )

            await wait_until(dead_everywhere, 30)
            assert linked(survivors)
            # the dials that went to it: probes for the members that lost a link to it, and links
            # refilled from the view before the news came; each address backs off after a failure
            dials = sum(f.count(addr) for f in failures)
            print(f"dials to the crashed member: {dials} by {len(survivors)} survivors")
            assert dials <= 2 * len(survivors)
        finally:
            for x in nodes:
                with contextlib.suppress(Exception):
                    await x.close()

    run(main())


def _view(n: int, states: dict[int, view.State] | None = None) -> tuple[view.View, list[str]]:
    ids = [f"{i:064x}" for i in range(n)]
    v = view.View(view.Record(ids[0], "127.0.0.1:1", 1, view.State.ALIVE))
    for i, nid in enumerate(ids[1:], 1):
        state = (states or {}).get(i, view.State.ALIVE)
        r = view.Record(nid, f"127.0.0.1:{1000 + i}", 1, state, 1.0 if state >= view.State.DEAD else 0.0)
        v.merge(view.vouch(r, VOUCHER, VOUCH_KEY), 2.0)  # another member dialled it there
    return v, ids


VOUCHER = "ee" * 32
VOUCH_KEY = Ed25519PrivateKey.generate()


def _links(v: view.View, node_id: str, bounded: bool = True) -> Any:
    from types import SimpleNamespace

    from p2pfast.node.links import Links

    links = Links(node_id, SimpleNamespace(sessions={}), NetLimits(), bounded=bounded)  # type: ignore[arg-type]
    links.view = v
    return links


def test_the_link_target_grows_with_log2_of_the_members_up_to_the_bound() -> None:
    for n, want in ((2, 3), (3, 4), (20, 7), (50, 8), (1000, 12), (100_000, 12)):
        v, ids = _view(n) if n <= 1000 else _view(1000)
        links = _links(v, ids[0])
        if n > 1000:
            links.count = lambda n=n: n  # type: ignore[method-assign]
        assert links.target() == want, (n, links.target())
    v, ids = _view(50)
    assert _links(v, ids[0], bounded=False).target() == NetLimits().max_connections  # replicas = all


def test_members_are_the_alive_and_suspect_with_an_address_and_not_revoked() -> None:
    v, ids = _view(6, {2: view.State.SUSPECT, 3: view.State.DEAD, 4: view.State.LEFT})
    v.merge(view.Record(ids[5], "0.0.0.0:7", 2, view.State.ALIVE), 3.0)  # a wildcard: no address to dial
    links = _links(v, ids[0])
    links.revoked = lambda n: n == ids[1]
    assert set(links.members()) == {ids[2], ids[5]}
    assert links.addr_of(ids[2]) == "127.0.0.1:1002"  # vouched for
    assert links.addr_of(ids[5]) is None  # until a member that verified one names it
    links.addrs[ids[5]] = "127.0.0.9:7"
    assert links.addr_of(ids[5]) == "127.0.0.9:7"
    assert links.away(since=0.0) == {ids[1], ids[2], ids[3], ids[4], ids[5]}
    assert links.away(since=10.0) == {ids[1], ids[2], ids[5]}  # the dead and left went before 10


def test_a_record_address_is_dialled_only_once_another_member_vouched_for_it() -> None:
    v, ids = _view(3)
    liar = "ab" * 32
    v.merge(view.Record(liar, "127.0.0.5:9", 1, view.State.ALIVE), 3.0)  # its own word only
    links = _links(v, ids[0])
    assert links.addr_of(liar) is None and links.addr_of(ids[1]) == "127.0.0.1:1001"
    links.revoked = lambda n: n == VOUCHER  # a revoked member's vouches count no more
    assert links.addr_of(ids[1]) is None
