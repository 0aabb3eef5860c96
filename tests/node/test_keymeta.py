"""One-hop `get KEY` between real nodes in one process (node/keymeta.py, node/lookup.py): a key's
metadata lands on the replicas + 1 members ranked first for the key, so a get from a node that holds
neither the file nor its metadata asks replicas + 2 members; a miss there still widens and finds the
file; holders the metadata names that no longer serve it send the get to the content id's holders; a
deleted key is not found through metadata a member kept past the delete; and a member that joins and
ranks for the key gets the metadata from the next repair pass."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from inproc import NETKEY, cid_of, cluster, connected, count_who_has, run, start_node, wait_until

from p2pfast import identity
from p2pfast.datadir import Layout, init
from p2pfast.errors import NotFound
from p2pfast.node import Node, placement
from p2pfast.node.repair import Settings
from p2pfast.node.sources import BufferSink, BytesSource
from p2pfast.proto import messages as m

HAND = Settings(interval=3600.0, debounce=3600.0)  # no repair pass runs during the test
DATA = b"one hop " * 6000


def by_key(key: str, ids: list[str]) -> list[str]:
    """`ids` best first for the metadata of `key` (what placement.key_order does, written out here)."""
    return sorted(ids, key=lambda p: placement.key_weight(key.encode(), p), reverse=True)


def replica_of(nodes: list[Node], origin: Node, cid: str) -> str:
    """The member a store of `cid` on `origin` with replicas = 1 goes to (placement.replica_set)."""
    return placement.ranked(cid, list(origin.peers.sessions.values()))[0].peer_id


def count_kind(nodes: list[Node], kind: type[Any]) -> dict[str, int]:
    """Requests of `kind` each node serves from now on (its real handler, counted on the way in)."""
    served = {n.node_id: 0 for n in nodes}
    for n in nodes:
        assert n.router is not None
        real = n.router._routes[kind]

        async def counting(session: Any, msg: Any, real: Any = real, me: str = n.node_id) -> Any:
            served[me] += 1
            return await real(session, msg)

        n.router._routes[kind] = counting
    return served


def test_a_get_by_key_asks_the_replicas_plus_2_members_ranked_for_the_key(tmp_path: Path) -> None:
    # 7 nodes, replicas = 1: the metadata is on the 2 members ranked first for the key; a getter that
    # holds neither it nor the file asks its 3 best-ranked, learns the holders, and fetches from them.
    async def main() -> None:
        async with cluster(tmp_path, 7, replicas=1, repair=HAND) as nodes:
            origin = nodes[0]
            report = await origin.put("photos/cat.jpg", BytesSource(DATA))
            holders = {origin.node_id, *report.replicated_to}
            ids = [n.node_id for n in nodes]
            kept = {n.node_id for n in nodes if n.repo.get_keymeta(b"photos/cat.jpg") is not None}
            assert kept == set(by_key("photos/cat.jpg", ids)[:2])  # replicas + 1, the store's node or not
            row = origin.repo.get_keymeta(b"photos/cat.jpg") or next(
                n.repo.get_keymeta(b"photos/cat.jpg") for n in nodes if n.node_id in kept
            )
            assert row is not None and row.cid == report.cid and set(row.holders) == holders
            getter = next(n for n in nodes if n.node_id not in holders | kept)
            asked = count_who_has(nodes)
            got = BufferSink()
            result = await getter.get("photos/cat.jpg", got)
            assert result.source == "peer" and result.peer_id in holders and bytes(got.data) == DATA
            ranked = by_key("photos/cat.jpg", [s.peer_id for s in getter.peers.sessions.values()])
            assert {k for k, v in asked.items() if v} == set(ranked[:3]), asked
            assert sum(asked.values()) == 3  # replicas + 2 of the 6 it could have asked
            for n in nodes:  # a member that keeps the metadata answers in no request at all
                if n.node_id in kept - holders:
                    before = sum(asked.values())
                    assert (await n.get("photos/cat.jpg", BufferSink())).source == "peer"
                    assert sum(asked.values()) == before

    run(main())


def test_a_miss_among_the_ranked_members_widens_to_every_member(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 7, replicas=1, repair=HAND) as nodes:
            origin, cid = nodes[0], cid_of(DATA)
            holders = {origin.node_id, replica_of(nodes, origin, cid)}
            getter = next(n for n in nodes if n.node_id not in holders)
            others = [s.peer_id for s in getter.peers.sessions.values()]
            key = next(  # one whose 3 members ranked first for the getter hold no copy
                k for k in (f"far/{i}" for i in range(10_000)) if not holders & set(by_key(k, others)[:3])
            )
            report = await origin.put(key, BytesSource(DATA))
            assert report.cid == cid and set(report.replicated_to) == holders - {origin.node_id}
            for n in nodes:  # the metadata is gone (it expired: say its publisher went)
                await n.db(n.repo.expire_keymeta, math.inf)
            asked = count_who_has(nodes)
            got = BufferSink()
            result = await getter.get(key, got)
            assert result.source == "peer" and bytes(got.data) == DATA
            assert sum(asked.values()) == 6 and asked[getter.node_id] == 0  # the first 3, then the other 3

    run(main())


def test_holders_the_metadata_names_that_no_longer_serve_send_the_get_to_the_cids_holders(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 7, replicas=1, repair=HAND) as nodes:
            origin, cid = nodes[0], cid_of(DATA)
            holders = {origin.node_id, replica_of(nodes, origin, cid)}
            ids = [n.node_id for n in nodes]
            for i in range(10_000):  # a getter and a third holder the getter would not ask by key
                key = f"moved/{i}"
                kept = set(by_key(key, ids)[:2])
                free = [n for n in nodes if n.node_id not in holders | kept]
                pair = [
                    (g, h)
                    for g in free
                    for h in free
                    if h is not g and h.node_id not in by_key(key, [x for x in ids if x != g.node_id])[:3]
                ]
                if pair:
                    getter, third = pair[0]
                    break
            await origin.put(key, BytesSource(DATA))
            assert (await third.get(key, BufferSink(), keep=True)).kept  # a copy the metadata does not name
            for n in nodes:
                if n.node_id in holders:  # the named holders lose theirs (no delete: the file lives on)
                    await n.db(n.store.delete, key)
            got = BufferSink()
            result = await getter.get(key, got)
            assert result.source == "peer" and result.peer_id == third.node_id and bytes(got.data) == DATA

    run(main())


def test_a_deleted_key_is_not_found_through_metadata_kept_past_the_delete(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 7, replicas=1, repair=HAND) as nodes:
            origin, cid = nodes[0], cid_of(DATA)
            holders = {origin.node_id, replica_of(nodes, origin, cid)}
            ids = [n.node_id for n in nodes]
            key = next(k for k in (f"gone/{i}" for i in range(10_000)) if by_key(k, ids)[0] not in holders)
            stale = next(n for n in nodes if n.node_id == by_key(key, ids)[0])
            await origin.put(key, BytesSource(DATA))
            assert stale.repo.get_keymeta(key.encode()) is not None

            async def missed(session: Any, msg: m.Delete) -> m.Ok:
                return m.Ok()  # this member misses the delete (as if it were away), and keeps the metadata

            assert stale.router is not None
            stale.router._routes[m.Delete] = missed
            await origin.delete(key)
            assert stale.repo.get_keymeta(key.encode()) is not None
            assert all(n.repo.get_keymeta(key.encode()) is None for n in nodes if n is not stale)
            getter = next(n for n in nodes if n.node_id not in holders | {stale.node_id})
            asked, fetched = count_who_has(nodes), count_kind(nodes, m.Leaves)
            with pytest.raises(NotFound, match="no file under key"):
                await getter.get(key, BufferSink())
            assert sum(fetched.values()) == 0  # the stale metadata's holders were never asked for it
            assert sum(asked.values()) == 6  # the ranked 3 (the stale answer ignored), then the rest

    run(main())


def test_metadata_reaches_a_member_that_joins_and_ranks_for_the_key(tmp_path: Path) -> None:
    passes = Settings(interval=3600.0, debounce=0.2)  # a join triggers a pass, as it does in service

    async def main() -> None:
        async with cluster(tmp_path, 6, replicas=1, repair=passes) as nodes:
            layout = Layout.of(tmp_path / "late")
            init(layout, NETKEY)
            late_id = identity.load(layout.node_key, layout.network_key).node_id
            ids = [n.node_id for n in nodes]
            key = next(
                k for k in (f"late/{i}" for i in range(10_000)) if by_key(k, [*ids, late_id])[0] == late_id
            )
            report = await nodes[0].put(key, BytesSource(DATA))
            late = await start_node(
                tmp_path / "late", [nodes[0].peers.listen_addr], replicas=1, repair=passes
            )
            nodes.append(late)  # closed with the cluster
            await connected(nodes)
            await wait_until(lambda: late.repo.get_keymeta(key.encode()) is not None)
            row = late.repo.get_keymeta(key.encode())
            assert row is not None and row.cid == report.cid
            holders = {n.node_id for n in nodes if n.repo.get_file(key.encode()) is not None}
            kept = set(by_key(key, [n.node_id for n in nodes])[:2])
            getter = next(n for n in nodes if n.node_id not in holders | kept)
            asked = count_who_has(nodes)
            got = BufferSink()
            assert (await getter.get(key, got)).source == "peer" and bytes(got.data) == DATA
            assert sum(asked.values()) <= 3

    run(main())


def test_a_member_on_an_older_build_is_sent_no_metadata_and_still_finds_the_key(tmp_path: Path) -> None:
    # An earlier build ends the connection on a kind or field it does not know (proto/features.py): here
    # one member's sessions say it runs 0.1, so nobody sends it key_meta or have's meta.
    async def main() -> None:
        async with cluster(tmp_path, 5, replicas=1, repair=HAND) as nodes:
            old, origin = nodes[1], nodes[0]
            ids = [n.node_id for n in nodes]
            key = next(k for k in (f"old/{i}" for i in range(10_000)) if by_key(k, ids)[0] == old.node_id)
            for n in nodes:  # both ways: it speaks none of it, and is sent none of it
                for s in n.peers.sessions.values():
                    if old.node_id in (n.node_id, s.peer_id):
                        s.hello["agent"] = "p2pfast/0.1.0"
            sent = count_kind(nodes, m.KeyMeta)
            await origin.put(key, BytesSource(DATA))
            assert sent[old.node_id] == 0 and old.repo.get_keymeta(key.encode()) is None
            # the key's metadata went to the 2 ranked first among the members that speak it
            speakers = [i for i in ids if i != old.node_id]
            assert {n.node_id for n in nodes if n.repo.get_keymeta(key.encode())} == set(
                by_key(key, speakers)[:2]
            )
            keeper = by_key(key, speakers)[0]
            reply = await old.peers.sessions[keeper].request(m.WhoHas(key=key))
            assert reply.meta is None  # what the keeper knows, it does not tell an older build
            new = next(n for n in nodes if n.node_id not in (old.node_id, keeper))
            reply = await new.peers.sessions[keeper].request(m.WhoHas(key=key))
            assert reply.cid is not None or reply.meta is not None  # and does tell one that speaks it
            got = BufferSink()
            if old.repo.get_file(key.encode()) is None:  # it asks every member, as before; no meta comes
                assert (await old.get(key, got)).source == "peer" and bytes(got.data) == DATA

    run(main())
