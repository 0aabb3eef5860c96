r"""AWS Signature Version 4 for S3, sans-IO: reads a request's auth, checks its signature, checks its body.

The caller's flow, with its own I/O in between:

    auth = parse(req, now)                  # form, algorithm, scope, clock skew or expiry
    secret = await lookup(auth.access_key_id)
    body = verify(auth, req, secret)        # the request's signature; returns the body's checker
    for data in incoming: store(body.feed(data))
    body.finish()                           # the payload hash, the last chunk, the trailer

Nothing here reads a clock, a socket or a file; every problem with a request is an `S3Error` with S3's
code and status, and a fuzz test allows nothing else out of `parse`, `verify`, `feed` and `finish`.

Two ways to authenticate (the S3 API reference, "Authenticating Requests (AWS Signature Version 4)"):

- header: `Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261203/us-east-1/s3/aws4_request,
  SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=<64 hex>` with `x-amz-date` and
  `x-amz-content-sha256` headers. The date must be within `MAX_SKEW` of `now`, either way. The `Date`
  header is not accepted in place of `x-amz-date`: every SigV4 client we serve sends `x-amz-date`.
- presigned URL: the query carries X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires,
  X-Amz-SignedHeaders and X-Amz-Signature; valid from X-Amz-Date (less `MAX_SKEW`) for X-Amz-Expires
  seconds, at most `MAX_EXPIRES`.

The canonical request, S3's flavour (S3 neither normalises paths nor double-encodes them, unlike the other
services): the method; the path percent-decoded to bytes and re-encoded with everything but unreserved
characters and "/" escaped (so "a+b", "a%2Bb" both sign as "a%2Bb", and "//" stays); the query's names and
values percent-decoded and re-encoded the same way ("/" too), sorted by encoded name then value, without
X-Amz-Signature when presigned ("+" in the query is a space, as S3 and minio read it); the signed
headers in SignedHeaders' order, values trimmed and inner whitespace runs collapsed to one space (botocore's
`' '.join(v.split())`); the SignedHeaders list; the payload hash. The region is whatever the credential's
scope names: the node is region-agnostic, but the key is derived for that region, so a signer must use it.

Body modes, from `x-amz-content-sha256` (for a presigned URL: the X-Amz-Content-Sha256 query parameter, or
a signed x-amz-content-sha256 header, or else UNSIGNED-PAYLOAD, as botocore signs it):

- UNSIGNED-PAYLOAD: bytes pass through unchecked.
- a SHA-256 in hex: bytes pass through as they come and are hashed; `finish()` compares. So a caller must
  hold what it wrote as provisional until `finish()` returns (commit after, discard on S3Error).
- STREAMING-AWS4-HMAC-SHA256-PAYLOAD (aws-chunked, signed chunks; the AWS Java and Go SDKs, minio-go):
  `hex-size;chunk-signature=<64 hex>\r\n<data>\r\n` ... ending in a 0-size chunk and `\r\n`. Each
  chunk's signature is HMAC(signing key, "AWS4-HMAC-SHA256-PAYLOAD\n" date "\n" scope "\n" previous
  signature "\n" sha256("") "\n" sha256(data)), the first previous signature the request's own (the
  seed). A chunk's data is buffered (at most `MAX_CHUNK_SIZE`) and comes out only once its signature
  checked; the chain and the signed final chunk make reordering, dropping and truncating detectable.
- STREAMING-UNSIGNED-PAYLOAD-TRAILER (aws-chunked, unsigned; botocore over https): `hex-size\r\n<data>\r\n`
  ... `0\r\n`, the trailer lines that x-amz-trailer declares (`x-amz-checksum-crc32:<base64>\r\n`), then
  `\r\n`. Data passes through as it comes; `finish()` answers for the trailer checksum. CRC32, SHA-1,
  SHA-256 and SHA-512 trailers are checked (zlib, hashlib); CRC32C, CRC64NVME and the XXHash ones are
  accepted unchecked: the stdlib has none of them.

STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER (signed chunks with a signed trailer) and the SigV4a (ECDSA)
modes are answered with 501 NotImplemented.

Error codes, by case (statuses are S3's):

    no Authorization header and no X-Amz-* auth parameters     AccessDenied 403
    Authorization malformed or not AWS4-HMAC-SHA256            AuthorizationHeaderMalformed 400
    presigned parameters malformed, missing, other algorithm   AuthorizationQueryParametersError 400
      (also: X-Amz-Expires not in 1..604800, SigV2 query auth)
    both an Authorization header and X-Amz-* auth parameters   InvalidArgument 400
    credential scope: date != X-Amz-Date's, service != "s3",
      terminator != "aws4_request"; SignedHeaders unsorted,
      duplicated or without host                               the malformed code of its kind, 400
    x-amz-date / X-Amz-Date absent or not yyyymmddThhmmssZ     AccessDenied 403
    more than MAX_SKEW between the date and now                RequestTimeTooSkewed 403
    presigned URL past X-Amz-Date + X-Amz-Expires              AccessDenied 403 "Request has expired"
    header auth without x-amz-content-sha256                   InvalidRequest 400
    x-amz-content-sha256 not a mode nor a SHA-256              InvalidArgument 400
    a signed trailer or ECDSA streaming mode                   NotImplemented 501
    Content-Length, x-amz-decoded-content-length not numbers;
      x-amz-trailer naming no known checksum                   InvalidArgument 400 / InvalidRequest 400
    a signed header absent from the request                    SignatureDoesNotMatch 403
    the signature does not match                               SignatureDoesNotMatch 403
    the body's SHA-256 does not match                          XAmzContentSHA256Mismatch 400
    aws-chunked: a chunk signature does not match              SignatureDoesNotMatch 403
    aws-chunked: bad framing (chunk line, CRLF, a chunk over
      MAX_CHUNK_SIZE, a line over MAX_CHUNK_LINE, bytes after
      the end, an undeclared or repeated trailer)              InvalidRequest 400
    the body ends early (inside a chunk, before the final
      chunk, shorter than its declared length, or without a
      trailer that x-amz-trailer declares)                     IncompleteBody 400
    the body is longer than its declared length                InvalidRequest 400
    a trailer checksum that does not match                     BadDigest 400 (not base64: InvalidRequest)
    a path, query or header value that is not UTF-8 text       InvalidURI / InvalidArgument 400

Header values are expected as str decoded from the wire as UTF-8 with surrogateescape (aiohttp's way),
so the bytes the client signed are the bytes hashed here; repeated headers joined with "," (each value
trimmed first, as botocore does, or the signature will not match).

Every header with an x-amz- prefix should be signed (S3 says so), but this module does not refuse an
unsigned one: the caller may check `Auth.signed_headers` where an unsigned header would matter.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import itertools
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, unquote_to_bytes

from p2pfast.front.s3.errors import S3Error, access_denied, bad_request, signature_mismatch

__all__ = [
    "ALGORITHM",
    "KEY_CACHE_SIZE",
    "MAX_CHUNK_LINE",
    "MAX_CHUNK_SIZE",
    "MAX_EXPIRES",
    "MAX_SKEW",
    "MAX_TRAILERS",
    "Auth",
    "Payload",
    "PayloadMode",
    "Request",
    "parse",
    "verify",
]

ALGORITHM: Final = "AWS4-HMAC-SHA256"
# S3's own tolerance for a client's clock: 15 minutes either way (RequestTimeTooSkewed past it)
MAX_SKEW: Final = 900
MAX_EXPIRES: Final = 604800  # a presigned URL lives at most 7 days (S3's limit)
# One aws-chunked chunk is buffered whole until its signature checks, so this bounds a request's memory.
# The SDKs send chunks of tens of KiB; S3 wants at least 8 KiB per chunk (but the last) and names no
# maximum, so this leaves a wide margin while keeping a hostile size header from costing more.
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
# A chunk header line ("hex;chunk-signature=<64 hex>\r\n" is ~90 bytes) or trailer line, CRLF included:
# generous for either, small enough that a line without an end costs nothing.
MAX_CHUNK_LINE: Final = 4096
MAX_TRAILERS: Final = 8  # names in x-amz-trailer (S3 takes one checksum; a few more cost nothing)
# Derived signing keys, cleared when full: a key is good for one (secret, day, region), so a busy node
# derives a handful a day; the bound stops a flood of regions or days from growing the dict.
KEY_CACHE_SIZE: Final = 256

_UNSIGNED: Final = "UNSIGNED-PAYLOAD"
_STREAMING_SIGNED: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_STREAMING_TRAILER: Final = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
_NOT_IMPLEMENTED_MODES: Final = frozenset(
    {
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    }
)
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
_TERMINATOR: Final = "aws4_request"

_AMZ_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
# [0-9], not \d: \d takes any Unicode digit, which int() would then read
_NUMBER = re.compile(r"[0-9]{1,19}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_CREDENTIAL = re.compile(r"([^/\s]+)/([0-9]{8})/([^/\s]+)/([^/\s]+)/([^/\s]+)")
_SIGNED_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,16});chunk-signature=([0-9a-f]{64})")
_UNSIGNED_CHUNK_LINE = re.compile(rb"[0-9a-fA-F]{1,16}")
_TRAILER_LINE = re.compile(rb"([A-Za-z0-9-]+):[ \t]*([\x21-\x7e]*)[ \t]*")
# the checksum trailers S3 takes; those in _HASHLIB and crc32 are checked, the rest (which the stdlib cannot
# compute) accepted as sent
_HASHLIB: Final = {"sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}
_CHECKSUMS: Final = frozenset(
    f"x-amz-checksum-{name}"
    for name in (
        "crc32",
        "crc32c",
        "crc64nvme",
        "sha1",
        "sha256",
        "sha512",
        "xxhash64",
        "xxhash3",
        "xxhash128",
    )
)

# the query parameters whose presence makes a request a presigned one
_PRESIGN_MARKERS: Final = frozenset({b"X-Amz-Algorithm", b"X-Amz-Credential", b"X-Amz-Signature"})
_PRESIGN_REQUIRED: Final = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Expires",
)
_AUTH_FIELDS: Final = ("Credential", "SignedHeaders", "Signature")


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of an HTTP request that SigV4 covers, as they came off the wire."""

    method: str
    raw_path: str  # the path as on the request line, percent-encoded, without the query
    query: str  # the raw query string, without '?', may be ""
    headers: Mapping[str, str]  # names lowercased; repeated headers already joined with ","


