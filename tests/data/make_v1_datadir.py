"""Writes tests/data/v1-datadir/: a data dir of a few format-version-1 objects and the manifest of what
each key holds, which tests/store/test_compat.py reads back with the current code.

Run once, from the checkout, with the installed p2pfast of the commit named in v1-datadir/README:
    python tests/data/make_v1_datadir.py tests/data/v1-datadir
It is kept to show how the data dir was made; running it again makes a different one (random keys and
nonces), which would only test the code against itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import blake3

from p2pfast.datadir import Layout, LocalNode, init
from p2pfast.store.objects import ContentStore

SMALL_SEG = 4096  # a store with small segments makes many-segment objects from a few KiB


def pattern(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "big")).digest(length=n) if n else b""


def main(target: Path) -> None:
    layout = Layout.of(target)
    init(layout, network_key=bytes(32))
    manifest: dict[str, dict[str, object]] = {}
    with LocalNode(layout) as node:
        small = ContentStore(node.layout.objects, node.store.keyring, node.repo, segment_size=SMALL_SEG)

        def put(store: ContentStore, key: str, data: bytes, how: str) -> None:
            if how == "push":  # the receive path: size unknown, bytes pushed in pieces
                upload = store.begin(key)
                for i in range(0, len(data), 1000):
                    upload.write(data[i : i + 1000])
                res = upload.finish()
            else:
                path = target / "in.tmp"
                path.write_bytes(data)
                res = store.put_path(key, path)
                path.unlink()
            manifest[key] = {
                "size": len(data),
                "blake3": blake3.blake3(data).hexdigest(),
                "cid": res.cid,
                "segment_size": store.segment_size,
                "deduplicated": res.deduplicated,
                "seed": seed_of[key],
            }

        seed_of = {"empty": 0, "one-byte": 1, "one-segment": 2, "several-segments": 3, "pushed": 4}
        seed_of |= {"dedup/a": 5, "dedup/b": 5}
        put(node.store, "empty", b"", "file")
        put(node.store, "one-byte", pattern(1, 1), "file")
        put(small, "one-segment", pattern(SMALL_SEG, 2), "file")
        put(small, "several-segments", pattern(3 * SMALL_SEG + 17, 3), "file")
        put(small, "pushed", pattern(2 * SMALL_SEG + 5, 4), "push")
        put(node.store, "dedup/a", pattern(3000, 5), "file")
        put(node.store, "dedup/b", pattern(3000, 5), "file")
        small.close()
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    os.umask(0o077)
    main(Path(sys.argv[1]))
