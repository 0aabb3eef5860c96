"""The repair service between real in-process nodes (real TCP on 127.0.0.1, real repos): the holds digest,
which holder copies, the copies landing verified, a tombstone winning over a repair copy, the throttle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from inproc import cid_of, cluster, run, start_node, wait_until

from p2pfast.errors import PeerUnavailable
from p2pfast.node import placement
from p2pfast.node.flow import BUSY_SHARE, Activity
from p2pfast.node.repair import Settings, _Pace
from p2pfast.node.replicate import StoreOutcome, replicate
from p2pfast.node.sources import BufferSink, BytesSource
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.repo.repo import Repo


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


HAND = Settings(interval=3600.0, debounce=3600.0)  # no pass but the test's own


def payload_where(rank: Callable[[str], bool], start: int = 0) -> bytes:
    """The first small payload whose content id `rank` accepts (weights are fixed once ids are)."""
    for i in range(start, start + 10_000):
        data = f"payload {i} ".encode() * 500
        if rank(cid_of(data)):
            return data
    raise AssertionError("no payload ranks as wanted")


def test_a_member_that_joins_gets_the_files_it_ranks_for_and_the_copy_it_replaces_goes(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=1, repair=HAND) as (a, b, c):
            d = await start_node(tmp_path / "d", [], replicas=1, repair=HAND)  # not connected yet
            try:
                w = placement.weight
                data = payload_where(
                    lambda cid: w(cid, d.node_id) > max(w(cid, b.node_id), w(cid, c.node_id))
                )
                report = await a.put("moved", BytesSource(data))
                (old,) = [n for n in (b, c) if n.node_id in report.replicated_to]
                d.peers.dial_soon(a.peers.listen_addr)
                await wait_until(lambda: all(len(n.peers.sessions) == 3 for n in (a, b, c, d)))
                # a's store (pinned) and old's copy: at its target of 2, but d ranks above old now
                first = max((a, old), key=lambda n: w(report.cid, n.node_id))
                other = old if first is a else a
                assert first.repair is not None and other.repair is not None and old.repair is not None
                mid = await other.repair.pass_now("test")
                assert mid.copies == 0 and mid.dropped == 0  # not its move to make
                moved = await first.repair.pass_now("test")
                assert moved.copies == 1 and moved.rebalanced == 1 and moved.under_replicated == 0
                assert d.repo.get_file(b"moved") is not None
                assert old.repo.get_file(b"moved") is not None  # not dropped before its own pass
                gone = await old.repair.pass_now("test")
                assert gone.dropped == 1 and old.repo.get_file(b"moved") is None
                assert not old.store.object_path(report.cid).exists()  # its object file went too
                got = BufferSink()
                assert (await d.get("moved", got)).source == "local" and bytes(got.data) == data
                for n in (a, b, c, d):  # settled: nothing more moves, nothing more goes
                    assert n.repair is not None
                    again = await n.repair.pass_now("test")
                    assert again.copies == again.dropped == again.moves_pending == 0, again
                assert {n.node_id for n in (a, b, c, d) if n.repo.get_file(b"moved")} == {
                    a.node_id,
                    d.node_id,
                }
                # the origin no longer counts old as a holder (its pass found that share stale)
                assert old.node_id not in {s.peer for s in a.repo.shares_for(report.cid)}
            finally:
                await d.close()

    run(main())


def test_a_users_own_store_is_never_dropped_and_a_received_copy_beyond_the_target_is(tmp_path: Path) -> None:
    # Holders in keep order: the two nodes users stored the file on, then the one that received a copy.
    # With a target of 2 the received copy is surplus, though it ranks first by weight: without the
    # holds reply's `pinned` bits, that holder would count itself among the two to keep.
    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=1, repair=HAND) as (a, b, c):
            w = placement.weight
            ids = {n.node_id: n for n in (a, b, c)}
            data = payload_where(lambda cid: max(ids, key=lambda i: w(cid, i)) != a.node_id)
            report = await a.put("both", BytesSource(data))
            (copy,) = [ids[i] for i in report.replicated_to]  # the best-ranked of b and c: first of all
            user = c if copy is b else b
            again = await user.put("both", BytesSource(data))  # a user stores the same file there
            assert again.cid == report.cid
            assert user.repo.get_file(b"both").origin is None  # type: ignore[union-attr]
            for n in (a, user):
                assert n.repair is not None
                r = await n.repair.pass_now("test")
                assert r.dropped == 0 and n.repo.get_file(b"both") is not None
            assert copy.repair is not None
            dropped = await copy.repair.pass_now("test")
            assert dropped.dropped == 1 and copy.repo.get_file(b"both") is None
            for n in (a, user):
                got = BufferSink()
                assert (await n.get("both", got)).source == "local" and bytes(got.data) == data

    run(main())


def test_drop_copy_keeps_a_row_stored_again_or_by_a_user(tmp_path: Path) -> None:
    # The last check before a surplus copy goes is on the DB thread, against the row as it is then.
    async def main() -> None:
        async with cluster(tmp_path, 2, replicas=1, repair=HAND) as (a, b):
            report = await a.put("k", BytesSource(b"v" * 5000))
            row = b.repo.get_file(b"k")
            assert row is not None and row.origin == a.node_id
            assert b.repo.drop_copy(b"k", report.cid, row.created + 1) is None  # stored again since
            assert b.repo.drop_copy(b"k", "b3:" + "00" * 32, row.created) is None  # names other content
            assert a.repo.drop_copy(b"k", report.cid, a.repo.get_file(b"k").created) is None  # type: ignore[union-attr]
            assert a.repo.get_file(b"k") is not None and b.repo.get_file(b"k") is not None
            assert b.repo.drop_copy(b"k", report.cid, row.created) == (report.cid, True)
            assert b.repo.get_file(b"k") is None

    run(main())


def test_repair_copies_yield_to_user_transfers_on_the_node() -> None:
    # While a user's transfer runs (and briefly after), each byte of a repair copy books BUSY_SHARE
    # times its time: the budget is read back, so nothing here depends on how fast the machine is.
    async def main() -> None:
        rate = 100 * 1024 * 1024
        n = 1024 * 1024
        activity = Activity()
        idle = _Pace(rate, activity)
        t0 = time.monotonic()
        await idle.when_busy(n)  # a received copy while no user transfer runs: not held at all
        assert idle._throttle._free_at == 0.0
        await idle(n)
        assert idle._throttle._free_at - t0 < 4 * n / rate  # booked n / rate (10 ms), not 8 times that
        busy = _Pace(rate, activity)
        with activity.user():
            assert activity.busy(time.monotonic())
            t1 = time.monotonic()
            await busy(n)
            assert busy._throttle._free_at - t1 >= BUSY_SHARE * n / rate
            await busy.when_busy(n)
            assert busy._throttle._free_at - t1 >= 2 * BUSY_SHARE * n / rate
        assert activity.active == 0 and activity.busy(time.monotonic())  # it lingers a moment

    asyncio.run(main())


class _SlowSource:
    """A source that gives its bytes only as the test lets it (a user's upload still coming in)."""

    file: int | None = None

    def __init__(self, data: bytes) -> None:
        self.data, self.gate = data, asyncio.Event()

    async def read(self, limit: int) -> bytes:
        await self.gate.wait()
        chunk, self.data = self.data[:limit], self.data[limit:]
        return chunk


class _Counted(Activity):
    """The node's own Activity, remembering how many user transfers it saw begin."""

    def __init__(self) -> None:
        super().__init__()
        self.begun = 0

    @contextlib.contextmanager
    def user(self) -> Iterator[None]:
        self.begun += 1
        with super().user():
            yield


def test_a_store_counts_as_user_activity_on_the_storer_and_its_replicas(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=2, repair=HAND) as (a, b, c):
            assert a.ctx is not None and b.ctx is not None and c.ctx is not None
            a.ctx.activity, b.ctx.activity, c.ctx.activity = _Counted(), _Counted(), _Counted()
            src = _SlowSource(b"u" * 3_000_000)
            put = asyncio.ensure_future(a.put("user", src))
            await wait_until(lambda: a.ctx is not None and a.ctx.activity.active == 1)
            src.gate.set()
            report = await put
            assert sorted(report.replicated_to) == sorted([b.node_id, c.node_id])
            assert [n.ctx.activity.begun for n in (a, b, c) if n.ctx] == [1, 1, 1]  # the put, two receives
            assert all(n.ctx.activity.active == 0 for n in (a, b, c) if n.ctx)
            # a repair copy is not user activity on its receiver: it is what yields there
            await c.db(c.store.delete, "user")
            outcome = StoreOutcome(report.cid, report.size)
            await replicate(
                [a.peers.sessions[c.node_id]], a.store, a.db, b"user", report.cid, report.size,
                outcome=outcome, repair=True,
            )  # fmt: skip
            assert outcome.acked == [c.node_id] and c.ctx.activity.begun == 1

    run(main())


def test_nothing_moves_while_a_holder_is_away_and_may_be_where_a_user_stored_the_file(tmp_path: Path) -> None:
    # The origin goes away within its grace: its copy still counts, but whether a user stored the file
    # there (so that it stays among the holders) is not known, so the ideal holders are not either.
    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=1, repair=HAND) as (a, b, c):
            w = placement.weight
            data = payload_where(lambda cid: min((a, b, c), key=lambda n: w(cid, n.node_id)) is b)
            report = await b.put("k", BytesSource(data))  # b's own store, ranked last of the three by weight
            (x,) = [n for n in (a, c) if n.node_id in report.replicated_to]
            y = c if x is a else a
            await b.close()
            await wait_until(lambda: b.node_id not in x.peers.sessions and b.node_id not in y.peers.sessions)
            assert x.repair is not None
            r = await x.repair.pass_now("test")
            assert r.under_replicated == 0 and r.copies == 0 and r.rebalanced == 0, r
            assert y.repo.get_file(b"k") is None

    run(main())
