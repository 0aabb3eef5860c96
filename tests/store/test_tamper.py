"""Every kind of tampering with an object file, or with its wrapped key, is an IntegrityError naming the key.

Objects here use 1 KiB segments (a ContentStore built with segment_size=1024 on the node's repo and key
ring; reads go through the node's own store, which takes the segment size from the repo row), 3 full
segments and a 100-byte last one:

    0        32         32+1040     32+2080     32+3120        32+3120+116        +4*32+16
    | header | segment 0 | segment 1 | segment 2 | segment 3    | index (4 leaves) |
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest
from nodetools import pattern

from p2pfast.datadir import Layout, LocalNode
from p2pfast.errors import IntegrityError
from p2pfast.store import segments
from p2pfast.store.objects import ContentStore

SEGSZ = 1024
TAG = segments.TAG_SIZE
LAST_LEN = 100
NSEG = 4
SIZE = (NSEG - 1) * SEGSZ + LAST_LEN
KEY = "docs/report.pdf"
OTHER = "other/key"


def seg_off(i: int) -> int:
    return 32 + i * (SEGSZ + TAG)


DATA_END = seg_off(NSEG - 1) + LAST_LEN + TAG
FILE_SIZE = DATA_END + 32 * NSEG + TAG
assert segments.file_size(SIZE, SEGSZ) == FILE_SIZE


@dataclass
class Obj:
    node: LocalNode
    layout: Layout
    path: Path  # KEY's object file
    other_path: Path  # OTHER's object file (same plaintext length, other content)
    data: bytes
    other_data: bytes
    cid: str
    other_cid: str


@pytest.fixture
def obj(node: LocalNode, layout: Layout, tmp_path: Path) -> Obj:
    small = ContentStore(layout.objects, node.store.keyring, node.repo, segment_size=SEGSZ)
    data, other = pattern(SIZE, seed=1), pattern(SIZE, seed=2)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(other)
    a = small.put_path(KEY, tmp_path / "a")
    b = small.put_path(OTHER, tmp_path / "b")
    path, other_path = node.store.object_path(a.cid), node.store.object_path(b.cid)
    assert path.stat().st_size == other_path.stat().st_size == FILE_SIZE
    assert node.repo.get_object(a.cid).segments == NSEG  # type: ignore[union-attr]
    assert node.store.read_bytes(KEY) == data
    return Obj(node, layout, path, other_path, data, other, a.cid, b.cid)


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        (byte,) = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte ^ mask]), offset)
    finally:
        os.close(fd)


def fails(obj: Obj, offset: int = 0, length: int = -1, key: str = KEY) -> IntegrityError:
    with pytest.raises(IntegrityError) as info:
        obj.node.store.read_bytes(key, offset, length)
    msg = str(info.value)
    assert key in msg, f"integrity error does not name the key: {msg!r}"
    assert "\n" not in msg
    return info.value


def seg_range(i: int) -> tuple[int, int]:
    """A small range inside segment i."""
    return i * SEGSZ + 1, 10


# name -> (offset of the flipped byte, segment it lies in, or None for the header and the index)
FLIPS: dict[str, tuple[int, int | None]] = {
    "header-magic": (1, None),
    "header-version": (4, None),
    "header-alg": (5, None),
    "header-reserved": (6, None),
    "header-segment-size-low": (11, None),
    "header-segment-size-high": (8, None),
    "header-nonce-prefix-first": (12, None),
    "header-nonce-prefix-last": (18, None),
    "header-pad": (19, None),
    "header-length-low": (27, None),
    "header-length-high": (20, None),
    "header-reserved-tail": (31, None),
    "seg0-ciphertext-first-byte": (seg_off(0), 0),
    "seg0-ciphertext": (seg_off(0) + 5, 0),
    "seg0-tag": (seg_off(0) + SEGSZ + 3, 0),
    "seg1-ciphertext-middle": (seg_off(1) + SEGSZ // 2, 1),
    "seg1-tag-last-byte": (seg_off(1) + SEGSZ + TAG - 1, 1),
    "seg2-ciphertext": (seg_off(2) + 700, 2),
    "last-seg-ciphertext": (seg_off(3) + 50, 3),
    "last-seg-tag": (seg_off(3) + LAST_LEN + 7, 3),
    "index-first-byte": (DATA_END, None),
    "index-middle": (DATA_END + 40, None),
    "index-tag": (FILE_SIZE - 1, None),
}


@pytest.mark.parametrize("mask", [0x01, 0x80])
@pytest.mark.parametrize("case", list(FLIPS))
def test_bit_flip_detected(obj: Obj, case: str, mask: int) -> None:
    offset, seg = FLIPS[case]
    flip(obj.path, offset, mask)
    err = fails(obj)  # the whole object
    if seg is None:
        # The header and the index are checked before any segment: every read fails, however small.
        for i in range(NSEG):
            fails(obj, *seg_range(i))
        fails(obj, 0, 0)
        fails(obj, SIZE + 5, 1)
    else:
        assert f"segment {seg}" in str(err)
        fails(obj, *seg_range(seg))  # a range inside the tampered segment
        # A range that touches it from the previous segment also fails.
        if seg > 0:
            fails(obj, seg * SEGSZ - 2, 4)
        # Designed behaviour: a range that does not touch the tampered segment reads fine (each segment
        # is authenticated on its own, against the authenticated index).
        for i in range(NSEG):
            if i != seg:
                off, n = seg_range(i)
                assert obj.node.store.read_bytes(KEY, off, n) == obj.data[off : off + n]
    # The other object is unaffected.
    assert obj.node.store.read_bytes(OTHER) == obj.other_data


def test_every_byte_of_a_small_object_is_covered(node: LocalNode, layout: Layout, tmp_path: Path) -> None:
    """Exhaustive over a tiny object (2 segments of 16 bytes, 20 bytes): no byte is unauthenticated."""
    small = ContentStore(layout.objects, node.store.keyring, node.repo, segment_size=16)
    (tmp_path / "in").write_bytes(pattern(20, seed=3))
    res = small.put_path("tiny", tmp_path / "in")
    path = node.store.object_path(res.cid)
    original = path.read_bytes()
    for i in range(len(original)):
        flip(path, i)
        with pytest.raises(IntegrityError, match="tiny"):
            node.store.read_bytes("tiny")
        path.write_bytes(original)
    assert node.store.read_bytes("tiny") == pattern(20, seed=3)


@pytest.mark.parametrize(
    "how",
    [
        "truncate-1",
        "truncate-segment",
        "truncate-to-header",
        "empty-file",
        "extend-1",
        "extend-tag",
        "extend-segment",
    ],
)
def test_size_changes_detected(obj: Obj, how: str) -> None:
    raw = obj.path.read_bytes()
    new = {
        "truncate-1": raw[:-1],
        "truncate-segment": raw[: seg_off(2)] + raw[seg_off(3) :],  # drop segment 2
        "truncate-to-header": raw[:32],
        "empty-file": b"",
        "extend-1": raw + b"\x00",
        "extend-tag": raw + bytes(TAG),
        "extend-segment": raw[:DATA_END] + raw[seg_off(2) : seg_off(3)] + raw[DATA_END:],
    }[how]
    obj.path.write_bytes(new)
    fails(obj)
    fails(obj, *seg_range(0))
    fails(obj, *seg_range(3))


def _patch_length(raw: bytes, length: int) -> bytes:
    return raw[:20] + length.to_bytes(8, "big") + raw[28:]


def test_truncated_last_segment_with_patched_header(obj: Obj) -> None:
    """Drop the last segment and rewrite the header's length to match what is left."""
    raw = obj.path.read_bytes()
    new = _patch_length(raw[: seg_off(3)], 3 * SEGSZ) + raw[DATA_END:]
    obj.path.write_bytes(new)
    fails(obj)
    fails(obj, *seg_range(0))


