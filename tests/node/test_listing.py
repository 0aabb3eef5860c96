"""`files --network` between real nodes in one process: a member's files come page by page under the
control message cap whatever its keys, and the merged listing counts each key's holders, this node
included. (The CLI's view, with a member that does not answer, is tests/cli/test_network_files.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from inproc import cluster, run

from p2pfast import wire
from p2pfast.errors import LocalProtocolError
from p2pfast.node import Node, listing
from p2pfast.node.sources import BytesSource
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.repo.repo import FileRow

CID = "b3:" + "ab" * 32


def rows(keys: list[str]) -> list[FileRow]:
    return [FileRow(k.encode(), CID, 2**40, time.time()) for k in keys]


def encoded(reply: m.FileList) -> int:
    return len(control.encode(m.to_wire(reply, re=control.MAX_ID)))


@pytest.mark.parametrize("char", ["a", "é", "\x01"], ids=["ascii", "2-byte", "escaped"])
def test_a_page_fills_by_size_and_always_fits_the_control_message(char: str) -> None:
    # 1024-byte keys: of "\x01", each is 6 KiB of JSON escapes, so two fit where the count allows 256
    keys = [f"{i:03d}" + char * ((control.MAX_KEY_BYTES - 3) // len(char.encode())) for i in range(300)]
    with pytest.raises(LocalProtocolError, match="exceeds max"):  # what a page by count alone would be
        control.encode(m.to_wire(m.FileList(tuple(m.FileEntry(k, CID, 1) for k in keys[:256]), False), re=1))
    left, pages = rows(keys), 0
    while True:
        reply = listing.page(
            left[: control.MAX_FILES_PAGE + 1], control.MAX_FILES_PAGE, wire.MAX_CONTROL_SIZE
        )
        assert reply.files and encoded(reply) <= wire.MAX_CONTROL_SIZE
        assert [f.key for f in reply.files] == [r.key.decode() for r in left[: len(reply.files)]]
        left, pages = left[len(reply.files) :], pages + 1
        assert reply.more is bool(left)
        if not reply.more:
            break
    assert pages >= 300 // 15  # the byte cap, not the count, cut every page


def test_a_page_says_more_only_when_rows_are_left() -> None:
    assert listing.page(rows(["a", "b"]), 2, wire.MAX_CONTROL_SIZE) == m.FileList(
        (m.FileEntry("a", CID, 2**40), m.FileEntry("b", CID, 2**40)), more=False
    )
    assert listing.page(rows(["a", "b", "c"]), 2, wire.MAX_CONTROL_SIZE).more
    assert listing.page([], 5, wire.MAX_CONTROL_SIZE) == m.FileList((), more=False)
    with pytest.raises(LocalProtocolError, match="does not fit"):  # a cap far below the default
        listing.page(rows(["x" * 500]), 5, 200)


async def put(node: Node, key: str, data: bytes) -> str:
    return (await node.put(key, BytesSource(data))).cid


def test_network_files_merges_every_member_with_its_holder_count(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 3, replicas=0) as (a, b, c):  # no replication: each file where stored
            long_keys = [f"a/{i:02d}/" + "x" * 900 for i in range(40)]  # about 1 KiB each: several pages
            for i, key in enumerate(long_keys):
                await put(a, key, b"a%d" % i)
            shared = await put(a, "shared", b"same")
            assert await put(b, "shared", b"same") == shared
            c_cid = await put(c, "conflict", b"c's content")
            b_cid = await put(b, "conflict", b"b's content")
            only_c = await put(c, "c-only", b"")
            session = c.peers.sessions[a.node_id]  # A's list comes whole, in key order, over pages
            reply = await session.request(m.ListFiles(control.MAX_FILES_PAGE), timeout=10)
            assert reply.more and 0 < len(reply.files) < 40
            got = await listing.member_files(session)
            assert [f.key for f in got] == sorted([*long_keys, "shared"])
            for node in (a, b, c):
                report = await node.network_files()
                assert report.member_count == 3 and report.unanswered == {}
                by = {(f.key, f.cid): f.holder_count for f in report.files}
                assert len(by) == len(report.files) == 40 + 4
                assert all(by[(k, f.cid)] == 1 for f in report.files for k in long_keys if f.key == k)
                assert by[("shared", shared)] == 2
                assert by[("conflict", b_cid)] == 1 and by[("conflict", c_cid)] == 1  # both shown
                assert by[("c-only", only_c)] == 1
                keys = [f.key.encode() for f in report.files]
                assert keys == sorted(keys)

    run(main())
