"""A data dir written by an older p2pfast (tests/data/v1-datadir, see its README) opens with this code
and every key reads back to the bytes it was stored with: the at-rest format, object naming and repo
rows of version 1 stay readable whatever the store's code became."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pfast.datadir import Layout, LocalNode
from p2pfast.store.objects import ContentStore

DATA = Path(__file__).resolve().parents[1] / "data" / "v1-datadir"
MANIFEST: dict[str, dict[str, object]] = json.loads((DATA / "manifest.json").read_text())
SECRET_FILES = ("master.key", "node.key", "network.key", "p2p.db")


def pattern(n: int, seed: int) -> bytes:
    """What make_v1_datadir.py stored (nodetools.pattern, written out so the data dir's recipe is fixed)."""
    return blake3.blake3(seed.to_bytes(8, "big")).digest(length=n) if n else b""


@pytest.fixture
def v1_layout(tmp_path: Path) -> Layout:
    """A copy of the v1 data dir (opening one writes to it), with the modes git does not keep."""
    root = tmp_path / "v1"
    shutil.copytree(DATA, root)
    os.chmod(root, 0o700)
    for name in SECRET_FILES:
        os.chmod(root / name, 0o600)
    return Layout.of(root)


def test_manifest_covers_the_cases() -> None:
    sizes = {key: entry["size"] for key, entry in MANIFEST.items()}
    assert sizes["empty"] == 0 and sizes["one-byte"] == 1
    assert sizes["one-segment"] == MANIFEST["one-segment"]["segment_size"]
    several = MANIFEST["several-segments"]
    assert isinstance(several["size"], int) and isinstance(several["segment_size"], int)
    assert several["size"] > 2 * several["segment_size"]
    assert MANIFEST["dedup/a"]["cid"] == MANIFEST["dedup/b"]["cid"] and MANIFEST["dedup/b"]["deduplicated"]


def test_every_key_reads_back(v1_layout: Layout) -> None:
    with LocalNode(v1_layout) as node:
        assert node.report.clean
        assert sorted(f.key.decode() for f in node.repo.list_files()) == sorted(MANIFEST)
        for key, entry in MANIFEST.items():
            size, seed, cid = entry["size"], entry["seed"], entry["cid"]
            assert isinstance(size, int) and isinstance(seed, int)
            data = node.store.read_bytes(key)
            assert data == pattern(size, seed), key
            assert blake3.blake3(data).hexdigest() == entry["blake3"], key
            assert node.store.stat(key) == (key.encode(), cid, size)
            assert node.store.leaves(str(cid))[0] == size
            if size > 2:  # a range across segments, and one inside the last
                assert node.store.read_bytes(key, 1, size - 2) == data[1:-1], key
                assert node.store.read_bytes(key, size - 1) == data[-1:], key
        assert len(node.repo.list_objects()) == len(MANIFEST) - 1  # the dedup pair is one object


def test_reconcile_finds_every_object_where_v1_put_it(v1_layout: Layout) -> None:
    """After an unclean stop the disk is walked against the repo: every v1 object file is where this code
    names it (HMAC path, shard layout), so nothing is quarantined or missing."""
    v1_layout.dirty.write_text("1")
    with LocalNode(v1_layout) as node:
        assert node.report.clean, node.report
        assert not node.report.quarantined and not node.report.missing


def test_keys_still_delete_and_store(v1_layout: Layout) -> None:
    """The v1 objects take part in store logic as any other: a dedup reference drops, a new put of the same
    bytes finds the old object."""
    with LocalNode(v1_layout) as node:
        cid, orphaned = node.store.delete("dedup/a")
        assert (cid, orphaned) == (MANIFEST["dedup/a"]["cid"], False)
        assert node.store.read_bytes("dedup/b") == pattern(3000, 5)
        upload = node.store.begin("again", 3000)
        upload.write(pattern(3000, 5))
        res = upload.finish()
        assert res.deduplicated and res.cid == cid


# -- the format as docs/storage.md writes it down, decoded here without the store's code -------------------
def decode_v1(raw: bytes, data_key: bytes, cid: str) -> bytes:
    """The plaintext of a version-1 object file, every block authenticated as docs/storage.md says."""
    magic, version, alg, reserved, seg, prefix, _pad, length, tail = struct.unpack(">4sBBHI7sBQI", raw[:32])
    assert (magic, version, alg, reserved, _pad, tail) == (b"P2PO", 1, 1, 0, 0, 0)
    n = max(1, -(-length // seg))
    assert len(raw) == 32 + length + 16 * n + 32 * n + 16
    aead = AESGCM(data_key)
    plain, pos = bytearray(), 32
    for i in range(n):
        size = min(seg, length - i * seg) + 16
        nonce = prefix + i.to_bytes(4, "big") + (b"\x01" if i == n - 1 else b"\x00")
        plain += aead.decrypt(nonce, raw[pos : pos + size], raw[:20])
        pos += size
    leaves = aead.decrypt(prefix + b"\xff\xff\xff\xff\x02", raw[pos:], raw[:32] + cid.encode())
    assert leaves == b"".join(blake3.blake3(plain[i : i + seg]).digest() for i in range(0, n * seg, seg))
    return bytes(plain)


def stored_files(node: LocalNode) -> dict[str, bytes]:
    """cid -> plaintext of every object of the node, decoded with decode_v1."""
    out = {}
    for obj in node.repo.list_objects():
        wrapped = node.repo.get_key(obj.cid)
        assert wrapped is not None
        raw = node.store.object_path(obj.cid).read_bytes()
        out[obj.cid] = decode_v1(raw, node.store.keyring.unwrap(obj.cid, wrapped[0]), obj.cid)
    return out


def test_the_v1_datadir_decodes_as_documented(v1_layout: Layout) -> None:
    """The independent decoder agrees with the data dir the older code wrote (so it can judge new files)."""
    with LocalNode(v1_layout) as node:
        decoded = stored_files(node)
    assert decoded == {
        str(e["cid"]): pattern(int(str(e["size"])), int(str(e["seed"]))) for e in MANIFEST.values()
    }


@pytest.mark.parametrize(
    ("segment_size", "size", "how"),
    [
        (1 << 20, 0, "file"),
        (1 << 20, 1, "file"),
        (1 << 20, 5000, "push"),  # sealed in one step
        (4096, 4096, "file"),
        (4096, 3 * 4096 + 17, "file"),  # through the pump, segments sealed inline
        (4096, 2 * 4096 + 5, "push"),  # pushed, size unknown: the header is rewritten at the end
        (64 << 10, 2 * (64 << 10) + 3, "file"),  # segments hashed and written on worker threads
    ],
)
def test_new_objects_are_written_in_v1(
    node: LocalNode, tmp_path: Path, segment_size: int, size: int, how: str
) -> None:
    """What this code writes is format version 1 to the byte: an older p2pfast reads it."""
    store = ContentStore(node.layout.objects, node.store.keyring, node.repo, segment_size=segment_size)
    data = pattern(size, size)
    try:
        if how == "push":
            upload = store.begin("k")
            for i in range(0, size, 1000):
                upload.write(data[i : i + 1000])
            res = upload.finish()
        else:
            (tmp_path / "in").write_bytes(data)
            res = store.put_path("k", tmp_path / "in")
    finally:
        store.close()
    assert stored_files(node) == {res.cid: data}