class PayloadMode(enum.Enum):
    """How the body is covered, from x-amz-content-sha256 (see the module docstring)."""

    UNSIGNED = "UNSIGNED-PAYLOAD"
    SHA256 = "sha256"  # the body's SHA-256 is in the signed request
    CHUNKED_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    CHUNKED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


@dataclass(frozen=True, slots=True)
class Auth:
    """What parse() read. The caller looks up the secret for access_key_id, then calls verify()."""

    access_key_id: str
    amz_date: str  # "20261203T101500Z", as signed
    timestamp: int  # amz_date in seconds since the epoch
    region: str  # from the credential scope; the signing key is derived for it
    signed_headers: tuple[str, ...]  # lowercase, sorted, host among them
    signature: str  # lowercase hex
    presigned: bool
    expires: int | None  # X-Amz-Expires in seconds, presigned only
    payload_hash: str  # the canonical request's last line, as the client sent it
    payload_mode: PayloadMode
    # the payload's length if the request says it: Content-Length, or x-amz-decoded-content-length when
    # aws-chunked
    decoded_length: int | None
    trailers: tuple[str, ...]  # x-amz-trailer's names (CHUNKED_TRAILER only), lowercase

    @property
    def date(self) -> str:
        return self.amz_date[:8]

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/s3/{_TERMINATOR}"


