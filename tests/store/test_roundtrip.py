"""ContentStore round trips on a real data dir: sizes around the segment size, ranged reads, stdin-style
pipes, deduplication, re-storing, hostile keys, the on-disk layout, and a 1 GiB file in bounded memory."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from nodetools import assert_layout, cli_env, object_files, pattern, temp_files

from p2pfast.datadir import Layout, LocalNode, init
from p2pfast.errors import BadInput, NotFound
from p2pfast.store import segments
from p2pfast.store.objects import ContentStore

SEG = segments.SEGMENT_SIZE
_rng = random.Random(20261124)
RANDOM_SIZES = sorted(_rng.randrange(2, 3 * SEG) for _ in range(3))
SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 17, *RANDOM_SIZES]


def doc_cid(data: bytes) -> str:
    """The content id as docs/storage.md defines it, computed here independently of the store."""
    leaves = [blake3.blake3(data[i : i + SEG]).digest() for i in range(0, len(data), SEG)] or [
        blake3.blake3(b"").digest()
    ]
    h = blake3.blake3(b"p2pfast cid v1\x00" + len(data).to_bytes(8, "big") + b"".join(leaves))
    return "b3:" + h.hexdigest()


class Collect:
    """A write(view) sink that copies what it receives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0

    def write(self, view: memoryview) -> None:
        self.calls += 1
        self.data += view


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", SIZES)
def test_roundtrip_sizes(size: int, node: LocalNode, layout: Layout, tmp_path: Path) -> None:
    data = pattern(size, seed=size)
    src = _write(tmp_path / "in.bin", data)
    res = node.store.put_path("k", src)
    assert (res.key, res.size, res.deduplicated) == (b"k", size, False)
    assert res.cid == doc_cid(data)

    sink = Collect()
    assert node.store.read("k", sink) == size
    assert bytes(sink.data) == data

    # An fd sink gets the same bytes.
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert node.store.read("k", fd) == size
    finally:
        os.close(fd)
    assert out.read_bytes() == data

    # The repo row and the envelope size agree with the documented format.
    (obj,) = node.repo.list_objects()
    nsegs = max(1, -(-size // SEG))
    assert (obj.cid, obj.size, obj.segment_size, obj.segments, obj.refcount) == (res.cid, size, SEG, nsegs, 1)
    (rel,) = assert_layout(layout.root)
    assert (layout.root / rel).stat().st_size == 32 + size + 16 * nsegs + 32 * nsegs + 16
    assert temp_files(layout.root) == []


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalNode, bytes]]:
    root = tmp_path_factory.mktemp("ranges")
    lay = Layout.of(root / "node")
    init(lay)
    data = pattern(3 * SEG + 17, seed=7)
    with LocalNode(lay) as n:
        n.store.put_path("big", _write(root / "in.bin", data))
        n.store.put_path("empty", _write(root / "empty.bin", b""))
        n.store.put_path("one", _write(root / "one.bin", b"x"))
        yield n, data


RANGES = [
    (0, 0),
    (0, 1),
    (0, -1),
    (0, SEG),
    (1, SEG),
    (SEG - 1, 2),
    (SEG - 1, 1),
    (SEG, 1),
    (SEG, SEG),
    (SEG - 5, SEG + 10),
    (SEG + 3, 2 * SEG),
    (2 * SEG + 3, -1),
    (3 * SEG, 17),
    (3 * SEG - 1, 2),
    (3 * SEG + 16, 1),
    (3 * SEG + 16, 100),
    (3 * SEG + 17, 0),
    (3 * SEG + 17, 5),
    (3 * SEG + 18, 5),
    (10 * SEG, 1),
    (12345, 0),
    (SEG, 0),
    (5, 3 * SEG + 17),
    (0, 10 * SEG),
    (7, -1),
]


