"""A data dir written by an older p2pfast (tests/data/v1-datadir, see its README) opens with this code
and every key reads back to the bytes it was stored with: the at-rest format, object naming and repo
rows of version 1 stay readable whatever the store's code became."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import blake3
import pytest

from p2pfast.datadir import Layout, LocalNode

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