class Payload(Protocol):
    """The body's checker that verify() returns; feed it the body, then call finish().

    After an S3Error from either method the checker stays failed: every later call raises it again.
    """

    decoded_length: int | None  # the payload's length when the request says it

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Body bytes in, as they arrive; out: payload bytes that are ready.

        For aws-chunked with signatures, a chunk's data comes out once its signature checked, as a view of
        a buffer of its own. Otherwise the views returned are slices of `data`, valid while it is.
        """
        ...

    def finish(self) -> None:
        """End of body: raises S3Error if the payload hash, the final chunk or the framing is wrong."""
        ...


# --- parse -------------------------------------------------------------------------------------------


def parse(req: Request, now: float) -> Auth:
    """Read the request's SigV4 auth, by header or presigned query, and check its form and its time.

    `now` is the current time in seconds since the epoch. Raises S3Error (see the module docstring).
    """
    params = _query_params(req.query)
    presigned = any(p.name in _PRESIGN_MARKERS for p in params)
    authorization = req.headers.get("authorization")
    if authorization is not None and presigned:
        raise bad_request(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization "
            "header should be specified",
            "InvalidArgument",
        )
    if authorization is not None:
        return _parse_header_auth(req, authorization, now)
    if presigned:
        return _parse_presigned(req, params, now)
    if any(p.name == b"AWSAccessKeyId" for p in params):
        raise _malformed(True, "Signature Version 2 query authentication is not supported; use SigV4")
    raise access_denied("Access Denied: the request is not signed (anonymous access is not allowed)")


def _parse_header_auth(req: Request, authorization: str, now: float) -> Auth:
    fields = _authorization_fields(authorization)
    akid, scope_date, region = _credential(fields["Credential"], presigned=False)
    signed = _signed_headers(fields["SignedHeaders"], presigned=False)
    signature = _signature(fields["Signature"], presigned=False)
    amz_date, timestamp = _amz_date(req.headers.get("x-amz-date"), "the x-amz-date header")
    _check_scope_date(scope_date, amz_date, presigned=False)
    if abs(now - timestamp) > MAX_SKEW:
        raise _skewed()
    content_sha256 = req.headers.get("x-amz-content-sha256")
    if content_sha256 is None:
        raise bad_request("Missing required header for this request: x-amz-content-sha256")
    return _auth(req, akid, (amz_date, timestamp), region, signed, signature, None, content_sha256.strip())


def _parse_presigned(req: Request, params: list[_Param], now: float) -> Auth:
    values = _presign_values(params)
    missing = [name for name in _PRESIGN_REQUIRED if name not in values]
    if missing:
        raise _malformed(
            True,
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters; missing: "
            + ", ".join(missing),
        )
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise _malformed(True, f"X-Amz-Algorithm {_show(values['X-Amz-Algorithm'])} is not {ALGORITHM}")
    akid, scope_date, region = _credential(values["X-Amz-Credential"], presigned=True)
    signed = _signed_headers(values["X-Amz-SignedHeaders"], presigned=True)
    signature = _signature(values["X-Amz-Signature"], presigned=True)
    expires = _expires(values["X-Amz-Expires"])
    amz_date, timestamp = _amz_date(values.get("X-Amz-Date"), "the X-Amz-Date parameter")
    _check_scope_date(scope_date, amz_date, presigned=True)
    if timestamp - now > MAX_SKEW:
        raise _skewed()
    if now > timestamp + expires:
        raise access_denied("Request has expired")
    payload_hash = _presigned_payload_hash(req, values, signed)
    return _auth(req, akid, (amz_date, timestamp), region, signed, signature, expires, payload_hash)


def _auth(
    req: Request,
    akid: str,
    date: tuple[str, int],
    region: str,
    signed: tuple[str, ...],
    signature: str,
    expires: int | None,
    payload_hash: str,
) -> Auth:
    """The Auth of a header-signed request (`expires` None) or a presigned one."""
    mode = _payload_mode(payload_hash)
    return Auth(
        access_key_id=akid,
        amz_date=date[0],
        timestamp=date[1],
        region=region,
        signed_headers=signed,
        signature=signature,
        presigned=expires is not None,
        expires=expires,
        payload_hash=payload_hash,
        payload_mode=mode,
        decoded_length=_decoded_length(req.headers, mode),
        trailers=_trailers(req.headers, mode),
    )


def _malformed(presigned: bool, message: str) -> S3Error:
    if presigned:
        return bad_request(message, "AuthorizationQueryParametersError")
    return bad_request(message, "AuthorizationHeaderMalformed")


def _skewed() -> S3Error:
    return S3Error(
        "RequestTimeTooSkewed",
        403,
        "The difference between the request time and the current time is too large.",
    )


def _show(text: str) -> str:
    """A client's text in a message: quoted, escaped to one ASCII line, cut short."""
    return ascii(text[:80])


