"""Reading an object's attributes file (attrs.py) through the node: for the S3 API's GET, HEAD, listings
and copies, and the read-only gateway's Content-Type. A file is read once per content id it has (the id
changes with every write), and only one that names the object's current content counts."""

from __future__ import annotations

from collections import OrderedDict

from p2pfast.errors import BadInput, NotFound, PeerUnavailable
from p2pfast.front.s3 import attrs, names
from p2pfast.node import Node
from p2pfast.node.sources import CappedSink

# An attributes file holds at most 2 KB of user metadata and a few headers.
ATTRS_MAX = 16 * 1024
# Attributes files remembered by content id.
MEMO = 65536


class AttrFiles:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._memo: OrderedDict[str, attrs.Attrs] = OrderedDict()  # attributes file's cid -> them

    async def get(self, bucket: str, key: str, cid: str, sidecar: str | None = None) -> attrs.Attrs | None:
        """The attributes of object `key` whose content is `cid`, if its attributes file describes that
        content; `sidecar`: that file's content id, when a listing gave it."""
        if sidecar is None:
            try:
                sidecar = (await self.node.stat(names.attrs_file(bucket, key))).cid
            except (NotFound, PeerUnavailable):
                return None  # (PeerUnavailable: none here and nobody to ask)
        a = self._memo.get(sidecar)
        if a is None:
            sink = CappedSink(ATTRS_MAX, "an attributes file")
            try:
                await self.node.get(sidecar, sink)
            except NotFound:
                return None
            except BadInput:
                if sink.over:  # not one of ours: a file stored there by hand
                    return None
                raise
            a = attrs.decode(bytes(sink.data))
            if a is None:
                return None
            self._memo[sidecar] = a
            if len(self._memo) > MEMO:
                self._memo.popitem(last=False)
        return a if a.cid == cid else None
