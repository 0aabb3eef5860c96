"""Store fan-out, verified get and delete between real nodes: each Node has its own data dir, repo and
store, and they talk over real TCP on 127.0.0.1 (all in one event loop, so a test can look inside each
node between steps). Process-level tests of the same paths go through the CLI in tests/cli/."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from inproc import cluster, run, source, start_node, store, wait_until

from p2pfast.counters import COUNTERS
from p2pfast.errors import NotFound, PeerUnavailable
from p2pfast.front.clientio import FdSink
from p2pfast.node import Node, fetch, flow
from p2pfast.node.sources import BufferSink, BytesSource
from p2pfast.proto import messages as m
from p2pfast.store import contentid


async def get(node: Node, key: str, out: Path, keep: bool = False) -> Any:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return await node.get(key, FdSink(fd), keep=keep)
    finally:
        os.close(fd)


def holds(node: Node, key: str) -> bool:
    return node.repo.get_file(key.encode()) is not None


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
def test_store_replicates_and_get_fetches_verified(tmp_path: Path, size: int) -> None:
    src = source(tmp_path, size)

    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            report = await store(a, "doc", src)
            assert sorted(report.replicated_to) == sorted([b.node_id, c.node_id])
            assert report.failed == {}
            for peer in (b, c):  # each replica holds it under its own keys, and it reads back
                assert peer.store.read_bytes("doc") == src.read_bytes()
            assert {s.peer for s in a.repo.shares_for(report.cid)} == {b.node_id, c.node_id}
            d = await start_node(tmp_path / "d", [a.peers.listen_addr])
            try:
                await wait_until(lambda: len(d.peers.sessions) == 3)
                out = tmp_path / "out"
                got = await get(d, "doc", out)
                assert got.peer_id in (a.node_id, b.node_id, c.node_id)
                assert got.cid == report.cid and out.read_bytes() == src.read_bytes()
                assert not holds(d, "doc")  # a get does not keep a copy
            finally:
                await d.close()

    run(main())


@pytest.mark.parametrize("size", [0, 5, 2 * 1024 * 1024 + 3])
def test_the_node_api_takes_sources_and_sinks_in_memory(tmp_path: Path, size: int) -> None:
    # What a front end with no fd (the gateway, a repair) uses: bytes in, bytes out, through the loop.
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            report = await a.put("mem", BytesSource(data))
            assert report.size == size and report.replicated_to == [b.node_id]
            local, fetched = BufferSink(), BufferSink()
            assert (await a.get("mem", local)).source == "local"
            await b.db(b.store.delete, "mem")  # b now has to fetch it from a
            got = await b.get("mem", fetched)
            assert got.source == "peer" and got.cid == report.cid
            assert bytes(local.data) == data and bytes(fetched.data) == data

    run(main())


def test_replicas_setting_places_exactly_n_copies(tmp_path: Path) -> None:
    src = source(tmp_path, 5000)

    async def main() -> None:
        async with cluster(tmp_path, 5, replicas=2) as nodes:
            report = await store(nodes[0], "k", src)
            assert len(report.replicated_to) == 2 and report.replica_target == 2
            holders = [n.node_id for n in nodes[1:] if holds(n, "k")]
            assert sorted(holders) == sorted(report.replicated_to)
            # placement is a function of the content id: the same choice on every node
            assert sorted(s.peer_id for s in nodes[0].replica_set(report.cid)) == sorted(report.replicated_to)

    run(main())


def test_delete_reaches_every_copy_and_an_offline_peer_later(tmp_path: Path) -> None:
    src = source(tmp_path, 200_000)

    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            e = await start_node(tmp_path / "e", [a.peers.listen_addr])
            await wait_until(lambda: len(e.peers.sessions) == 3)
            await store(a, "gone", src)
            assert all(holds(n, "gone") for n in (a, b, c, e))
            e_root = e.layout.root
            await e.close()  # E goes offline holding a copy
            await wait_until(lambda: all(len(n.peers.sessions) == 2 for n in (a, b, c)))
            report = await b.delete("gone")
            assert report.local and sorted(report.confirmed_by) == sorted([a.node_id, c.node_id])
            for n in (a, b, c):
                assert not holds(n, "gone")
                assert n.repo.get_tombstone(b"gone") is not None
            e = await start_node(e_root, [a.peers.listen_addr])  # back, with its stale copy
            try:
                await wait_until(lambda: not holds(e, "gone"))  # it learns the tombstone on connect
                # the row goes first, then the file (the DB thread's next job): wait for both
                await wait_until(lambda: not e.store.object_path(report.cid).exists())
                with pytest.raises(NotFound):
                    await get(e, "gone", tmp_path / "o")
            finally:
                await e.close()

    run(main())


def test_get_fails_over_from_a_holder_serving_corrupt_bytes(tmp_path: Path) -> None:
    src = source(tmp_path, 3 * 1024 * 1024 + 5)

    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            report = await store(a, "x", src)
            await a.db(a.store.delete, "x")  # only B and C hold it now
            # B's copy gets one flipped byte inside segment 1 of its object file
            path = b.store.object_path(report.cid)
            raw = bytearray(path.read_bytes())
            raw[1024 * 1024 + 4096] ^= 1
            path.write_bytes(bytes(raw))
            out = tmp_path / "out"
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                holders = [a.peers.sessions[b.node_id], a.peers.sessions[c.node_id]]
                size, served = await fetch.fetch(holders, report.cid, FdSink(fd), a.ex)
            finally:
                os.close(fd)
            assert size == src.stat().st_size
            assert served[c.node_id] > served.get(b.node_id, 0)  # B failed at segment 1; C served the rest
            assert out.read_bytes() == src.read_bytes()

    run(main())


def test_get_with_no_holder_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, _):
            with pytest.raises(NotFound, match="no file under key"):
                await get(a, "nothing", tmp_path / "o")
        lone = await start_node(tmp_path / "lone", [])
        try:
            with pytest.raises(PeerUnavailable, match="no peer is connected"):
                await get(lone, "nothing", tmp_path / "o")
        finally:
            await lone.close()

    run(main())


def test_concurrent_stores_through_one_node(tmp_path: Path) -> None:
    srcs = [source(tmp_path, 10_000 + i * 777, seed=i) for i in range(50)]

    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            reports = await asyncio.gather(*(store(a, f"f{i}", p) for i, p in enumerate(srcs)))
            assert all(len(r.replicated_to) == 2 for r in reports)
            for i, p in enumerate(srcs):
                for n in (b, c):
                    assert n.store.read_bytes(f"f{i}") == p.read_bytes()

    run(main())


def test_leaves_check_against_the_content_id(tmp_path: Path) -> None:
    src = source(tmp_path, 2 * 1024 * 1024 + 1)

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            report = await store(a, "l", src)
            size, leaves = await fetch.fetch_leaves(b.peers.sessions[a.node_id], report.cid)
            assert size == src.stat().st_size and contentid.root(size, leaves) == report.cid
            assert len(leaves) == 3 * 32

    run(main())


def test_replica_refuses_an_object_over_its_limit_and_the_store_says_so(tmp_path: Path) -> None:
    src = source(tmp_path, 300_000)

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            small = await start_node(tmp_path / "small", [a.peers.listen_addr], max_object=100_000)
            try:
                await wait_until(lambda: len(a.peers.sessions) == 2 and len(small.peers.sessions) == 2)
                report = await store(a, "big", src)
                assert report.replicated_to == [b.node_id]
                assert "over this node's limit of 100000" in report.failed[small.node_id]
                assert not holds(small, "big")
                assert not [p for p in small.store.tmp_dir.iterdir()]  # nothing half-written left
            finally:
                await small.close()

    run(main())


def test_get_keep_stores_a_verified_local_replica(tmp_path: Path) -> None:
    src = source(tmp_path, 2 * 1024 * 1024 + 99)

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, _):
            report = await store(a, "kept", src)
            d = await start_node(tmp_path / "d", [a.peers.listen_addr])
            try:
                await wait_until(lambda: len(d.peers.sessions) == 2)
                out = tmp_path / "out"
                got = await get(d, "kept", out, keep=True)
                assert got.kept and got.source != "local" and out.read_bytes() == src.read_bytes()
                assert d.store.read_bytes("kept") == src.read_bytes()  # under D's own keys
                assert d.repo.get_file(b"kept").cid == report.cid
                assert [s.peer for s in d.repo.shares_for(report.cid)] == [got.peer_id]
                again = await get(d, "kept", tmp_path / "again")
                assert again.source == "local"
            finally:
                await d.close()

    run(main())


def test_get_fetches_from_several_holders_and_a_stalled_one_is_overtaken(tmp_path: Path) -> None:
    src = source(tmp_path, 24 * 1024 * 1024 + 3)  # 25 segments: 4 pieces

    async def main() -> None:
        async with cluster(tmp_path, 4) as (a, b, c, d):
            report = await store(a, "par", src)
            assert len(report.replicated_to) == 3
            e = await start_node(tmp_path / "e", [a.peers.listen_addr])
            try:
                await wait_until(lambda: len(e.peers.sessions) == 4)
                out = tmp_path / "out"
                got = await get(e, "par", out)
                assert out.read_bytes() == src.read_bytes()
                assert got.holder_count >= 2  # the pieces were spread over several holders
                # B's disk thread stalls (a real stall of the real node, released below): its pieces are
                # finished by the others long before B's stall timeout
                release = threading.Event()
                b.db_later(release.wait, 60)
                holders = [e.peers.sessions[p] for p in (b.node_id, c.node_id, d.node_id)]
                fd = os.open(tmp_path / "out2", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    loop = asyncio.get_running_loop()
                    t0 = loop.time()
                    size, served = await fetch.fetch(holders, report.cid, FdSink(fd), e.ex)
                    took = loop.time() - t0
                finally:
                    os.close(fd)
                    release.set()
                assert size == src.stat().st_size and (tmp_path / "out2").read_bytes() == src.read_bytes()
                assert served.get(b.node_id, 0) == 0 and took < flow.STALL_TIMEOUT
            finally:
                await e.close()

    run(main())


# -- group commit of shares rows -------------------------------------------------------------------------
def test_concurrent_share_rows_are_committed_together(tmp_path: Path) -> None:
    from p2pfast.node.storing import GroupWrite

    async def main() -> tuple[list[int], set[tuple[str, str]]]:
        async with cluster(tmp_path, 1) as (a,):
            batches: list[int] = []
            gate = threading.Event()

            def write(rows: list[Any]) -> None:
                gate.wait(10)  # the first batch holds the DB thread: the others queue up behind it
                batches.append(len(rows))
                a.repo.add_share_rows(rows)

            assert a.ctx is not None
            group = GroupWrite(a.ctx, write)
            cids = [f"b3:{i:064x}" for i in range(20)]
            adds = [asyncio.ensure_future(group.add([(c, "p" * 64, 1.0), (c, "q" * 64, 1.0)])) for c in cids]
            gate.set()
            await asyncio.gather(*adds)
            rows = {(r.cid, r.peer) for r in await a.db(a.repo.list_shares)}
            return batches, rows

    batches, rows = run(main())
    assert sum(batches) == 40 and len(batches) <= 2, batches
    assert len(rows) == 40


def test_replica_refuses_an_object_larger_than_its_free_space(tmp_path: Path) -> None:
    async def main() -> str:
        async with cluster(tmp_path, 2) as (a, b):
            session = a.peers.sessions[b.node_id]
            stream = session.open_stream()
            cid = "b3:" + "ab" * 32
            try:
                await session.request(m.Store(sid=stream.sid, cid=cid, size=1 << 52, key="k"))
            except PeerUnavailable as exc:  # the refusal, with its reason, before any byte moved
                return str(exc)
            raise AssertionError("a store larger than the disk was accepted")

    reason = run(main())
    assert "does not fit" in reason and " free, and this node keeps 64.0 MiB free in reserve" in reason


def test_a_ranged_read_fetches_only_the_segments_of_its_range(tmp_path: Path) -> None:
    """Node.read_range from a node with no copy: the bytes of the range, verified, and from the holder
    only the segments the range lies in (a client that reads a big object in 8 MiB ranges, as boto3's
    download_file does, would otherwise cost the object's start again for every range)."""
    seg = 1 << 20
    data = os.urandom(9 * seg + 4321)
    ranges = [
        (0, 1),
        (0, len(data)),
        (5 * seg - 3, 5 * seg + 3),
        (8 * seg, len(data)),
        (len(data) - 1, len(data)),
    ]
    ranges += [(3 * seg, 4 * seg), (123, 2 * seg + 7)]

    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            report = await a.put("big", BytesSource(data))
            assert sorted(report.replicated_to) == sorted([b.node_id, c.node_id])
            await b.db(b.store.delete, "big")  # b has to fetch it from a and c
            for start, end in ranges:
                sink = BufferSink()
                await b.read_range(report.cid, sink, start, end)
                assert bytes(sink.data) == data[start:end], (start, end)
            # what crossed the connections for a range over two segments, with two holders (a and c):
            # those two segments once (and the segment hashes, the requests), not the five segments
            # before them, nor a second copy of the range from the other holder (COUNTERS: every node's
            # reads, all in this process)
            before = COUNTERS.bytes_in
            sink = BufferSink()
            await b.read_range(report.cid, sink, 5 * seg + 10, 6 * seg + 20)
            assert bytes(sink.data) == data[5 * seg + 10 : 6 * seg + 20]
            assert 2 * seg <= COUNTERS.bytes_in - before < 3 * seg
            # a local read of a range reads the range too (the holder itself)
            sink = BufferSink()
            await a.read_range(report.cid, sink, 7, 7 + seg)
            assert bytes(sink.data) == data[7 : 7 + seg]

    run(main())


def test_a_scratch_file_stays_on_the_node_that_stored_it(tmp_path: Path) -> None:
    """A file under .scratch/ (userkey.SCRATCH_PREFIX: an S3 upload's parts) is durable where it was
    stored and nowhere else: no replica, no copy made by a repair pass; another member still gets it,
    from that node, and a delete removes it."""
    data = os.urandom(300_000)

    async def main() -> None:
        async with cluster(tmp_path, 3) as (a, b, c):
            report = await a.put(".scratch/up/00001", BytesSource(data))
            assert report.replicated_to == [] and report.failed == {}
            normal = await a.put("kept/file", BytesSource(data[:1000]))
            assert sorted(normal.replicated_to) == sorted([b.node_id, c.node_id])
            assert a.repair is not None
            done = await a.repair.pass_now("test")
            assert done.files == 1 and done.copies == 0  # the scratch file is not counted, nor copied
            for peer in (b, c):
                assert not holds(peer, ".scratch/up/00001")
                sink = BufferSink()
                await peer.get(".scratch/up/00001", sink)
                assert bytes(sink.data) == data
            await a.delete(".scratch/up/00001")
            assert not holds(a, ".scratch/up/00001")

    run(main())