def _utf8(text: str, code: str, what: str) -> bytes:
    # surrogateescape gives back the very bytes a server decoded that way; a lone surrogate outside
    # that range cannot have come off the wire
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise bad_request(f"{what} is not UTF-8 text", code) from None


def _authorization_fields(value: str) -> dict[str, str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _malformed(False, f"unsupported authorization type {_show(algorithm)}; only {ALGORITHM} is")
    fields: dict[str, str] = {}
    # botocore and minio-go write ", " between the parts, the AWS Go SDK ","; any order is S3's
    for part in rest.split(","):
        key, eq, val = part.strip().partition("=")
        if not eq or key not in _AUTH_FIELDS:
            raise _malformed(False, f"the Authorization header has an unknown part {_show(part.strip())}")
        if key in fields:
            raise _malformed(False, f"the Authorization header has {key} twice")
        fields[key] = val.strip()
    missing = [key for key in _AUTH_FIELDS if key not in fields]
    if missing:
        raise _malformed(False, "the Authorization header lacks " + ", ".join(missing))
    return fields


def _credential(text: str, presigned: bool) -> tuple[str, str, str]:
    """AKID/yyyymmdd/region/s3/aws4_request -> (access key id, date, region)."""
    m = _CREDENTIAL.fullmatch(text)
    if m is None:
        raise _malformed(
            presigned, f"the credential {_show(text)} is not AKID/yyyymmdd/region/s3/aws4_request"
        )
    akid, date, region, service, terminator = m.groups()
    if service != "s3":
        raise _malformed(presigned, f"the credential names service {_show(service)}; this endpoint is 's3'")
    if terminator != _TERMINATOR:
        raise _malformed(presigned, f"the credential ends in {_show(terminator)}, not {_TERMINATOR!r}")
    return akid, date, region


def _signed_headers(text: str, presigned: bool) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    for name in names:
        if _HEADER_NAME.fullmatch(name) is None:
            raise _malformed(presigned, f"SignedHeaders has {_show(name)}, not a lowercase header name")
    # sorted and unique, as the spec builds it: a list out of order is a signer's bug, and sorting it
    # here would accept what S3 refuses
    if any(a >= b for a, b in itertools.pairwise(names)):
        raise _malformed(presigned, "SignedHeaders is not sorted, or repeats a name")
    if "host" not in names:
        raise _malformed(presigned, "SignedHeaders must include host")
    return names


def _signature(text: str, presigned: bool) -> str:
    if _HEX64.fullmatch(text) is None:
        raise _malformed(presigned, "the signature is not 64 hex digits")
    return text.lower()


def _expires(text: str) -> int:
    if _NUMBER.fullmatch(text) is None:
        raise _malformed(True, f"X-Amz-Expires {_show(text)} is not a number of seconds")
    expires = int(text)
    if not 1 <= expires <= MAX_EXPIRES:
        raise _malformed(True, f"X-Amz-Expires must be from 1 to {MAX_EXPIRES} seconds, not {expires}")
    return expires


def _amz_date(text: str | None, what: str) -> tuple[str, int]:
    """yyyymmddThhmmssZ -> (the text, seconds since the epoch); AccessDenied if absent or malformed."""
    epoch = None if text is None else _epoch(text.strip())
    if text is None or epoch is None:
        raise access_denied(f"AWS authentication requires a valid date in {what} (yyyymmddThhmmssZ)")
    return text.strip(), epoch


def _epoch(text: str) -> int | None:
    m = _AMZ_DATE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm): no datetime or
    calendar import for one subtraction."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _check_scope_date(scope_date: str, amz_date: str, presigned: bool) -> None:
    if scope_date != amz_date[:8]:
        raise _malformed(
            presigned, f"the credential's date {scope_date} is not the date of X-Amz-Date {amz_date}"
        )


