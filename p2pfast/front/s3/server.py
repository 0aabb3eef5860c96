"""The S3 listener (docs/gateway.md): aiohttp's HTTP/1.1 server in the node's own event loop, every
request signed (sigv4.py) with an access key of the network (keys.py), buckets and objects mapped onto
the node's files (names.py) and served through the node's API: a PUT is a store (answered once durable
here and on the replicas, as `p2pfast store`), a GET is a verified get by content id.

Memory stays bounded whatever the size: a PUT's body is read from aiohttp's stream, whose buffer
pauses the socket when full, one read per chunk the store asks for; a GET writes each verified chunk
and waits for the socket to drain (StreamResponse.write), so a slow client slows the get, not RAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aiohttp import ClientPayloadError, web

from p2pfast.errors import (
    BadInput,
    DiskFull,
    IntegrityError,
    NotFound,
    P2PError,
    PeerUnavailable,
)
from p2pfast.front import httpread
from p2pfast.front.s3 import attrs, listing, names, sigv4, xmldoc
from p2pfast.front.s3.attrfiles import AttrFiles
from p2pfast.front.s3.errors import S3Error
from p2pfast.front.s3.keys import Secrets
from p2pfast.front.s3.multipart import ConcatSource, Multipart, UploadInfo, check_number
from p2pfast.node import Node
from p2pfast.node.reports import FileStat
from p2pfast.node.sources import BytesSource

log = logging.getLogger("p2pfast.s3")

# The region the node says it is in (GetBucketLocation). Requests signed for any region are accepted:
# a node has no region, and clients differ in what they default to.
REGION = "us-east-1"
# Content ids whose MD5 (the ETag) this node remembers.
ETAG_MEMO = 65536
# MD5s computed at once for a listing of objects whose ETag this node has not seen.
ETAG_WORKERS = 4
# The subresources of S3 this node does not implement: NotImplemented rather than a wrong answer.
_UNSUPPORTED = frozenset(
    [
        "acl",
        "cors",
        "encryption",
        "lifecycle",
        "logging",
        "notification",
        "object-lock",
        "policy",
        "replication",
        "requestPayment",
        "retention",
        "legal-hold",
        "tagging",
        "torrent",
        "versioning",
        "versions",
        "website",
        "restore",
        "select",
        "accelerate",
        "analytics",
        "intelligent-tiering",
        "inventory",
        "metrics",
        "ownershipControls",
        "publicAccessBlock",
        "attributes",
    ]
)
# A CompleteMultipartUpload names up to 10,000 parts (about 100 bytes each); DeleteObjects 1000 keys.
COMPLETE_BODY = 2 << 20

_COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)")

Handler = Callable[["_Call"], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class _Call:
    """One request being answered."""

    request: web.Request
    rid: str
    bucket: str
    key: str
    query: dict[str, str]
    payload: sigv4.Payload


class S3Server(httpread.Listener):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.secrets = Secrets(node)
        self.multipart = Multipart(node, self._etag)
        self._md5: OrderedDict[str, str] = OrderedDict()
        self._md5_reading: dict[str, asyncio.Future[str]] = {}  # cid -> the one read computing its MD5
        self.attrs = AttrFiles(node)
        # (bodies read whole are XML documents only: a PUT's body is streamed)
        super().__init__(self._handle, 64 * 1024, "s3_listen", "--s3-listen")

    # -- one request ---------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rid = secrets.token_hex(8)
        path, _, query = request.raw_path.partition("?")
        try:
            with self.node.working("s3"):
                call = await self._authorize(request, rid, path, query)
                return await self._route(call)
        except S3Error as exc:
            return self._error(request, rid, exc)
        except P2PError as exc:
            return self._error(request, rid, _s3_error(exc))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("event=s3_internal_error request_id=%s method=%s", rid, request.method)
            return self._error(
                request, rid, S3Error("InternalError", 500, "internal error (a bug): see the log")
            )

    async def _authorize(self, request: web.Request, rid: str, path: str, query: str) -> _Call:
        headers = {k.lower(): ",".join(request.headers.getall(k)) for k in request.headers}
        req = sigv4.Request(request.method, path, query, headers)
        auth = sigv4.parse(req, time.time())
        secret = await self.secrets.secret(auth.access_key_id)
        if secret is None:
            raise S3Error(
                "InvalidAccessKeyId",
                403,
                "no access key with that id in this network (p2pfast s3 key list shows them)",
                AWSAccessKeyId=auth.access_key_id[:128],
            )
        payload = sigv4.verify(auth, req, secret)
        bucket, key = _split_path(path)
        return _Call(request, rid, bucket, key, dict(request.rel_url.query), payload)

    async def _route(self, call: _Call) -> web.StreamResponse:
        method = call.request.method
        unsupported = _UNSUPPORTED.intersection(call.query)
        if unsupported:
            raise S3Error("NotImplemented", 501, f"?{min(unsupported)} is not implemented by this node")
        if not call.bucket:
            if method == "GET":
                return await self._list_buckets(call)
            raise _method_not_allowed(method)
        names.check_bucket(call.bucket)
        table: dict[str, Handler]
        if not call.key:
            if "location" in call.query and method == "GET":
                await self._need_bucket(call.bucket)
                return _xml(call, xmldoc.location(""))
            if "uploads" in call.query and method == "GET":
                return await self._list_uploads(call)
            if "delete" in call.query and method == "POST":
                return await self._delete_objects(call)
            table = {
                "PUT": self._create_bucket,
                "HEAD": self._head_bucket,
                "DELETE": self._delete_bucket,
                "GET": self._list_objects,
            }
        elif "uploadId" in call.query:
            table = {
                "PUT": self._put_part,
                "POST": self._complete_upload,
                "GET": self._list_parts,
                "DELETE": self._abort_upload,
            }
        elif "uploads" in call.query:
            table = {"POST": self._create_upload}
        else:
            table = {
                "PUT": self._put_object,
                "GET": self._get_object,
                "HEAD": self._get_object,
                "DELETE": self._delete_object,
            }
        handler = table.get(method)
        if handler is None:
            raise _method_not_allowed(method)
        return await handler(call)

    def _error(self, request: web.Request, rid: str, exc: S3Error) -> web.Response:
        level = logging.WARNING if exc.status >= 500 else logging.DEBUG
        log.log(
            level,
            "event=s3_error request_id=%s method=%s code=%s status=%d message=%r",
            rid,
            request.method,
            exc.code,
            exc.status,
            exc.message,
        )
        headers = {"x-amz-request-id": rid, "Server": "p2pfast"}
        if request.method == "HEAD":  # a HEAD answer has no body: the status says it
            return web.Response(status=exc.status, headers=headers)
        body = xmldoc.error(exc.code, exc.message, request.path, rid, exc.fields)
        return web.Response(status=exc.status, body=body, content_type="application/xml", headers=headers)

    # -- buckets -------------------------------------------------------------------------------------
    async def _bucket_stat(self, bucket: str) -> FileStat | None:
        try:
            return await self.node.stat(names.bucket_file(bucket))
        except NotFound:
            return None
        except PeerUnavailable:
            if not self.node.peers.sessions:  # a lone node that does not hold it: it does not exist
                return None
            raise

    async def _need_bucket(self, bucket: str) -> FileStat:
        st = await self._bucket_stat(bucket)
        if st is None:
            raise S3Error("NoSuchBucket", 404, f"no bucket {bucket} in this network", BucketName=bucket)
        return st

    async def _list_buckets(self, call: _Call) -> web.StreamResponse:
        files = await self._files()
        buckets = [
            xmldoc.Bucket(f.key[:-1], f.modified)
            for f in files.values()
            if f.key.endswith("/") and f.key.count("/") == 1 and names.split_file(f.key + "x") is not None
        ]
        return _xml(call, xmldoc.list_buckets(sorted(buckets, key=lambda b: b.name), self.node.node_id[:16]))

    async def _create_bucket(self, call: _Call) -> web.StreamResponse:
        await _read_body(call)  # (a CreateBucketConfiguration: the node has no regions)
        if await self._bucket_stat(call.bucket) is not None:
            raise S3Error(
                "BucketAlreadyOwnedByYou", 409, f"bucket {call.bucket} exists already", BucketName=call.bucket
            )
        await self.node.put(names.bucket_file(call.bucket), BytesSource(b""))
        return web.Response(status=200, headers={"Location": f"/{call.bucket}", **_ids(call)})

    async def _head_bucket(self, call: _Call) -> web.StreamResponse:
        await self._need_bucket(call.bucket)
        return web.Response(status=200, headers={"x-amz-bucket-region": REGION, **_ids(call)})

    async def _delete_bucket(self, call: _Call) -> web.StreamResponse:
        await self._need_bucket(call.bucket)
        if await self._objects(call.bucket):
            raise S3Error(
                "BucketNotEmpty", 409, f"bucket {call.bucket} still holds objects", BucketName=call.bucket
            )
        await self.node.delete(names.bucket_file(call.bucket))
        return web.Response(status=204, headers=_ids(call))

    # -- listing -------------------------------------------------------------------------------------
    async def _files(self) -> dict[str, _Listed]:
        """Every file of this node and its connected members (node/listing.py), one per key: the copy
        most members hold when they disagree (a re-store racing), with when it was stored here."""
        listed = await self.node.network_files()
        own = {row.key: row.created for row in await self.node.db(self.node.repo.list_files)}
        now = time.time()
        best: dict[str, _Listed] = {}
        for f in listed.files:
            seen = best.get(f.key)
            if seen is None or f.holder_count > seen.holders:
                best[f.key] = _Listed(f.key, f.cid, f.size, own.get(f.key.encode(), now), f.holder_count)
        return best

    async def _objects(self, bucket: str) -> dict[str, _Listed]:
        """The bucket's objects by object key."""
        return (await self._objects_and_attrs(bucket))[0]

    async def _objects_and_attrs(self, bucket: str) -> tuple[dict[str, _Listed], dict[str, str]]:
        """The bucket's objects by object key, and the content ids of their attribute files."""
        out: dict[str, _Listed] = {}
        sidecars: dict[str, str] = {}
        prefix = names.attrs_file(bucket, "")
        for name, f in (await self._files()).items():
            if name.startswith(prefix):
                sidecars[name.removeprefix(prefix)] = f.cid
                continue
            split = names.split_file(name)
            if split is not None and split[0] == bucket:
                out[split[1]] = f
        return out, sidecars

    async def _list_objects(self, call: _Call) -> web.StreamResponse:
        await self._need_bucket(call.bucket)
        q = call.query
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = min(listing.MAX_KEYS, int(q.get("max-keys", listing.MAX_KEYS)))
        except ValueError:
            raise S3Error("InvalidArgument", 400, "max-keys is a whole number") from None
        if max_keys < 0:
            raise S3Error("InvalidArgument", 400, "max-keys is a whole number")
        token = q.get("continuation-token", "") if v2 else ""
        start_after = q.get("start-after", "") if v2 else q.get("marker", "")
        after = listing.decode_token(token) if token else start_after
        objects, sidecars = await self._objects_and_attrs(call.bucket)
        keys = sorted(objects)
        # a v1 marker is the NextMarker of the page before, which may be a common prefix it showed
        resumed = bool(token) or not v2
        shown, prefixes, last = listing.page(keys, prefix, delimiter, after, max_keys, resumed)
        entries = await self._entries(call.bucket, [objects[k] for k in shown], shown, sidecars)
        page = xmldoc.Listing(
            call.bucket,
            prefix,
            delimiter,
            max_keys,
            start_after,
            token,
            listing.encode_token(last) if last else "",
            entries,
            prefixes,
            q.get("encoding-type") == "url",
        )
        body = xmldoc.list_objects_v2(page) if v2 else xmldoc.list_objects_v1(page, last)
        return _xml(call, body)

    async def _entries(
        self, bucket: str, files: list[_Listed], keys: list[str], sidecars: dict[str, str]
    ) -> list[xmldoc.Entry]:
        gate = asyncio.Semaphore(ETAG_WORKERS)

        async def entry(key: str, f: _Listed) -> xmldoc.Entry:
            async with gate:
                sidecar = sidecars.get(key)
                a = None if sidecar is None else await self.attrs.get(bucket, key, f.cid, sidecar)
                if a is not None:
                    return xmldoc.Entry(key, f.size, a.modified, f'"{a.etag}"')
                return xmldoc.Entry(key, f.size, f.modified, f'"{await self._etag(f.cid)}"')

        return list(await asyncio.gather(*(entry(k, f) for k, f in zip(keys, files, strict=True))))

    # -- objects -------------------------------------------------------------------------------------
    async def _put_object(self, call: _Call) -> web.StreamResponse:
        if "x-amz-copy-source" in call.request.headers:
            return await self._copy_object(call)
        file = names.object_file(call.bucket, call.key)
        sent = attrs.from_request(call.request.headers)
        await self._need_bucket(call.bucket)
        source = _BodySource(call)
        report = await self.node.put(file, source)
        md5 = source.md5.hexdigest()
        want = call.request.headers.get("Content-MD5")
        if want is not None and not _md5_matches(want, source.md5.digest()):
            # stored already (the body was read to its end): take it back, and say why
            with contextlib.suppress(P2PError):
                await self.node.delete(file)
            raise S3Error("BadDigest", 400, "the Content-MD5 you sent does not match the body received")
        self._remember(report.cid, md5)
        await self._set_attrs(call.bucket, call.key, attrs.make(report.cid, md5, time.time(), sent))
        headers = {"ETag": f'"{md5}"', "x-amz-meta-p2pfast-cid": report.cid, **_ids(call)}
        return web.Response(status=200, headers=headers)

    async def _copy_object(self, call: _Call) -> web.StreamResponse:
        """CopyObject: the source's content stored under the destination (a store of verified bytes read
        from wherever they are), with the source's attributes or, with REPLACE, the request's. A copy onto
        itself with REPLACE (how rclone sets a modification time) rewrites the attributes only."""
        await _read_body(call)
        src_bucket, src_key, st = await self._copy_source(call)
        src_file = names.object_file(src_bucket, src_key)
        await self._need_bucket(call.bucket)
        dest = names.object_file(call.bucket, call.key)
        replace = call.request.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
        if dest == src_file and not replace:
            raise S3Error(
                "InvalidRequest",
                400,
                "copying an object onto itself changes nothing unless x-amz-metadata-directive is REPLACE",
            )
        old = await self.attrs.get(src_bucket, src_key, st.cid)
        etag = old.etag if old is not None else await self._etag(st.cid)
        if replace:
            sent = attrs.from_request(call.request.headers)
        elif old is not None:
            sent = attrs.Sent(old.content_type, old.headers, old.meta)
        else:
            sent = attrs.Sent(None, {}, {})
        cid = st.cid
        if dest != src_file:
            copied = ConcatSource(self.node, [(st.cid, 0, st.size)])
            try:
                cid = (await self.node.put(dest, copied)).cid
            finally:
                await copied.close()
        now = time.time()
        await self._set_attrs(call.bucket, call.key, attrs.make(cid, etag, now, sent))
        return _xml(call, xmldoc.copy_result(f'"{etag}"', now))

    async def _get_object(self, call: _Call) -> web.StreamResponse:
        file = names.object_file(call.bucket, call.key)
        try:
            st = await self.node.stat(file)
        except NotFound:
            await self._need_bucket(call.bucket)
            raise S3Error(
                "NoSuchKey", 404, f"no object {call.key[:200]} in bucket {call.bucket}", Key=call.key[:1024]
            ) from None
        except PeerUnavailable:
            if self.node.peers.sessions:
                raise
            await self._need_bucket(call.bucket)
            raise S3Error(
                "NoSuchKey", 404, f"no object {call.key[:200]} in bucket {call.bucket}", Key=call.key[:1024]
            ) from None
        a = await self.attrs.get(call.bucket, call.key, st.cid)
        if a is None:
            a = attrs.Attrs(
                st.cid, await self._etag(st.cid), st.created if st.created is not None else time.time()
            )
        etag, modified = f'"{a.etag}"', a.modified
        headers = {
            "ETag": etag,
            "Last-Modified": httpread.http_date(modified),
            "Accept-Ranges": "bytes",
            **a.response_headers(call.key),
            "x-amz-meta-p2pfast-cid": st.cid,
            **_ids(call),
        }
        status = httpread.conditional(call.request, etag, modified)
        if status is not None:
            return web.Response(status=status, headers=headers if status == 304 else _ids(call))
        # (?partNumber= gets the whole object: the node keeps no parts once an upload completes)
        ranged = None if "partNumber" in call.query else call.request.headers.get("Range")
        try:
            return await httpread.serve_object(
                self.node, call.request, headers, st.cid, st.size, ranged, log, "s3_get_failed", call.rid
            )
        except httpread.Unsatisfiable as exc:
            raise S3Error("InvalidRange", 416, str(exc), ActualObjectSize=str(exc.size)) from None

    async def _delete_object(self, call: _Call) -> web.StreamResponse:
        file = names.object_file(call.bucket, call.key)
        try:
            await self.node.delete(file)
        except NotFound:
            await self._need_bucket(call.bucket)  # S3: deleting what is absent succeeds
        await self._drop_attrs(call.bucket, call.key)
        return web.Response(status=204, headers=_ids(call))

    # -- multipart uploads (multipart.py) -----------------------------------------------------------
    async def _create_upload(self, call: _Call) -> web.StreamResponse:
        await _read_body(call)
        await self._need_bucket(call.bucket)
        upload_id = await self.multipart.create(
            call.bucket, call.key, attrs.from_request(call.request.headers)
        )
        return _xml(call, xmldoc.initiate_multipart(call.bucket, call.key, upload_id))

    async def _put_part(self, call: _Call) -> web.StreamResponse:
        number = check_number(call.query.get("partNumber"))
        info = await self.multipart.upload(call.query["uploadId"], call.bucket, call.key)
        if "x-amz-copy-source" in call.request.headers:
            return await self._copy_part(call, info, number)
        source = _BodySource(call)
        report = await self.multipart.put_part(info, number, source)
        md5 = source.md5.hexdigest()
        self._remember(report.cid, md5)
        return web.Response(status=200, headers={"ETag": f'"{md5}"', **_ids(call)})

    async def _copy_part(self, call: _Call, info: UploadInfo, number: int) -> web.StreamResponse:
        """UploadPartCopy: the part is a span of an object already stored (x-amz-copy-source, with
        x-amz-copy-source-range or whole), read verified from wherever it is (how the aws CLI and rclone
        copy an object too big for one CopyObject)."""
        await _read_body(call)
        src_bucket, src_key, st = await self._copy_source(call)
        first, last = 0, st.size - 1
        spec = call.request.headers.get("x-amz-copy-source-range")
        if spec is not None:
            m = _COPY_RANGE.fullmatch(spec.strip())
            if m is None or int(m[1]) > int(m[2]):
                raise S3Error("InvalidArgument", 400, "x-amz-copy-source-range is bytes=FIRST-LAST")
            first, last = int(m[1]), int(m[2])
            if last >= st.size:
                raise S3Error(
                    "InvalidRange",
                    416,
                    f"the range lies beyond the object's {st.size} bytes",
                    ActualObjectSize=str(st.size),
                )
        source = ConcatSource(self.node, [(st.cid, first, last + 1)])
        try:
            report = await self.multipart.put_part(info, number, source)
        finally:
            await source.close()
        md5 = source.md5.hexdigest()
        self._remember(report.cid, md5)
        log.debug(
            "event=s3_part_copied upload=%s part=%d from=%s/%s",
            info.upload_id,
            number,
            src_bucket,
            src_key[:200],
        )
        return _xml(call, xmldoc.copy_result(f'"{md5}"', time.time(), "CopyPartResult"))

    async def _copy_source(self, call: _Call) -> tuple[str, str, FileStat]:
        """The bucket, key and stat of x-amz-copy-source (`/BUCKET/KEY` or `BUCKET/KEY`, percent-encoded,
        perhaps with ?versionId, which a node with no versions ignores)."""
        source = unquote(call.request.headers["x-amz-copy-source"]).split("?", 1)[0].lstrip("/")
        src_bucket, _, src_key = source.partition("/")
        names.check_bucket(src_bucket)
        try:
            return src_bucket, src_key, await self.node.stat(names.object_file(src_bucket, src_key))
        except NotFound:
            raise S3Error("NoSuchKey", 404, f"no object {src_key[:200]} in bucket {src_bucket}") from None

    async def _complete_upload(self, call: _Call) -> web.StreamResponse:
        wanted = xmldoc.complete_parts(await _read_body(call, COMPLETE_BODY))
        info = await self.multipart.upload(call.query["uploadId"], call.bucket, call.key)
        report, etag = await self.multipart.complete(info, wanted)
        await self._set_attrs(call.bucket, call.key, attrs.make(report.cid, etag, time.time(), info.sent))
        location = f"http://{call.request.host}/{call.bucket}/{quote(call.key)}"
        body = xmldoc.complete_multipart(location, call.bucket, call.key, f'"{etag}"')
        return _xml(call, body)

    async def _abort_upload(self, call: _Call) -> web.StreamResponse:
        info = await self.multipart.upload(call.query["uploadId"], call.bucket, call.key)
        await self.multipart.abort(info)
        return web.Response(status=204, headers=_ids(call))

    async def _list_parts(self, call: _Call) -> web.StreamResponse:
        info = await self.multipart.upload(call.query["uploadId"], call.bucket, call.key)
        parts = [
            xmldoc.Part(p.number, f'"{await self._etag(p.cid)}"', p.size, info.created)
            for p in await self.multipart.parts(info)
        ]
        owner = self.node.node_id[:16]
        return _xml(call, xmldoc.list_parts(call.bucket, call.key, info.upload_id, parts, owner))

    async def _list_uploads(self, call: _Call) -> web.StreamResponse:
        await self._need_bucket(call.bucket)
        uploads = [
            xmldoc.Upload(u.key, u.upload_id, u.created) for u in await self.multipart.uploads(call.bucket)
        ]
        return _xml(call, xmldoc.list_uploads(call.bucket, uploads, self.node.node_id[:16]))

    async def _delete_objects(self, call: _Call) -> web.StreamResponse:
        keys, quiet = xmldoc.delete_keys(await _read_body(call, COMPLETE_BODY))
        await self._need_bucket(call.bucket)
        deleted: list[str] = []
        errors: list[tuple[str, str, str]] = []
        for key in keys:
            try:
                await self.node.delete(names.object_file(call.bucket, key))
            except NotFound:
                pass  # S3: deleting what is absent succeeds
            except S3Error as exc:
                errors.append((key, exc.code, exc.message))
                continue
            except P2PError as exc:
                err = _s3_error(exc)
                errors.append((key, err.code, err.message))
                continue
            await self._drop_attrs(call.bucket, key)
            deleted.append(key)
        return _xml(call, xmldoc.delete_result(deleted, errors, quiet))

    # -- attributes (attrs.py) -------------------------------------------------------------------------
    async def _set_attrs(self, bucket: str, key: str, a: attrs.Attrs) -> None:
        if a.needs_file(key):
            await self.node.put(names.attrs_file(bucket, key), BytesSource(attrs.encode(a)))
        elif await self.attrs.get(bucket, key, a.cid) is not None:
            await self._drop_attrs(bucket, key)  # the same content stored again with no attributes

    async def _drop_attrs(self, bucket: str, key: str) -> None:
        with contextlib.suppress(NotFound, PeerUnavailable):
            await self.node.delete(names.attrs_file(bucket, key))

    # -- ETags ---------------------------------------------------------------------------------------
    def _remember(self, cid: str, md5: str) -> None:
        self._md5[cid] = md5
        self._md5.move_to_end(cid)
        while len(self._md5) > ETAG_MEMO:
            self._md5.popitem(last=False)

    async def _etag(self, cid: str) -> str:
        """The MD5 of object `cid` (S3's ETag of a single-part object): remembered from the PUT that
        stored it through this node, else computed once from the verified content: requests that need it
        meanwhile (a client's ranged GETs of one object, 10 at a time) wait for that one read."""
        md5 = self._md5.get(cid)
        if md5 is not None:
            return md5
        reading = self._md5_reading.get(cid)
        if reading is None:
            reading = self._md5_reading[cid] = asyncio.ensure_future(self._read_md5(cid))
            reading.add_done_callback(lambda f: self._md5_done(cid, f))
        return await asyncio.shield(reading)  # a client that goes away does not cancel the others' read

    def _md5_done(self, cid: str, reading: asyncio.Future[str]) -> None:
        self._md5_reading.pop(cid, None)
        if not reading.cancelled():
            reading.exception()  # retrieved, should every request that waited for it be gone

    async def _read_md5(self, cid: str) -> str:
        sink = _Md5Sink()
        with self.node.working("s3"):
            await self.node.get(cid, sink)
        md5 = sink.md5.hexdigest()
        self._remember(cid, md5)
        return md5