def test_truncation_with_header_and_repo_patched(obj: Obj) -> None:
    """An attacker who also rewrites the repo's sizes so that every size check passes is still caught:
    the index is sealed under the original header and length, and the new final segment was sealed with
    last=0."""
    raw = obj.path.read_bytes()
    length = 3 * SEGSZ
    new_size = segments.file_size(length, SEGSZ)
    # header (new length) + segments 0..2 + the first new_size-... bytes of the old index block
    body = _patch_length(raw[: seg_off(3)], length)
    new = body + raw[DATA_END : DATA_END + (new_size - len(body))]
    assert len(new) == new_size
    obj.path.write_bytes(new)
    obj.node.close()
    conn = apsw.Connection(str(obj.layout.db))
    try:
        with conn:
            conn.execute("UPDATE objects SET size = ?, segments = 3 WHERE cid = ?", (length, obj.cid))
            conn.execute("UPDATE files SET size = ? WHERE cid = ?", (length, obj.cid))
    finally:
        conn.close()
    obj.node = LocalNode(obj.layout)
    try:
        fails(obj)
        fails(obj, *seg_range(0))
    finally:
        obj.node.close()


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 2), (0, 2)])
def test_swapped_segments_detected(obj: Obj, i: int, j: int) -> None:
    raw = bytearray(obj.path.read_bytes())
    a, b = slice(seg_off(i), seg_off(i + 1)), slice(seg_off(j), seg_off(j + 1))
    raw[a], raw[b] = raw[b], raw[a]
    obj.path.write_bytes(bytes(raw))
    err = fails(obj)
    assert f"segment {i}" in str(err)
    fails(obj, *seg_range(i))
    fails(obj, *seg_range(j))
    k = ({0, 1, 2, 3} - {i, j}).pop()
    off, n = seg_range(k)
    assert obj.node.store.read_bytes(KEY, off, n) == obj.data[off : off + n]


