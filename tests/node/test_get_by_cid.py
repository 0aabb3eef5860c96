"""A get by content id (`get b3:…`) between real nodes in one process: served from the local object
whatever key names it, else fetched verified from the peers that hold it, read-repaired like a key's; a
cid nobody holds is not found, a malformed one and --keep are refused, and no store may take a key that
a get would read as a content id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from inproc import cid_of, cluster, count_who_has, run, source, start_node, store

from p2pfast.errors import BadInput, NotFound, PeerUnavailable
from p2pfast.front.clientio import FdSink
from p2pfast.node import Node, placement
from p2pfast.node.repair import Settings
from p2pfast.node.sources import BufferSink, BytesSource

SEG = 1024 * 1024


class Recorder:
    """A get's progress as the CLI's meter sees it: the phases begun and the bytes counted."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int | None]] = []
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n

    def begin(self, phase: str, total: int | None, peers: int = 1) -> None:
        self.phases.append((phase, total))


async def get_file(
    node: Node, name: str, out: Path, progress: Recorder | None = None, keep: bool = False
) -> Any:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return await node.get(name, FdSink(fd), progress, keep=keep)
    finally:
        os.close(fd)


def test_get_by_cid_reads_the_local_object_under_any_key(tmp_path: Path) -> None:
    src = source(tmp_path, 2 * SEG + 9)

    async def main() -> None:
        async with cluster(tmp_path, 2, replicas=0) as (a, _):
            report = await store(a, "photos/cat.jpg", src)
            out, progress = tmp_path / "out", Recorder()
            got = await get_file(a, report.cid, out, progress)
            assert out.read_bytes() == src.read_bytes()
            assert (got.key, got.cid, got.size, got.source) == (
                report.cid,
                report.cid,
                src.stat().st_size,
                "local",
            )
            assert progress.phases == [("get", src.stat().st_size)] and progress.done == src.stat().st_size
            sink = BufferSink()  # a sink with no fd (a pipe through the loop) takes the same path
            got = await a.get(report.cid, sink)
            assert bytes(sink.data) == src.read_bytes() and got.source == "local"

    run(main())


def test_get_by_cid_fetches_from_a_holder_when_not_held_here(tmp_path: Path) -> None:
    src = source(tmp_path, 3 * SEG + 17, seed=2)

    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=1) as (a, b, c):
            report = await store(a, "doc", src)
            (holder,) = report.replicated_to
            other = b if holder == c.node_id else c  # holds neither the key nor the object
            assert other.repo.get_object(report.cid) is None
            out, progress = tmp_path / "out", Recorder()
            got = await get_file(other, report.cid, out, progress)
            assert out.read_bytes() == src.read_bytes()
            assert got.key == report.cid and got.source == "peer" and got.peer_id in (a.node_id, holder)
            assert not got.kept and other.repo.get_object(report.cid) is None  # nothing kept
            assert progress.phases == [("get", src.stat().st_size)] and progress.done == src.stat().st_size

    run(main())


def test_get_by_cid_repairs_a_corrupt_local_copy_from_a_peer(tmp_path: Path) -> None:
    src = source(tmp_path, 3 * SEG + 5, seed=3)

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            report = await store(a, "x", src)
            path = a.store.object_path(report.cid)  # a flipped byte inside segment 1 of A's copy
            raw = bytearray(path.read_bytes())
            raw[SEG + 4096] ^= 1
            path.write_bytes(bytes(raw))
            out = tmp_path / "out"
            got = await get_file(a, report.cid, out)
            assert got.repaired and got.source == "peer" and got.peer_id == b.node_id
            assert out.read_bytes() == src.read_bytes()
            assert a.store.read_bytes("x") == src.read_bytes()  # the repaired copy serves the key too
            assert [r.key for r in a.repo.list_files()] == [b"x"]  # no file row under the cid

    run(main())