@dataclass(frozen=True, slots=True)
class _Listed:
    key: str
    cid: str
    size: int
    modified: float
    holders: int


class _BodySource:
    """A PUT's body as a store's source: read from aiohttp's stream, checked by the payload's signature
    (sigv4.Payload: chunk signatures as they come, the whole body's hash at its end), hashed for the
    ETag. A body that fails its check raises at its end, before the store can finish, so nothing it
    carried is stored."""

    file: int | None = None

    def __init__(self, call: _Call) -> None:
        self._content = call.request.content
        self._payload = call.payload
        self._ready: list[bytes | memoryview] = []
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    async def read(self, limit: int) -> bytes | bytearray:
        while not self._ready:
            try:
                data = await self._content.read(limit)
            except (ClientPayloadError, ConnectionError) as exc:
                raise S3Error("IncompleteBody", 400, f"the body ended early: {exc}") from None
            if not data:
                self._payload.finish()  # raises S3Error on a bad hash, a short or broken body
                length = self._payload.decoded_length
                if length is not None and length != self.size:
                    raise S3Error("IncompleteBody", 400, f"the body carried {self.size} of {length} bytes")
                return b""
            self._ready = list(self._payload.feed(data))
        piece = bytes(self._ready.pop(0))
        self.md5.update(piece)
        self.size += len(piece)
        return piece