def _payload_mode(value: str) -> PayloadMode:
    if value == _UNSIGNED:
        return PayloadMode.UNSIGNED
    if value == _STREAMING_SIGNED:
        return PayloadMode.CHUNKED_SIGNED
    if value == _STREAMING_TRAILER:
        return PayloadMode.CHUNKED_TRAILER
    if value in _NOT_IMPLEMENTED_MODES:
        raise S3Error("NotImplemented", 501, f"x-amz-content-sha256 {value} is not supported")
    if _HEX64.fullmatch(value) is not None:
        return PayloadMode.SHA256
    raise bad_request(
        f"x-amz-content-sha256 must be {_UNSIGNED}, {_STREAMING_SIGNED}, {_STREAMING_TRAILER} or a SHA-256 "
        f"in hex, not {_show(value)}",
        "InvalidArgument",
    )


def _presigned_payload_hash(req: Request, values: Mapping[str, str], signed: tuple[str, ...]) -> str:
    # botocore signs a presigned request's x-amz-content-sha256 header if it has one, minio takes the
    # X-Amz-Content-Sha256 parameter; an unsigned header cannot have been what the signer used
    if "X-Amz-Content-Sha256" in values:
        return values["X-Amz-Content-Sha256"]
    header = req.headers.get("x-amz-content-sha256")
    if header is not None and "x-amz-content-sha256" in signed:
        return header.strip()
    return _UNSIGNED


def _decoded_length(headers: Mapping[str, str], mode: PayloadMode) -> int | None:
    chunked = mode in (PayloadMode.CHUNKED_SIGNED, PayloadMode.CHUNKED_TRAILER)
    name = "x-amz-decoded-content-length" if chunked else "content-length"
    value = headers.get(name)
    if value is None:
        return None
    if _NUMBER.fullmatch(value.strip()) is None:
        raise bad_request(f"{name} {_show(value)} is not a number of bytes", "InvalidArgument")
    return int(value.strip())


def _trailers(headers: Mapping[str, str], mode: PayloadMode) -> tuple[str, ...]:
    value = headers.get("x-amz-trailer")
    if mode is not PayloadMode.CHUNKED_TRAILER or value is None:
        return ()
    names = tuple(name.strip().lower() for name in value.split(","))
    if len(names) > MAX_TRAILERS or len(set(names)) != len(names):
        raise bad_request("x-amz-trailer names too many trailers, or one twice")
    for name in names:
        if name not in _CHECKSUMS:
            raise bad_request(f"x-amz-trailer {_show(name)} is not a supported checksum trailer")
    return names


# --- the query -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Param:
    name: bytes  # percent-decoded
    value: bytes  # percent-decoded; "" when the parameter has no "="


def _query_params(query: str) -> list[_Param]:
    params = []
    # bytes, not str: a %FF that is no UTF-8 must come back as %FF, not as U+FFFD's three bytes
    for piece in _utf8(query, "InvalidURI", "the query").split(b"&"):
        if piece:  # "a&&b" carries no empty parameter
            # "+" is a space, as in a form: S3 and minio (Go's ParseQuery) read it so, and botocore
            # sends a space in a parameter as "+" while it signs "%20"; a literal plus comes as %2B
            name, _, value = piece.replace(b"+", b" ").partition(b"=")
            params.append(_Param(unquote_to_bytes(name), unquote_to_bytes(value)))
    return params


def _presign_values(params: list[_Param]) -> dict[str, str]:
    """The X-Amz-* parameters, decoded; each at most once."""
    values: dict[str, str] = {}
    for param in params:
        if not param.name.startswith(b"X-Amz-"):
            continue
        try:
            name, value = param.name.decode("ascii"), param.value.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(True, "an X-Amz-* query parameter is not UTF-8 text") from None
        if name in values:
            raise _malformed(True, f"the query has {_show(name)} twice")
        values[name] = value
    return values


# --- verify --------------------------------------------------------------------------------------------


def verify(auth: Auth, req: Request, secret: str) -> Payload:
    """Check the request's signature with `secret`; return the checker its body goes through.

    Raises S3Error: SignatureDoesNotMatch 403, or a 400 for text that cannot be signed.
    """
    key, expected = _sign(auth, req, secret)
    if not hmac.compare_digest(expected, _utf8(auth.signature, "InvalidArgument", "the signature")):
        raise signature_mismatch(
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method."
        )
    return _payload(auth, key, expected.decode("ascii"))