def test_a_cid_nobody_holds_is_not_found_and_with_no_peer_unavailable(tmp_path: Path) -> None:
    nobody = "b3:" + "0" * 64

    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, _):
            with pytest.raises(NotFound, match="held neither by this node nor by its 1 peers"):
                await get_file(a, nobody, tmp_path / "o")
        lone = await start_node(tmp_path / "lone", [])
        try:
            with pytest.raises(PeerUnavailable, match="no peer is connected"):
                await get_file(lone, nobody, tmp_path / "o")
        finally:
            await lone.close()

    run(main())


@pytest.mark.parametrize(
    "name", ["b3:", "b3:abc", "b3:" + "A" * 64, "b3:" + "a" * 65, "b3:" + "a" * 63 + "g"]
)
def test_a_malformed_cid_is_bad_input_not_a_key(tmp_path: Path, name: str) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, _):
            with pytest.raises(BadInput, match="is not a content id"):
                await get_file(a, name, tmp_path / "o")

    run(main())


def test_keep_is_refused_for_a_cid_and_a_store_under_the_cid_prefix_too(tmp_path: Path) -> None:
    src = source(tmp_path, 100, seed=4)

    async def main() -> None:
        async with cluster(tmp_path, 2, replicas=1) as (a, b):
            report = await store(a, "doc", src)
            await a.db(a.store.delete, "doc")  # so the get would fetch, and --keep would store
            with pytest.raises(BadInput, match="--keep stores a replica under a key"):
                await get_file(a, report.cid, tmp_path / "o", keep=True)
            assert a.repo.get_object(report.cid) is None
            for key in (report.cid, "b3:notes"):
                with pytest.raises(BadInput, match="reserved for content ids"):
                    await store(a, key, src)
                assert a.repo.get_file(key.encode()) is None and b.repo.get_file(key.encode()) is None

    run(main())


HAND = Settings(interval=3600.0, debounce=3600.0)  # no repair pass moves copies during the test


def test_a_get_by_cid_asks_the_members_ranked_for_it_first_not_everyone(tmp_path: Path) -> None:
    # 7 nodes, replicas = 1: a get by content id from a node that does not hold the object asks the
    # replicas + 2 members that placement ranks highest for it; only a miss there widens to the rest.
    async def main() -> None:
        async with cluster(tmp_path, 7, replicas=1, repair=HAND) as nodes:
            asked = count_who_has(nodes)
            origin = nodes[0]
            data = b"ranked first " * 5000
            report = await origin.put("r", BytesSource(data))
            holders = {origin.node_id, *report.replicated_to}
            getter = next(n for n in nodes if n.node_id not in holders)
            got = BufferSink()
            assert (await getter.get(report.cid, got)).source == "peer" and bytes(got.data) == data
            ranked = placement.ranked(report.cid, list(getter.peers.sessions.values()))
            assert {k for k, v in asked.items() if v} == {s.peer_id for s in ranked[:3]}, asked
            assert sum(asked.values()) == 3  # replicas + 2 of the 6 it could have asked

    run(main())


def test_a_get_by_cid_widens_to_every_member_when_none_ranked_first_holds_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 7, replicas=1, repair=HAND) as nodes:
            sole, getter = nodes[1], nodes[2]
            ids = lambda n: [s.peer_id for s in n.peers.sessions.values()]  # noqa: E731
            w = placement.weight
            for i in range(10_000):  # a payload the getter ranks its only holder low for
                data = f"far away {i} ".encode() * 3000
                cid = cid_of(data)
                order = sorted(ids(getter), key=lambda p: w(cid, p), reverse=True)
                if order.index(sole.node_id) >= 3:
                    break
            report = await sole.put("far", BytesSource(data))
            for peer in report.replicated_to:  # its replica drops the copy: the sole holder is ranked low
                other = next(n for n in nodes if n.node_id == peer)
                await other.db(other.store.delete, "far")
            asked = count_who_has(nodes)
            got = BufferSink()
            result = await getter.get(report.cid, got)
            assert result.source == "peer" and bytes(got.data) == data
            assert sum(asked.values()) == 6 and asked[getter.node_id] == 0  # the first 3, then the other 3

    run(main())
