"""The S3 API's XML documents: the ones the node sends (rendered here by hand, since each is a short flat
list of elements) and the few it reads (parsed with the standard library's expat-backed ElementTree,
which resolves no external entity; a body with a DOCTYPE, where entities would be declared, is refused).

Namespaces and element names are S3's (the API reference's response syntax for each operation).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote
from xml.etree import ElementTree
from xml.parsers import expat
from xml.sax.saxutils import escape

from p2pfast.front.s3.errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def iso8601(t: float) -> str:
    """S3's timestamp form in XML bodies: 2026-12-03T14:13:47.000Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _el(name: str, value: str | int) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def error(code: str, message: str, resource: str, request_id: str, fields: dict[str, str]) -> bytes:
    extra = "".join(_el(k, v) for k, v in fields.items())
    return (
        HEAD
        + "<Error>"
        + _el("Code", code)
        + _el("Message", message)
        + extra
        + _el("Resource", resource)
        + _el("RequestId", request_id)
        + "</Error>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    created: float


def list_buckets(buckets: Iterable[Bucket], owner: str) -> bytes:
    items = "".join(
        "<Bucket>" + _el("Name", b.name) + _el("CreationDate", iso8601(b.created)) + "</Bucket>"
        for b in buckets
    )
    return (
        HEAD
        + f'<ListAllMyBucketsResult xmlns="{NS}">'
        + "<Owner>"
        + _el("ID", owner)
        + _el("DisplayName", owner)
        + "</Owner>"
        + f"<Buckets>{items}</Buckets>"
        + "</ListAllMyBucketsResult>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    size: int
    modified: float
    etag: str  # quoted, as in the ETag header


@dataclass(frozen=True, slots=True)
class Listing:
    """A page of ListObjectsV2 (listing.py fills it)."""

    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    start_after: str
    token: str  # the continuation token asked with, "" for none
    next_token: str  # "" when the listing ends here
    contents: Sequence[Entry]
    prefixes: Sequence[str]
    url_encoded: bool  # encoding-type=url: keys and prefixes percent-encoded (XML 1.0 cannot hold every key)


def list_objects_v2(page: Listing) -> bytes:
    enc = _encoder(page)
    fields = [
        _el("KeyCount", len(page.contents) + len(page.prefixes)),
        _el("MaxKeys", page.max_keys),
        _el("IsTruncated", "true" if page.next_token else "false"),
    ]
    if page.start_after:
        fields.append(_el("StartAfter", enc(page.start_after)))
    if page.token:
        fields.append(_el("ContinuationToken", page.token))
    if page.next_token:
        fields.append(_el("NextContinuationToken", page.next_token))
    return _list_result(page, enc, fields)


def list_objects_v1(page: Listing, next_marker: str) -> bytes:
    """ListObjects (version 1): `Marker`/`NextMarker` instead of tokens (rclone's default for S3
    providers it does not know)."""
    enc = _encoder(page)
    fields = [
        _el("Marker", enc(page.start_after)),
        _el("MaxKeys", page.max_keys),
        _el("IsTruncated", "true" if next_marker else "false"),
    ]
    if next_marker:
        fields.append(_el("NextMarker", enc(next_marker)))
    return _list_result(page, enc, fields)


def _encoder(page: Listing) -> Callable[[str], str]:
    return (lambda s: quote(s, safe="/")) if page.url_encoded else (lambda s: s)


def _list_result(page: Listing, enc: Callable[[str], str], fields: list[str]) -> bytes:
    """A ListBucketResult: its version's `fields`, then what both versions have."""
    parts = [
        HEAD,
        f'<ListBucketResult xmlns="{NS}">',
        _el("Name", page.bucket),
        _el("Prefix", enc(page.prefix)),
    ]
    parts += fields
    if page.delimiter:
        parts.append(_el("Delimiter", enc(page.delimiter)))
    if page.url_encoded:
        parts.append(_el("EncodingType", "url"))
    parts += [_contents(e, enc) for e in page.contents]
    parts += ["<CommonPrefixes>" + _el("Prefix", enc(p)) + "</CommonPrefixes>" for p in page.prefixes]
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def _contents(e: Entry, enc: Callable[[str], str]) -> str:
    return (
        "<Contents>"
        + _el("Key", enc(e.key))
        + _el("LastModified", iso8601(e.modified))
        + _el("ETag", e.etag)
        + _el("Size", e.size)
        + _el("StorageClass", "STANDARD")
        + "</Contents>"
    )


def location(region: str) -> bytes:
    return (HEAD + f'<LocationConstraint xmlns="{NS}">{escape(region)}</LocationConstraint>').encode()


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    return (
        HEAD
        + f'<InitiateMultipartUploadResult xmlns="{NS}">'
        + _el("Bucket", bucket)
        + _el("Key", key)
        + _el("UploadId", upload_id)
        + "</InitiateMultipartUploadResult>"
    ).encode()


def complete_multipart(location: str, bucket: str, key: str, etag: str) -> bytes:
    return (
        HEAD
        + f'<CompleteMultipartUploadResult xmlns="{NS}">'
        + _el("Location", location)
        + _el("Bucket", bucket)
        + _el("Key", key)
        + _el("ETag", etag)
        + "</CompleteMultipartUploadResult>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str  # quoted
    size: int
    modified: float


def _party(role: str, owner: str) -> str:
    return f"<{role}>" + _el("ID", owner) + _el("DisplayName", owner) + f"</{role}>"


def list_parts(bucket: str, key: str, upload_id: str, parts: Sequence[Part], owner: str) -> bytes:
    items = "".join(
        "<Part>"
        + _el("PartNumber", p.number)
        + _el("LastModified", iso8601(p.modified))
        + _el("ETag", p.etag)
        + _el("Size", p.size)
        + "</Part>"
        for p in parts
    )
    return (
        HEAD
        + f'<ListPartsResult xmlns="{NS}">'
        + _el("Bucket", bucket)
        + _el("Key", key)
        + _el("UploadId", upload_id)
        + _party("Initiator", owner)
        + _party("Owner", owner)
        + _el("StorageClass", "STANDARD")
        + _el("PartNumberMarker", 0)
        + _el("NextPartNumberMarker", parts[-1].number if parts else 0)
        + _el("MaxParts", 10000)
        + _el("IsTruncated", "false")
        + items
        + "</ListPartsResult>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Upload:
    key: str
    upload_id: str
    created: float


def list_uploads(bucket: str, uploads: Sequence[Upload], owner: str) -> bytes:
    items = "".join(
        "<Upload>"
        + _el("Key", u.key)
        + _el("UploadId", u.upload_id)
        + _party("Initiator", owner)
        + _party("Owner", owner)
        + _el("StorageClass", "STANDARD")
        + _el("Initiated", iso8601(u.created))
        + "</Upload>"
        for u in uploads
    )
    return (
        HEAD
        + f'<ListMultipartUploadsResult xmlns="{NS}">'
        + _el("Bucket", bucket)
        + "<KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
        + _el("MaxUploads", 1000)
        + _el("IsTruncated", "false")
        + items
        + "</ListMultipartUploadsResult>"
    ).encode()


def delete_result(deleted: Sequence[str], errors: Sequence[tuple[str, str, str]], quiet: bool) -> bytes:
    """DeleteObjects' answer: the keys deleted (unless quiet) and (key, code, message) of those not."""
    parts = [HEAD, f'<DeleteResult xmlns="{NS}">']
    if not quiet:
        parts += ["<Deleted>" + _el("Key", k) + "</Deleted>" for k in deleted]
    parts += [
        "<Error>" + _el("Key", k) + _el("Code", c) + _el("Message", m) + "</Error>" for k, c, m in errors
    ]
    parts.append("</DeleteResult>")
    return "".join(parts).encode()


# -- documents the node reads ------------------------------------------------------------------------
class _Doctype(Exception):
    pass


def _refuse_doctype(*_: object) -> None:
    raise _Doctype()


def _parse(body: bytes, root: str) -> ElementTree.Element:
    # No S3 document has a DOCTYPE, and one is how entities in the body would amplify it (expat lets an
    # expansion of up to 100 times the input through): refused before anything is expanded.
    check = expat.ParserCreate()
    check.StartDoctypeDeclHandler = _refuse_doctype
    try:
        check.Parse(body, True)
        doc = ElementTree.fromstring(body)
    except _Doctype:
        raise S3Error("MalformedXML", 400, "the XML body has a DOCTYPE, which no S3 document has") from None
    except (ElementTree.ParseError, expat.ExpatError, ValueError, LookupError) as exc:
        # (LookupError: an encoding Python does not know, or one that is not a text encoding)
        raise S3Error("MalformedXML", 400, f"the XML body is not well-formed: {exc}") from None
    if _local(doc.tag) != root:
        raise S3Error("MalformedXML", 400, f"the XML body is <{_local(doc.tag)[:40]}>, not <{root}>")
    return doc


_PART_NUMBER = re.compile(r"[0-9]{1,5}")  # ASCII digits: str.isdigit() takes "²", which int() refuses


def _local(tag: object) -> str:
    return str(tag).rpartition("}")[2]


def _children(el: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ElementTree.Element, name: str) -> str | None:
    found = _children(el, name)
    return None if not found else (found[0].text or "")


def complete_parts(body: bytes) -> list[tuple[int, str]]:
    """(part number, ETag without quotes) of a CompleteMultipartUpload body, in its order."""
    doc = _parse(body, "CompleteMultipartUpload")
    out: list[tuple[int, str]] = []
    for part in _children(doc, "Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None or not _PART_NUMBER.fullmatch(number.strip()):
            raise S3Error("MalformedXML", 400, "each <Part> needs a <PartNumber> (1-10000) and an <ETag>")
        out.append((int(number.strip()), etag.strip().strip('"')))
    if not out:
        raise S3Error("MalformedXML", 400, "CompleteMultipartUpload names no part")
    return out


def delete_keys(body: bytes) -> tuple[list[str], bool]:
    """(keys, quiet) of a DeleteObjects body."""
    doc = _parse(body, "Delete")
    keys = []
    for obj in _children(doc, "Object"):
        key = _text(obj, "Key")
        if not key:
            raise S3Error("MalformedXML", 400, "each <Object> needs a <Key>")
        keys.append(key)
    if len(keys) > 1000:
        raise S3Error("MalformedXML", 400, "DeleteObjects takes at most 1000 keys")
    return keys, (_text(doc, "Quiet") or "").strip().lower() == "true"


def copy_result(etag: str, modified: float, root: str = "CopyObjectResult") -> bytes:
    """CopyObject's answer; UploadPartCopy's with root CopyPartResult."""
    return (
        HEAD
        + f'<{root} xmlns="{NS}">'
        + _el("LastModified", iso8601(modified))
        + _el("ETag", etag)
        + f"</{root}>"
    ).encode()
