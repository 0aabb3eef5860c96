"""S3 multipart uploads over the node's files (names.py): an upload is the file `.s3/uploads/ID` (its
bucket, key and start; replicated, so any member knows it), each part the scratch file
`.scratch/s3/uploads/ID/NNNNN`, durable on the member it went through and kept there only
(store/userkey.py, SCRATCH_PREFIX): a part crosses the network once, as part of the object, not twice.
Parts may still go through different members: the listing of parts is the network's, and the completion
gets each part from whichever member holds it. CompleteMultipartUpload reads the parts in order
(verified) into one store of the object, replicated as any store, then deletes the parts: the object is
one file like any other, and `p2pfast get` reads it. A member lost before the completion takes the parts
it held with it: the completion then fails with InvalidPart and the client uploads them again (nothing
acknowledged as an object is lost). This costs a second local pass over the bytes at completion; the
parts are not linked into the object.

ETag: a part's is its MD5; the object's is S3's multipart form, the MD5 of the parts' MD5s and "-N",
which the node that completed the upload remembers (server.py's ETag memo; another member gives the
MD5 of the content, docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from p2pfast.errors import NotFound, P2PError, PeerUnavailable
from p2pfast.front.s3 import attrs, names
from p2pfast.front.s3.errors import S3Error
from p2pfast.node import Node
from p2pfast.node.reports import StoreReport
from p2pfast.node.sources import BufferSink, BytesSource, Source

# S3's limits: parts numbered 1 to 10,000, each but the last at least 5 MiB.
MAX_PARTS = 10000
MIN_PART = 5 << 20
# Chunks of the parts read ahead while the object is stored at completion (each up to a segment).
READ_AHEAD = 2


@dataclass(frozen=True, slots=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    created: float
    sent: attrs.Sent  # what CreateMultipartUpload asked to keep with the object


@dataclass(frozen=True, slots=True)
class PartInfo:
    number: int
    cid: str
    size: int


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(
        "NoSuchUpload",
        404,
        "no multipart upload with that id (completed, aborted or never begun)",
        UploadId=upload_id[:64],
    )


def check_number(text: str | None) -> int:
    # ASCII digits only: str.isdigit() is true for "²", which int() refuses
    if text is None or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PARTS:
        raise S3Error("InvalidArgument", 400, f"partNumber is a whole number from 1 to {MAX_PARTS}")
    return int(text)


class Multipart:
    def __init__(self, node: Node, etag: Callable[[str], Awaitable[str]]) -> None:
        self.node = node
        self._etag = etag  # content id -> its MD5 (server.py's memo)

    async def create(self, bucket: str, key: str, sent: attrs.Sent) -> str:
        names.object_file(bucket, key)  # KeyTooLongError now, not at completion
        upload_id = secrets.token_hex(16)
        doc = orjson.dumps(
            {"bucket": bucket, "key": key, "created": time.time(), "attrs": attrs.to_json(sent)}
        )
        await self.node.put(names.upload_file(upload_id), BytesSource(doc))
        return upload_id

    async def upload(self, upload_id: str, bucket: str, key: str) -> UploadInfo:
        """The upload, if it is one for this bucket and key; NoSuchUpload else."""
        if not upload_id.isalnum() or len(upload_id) > 64:
            raise no_such_upload(upload_id)
        sink = BufferSink()
        try:
            await self.node.get(names.upload_file(upload_id), sink)
        except NotFound:
            raise no_such_upload(upload_id) from None
        except PeerUnavailable:
            if self.node.peers.sessions:
                raise
            raise no_such_upload(upload_id) from None
        try:
            doc = orjson.loads(bytes(sink.data))
            info = UploadInfo(
                upload_id,
                str(doc["bucket"]),
                str(doc["key"]),
                float(doc["created"]),
                attrs.from_json(doc.get("attrs")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise no_such_upload(upload_id) from None
        if (info.bucket, info.key) != (bucket, key):
            raise no_such_upload(upload_id)
        return info

    async def put_part(self, info: UploadInfo, number: int, source: Source) -> StoreReport:
        return await self.node.put(names.part_file(info.upload_id, number), source)

    async def parts(self, info: UploadInfo) -> list[PartInfo]:
        """The upload's parts that this node and its connected members hold, by number."""
        prefix = names.parts_prefix(info.upload_id)
        found: dict[int, PartInfo] = {}
        for f in (await self.node.network_files()).files:
            tail = f.key.removeprefix(prefix)
            if tail != f.key and tail.isdigit():
                found[int(tail)] = PartInfo(int(tail), f.cid, f.size)
        return [found[n] for n in sorted(found)]

    async def complete(self, info: UploadInfo, wanted: list[tuple[int, str]]) -> tuple[StoreReport, str]:
        """Store the object from the parts `wanted` ((number, ETag) in order); returns the store's
        report and the object's ETag (unquoted)."""
        numbers = [n for n, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", 400, "the parts must be listed in ascending order, once each")
        held = {p.number: p for p in await self.parts(info)}
        chosen: list[PartInfo] = []
        digests = hashlib.md5(usedforsecurity=False)
        for i, (number, etag) in enumerate(wanted):
            part = held.get(number)
            if part is None or await self._etag(part.cid) != etag:
                raise S3Error(
                    "InvalidPart", 400, f"part {number} was not uploaded, or its ETag is not {etag[:40]}"
                )
            if part.size < MIN_PART and i < len(wanted) - 1:
                raise S3Error(
                    "EntityTooSmall",
                    400,
                    f"part {number} is {part.size} bytes: all but the last are 5 MiB or more",
                )
            chosen.append(part)
            digests.update(bytes.fromhex(etag))
        source = ConcatSource(self.node, [(p.cid, 0, p.size) for p in chosen])
        try:
            report = await self.node.put(names.object_file(info.bucket, info.key), source)
        finally:
            await source.close()
        await self.abort(info)
        return report, f"{digests.hexdigest()}-{len(chosen)}"

    async def abort(self, info: UploadInfo) -> None:
        """Delete the upload's parts, then the upload (a later request with its id is NoSuchUpload)."""
        for part in await self.parts(info):
            with contextlib.suppress(NotFound):
                await self.node.delete(names.part_file(info.upload_id, part.number))
        with contextlib.suppress(NotFound):
            await self.node.delete(names.upload_file(info.upload_id))

    async def uploads(self, bucket: str) -> list[UploadInfo]:
        """The uploads begun and not finished for `bucket`, by key then start."""
        out = []
        for f in (await self.node.network_files()).files:
            upload_id = f.key.removeprefix(names.UPLOADS_PREFIX)
            if upload_id == f.key or "/" in upload_id:
                continue
            with contextlib.suppress(S3Error, P2PError):
                sink = BufferSink()
                await self.node.get(f.key, sink)
                doc = orjson.loads(bytes(sink.data))
                if doc.get("bucket") == bucket:
                    sent = attrs.from_json(doc.get("attrs"))
                    out.append(UploadInfo(upload_id, bucket, str(doc["key"]), float(doc["created"]), sent))
        return sorted(out, key=lambda u: (u.key, u.created))


class ConcatSource:
    """Spans of objects' verified plaintext ((content id, start, end) each), one after the other, as a
    store's source: a task reads each span (Node.read_range: a copy here, else the holders' segments of
    it) into a queue of READ_AHEAD chunks, so memory stays bounded. `md5`: of the bytes read so far."""

    file: int | None = None

    def __init__(self, node: Node, spans: list[tuple[str, int, int]]) -> None:
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(READ_AHEAD)
        self._task = asyncio.ensure_future(self._produce(node, spans))
        self._pending = b""
        self.md5 = hashlib.md5(usedforsecurity=False)

    async def _produce(self, node: Node, spans: list[tuple[str, int, int]]) -> None:
        try:
            for cid, start, end in spans:
                if end > start:
                    await node.read_range(cid, _QueueSink(self._queue), start, end)
        except Exception as exc:  # handed to the store, which aborts with it
            await self._queue.put(exc)
            return
        await self._queue.put(None)

    async def read(self, limit: int) -> bytes:
        if not self._pending:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # every later read is at the end too
                return b""
            if isinstance(item, BaseException):
                raise item
            self._pending = item
        piece, self._pending = self._pending[:limit], self._pending[limit:]
        self.md5.update(piece)
        return piece

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class _QueueSink:
    file: int | None = None

    def __init__(self, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        self._queue = queue

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._queue.put(bytes(data))