@pytest.mark.parametrize(("offset", "length"), RANGES)
def test_ranged_read_matches_slicing(big: tuple[LocalNode, bytes], offset: int, length: int) -> None:
    node, data = big
    expected = data[offset:] if length < 0 else data[offset : offset + length]
    sink = Collect()
    n = node.store.read("big", sink, offset, length)
    assert bytes(sink.data) == expected
    assert n == len(expected)
    assert node.store.read_bytes("big", offset, length) == expected


@pytest.mark.parametrize("key", ["empty", "one"])
@pytest.mark.parametrize(
    ("offset", "length"), [(0, 0), (0, -1), (0, 1), (0, 5), (1, -1), (1, 3), (5, 10), (5, -1)]
)
def test_ranged_read_tiny_objects(big: tuple[LocalNode, bytes], key: str, offset: int, length: int) -> None:
    node, _ = big
    data = b"" if key == "empty" else b"x"
    expected = data[offset:] if length < 0 else data[offset : offset + length]
    sink = Collect()
    n = node.store.read(key, sink, offset, length)
    assert bytes(sink.data) == expected
    assert n == len(expected), f"read() returned {n} but wrote {len(sink.data)} bytes"


def test_negative_offset_is_bad_input(big: tuple[LocalNode, bytes]) -> None:
    node, _ = big
    with pytest.raises(BadInput):
        node.store.read_bytes("big", -1, 5)


def test_put_fd_from_pipe_equals_put_path(node: LocalNode, tmp_path: Path) -> None:
    data = pattern(2 * SEG + 12345, seed=3)
    r, w = os.pipe()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            view = memoryview(data)
            while view:  # odd write sizes: the store must not depend on read boundaries
                view = view[os.write(w, view[:100_003]) :]
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            os.close(w)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        res_pipe = node.store.put_fd("piped", r)
    finally:
        os.close(r)
        t.join(timeout=30)
    assert not t.is_alive() and not errors
    res_path = node.store.put_path("file", _write(tmp_path / "in.bin", data))
    assert res_pipe.cid == res_path.cid
    assert (res_pipe.size, res_path.size) == (len(data), len(data))
    assert (res_pipe.deduplicated, res_path.deduplicated) == (False, True)
    assert node.store.read_bytes("piped") == node.store.read_bytes("file") == data


def test_dedup_one_object_two_keys(node: LocalNode, layout: Layout, tmp_path: Path) -> None:
    data = pattern(SEG + 99, seed=11)
    src = _write(tmp_path / "in.bin", data)
    a = node.store.put_path("a", src)
    b = node.store.put_path("b", src)
    assert a.cid == b.cid and not a.deduplicated and b.deduplicated
    (obj,) = node.repo.list_objects()
    assert (obj.cid, obj.refcount) == (a.cid, 2)
    assert len(object_files(layout.root)) == 1

    assert node.store.delete("a") == (a.cid, False)
    (obj,) = node.repo.list_objects()
    assert obj.refcount == 1
    assert len(object_files(layout.root)) == 1
    assert node.store.read_bytes("b") == data
    with pytest.raises(NotFound):
        node.store.read_bytes("a")

    assert node.store.delete("b") == (a.cid, True)
    assert node.repo.list_objects() == [] and node.repo.list_files() == []
    assert object_files(layout.root) == []
    assert node.repo.get_key(a.cid) is None
    with pytest.raises(NotFound):
        node.store.delete("b")


def test_restore_key_with_other_content_drops_old_object(
    node: LocalNode, layout: Layout, tmp_path: Path
) -> None:
    one = node.store.put_path("k", _write(tmp_path / "1", b"first version"))
    two = node.store.put_path("k", _write(tmp_path / "2", b"second version"))
    assert one.cid != two.cid
    assert [o.cid for o in node.repo.list_objects()] == [two.cid]
    assert node.repo.get_key(one.cid) is None
    assert len(object_files(layout.root)) == 1
    assert node.store.read_bytes("k") == b"second version"

    # Re-pointing a key whose object another key shares keeps that object.
    node.store.put_path("other", _write(tmp_path / "3", b"second version"))
    node.store.put_path("k", _write(tmp_path / "4", b"third version"))
    assert {o.cid: o.refcount for o in node.repo.list_objects()}.get(two.cid) == 1
    assert node.store.read_bytes("other") == b"second version"
    assert node.store.read_bytes("k") == b"third version"
    assert len(object_files(layout.root)) == 2

    # Same key, same content: one reference, nothing new.
    again = node.store.put_path("k", _write(tmp_path / "5", b"third version"))
    assert again.deduplicated
    assert {o.refcount for o in node.repo.list_objects()} == {1}


