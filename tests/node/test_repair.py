"""The repair service between real in-process nodes (real TCP on 127.0.0.1, real repos): the holds digest,
which holder copies, the copies landing verified, a tombstone winning over a repair copy, the throttle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from inproc import cluster, run, start_node, wait_until

from p2pfast.errors import PeerUnavailable
from p2pfast.node import placement
from p2pfast.node.repair import Settings, _Pace
from p2pfast.node.replicate import StoreOutcome, replicate
from p2pfast.node.sources import BufferSink, BytesSource
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.repo.repo import Repo
from p2pfast.store import contentid


def test_holds_answers_one_bit_per_file_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2, replicas=1) as (a, b):
            reports = [await a.put(f"k{i}", BytesSource(bytes([i]) * (i + 1))) for i in range(3)]
            unknown = "b3:" + "ee" * 32
            asked = (("k2", reports[2].cid), ("k1", unknown), ("k0", reports[0].cid), ("k0", reports[1].cid))
            reply = await a.peers.sessions[b.node_id].request(m.Holds(asked))
            assert reply.held(4) == [True, False, True, False]  # k0 names another object than k1's
            many = tuple((f"k{i}", f"b3:{i:064x}") for i in range(control.MAX_HOLDS))
            none = await a.peers.sessions[b.node_id].request(m.Holds(many))
            assert none.held(len(many)) == [False] * len(many)

    run(main())


def test_a_file_short_of_copies_is_copied_by_the_first_ranked_holder_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2, replicas=2) as (a, b):
            data = bytes(range(256)) * 4000
            report = await a.put("short", BytesSource(data))
            assert report.replicated_to == [b.node_id]  # only one peer: 2 copies of the 3 wanted
            c = await start_node(tmp_path / "c", [a.peers.listen_addr], replicas=2)
            try:
                await wait_until(lambda: all(len(n.peers.sessions) == 2 for n in (a, b, c)))
                first = max((a, b), key=lambda n: placement.weight(report.cid, n.node_id))
                other = b if first is a else a
                assert first.repair is not None and other.repair is not None
                left = await other.repair.pass_now("test")
                assert left.under_replicated == 1 and left.left_to == 1 and left.copies == 0
                done = await first.repair.pass_now("test")
                assert done.copies == 1 and done.bytes == len(data) and done.still_under_count == 0
                got = BufferSink()
                assert (await c.get("short", got)).source == "local" and bytes(got.data) == data
                again = await first.repair.pass_now("test")
                assert again.under_replicated == 0 and again.copies == 0
                assert c.ctx is not None  # the copy's sender is recorded as a holder, like a store's
                assert {s.peer for s in c.repo.shares_for(report.cid)} == {first.node_id}
            finally:
                await c.close()

    run(main())


def test_a_repair_copy_of_a_deleted_file_is_refused_and_the_sender_hears_of_the_delete(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=2) as (a, b, c):
            report = await a.put("gone", BytesSource(b"old copy" * 1000))
            assert sorted(report.replicated_to) == sorted([b.node_id, c.node_id])
            await c.close()  # c is away during the delete, and keeps its copy
            await a.delete("gone")
            assert a.repo.get_tombstone(b"gone") is not None
            with Repo.open(tmp_path / "n2" / "p2p.db") as repo:
                repo.forget_peers()  # so that c, back, dials only whom the test says
            c = await start_node(tmp_path / "n2", [])
            try:
                old = c.store.read_bytes("gone")  # held in memory: the delete may reach c any moment now
                c.peers.dial_soon(a.peers.listen_addr)
                await wait_until(lambda: a.node_id in c.peers.sessions)
                outcome = StoreOutcome(report.cid, report.size)
                await replicate(
                    [c.peers.sessions[a.node_id]], c.store, c.db, b"gone", report.cid, report.size, old,
                    outcome=outcome, repair=True,
                )  # fmt: skip
                assert outcome.acked == [] and "was deleted" in outcome.failed[a.node_id]
                assert a.repo.get_file(b"gone") is None  # not brought back
                await wait_until(lambda: c.repo.get_file(b"gone") is None)  # c heard of the delete
            finally:
                await c.close()

    run(main())


def test_a_user_store_of_a_deleted_key_is_accepted(tmp_path: Path) -> None:
    # The tombstone stops old copies, not a user storing the key again.
    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            await a.put("again", BytesSource(b"first"))
            await a.delete("again")
            report = await b.put("again", BytesSource(b"first"))
            assert report.replicated_to == [a.node_id]
            assert a.repo.get_file(b"again") is not None

    run(main())


def test_pace_holds_copies_to_the_bandwidth() -> None:
    async def main() -> float:
        pace = _Pace(10 * 1024 * 1024)
        t0 = time.monotonic()
        for _ in range(4):
            await pace(1024 * 1024)  # 4 MiB at 10 MiB/s: 0.4 s
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took >= 0.35, took  # a floor, not a speed: the throttle must wait at least this long


def test_a_pass_on_a_stopping_node_ends_with_peer_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2, replicas=2) as (a, b):
            report = await a.put("x", BytesSource(b"x"))
            c = await start_node(tmp_path / "c", [a.peers.listen_addr], replicas=2)
            try:
                await wait_until(lambda: all(len(n.peers.sessions) == 2 for n in (a, b, c)))
                first = max((a, b), key=lambda n: placement.weight(report.cid, n.node_id))
                assert first.repair is not None
                first.draining = True  # it would copy x to c, but it is stopping
                with pytest.raises(PeerUnavailable, match="shutting down"):
                    await first.repair.pass_now("test")
            finally:
                await c.close()

    run(main())


def cid_of(data: bytes) -> str:
    seg = 1024 * 1024
    parts = [data[i : i + seg] for i in range(0, len(data), seg)] or [b""]
    return contentid.root(len(data), b"".join(contentid.leaf(p) for p in parts))


def test_a_full_node_refuses_and_the_store_and_the_repair_move_on_to_the_next(tmp_path: Path) -> None:
    data = bytes(range(256)) * 400  # 100 KiB
    cid = cid_of(data)

    async def main() -> None:
        now = Settings(grace=0.0)  # a member that goes stops counting at once
        a = await start_node(tmp_path / "a", [], replicas=2, repair=now)
        others = []
        try:
            for name in "bcd":
                others.append(
                    await start_node(tmp_path / name, [a.peers.listen_addr], replicas=2, repair=now)
                )
            await wait_until(lambda: all(len(n.peers.sessions) == 3 for n in [a, *others]))
            full = max(others, key=lambda n: placement.weight(cid, n.node_id))  # ranked first for it
            full.max_storage = 50_000  # smaller than the object: it must refuse
            report = await a.put("big", BytesSource(data))
            assert report.cid == cid and len(report.replicated_to) == 2, report
            assert full.node_id not in report.replicated_to
            assert "max_storage" in report.failed[full.node_id]
            assert full.repo.get_file(b"big") is None
            # one holder gone: the repair, too, passes over the full node and uses the last one
            gone = next(n for n in others if n.node_id in report.replicated_to)
            await gone.close()
            others.remove(gone)
            await wait_until(lambda: all(len(n.peers.sessions) == 2 for n in [a, *others]))
            spare = next(n for n in others if n is not full)
            assert spare.repo.get_file(b"big") is not None  # the other holder, still there
            assert a.repair is not None and spare.repair is not None
            first = max((a, spare), key=lambda n: placement.weight(cid, n.node_id))
            assert first.repair is not None
            done = await first.repair.pass_now("test")
            assert done.still_under_count == 1 and done.copies == 0  # 2 copies; the only other is full
            assert full.repo.get_file(b"big") is None
        finally:
            for n in [a, *others]:
                await n.close()

    run(main())