class _Md5Sink:
    file: int | None = None

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.md5.update(data)


def _split_path(path: str) -> tuple[str, str]:
    """(bucket, key) of a path-style request: /BUCKET/KEY, percent-decoded."""
    from urllib.parse import unquote

    bucket, _, key = path.lstrip("/").partition("/") if path.startswith("/") else ("", "", "")
    try:
        return unquote(bucket, errors="strict"), unquote(key, errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", 400, "the path is not UTF-8 once percent-decoded") from None


def _md5_matches(header: str, digest: bytes) -> bool:
    import base64
    import binascii

    try:
        return base64.b64decode(header, validate=True) == digest
    except (binascii.Error, ValueError):
        return False


async def _read_body(call: _Call, limit: int = 65536) -> bytes:
    """A small body (an XML document), checked by its signature, up to `limit` bytes."""
    total = 0
    out = bytearray()
    while data := await call.request.content.read(65536):
        total += len(data)
        if total > limit:
            raise S3Error("MaxMessageLengthExceeded", 400, f"the request body is over {limit} bytes")
        for piece in call.payload.feed(data):
            out += piece
    call.payload.finish()
    return bytes(out)


def _ids(call: _Call) -> dict[str, str]:
    return {"x-amz-request-id": call.rid, "Server": "p2pfast"}


def _xml(call: _Call, body: bytes) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/xml", headers=_ids(call))


def _method_not_allowed(method: str) -> S3Error:
    return S3Error("MethodNotAllowed", 405, f"{method} is not allowed on this resource")


def _s3_error(exc: P2PError) -> S3Error:
    """A node error as S3 says it: 4xx for what the request did, 5xx (clients retry) for the rest."""
    if isinstance(exc, NotFound):
        return S3Error("NoSuchKey", 404, str(exc))
    if isinstance(exc, BadInput):
        return S3Error("InvalidArgument", 400, str(exc))
    if isinstance(exc, PeerUnavailable):
        return S3Error("ServiceUnavailable", 503, str(exc))
    if isinstance(exc, DiskFull):
        return S3Error("InsufficientStorage", 507, str(exc))
    if isinstance(exc, IntegrityError):
        return S3Error("InternalError", 500, f"no verified copy could be read: {exc}")
    return S3Error("InternalError", 500, str(exc))
