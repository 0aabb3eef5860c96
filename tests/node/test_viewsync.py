"""The membership view between real in-process nodes (node/viewsync.py): every node learns every member,
a newcomer is known to all soon after it joins one, a restart's higher incarnation replaces the old
record everywhere, and once the views agree an exchange is a single root."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inproc import cluster, crash, dial_failures, run, start_node, wait_until

from p2pfast.net.limits import NetLimits
from p2pfast.node import Node
from p2pfast.node.sources import BufferSink, BytesSource
from p2pfast.proto import messages as m
from p2pfast.proto import view


def views(nodes: list[Node]) -> list[view.View]:
    out = []
    for n in nodes:
        assert n.viewsync is not None
        out.append(n.viewsync.view)
    return out


def agree(nodes: list[Node], size: int) -> bool:
    vs = views(nodes)
    return all(len(v) == size for v in vs) and len({v.root() for v in vs}) == 1


def test_every_node_learns_every_member_and_a_newcomer_reaches_all(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 4) as nodes:
            await wait_until(lambda: agree(nodes, 4))
            for v in views(nodes):
                assert {r.node_id for r in v} == {n.node_id for n in nodes}
                assert all(r.state == view.State.ALIVE and r.addr for r in v)
            late = await start_node(tmp_path / "late", [nodes[-1].peers.listen_addr])
            try:
                await wait_until(lambda: agree([*nodes, late], 5))
                record = views(nodes)[0].get(late.node_id)
                assert record is not None and record.addr == late.peers.listen_addr
                # settled: an exchange is the root and nothing more
                (mine,) = views([late])
                peer = next(iter(late.peers.sessions.values()))
                diff = await peer.request(m.ViewSync(mine.root().hex()))
                assert diff.buckets == ""
                status = await nodes[0].status()
                assert status["members"] == {"alive": 5, "suspect": 0, "dead": 0, "left": 0}
            finally:
                await late.close()

    run(main())


def test_a_restarted_member_replaces_its_old_record_everywhere(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            await wait_until(lambda: agree([a, b, c], 3))
            before = views([a])[0].get(c.node_id)
            assert before is not None
            await c.close()
            c2 = await start_node(tmp_path / "n2", [a.peers.listen_addr])
            try:
                assert c2.node_id == c.node_id
                fresh = views([c2])[0].mine
                assert fresh.inc > before.inc  # a restart outranks its past life
                await wait_until(lambda: agree([a, b, c2], 3))
                assert views([a])[0].get(c.node_id) == fresh and views([b])[0].get(c.node_id) == fresh
            finally:
                await c2.close()

    run(main())


QUICK = NetLimits(suspect_after=0.3, dead_after=0.6)


def state_of(node: Node, node_id: str) -> view.State | None:
    assert node.viewsync is not None
    r = node.viewsync.view.get(node_id)
    return None if r is None else r.state


def test_a_member_that_stops_says_it_left_and_a_crashed_one_is_suspected_then_declared_dead(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 4, limits=QUICK) as (a, b, c, d):
            await wait_until(lambda: agree([a, b, c, d], 4))
            await d.close()  # graceful: no suspicion needed
            await wait_until(lambda: all(state_of(n, d.node_id) == view.State.LEFT for n in (a, b, c)))
            seen: list[view.State | None] = []
            await crash(c)
            await wait_until(
                lambda: seen.append(state_of(a, c.node_id)) or state_of(a, c.node_id) == view.State.DEAD
            )
            assert view.State.SUSPECT in seen  # suspected first, then declared dead
            await wait_until(lambda: state_of(b, c.node_id) == view.State.DEAD)
            status = await a.status()
            assert status["members"] == {"alive": 2, "suspect": 0, "dead": 1, "left": 1}

    run(main())


def test_a_live_member_refutes_a_suspicion_and_every_view_ends_with_it_alive(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            await wait_until(lambda: agree([a, b, c], 3))
            assert a.viewsync is not None
            was = a.viewsync.view.get(c.node_id)
            assert was is not None
            claim = a.viewsync.view.claim(c.node_id, view.State.SUSPECT, 0.0)
            assert claim is not None
            a.viewsync._spread(claim, None)  # a wrongly suspects c, and says so
            await wait_until(lambda: agree([a, b, c], 3) and state_of(a, c.node_id) == view.State.ALIVE)
            now = a.viewsync.view.get(c.node_id)
            assert now is not None and now.inc == was.inc + 1  # c answered one incarnation up

    run(main())


def test_a_peer_of_an_earlier_build_gets_nothing_it_does_not_speak(tmp_path: Path) -> None:
    # An earlier build ends the connection on a kind or field it does not know: it is sent no view
    # message and no `pinned` bits, and the two still work together.
    async def main() -> None:
        a = await start_node(tmp_path / "a", [])
        old = await start_node(tmp_path / "old", [])
        try:
            hello = old.peers._hello
            old.peers._hello = lambda: {**hello(), "agent": "p2pfast/0.1.0"}  # type: ignore[method-assign]
            got: list[str] = []
            assert old.router is not None
            for kind in (m.ViewSync, m.ViewPull, m.ViewNews):
                real = old.router._routes.get(kind)

                async def record(session: object, msg: object, real: object = real) -> object:
                    got.append(type(msg).__name__)
                    return await real(session, msg)  # type: ignore[operator]

                if real is not None:
                    old.router._routes[kind] = record
            report = await a.put("k", BytesSource(b"x" * 3000))
            old.peers.dial_soon(a.peers.listen_addr)
            await wait_until(lambda: a.node_id in old.peers.sessions and old.node_id in a.peers.sessions)
            session = old.peers.sessions[a.node_id]
            assert a.peers.sessions[old.node_id].agent == "p2pfast/0.1.0"
            held = await session.request(m.Holds((("k", report.cid),)))
            assert held.held(1) == [True] and held.pinned == ""  # a's own store, but no pinned bits for it
            assert a.viewsync is not None
            a.viewsync._spread(a.viewsync.view.mine, None)  # news: goes to members that speak the view
            await a.viewsync.sync(a.peers.sessions[old.node_id])
            got_back = BufferSink()
            await old.get("k", got_back)  # and the two still work together
            assert bytes(got_back.data) == b"x" * 3000 and got == []
        finally:
            await old.close()
            await a.close()

    run(main())


def test_a_member_declared_dead_is_dialled_no_more(tmp_path: Path) -> None:
    # Redials every gossip round, and a short backoff: without the view, the dead member's address
    # takes a dial every round or two from every node.
    lim = NetLimits(
        suspect_after=0.2,
        dead_after=0.3,
        gossip_interval=0.1,
        backoff_min=0.05,
        backoff_max=0.1,
        dead_retry=1.5,
    )

    async def main() -> None:
        async with cluster(tmp_path, 3, limits=lim) as (a, b, c):
            await wait_until(lambda: agree([a, b, c], 3))
            target = c.peers.listen_addr
            failed = dial_failures(a)
            await crash(c)
            await wait_until(lambda: state_of(a, c.node_id) == view.State.DEAD)
            assert a.membership is not None
            before, r0 = failed.count(target), a.membership.rounds
            await wait_until(lambda: a.membership is not None and a.membership.rounds >= r0 + 20)
            # 20 rounds (2 s) with a 0.05-0.1 s backoff: ~20 dials if it were still redialled every round;
            # one already queued, and the dead_retry's (1.5 s) one or two, may go
            assert failed.count(target) <= before + 3, failed
            # and yet, once a dead_retry, one gone member is tried (a partition heals that way)
            await wait_until(lambda: failed.count(target) >= before + 2, timeout=10)

    run(main())


def test_a_member_another_member_still_reaches_is_not_suspected(tmp_path: Path) -> None:
    # a's link to c breaks and neither dials the other again, while b's link to c stays: a asks b
    # (probe) before it suspects c, hears that c answers there, and says nothing against c (its watch
    # ends: c's other links watch it).
    async def main() -> None:
        async with cluster(tmp_path, 3, limits=QUICK) as (a, b, c):
            await wait_until(lambda: agree([a, b, c], 3))
            assert a.viewsync is not None and c.viewsync is not None
            inc = c.viewsync.view.mine.inc
            a.peers._self_addrs.add(c.peers.listen_addr)  # a dials c no more (as if the route broke)
            c.peers._self_addrs.add(a.peers.listen_addr)
            probes: list[str] = []
            real = b.router._routes[m.Probe]  # type: ignore[union-attr]

            async def counting(session: object, msg: m.Probe) -> m.Ok:
                probes.append(msg.node)
                return await real(session, msg)  # type: ignore[no-any-return]

            b.router._routes[m.Probe] = counting  # type: ignore[union-attr]
            a.peers.sessions[c.node_id].close(0, "test: the link breaks")
            await wait_until(lambda: probes.count(c.node_id) >= 1)
            # what must not happen within the detector's own bounds: no peer is waited for
            await asyncio.sleep(3 * (QUICK.suspect_after + QUICK.dead_after))
            assert state_of(a, c.node_id) == view.State.ALIVE and state_of(b, c.node_id) == view.State.ALIVE
            assert c.viewsync.view.mine.inc == inc  # no claim was made that c had to refute

    run(main())


def test_a_revoked_member_is_dialled_no_more(tmp_path: Path) -> None:
    # c stays up and listening, so every dial to it would reach it and be refused at the handshake.
    lim = NetLimits(gossip_interval=0.1, backoff_min=0.05, backoff_max=0.1)

    async def main() -> None:
        async with cluster(tmp_path, 3, limits=lim) as (a, b, c):
            target = c.peers.listen_addr
            failed = dial_failures(a)
            assert a.revocations is not None and a.membership is not None
            await a.revocations.revoke(c.node_id)
            await wait_until(lambda: c.node_id not in a.peers.sessions and c.node_id not in b.peers.sessions)
            before, r0 = failed.count(target), a.membership.rounds
            await wait_until(lambda: a.membership is not None and a.membership.rounds >= r0 + 20)
            assert failed.count(target) <= before + 1, failed  # one dial already queued may still go

    run(main())


def test_members_vouch_for_the_addresses_they_reached_and_refuse_a_forged_vouch(tmp_path: Path) -> None:
    # Each pair of members has one session, dialled by one of them: that one vouches for the address it
    # dialled, and the other dials the member's address once to vouch for it too (a verification dial,
    # which becomes no session). A vouch signed by any key but its voucher's is dropped on arrival.
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from p2pfast.proto.revocation import public_hex

    async def main() -> None:
        async with cluster(tmp_path, 3) as nodes:
            a, b, c = nodes

            def all_vouched() -> bool:
                return agree(nodes, 3) and all(r.vouched for v in views(nodes) for r in v)

            await wait_until(all_vouched)
            for v in views(nodes):
                for r in v:
                    signer = v.get(r.voucher)
                    assert r.voucher != r.node_id and signer is not None
                    assert view.vouch_valid(r, signer.sk)
            assert all(len(n.peers.sessions) == 2 for n in nodes)  # the verification dials left none
            assert c.viewsync is not None and a.viewsync is not None
            # a member a knows nothing of, at an address nobody listens on, "vouched" by b: a key that
            # is not b's signed it
            fake = view.Record(os.urandom(32).hex(), "127.0.0.5:9", 1, view.State.ALIVE)
            forged = view.vouch(fake, b.node_id, Ed25519PrivateKey.generate())
            refused = c.viewsync.vouches_refused
            a.peers.sessions[c.node_id].notify(m.ViewNews((forged,)))
            await wait_until(lambda: c.viewsync is not None and c.viewsync.vouches_refused > refused)
            got = c.viewsync.view.get(fake.node_id)
            assert got is not None and not got.vouched  # known, but only on its own word
            assert c.links.addr_of(fake.node_id) is None  # so nobody dials it from the view
            # a made-up member with a key of its own, vouching for another made-up one: its signature
            # checks out, but nobody vouched for the voucher's address, so its word counts for nothing
            key = Ed25519PrivateKey.generate()
            sybil = view.Record(os.urandom(32).hex(), "127.0.0.6:9", 1, view.State.ALIVE, sk=public_hex(key))
            other = view.vouch(
                view.Record(os.urandom(32).hex(), "127.0.0.7:9", 1, view.State.ALIVE), sybil.node_id, key
            )
            refused = c.viewsync.vouches_refused
            a.peers.sessions[c.node_id].notify(m.ViewNews((sybil, other)))
            await wait_until(lambda: c.viewsync is not None and c.viewsync.vouches_refused > refused)
            got = c.viewsync.view.get(other.node_id)
            assert got is not None and not got.vouched and c.links.addr_of(other.node_id) is None

    run(main())


def test_a_peer_of_the_build_before_vouches_gets_records_and_stamps_in_its_form(tmp_path: Path) -> None:
    # A 0.2 build refuses a record of more than five fields or a stamp of more than four (its schema):
    # a 0.3 node strips signing keys, vouches and the vouched bit from what it sends such a peer.
    async def main() -> None:
        a = await start_node(tmp_path / "a", [])
        old = await start_node(tmp_path / "old", [])
        try:
            hello = old.peers._hello
            old.peers._hello = lambda: {**hello(), "agent": "p2pfast/0.2.0"}  # type: ignore[method-assign]
            assert old.viewsync is not None and a.viewsync is not None
            merged: list[view.Record] = []
            stamps: list[view.Stamp] = []
            real_merge, real_pull = old.viewsync._merge_all, old.viewsync.on_pull

            def merge(records: list[view.Record], source: str) -> int:
                merged.extend(records)
                return real_merge(records, source)

            async def pull(session: object, msg: m.ViewPull) -> m.ViewPush:
                stamps.extend(msg.stamps)
                return await real_pull(session, msg)  # type: ignore[arg-type]

            old.viewsync._merge_all = merge  # type: ignore[method-assign]
            assert old.router is not None
            old.router._routes[m.ViewPull] = pull
            old.peers.dial_soon(a.peers.listen_addr)
            await wait_until(lambda: a.node_id in old.peers.sessions and old.node_id in a.peers.sessions)
            assert a.viewsync.view.mine.sk  # a's own record has its key, and old vouched for a's address
            await wait_until(lambda: a.viewsync is not None and a.viewsync.view.mine.vouched)
            session = a.peers.sessions[old.node_id]
            a.viewsync._spread(a.viewsync.view.mine, None)  # news, in the old form
            await a.viewsync.sync(session)  # an exchange a begins: its stamps, in the old form
            await wait_until(lambda: any(r.node_id == a.node_id for r in merged) and bool(stamps))
            assert all(r == r.legacy() for r in merged), merged
            assert all(s.v == -1 for s in stamps), stamps
        finally:
            await old.close()
            await a.close()

    run(main())


def test_the_size_news_is_paged_by_is_never_less_than_a_record_takes() -> None:
    import orjson
    from hypothesis import given
    from hypothesis import strategies as st

    from p2pfast.node.viewsync import _record_size

    hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)
    records = st.builds(
        view.Record,
        node_id=hexes,
        addr=st.sampled_from(
            ["", "127.0.0.1:7001", "[2001:db8::1]:65535", "a-long-name." * 20 + "example:1"]
        ),
        inc=st.integers(0, 2**53),
        state=st.sampled_from(list(view.State)),
        at=st.floats(0, 2e9, allow_nan=False),
        sk=hexes | st.just(""),
        voucher=hexes | st.just(""),
    ).map(
        lambda r: view.Record(
            r.node_id, r.addr, r.inc, r.state, r.at, r.sk, r.voucher, "ef" * 64 if r.voucher else ""
        )
    )

    empty = len(orjson.dumps(m.to_wire(m.ViewNews(()))))

    @given(st.lists(records, min_size=1, max_size=20))
    def check(rs: list[view.Record]) -> None:
        size = len(orjson.dumps(m.to_wire(m.ViewNews(tuple(rs))))) - empty
        assert size <= sum(_record_size(r) for r in rs)

    check()


def test_an_exchange_reaches_every_differing_bucket_past_one_that_does_not_reconcile(tmp_path: Path) -> None:
    # b refuses a's vouches for 200 members of the first 50 buckets (their voucher is nobody b knows),
    # so those buckets differ after every exchange; they take more than one page of stamps. The five
    # members a knows in the last buckets must still reach b in one exchange.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            await wait_until(lambda: agree([a, b], 2))
            assert a.viewsync is not None and b.viewsync is not None
            key, nobody = Ed25519PrivateKey.generate(), "ee" * 32
            now = 1.7e9
            for i in range(200):
                r = view.Record(f"{i % 50:02x}{i:062x}", f"127.0.0.1:{2000 + i}", 1, view.State.ALIVE)
                b.viewsync.view.merge(r, now)
                a.viewsync.view.merge(view.vouch(r, nobody, key), now)
            late = [
                view.Record(f"{250 + i:02x}{i:062x}", f"127.0.0.1:{3000 + i}", 1, view.State.ALIVE)
                for i in range(5)
            ]
            for r in late:
                a.viewsync.view.merge(r, now)
            await b.viewsync.sync(b.peers.sessions[a.node_id])
            assert all(b.viewsync.view.get(r.node_id) is not None for r in late)
            mine = {a.node_id, b.node_id}
            assert not any(
                r.vouched for r in b.viewsync.view if r.node_id[:2] < "32" and r.node_id not in mine
            )

    run(main())