def _sign(auth: Auth, req: Request, secret: str) -> tuple[bytes, bytes]:
    """The signing key and the request's signature (lowercase hex) under `secret`."""
    key = _signing_key(secret, auth.date, auth.region)
    canonical = _canonical_request(auth, req)
    string_to_sign = "\n".join((ALGORITHM, auth.amz_date, auth.scope, hashlib.sha256(canonical).hexdigest()))
    return key, _hmac_hex(key, _utf8(string_to_sign, "InvalidArgument", "the credential scope"))


def _payload(auth: Auth, key: bytes, seed: str) -> Payload:
    mode = auth.payload_mode
    if mode is PayloadMode.UNSIGNED:
        return _Plain(auth.decoded_length, None)
    if mode is PayloadMode.SHA256:
        return _Plain(auth.decoded_length, auth.payload_hash.lower())
    if mode is PayloadMode.CHUNKED_SIGNED:
        return _Chunked(auth.decoded_length, _ChunkSigner(key, auth.amz_date, auth.scope, seed), ())
    return _Chunked(auth.decoded_length, None, auth.trailers)


def _canonical_request(auth: Auth, req: Request) -> bytes:
    lines = [
        req.method,
        _canonical_uri(req.raw_path),
        _canonical_query(req.query, auth.presigned),
        *_canonical_headers(auth.signed_headers, req.headers),
        "",
        ";".join(auth.signed_headers),
        auth.payload_hash,
    ]
    return _utf8("\n".join(lines), "InvalidArgument", "a signed header value")


def _canonical_uri(raw_path: str) -> str:
    if not raw_path:
        return "/"
    # decoded to bytes and encoded once: S3 does neither path normalisation nor a second encoding
    return quote(unquote_to_bytes(_utf8(raw_path, "InvalidURI", "the path")), safe="/~")


