"""An object's S3 attributes (Content-Type and the other headers S3 keeps, `x-amz-meta-*`, its ETag and
when it was written), kept network-wide as a small file beside the object: `.s3/m/BUCKET/KEY`
(names.py), a JSON document that names the content id it describes.

Being a file, it is replicated, found in one hop and deleted by a tombstone like the object, with no
message or table of its own. It is written after the object and before the PUT is answered, and read
only when it names the object's current content id: one left from an earlier PUT of the key (a crash
between the two stores, a PUT that needed none racing one that did) is ignored, so the attributes
never describe other bytes than the ones served. An object with nothing to say beyond the defaults (no
`x-amz-meta-*`, a Content-Type that is the one its name implies, a single-part MD5 ETag) gets no such
file, so a plain PUT costs one store.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from p2pfast.front.s3.errors import S3Error

# The request headers S3 stores with an object and gives back on GET and HEAD (besides Content-Type).
KEPT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
# S3's limit on user metadata: 2 KB of names and values together.
MAX_META = 2048
DEFAULT_TYPE = "binary/octet-stream"


@dataclass(frozen=True, slots=True)
class Attrs:
    cid: str  # the content these attributes describe
    etag: str  # unquoted: an MD5, or S3's multipart form (md5-N)
    modified: float
    content_type: str | None = None  # None: the one the key's name implies
    headers: dict[str, str] = field(default_factory=dict)  # of KEPT_HEADERS, as sent
    meta: dict[str, str] = field(default_factory=dict)  # x-amz-meta-NAME -> value, NAME lowercased

    def needs_file(self, key: str) -> bool:
        return bool(self.meta or self.headers or "-" in self.etag) or (
            self.content_type is not None and self.content_type != implied_type(key)
        )

    def response_headers(self, key: str) -> dict[str, str]:
        out = {"Content-Type": self.content_type or implied_type(key), **self.headers}
        out.update({f"x-amz-meta-{k}": v for k, v in self.meta.items()})
        return out


def implied_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or DEFAULT_TYPE


@dataclass(frozen=True, slots=True)
class Sent:
    """What a request asks to keep with the object it writes."""

    content_type: str | None
    headers: dict[str, str]
    meta: dict[str, str]


def from_request(headers: Mapping[str, str]) -> Sent:
    """The attributes a PUT, CreateMultipartUpload or CopyObject (REPLACE) sends; MetadataTooLarge over
    S3's 2 KB of user metadata."""
    meta: dict[str, str] = {}
    kept: dict[str, str] = {}
    content_type = None
    for name, value in headers.items():
        low = name.lower()
        if low.startswith("x-amz-meta-"):
            meta[low.removeprefix("x-amz-meta-")] = value
        elif low == "content-encoding":
            # aws-chunked is how this request's body was framed (sigv4.py), not how the object is encoded
            coding = ",".join(c for c in (x.strip() for x in value.split(",")) if c and c != "aws-chunked")
            if coding:
                kept[low] = coding
        elif low in KEPT_HEADERS:
            kept[low] = value
        elif low == "content-type":
            content_type = value
    meta.pop("p2pfast-cid", None)  # (the node's own, given on every GET: not the client's to set)
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_META:
        raise S3Error("MetadataTooLarge", 400, f"x-amz-meta-* headers are {MAX_META} bytes at most, in all")
    return Sent(content_type, kept, meta)


def make(cid: str, etag: str, modified: float, sent: Sent) -> Attrs:
    return Attrs(cid, etag, modified, sent.content_type, sent.headers, sent.meta)


def encode(a: Attrs) -> bytes:
    return orjson.dumps(
        {
            "cid": a.cid,
            "etag": a.etag,
            "modified": a.modified,
            "content_type": a.content_type,
            "headers": a.headers,
            "meta": a.meta,
        }
    )


def decode(data: bytes) -> Attrs | None:
    """The attributes a file holds; None for one that is not such a document (a store by hand)."""
    try:
        d = orjson.loads(data)
        a = Attrs(
            str(d["cid"]),
            str(d["etag"]),
            float(d["modified"]),
            None if d["content_type"] is None else str(d["content_type"]),
            {str(k): str(v) for k, v in dict(d["headers"]).items()},
            {str(k): str(v) for k, v in dict(d["meta"]).items()},
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return a


def to_json(sent: Sent) -> dict[str, object]:
    """For a multipart upload's file: what its CreateMultipartUpload sent, applied at completion."""
    return {"content_type": sent.content_type, "headers": sent.headers, "meta": sent.meta}


def from_json(d: object) -> Sent:
    if not isinstance(d, dict):
        return Sent(None, {}, {})
    ct = d.get("content_type")
    headers, meta = d.get("headers"), d.get("meta")
    return Sent(
        ct if isinstance(ct, str) else None,
        {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {},
        {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {},
    )
