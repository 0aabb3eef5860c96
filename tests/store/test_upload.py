"""The store's one small-object rule (upload.is_small): an object of one segment at most is sealed in one
step from memory and comes back with its plaintext; one byte more goes through the pump."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodetools import pattern

from p2pfast.datadir import LocalNode
from p2pfast.store.objects import ContentStore
from p2pfast.store.upload import is_small

SEG = 4096


def test_is_small_is_one_segment() -> None:
    assert is_small(0, SEG) and is_small(SEG, SEG)
    assert not is_small(SEG + 1, SEG)


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG])
@pytest.mark.parametrize("how", ["file", "push"])
def test_small_objects_keep_their_plaintext(node: LocalNode, tmp_path: Path, size: int, how: str) -> None:
    store = ContentStore(node.layout.objects, node.store.keyring, node.repo, segment_size=SEG)
    data = pattern(size, seed=size)
    try:
        if how == "push":  # size unknown, pushed in pieces that cross the segment boundary
            upload = store.begin("k")
            for i in range(0, size, 1000):
                upload.write(data[i : i + 1000])
            res = upload.finish()
        else:
            (tmp_path / "in").write_bytes(data)
            res = store.put_path("k", tmp_path / "in")
        assert res.plaintext == (data if size <= SEG else None)
        assert store.read_bytes("k") == data
    finally:
        store.close()