def _canonical_query(query: str, presigned: bool) -> str:
    pairs = sorted(
        (quote(p.name, safe="-_.~"), quote(p.value, safe="-_.~"))
        for p in _query_params(query)
        if not (presigned and p.name == b"X-Amz-Signature")
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def _canonical_headers(names: tuple[str, ...], headers: Mapping[str, str]) -> list[str]:
    lines = []
    for name in names:
        value = headers.get(name)
        if value is None:
            raise signature_mismatch(f"the signed header {_show(name)} is absent from the request")
        lines.append(f"{name}:{' '.join(value.split())}")
    return lines


_KEYS: dict[tuple[str, str, str], bytes] = {}


def _signing_key(secret: str, date: str, region: str) -> bytes:
    cache_key = (secret, date, region)
    key = _KEYS.get(cache_key)
    if key is None:
        key = _utf8("AWS4" + secret, "InvalidArgument", "the secret")
        for part in (date, region, "s3", _TERMINATOR):
            key = hmac.digest(key, _utf8(part, "InvalidArgument", "the credential scope"), "sha256")
        if len(_KEYS) >= KEY_CACHE_SIZE:
            _KEYS.clear()
        _KEYS[cache_key] = key
    return key


def _hmac_hex(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256").hex().encode("ascii")


# --- bodies --------------------------------------------------------------------------------------------


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    try:
        view = memoryview(data)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):
        raise S3Error("InternalError", 500, "feed() takes a contiguous bytes-like object") from None


def _too_long(declared: int) -> S3Error:
    return bad_request(f"the body carries more than the {declared} bytes its length header declares")


def _too_short(seen: int, declared: int) -> S3Error:
    return bad_request(
        f"the body carries {seen} bytes, but its length header declares {declared}", "IncompleteBody"
    )


class _Body:
    """Poisoning and the end: a checker that raised stays failed (STYLE 12), and takes nothing after
    finish()."""

    __slots__ = ("_error", "_finished", "decoded_length")

    def __init__(self, decoded_length: int | None) -> None:
        self.decoded_length = decoded_length
        self._error: S3Error | None = None
        self._finished = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        self._check_usable()
        try:
            return self._feed(_byte_view(data))
        except S3Error as exc:
            self._error = exc
            raise

    def finish(self) -> None:
        self._check_usable()
        try:
            self._finish()
        except S3Error as exc:
            self._error = exc
            raise
        self._finished = True

    def _check_usable(self) -> None:
        if self._error is not None:
            raise S3Error(self._error.code, self._error.status, self._error.message)
        if self._finished:
            raise S3Error("InternalError", 500, "the body was fed after finish()")

    def _feed(self, view: memoryview) -> list[bytes | memoryview]:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class _Plain(_Body):
    """UNSIGNED-PAYLOAD (expected is None) or a signed SHA-256: the bytes pass straight through."""

    __slots__ = ("_expected", "_hash", "_seen")

    def __init__(self, decoded_length: int | None, expected: str | None) -> None:
        super().__init__(decoded_length)
        self._expected = expected
        self._hash = hashlib.sha256() if expected is not None else None
        self._seen = 0

    def _feed(self, view: memoryview) -> list[bytes | memoryview]:
        if not view.nbytes:
            return []
        self._seen += view.nbytes
        if self.decoded_length is not None and self._seen > self.decoded_length:
            raise _too_long(self.decoded_length)
        if self._hash is not None:
            self._hash.update(view)
        return [view]

    def _finish(self) -> None:
        if self.decoded_length is not None and self._seen != self.decoded_length:
            raise _too_short(self._seen, self.decoded_length)
        if self._hash is not None and self._hash.hexdigest() != self._expected:
            raise bad_request(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                "XAmzContentSHA256Mismatch",
            )


class _ChunkSigner:
    """The chain of aws-chunked signatures, seeded with the request's own."""

    __slots__ = ("_key", "_prefix", "_previous", "count")

    def __init__(self, key: bytes, amz_date: str, scope: str, seed: str) -> None:
        self._key = key
        # the scope was encoded once already, in verify(), so this cannot fail
        self._prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n".encode("utf-8", "surrogateescape")
        self._previous = seed.encode("ascii")
        self.count = 0  # chunks checked, for messages

    def check(self, data: bytes | bytearray, signature: bytes) -> None:
        data_hash = hashlib.sha256(data).hexdigest().encode("ascii")
        message = b"%s%s\n%s\n%s" % (self._prefix, self._previous, _EMPTY_SHA256.encode("ascii"), data_hash)
        expected = _hmac_hex(self._key, message)
        if not hmac.compare_digest(expected, signature):
            raise signature_mismatch(f"the signature of chunk {self.count} does not match its data")
        self._previous = expected
        self.count += 1


class _Checksum:
    """One trailer checksum, kept up as the data passes; `digest` is None where the stdlib cannot."""

    __slots__ = ("_crc", "_hash", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._crc: int | None = 0 if name == "x-amz-checksum-crc32" else None
        algorithm = _HASHLIB.get(name.removeprefix("x-amz-checksum-"))
        self._hash = hashlib.new(algorithm) if algorithm is not None else None

    def update(self, view: memoryview) -> None:
        if self._crc is not None:
            self._crc = zlib.crc32(view, self._crc)
        elif self._hash is not None:
            self._hash.update(view)

    def digest(self) -> bytes | None:
        if self._crc is not None:
            return self._crc.to_bytes(4, "big")
        return self._hash.digest() if self._hash is not None else None


class _Stage(enum.Enum):
    HEADER = enum.auto()  # a chunk's size line
    DATA = enum.auto()
    DATA_END = enum.auto()  # the CRLF after a chunk's data
    TRAILER = enum.auto()  # trailer lines after the 0-size chunk, up to an empty line
    DONE = enum.auto()


class _Chunked(_Body):
    """The aws-chunked decoder, incremental: bytes may be split anywhere.

    Memory is bounded: a header or trailer line by MAX_CHUNK_LINE, a signed chunk by MAX_CHUNK_SIZE (checked
    before its buffer is allocated). Unsigned chunks are not buffered at all.
    """

    __slots__ = (
        "_chunk",
        "_chunk_signature",
        "_crlf",
        "_filled",
        "_line",
        "_need",
        "_seen_trailers",
        "_signer",
        "_stage",
        "_sums",
        "_total",
        "_trailers",
    )

    def __init__(
        self, decoded_length: int | None, signer: _ChunkSigner | None, trailers: tuple[str, ...]
    ) -> None:
        super().__init__(decoded_length)
        self._signer = signer
        self._trailers = trailers
        self._sums = {name: _Checksum(name) for name in trailers}
        self._seen_trailers: set[str] = set()
        self._stage = _Stage.HEADER
        self._line = bytearray()
        self._need = 0  # data bytes of the current chunk still to come
        self._chunk = bytearray()  # a signed chunk's data, until its signature checks
        self._filled = 0
        self._chunk_signature = b""
        self._crlf = 0  # bytes of the CRLF after a chunk's data seen so far
        self._total = 0  # payload bytes in the chunks so far

    def _feed(self, view: memoryview) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        pos = 0
        while pos < len(view):
            stage = self._stage
            if stage is _Stage.HEADER:
                pos = self._read_header(view, pos)
            elif stage is _Stage.DATA:
                pos = self._read_data(view, pos, out)
            elif stage is _Stage.DATA_END:
                pos = self._read_crlf(view, pos)
            elif stage is _Stage.TRAILER:
                pos = self._read_trailer(view, pos)
            else:
                raise bad_request("the body goes on after its final chunk")
        return out

    def _finish(self) -> None:
        if self._stage is not _Stage.DONE:
            where = "inside a chunk" if self._stage in (_Stage.DATA, _Stage.DATA_END) else "before its end"
            raise bad_request(f"the aws-chunked body ended {where}", "IncompleteBody")

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        """A whole line without its CRLF once it is in, else None; and where to read on."""
        room = MAX_CHUNK_LINE - len(self._line)
        window = bytes(view[pos : pos + room])  # at most MAX_CHUNK_LINE bytes, never the data after it
        end = window.find(b"\n")
        if end < 0:
            if len(window) >= room:
                raise bad_request(f"an aws-chunked line is longer than {MAX_CHUNK_LINE} bytes")
            self._line += window
            return None, pos + len(window)
        self._line += window[: end + 1]
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n"):
            raise bad_request("an aws-chunked line does not end in CRLF")
        return line[:-2], pos + end + 1

    def _read_header(self, view: memoryview, pos: int) -> int:
        line, pos = self._take_line(view, pos)
        if line is not None:
            self._start_chunk(self._chunk_size(line))
        return pos

    def _chunk_size(self, line: bytes) -> int:
        if self._signer is not None:
            m = _SIGNED_CHUNK_LINE.fullmatch(line)
            if m is None:
                raise bad_request("a chunk line is not hex-size;chunk-signature=<64 hex>")
            self._chunk_signature = m[2]
            size_hex = m[1]
        else:
            if _UNSIGNED_CHUNK_LINE.fullmatch(line) is None:
                raise bad_request("a chunk line is not a hex size")
            size_hex = line
        size = int(size_hex, 16)
        if size > MAX_CHUNK_SIZE:
            raise bad_request(f"a chunk of {size} bytes is over the limit of {MAX_CHUNK_SIZE}")
        return size

    def _start_chunk(self, size: int) -> None:
        declared = self.decoded_length
        if declared is not None and self._total + size > declared:
            raise _too_long(declared)
        self._total += size
        if size:
            self._need = size
            if self._signer is not None:
                self._chunk = bytearray(size)
                self._filled = 0
            self._stage = _Stage.DATA
            return
        # the final chunk: signed like the others (over no data), then the trailer section
        if self._signer is not None:
            self._signer.check(b"", self._chunk_signature)
        if declared is not None and self._total != declared:
            raise _too_short(self._total, declared)
        self._stage = _Stage.TRAILER

    def _read_data(self, view: memoryview, pos: int, out: list[bytes | memoryview]) -> int:
        take = min(self._need, len(view) - pos)
        piece = view[pos : pos + take]
        self._need -= take
        if self._signer is None:
            for checksum in self._sums.values():
                checksum.update(piece)
            out.append(piece)
        else:
            self._chunk[self._filled : self._filled + take] = piece
            self._filled += take
            if not self._need:
                self._signer.check(self._chunk, self._chunk_signature)
                out.append(memoryview(self._chunk))
                self._chunk = bytearray()  # handed out: the next chunk gets a buffer of its own
        if not self._need:
            self._stage = _Stage.DATA_END
            self._crlf = 0
        return pos + take

    def _read_crlf(self, view: memoryview, pos: int) -> int:
        while pos < len(view) and self._crlf < 2:
            if view[pos] != b"\r\n"[self._crlf]:
                raise bad_request("a chunk's data is not followed by CRLF")
            self._crlf += 1
            pos += 1
        if self._crlf == 2:
            self._stage = _Stage.HEADER
        return pos

    def _read_trailer(self, view: memoryview, pos: int) -> int:
        line, pos = self._take_line(view, pos)
        if line is None:
            return pos
        if line:
            self._trailer(line)
            return pos
        missing = [name for name in self._trailers if name not in self._seen_trailers]
        if missing:
            raise bad_request(
                f"the body lacks the trailer {missing[0]} that x-amz-trailer declares", "IncompleteBody"
            )
        self._stage = _Stage.DONE
        return pos

    def _trailer(self, line: bytes) -> None:
        m = _TRAILER_LINE.fullmatch(line)
        if m is None:
            raise bad_request("a trailer line is not name:value")
        name = m[1].decode("ascii").lower()
        if name not in self._sums:
            raise bad_request(f"the trailer {_show(name)} is not declared in x-amz-trailer")
        if name in self._seen_trailers:
            raise bad_request(f"the trailer {name} comes twice")
        self._seen_trailers.add(name)
        try:
            given = base64.b64decode(m[2], validate=True)
        except binascii.Error:
            raise bad_request(f"Value for {name} trailing header is invalid.") from None
        computed = self._sums[name].digest()
        if computed is not None and not hmac.compare_digest(given, computed):
            algorithm = name.removeprefix("x-amz-checksum-").upper()
            raise bad_request(
                f"The {algorithm} you specified did not match the calculated checksum.", "BadDigest"
            )


# --- signing (a presigned URL, for the node's own demo and tools) ----------------------------------------


def presign(
    method: str,
    host: str,
    raw_path: str,
    access_key_id: str,
    secret: str,
    amz_date: str,
    expires: int = 900,
    region: str = "us-east-1",
) -> str:
    """The query string of a presigned URL for `method` on `raw_path` (percent-encoded) at `host`, valid
    `expires` seconds from `amz_date` ("20261203T101500Z", UTC), its payload unsigned: what `aws s3
    presign` and boto3's generate_presigned_url make, by the same canonical request verify() checks."""
    params = {
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{access_key_id}/{amz_date[:8]}/{region}/s3/{_TERMINATOR}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params.items())
    req = Request(method, raw_path, query, {"host": host})
    # (the timestamp is not signed: 0 stands for it)
    auth = _auth(req, access_key_id, (amz_date, 0), region, ("host",), "", expires, _UNSIGNED)
    _, signature = _sign(auth, req, secret)
    return f"{query}&X-Amz-Signature={signature.decode()}"