HOSTILE_KEYS = [
    "../../etc/passwd",
    "a\x00b",
    "with spaces",
    "🙂 emoji",
    "/abs/path",
    ".",
    "..",
    "objects/tmp/x.p2ptmp",
    "é" * 512,  # 1024 bytes of UTF-8: the limit, allowed
]


def test_hostile_keys_round_trip_inside_objects(node: LocalNode, layout: Layout, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    stored = {}
    for i, key in enumerate(HOSTILE_KEYS):
        data = pattern(1000 + i, seed=100 + i)
        stored[key] = data
        res = node.store.put_path(key, _write(inputs / f"{i}.bin", data))
        assert res.key == key.encode("utf-8")
    assert len(HOSTILE_KEYS[-1].encode("utf-8")) == 1024
    for key, data in stored.items():
        assert node.store.read_bytes(key) == data
        assert node.store.read_bytes(key.encode("utf-8")) == data
    assert sorted(f.key for f in node.repo.list_files()) == sorted(k.encode() for k in HOSTILE_KEYS)
    assert len(assert_layout(layout.root)) == len(HOSTILE_KEYS)
    # Nothing appeared beside the data dir either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "node"]
    assert len(list(inputs.iterdir())) == len(HOSTILE_KEYS)
    for key in HOSTILE_KEYS:
        node.store.delete(key)
    assert object_files(layout.root) == []


@pytest.mark.parametrize(
    "key",
    ["é" * 512 + "a", "", b"", "\ud800", "a\udcffb", b"\xff\xfe", b"x" * 1025],
    ids=["1025-bytes", "empty", "empty-bytes", "lone-surrogate", "surrogate-escape", "bad-utf8", "1025-raw"],
)
def test_invalid_keys_are_bad_input(
    node: LocalNode, layout: Layout, tmp_path: Path, key: str | bytes
) -> None:
    src = _write(tmp_path / "in.bin", b"data")
    with pytest.raises(BadInput):
        node.store.put_path(key, src)
    with pytest.raises(BadInput):
        node.store.read_bytes(key)
    with pytest.raises(BadInput):
        node.store.delete(key)
    assert node.repo.list_files() == []
    assert assert_layout(layout.root) == []
    assert temp_files(layout.root) == []


def test_object_names_are_keyed_not_content_ids(node: LocalNode, layout: Layout, tmp_path: Path) -> None:
    res = node.store.put_path("k", _write(tmp_path / "in.bin", b"hello world"))
    (rel,) = object_files(layout.root)
    name = rel.rsplit("/", 1)[1]
    cid_hex = res.cid.removeprefix("b3:")
    assert cid_hex not in rel and name != cid_hex
    assert name == node.store.keyring.object_name(res.cid).hex()
    assert rel == f"objects/{name[:2]}/{name[2:4]}/{name}"


def test_two_nodes_name_the_same_file_differently(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.bin", pattern(5000, seed=5))
    results = []
    for name in ("n1", "n2"):
        lay = Layout.of(tmp_path / name)
        init(lay)
        with LocalNode(lay) as n:
            res = n.store.put_path("same", src)
            results.append((res.cid, object_files(lay.root)))
    (cid1, (obj1,)), (cid2, (obj2,)) = results
    assert cid1 == cid2
    assert obj1 != obj2


def test_small_segment_store_reads_back(node: LocalNode, tmp_path: Path) -> None:
    """A ContentStore with another segment size writes objects the node's store reads (size is per object)."""
    small = ContentStore(node.layout.objects, node.store.keyring, node.repo, segment_size=1000)
    data = pattern(4321, seed=9)
    res = small.put_path("small", _write(tmp_path / "in.bin", data))
    (obj,) = node.repo.list_objects()
    assert (obj.segment_size, obj.segments) == (1000, 5)
    assert node.store.read_bytes("small") == data
    assert node.store.read_bytes("small", 999, 1002) == data[999:2001]
    assert res.size == len(data)


def test_content_id_is_defined_over_the_store_segment_size(node: LocalNode, tmp_path: Path) -> None:
    """The segment size is a format constant: leaves are the at-rest segments, so a store built with another
    segment size (a test knob) names the same content differently, and the default store matches the
    formula in docs/storage.md."""
    small = ContentStore(node.layout.objects, node.store.keyring, node.repo, segment_size=1000)
    data = pattern(4321, seed=9)
    res_small = small.put_path("small", _write(tmp_path / "in.bin", data))
    res_default = node.store.put_path("default", _write(tmp_path / "in2.bin", data))
    assert res_default.cid == doc_cid(data)
    assert res_small.cid != res_default.cid
    assert small.read_bytes("small") == node.store.read_bytes("default") == data


BIG_SCRIPT = r"""
import json, os, resource, sys
from pathlib import Path
import blake3
from p2pfast.datadir import Layout, LocalNode, init
from p2pfast.store import segments

tmp, size = Path(sys.argv[1]), int(sys.argv[2])
src, dst = tmp / "big.in", tmp / "big.out"
CHUNK = 4 << 20

xof = blake3.blake3(b"p2pfast 1 GiB round trip")
with open(src, "wb", buffering=0) as f:
    done = 0
    while done < size:
        n = min(CHUNK, size - done)
        f.write(xof.digest(length=n, seek=done))
        done += n

def file_hash(path):
    h = blake3.blake3()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()

lay = Layout.of(tmp / "node")
init(lay)
with LocalNode(lay) as node:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = node.store.put_path("big", src)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        written = node.store.read("big", fd)
    finally:
        os.close(fd)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    obj_size = node.store.object_path(res.cid).stat().st_size
print(json.dumps({
    "size": res.size, "written": written, "growth_kib": after - before,
    "object_size": obj_size, "expected_object_size": segments.file_size(size, segments.SEGMENT_SIZE),
    "src": file_hash(src), "dst": file_hash(dst),
}))
"""


@pytest.mark.slow
def test_one_gib_round_trip_in_bounded_memory(tmp_path: Path) -> None:
    size = 1 << 30
    proc = subprocess.run(
        [sys.executable, "-P", "-c", BIG_SCRIPT, str(tmp_path), str(size)],
        env=cli_env(),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["size"] == out["written"] == size
    assert out["object_size"] == out["expected_object_size"]
    assert out["src"] == out["dst"]
    assert out["growth_kib"] < 64 * 1024, (
        f"peak RSS grew by {out['growth_kib']} KiB storing and reading 1 GiB"
    )
    print(f"1 GiB round trip: peak RSS growth {out['growth_kib']} KiB")


def test_writev_all_writes_every_part_in_order(tmp_path: Path) -> None:
    from p2pfast.store.durable import IOV_MAX, writev_all

    # more parts than one writev() takes, empty ones among them, views and bytes alike
    parts: list[bytes | memoryview] = []
    for i in range(IOV_MAX * 2 + 7):
        chunk = os.urandom(i % 97)
        parts.append(memoryview(chunk) if i % 2 else chunk)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writev_all(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bytes(p) for p in parts)


def test_leaf_of_parts_is_the_leaf_of_their_concatenation() -> None:
    from p2pfast.store import contentid

    data = os.urandom(300_000)
    parts = [memoryview(data)[i : i + 65536] for i in range(0, len(data), 65536)]
    assert contentid.leaf_of(parts) == contentid.leaf(data)
    assert contentid.leaf_of([]) == contentid.leaf(b"")