def test_segment_copied_from_another_object_detected(obj: Obj) -> None:
    raw = bytearray(obj.path.read_bytes())
    other = obj.other_path.read_bytes()
    raw[seg_off(1) : seg_off(2)] = other[seg_off(1) : seg_off(2)]
    obj.path.write_bytes(bytes(raw))
    assert "segment 1" in str(fails(obj))
    assert obj.node.store.read_bytes(KEY, *seg_range(0)) == obj.data[1:11]


def test_whole_file_replaced_by_another_objects_file(obj: Obj) -> None:
    shutil.copyfile(obj.other_path, obj.path)
    fails(obj)
    fails(obj, *seg_range(0))
    assert obj.node.store.read_bytes(OTHER) == obj.other_data


def test_whole_file_replaced_by_an_older_version_of_itself(obj: Obj, tmp_path: Path) -> None:
    """Same key, new content of the same length: the old object's file copied over the new one fails."""
    old = obj.path.read_bytes()
    small = ContentStore(obj.layout.objects, obj.node.store.keyring, obj.node.repo, segment_size=SEGSZ)
    (tmp_path / "v2").write_bytes(pattern(SIZE, seed=99))
    res = small.put_path(KEY, tmp_path / "v2")
    assert not obj.path.exists()  # the old object went when its last reference did
    new_path = obj.node.store.object_path(res.cid)
    new_path.write_bytes(old)
    fails(obj)


def test_missing_object_file(obj: Obj) -> None:
    obj.path.unlink()
    assert "missing" in str(fails(obj))
    assert "missing" in str(fails(obj, *seg_range(1)))
    assert obj.node.store.read_bytes(OTHER) == obj.other_data


def _edit_db(obj: Obj, edit: Callable[[apsw.Connection], None]) -> None:
    """Close the node, change p2p.db with apsw directly, and open the node again."""
    obj.node.close()
    conn = apsw.Connection(str(obj.layout.db))
    try:
        with conn:
            edit(conn)
    finally:
        conn.close()
    obj.node = LocalNode(obj.layout)


def _wrapped(conn: apsw.Connection, cid: str) -> bytes:
    ((w,),) = conn.execute("SELECT wrapped FROM keys WHERE cid = ?", (cid,)).fetchall()
    return bytes(w)


@pytest.mark.parametrize("where", [0, 11, 12, 30, 59], ids=["nonce0", "nonce11", "ct0", "ct18", "tag-last"])
def test_corrupt_wrapped_key(obj: Obj, where: int) -> None:
    def edit(conn: apsw.Connection) -> None:
        w = bytearray(_wrapped(conn, obj.cid))
        w[where] ^= 0x01
        conn.execute("UPDATE keys SET wrapped = ? WHERE cid = ?", (bytes(w), obj.cid))

    _edit_db(obj, edit)
    try:
        fails(obj)
        fails(obj, *seg_range(2))
        assert obj.node.store.read_bytes(OTHER) == obj.other_data
    finally:
        obj.node.close()


@pytest.mark.parametrize("how", ["truncated", "extended", "empty"])
def test_wrapped_key_of_wrong_length(obj: Obj, how: str) -> None:
    def edit(conn: apsw.Connection) -> None:
        w = _wrapped(conn, obj.cid)
        bad = {"truncated": w[:-1], "extended": w + b"\x00", "empty": b""}[how]
        conn.execute("UPDATE keys SET wrapped = ? WHERE cid = ?", (bad, obj.cid))

    _edit_db(obj, edit)
    try:
        fails(obj)
    finally:
        obj.node.close()


def test_wrapped_keys_swapped_between_objects(obj: Obj) -> None:
    def edit(conn: apsw.Connection) -> None:
        a, b = _wrapped(conn, obj.cid), _wrapped(conn, obj.other_cid)
        conn.execute("UPDATE keys SET wrapped = ? WHERE cid = ?", (b, obj.cid))
        conn.execute("UPDATE keys SET wrapped = ? WHERE cid = ?", (a, obj.other_cid))

    _edit_db(obj, edit)
    try:
        fails(obj)
        fails(obj, key=OTHER)
    finally:
        obj.node.close()


def test_key_row_deleted(obj: Obj) -> None:
    def edit(conn: apsw.Connection) -> None:
        conn.execute("DELETE FROM keys WHERE cid = ?", (obj.cid,))

    _edit_db(obj, edit)
    try:
        fails(obj)
    finally:
        obj.node.close()
