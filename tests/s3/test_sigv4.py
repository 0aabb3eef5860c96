"""sigv4: requests signed by botocore and boto3 (independent signers) pass, every alteration fails with
S3's code, the AWS documentation's aws-chunked example decodes however it is split, and fuzzing lets
nothing but S3Error out of parse, verify, feed and finish."""

from __future__ import annotations

import ast
import base64
import calendar
import dataclasses
import datetime
import functools
import hashlib
import hmac
import io
import itertools
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import boto3
import botocore.auth
import botocore.compat
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha1Checksum, Sha256Checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast.front.s3 import sigv4
from p2pfast.front.s3.errors import S3Error
from p2pfast.front.s3.sigv4 import Auth, Payload, PayloadMode, Request

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

AKID = "AKIDEXAMPLE0000"
SECRET = "s3cr3t/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-3"
HOST = "s3.test:9000"
FIXED = datetime.datetime(2026, 12, 3, 10, 15, 0)  # botocore's clock, frozen (naive UTC, as it uses)
NOW = calendar.timegm(FIXED.timetuple())
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _set_clock(mp: pytest.MonkeyPatch, at: datetime.datetime | None) -> None:
    """botocore's signing clock stopped `at` (naive UTC), or the real one (None). botocore from 1.36.x
    on reads it through auth.get_current_datetime; the floor, 1.36.0, as datetime.datetime.utcnow()."""
    if hasattr(botocore.auth, "get_current_datetime"):
        real = botocore.compat.get_current_datetime
        mp.setattr(
            botocore.auth, "get_current_datetime", real if at is None else lambda remove_tzinfo=True: at
        )
        return
    if at is None:
        mp.setattr(botocore.auth, "datetime", datetime)
        return

    class Stopped(datetime.datetime):
        @classmethod
        def utcnow(cls) -> datetime.datetime:
            assert at is not None
            return at

    class Module:  # botocore.auth's `datetime`, its clock stopped
        datetime = Stopped

        def __getattr__(self, name: str) -> object:
            return getattr(datetime, name)

    mp.setattr(botocore.auth, "datetime", Module())


@pytest.fixture(scope="module", autouse=True)
def frozen_clock() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        _set_clock(mp, FIXED)
        yield


# --- turning botocore's requests into ours ---------------------------------------------------------


def to_request(prepared: AWSPreparedRequest) -> Request:
    parts = urlsplit(prepared.url)
    headers: dict[str, str] = {}
    for name, value in prepared.headers.items():
        text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
        key = name.lower()
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    headers.setdefault("host", parts.netloc)  # the HTTP client adds it; botocore signs it from the URL
    return Request(prepared.method, parts.path, parts.query, headers)


def body_of(prepared: AWSPreparedRequest) -> bytes:
    body = prepared.body
    if body is None:
        return b""
    if hasattr(body, "read"):
        data = body.read()
        return data.encode() if isinstance(data, str) else bytes(data)
    return body.encode() if isinstance(body, str) else bytes(body)


class StreamingSigV4(S3SigV4Auth):
    """botocore's signer with the aws-chunked payload line, which botocore itself never sends."""

    def payload(self, request: AWSRequest) -> str:
        return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


def sign(
    method: str,
    path: str,
    *,
    query: str = "",
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    unsigned: bool = False,
    presign: int | None = None,
    signer: type[S3SigV4Auth] = S3SigV4Auth,
    secret: str = SECRET,
    region: str = REGION,
) -> tuple[Request, bytes]:
    """Sign with botocore: header auth, or a presigned URL good for `presign` seconds."""
    url = f"http://{HOST}{path}" + (f"?{query}" if query else "")
    aws = AWSRequest(
        method=method, url=url, headers=dict(headers or {}), data=body, params=dict(params or {})
    )
    if unsigned:
        aws.context["client_config"] = SimpleNamespace(s3={"payload_signing_enabled": False})
    creds = Credentials(AKID, secret)
    if presign is not None:
        # botocore's query signer reads params from the request itself
        S3SigV4QueryAuth(creds, "s3", region, expires=presign).add_auth(aws)
    else:
        signer(creds, "s3", region).add_auth(aws)
    prepared = aws.prepare()
    return to_request(prepared), body_of(prepared)


def with_headers(req: Request, **changes: str | None) -> Request:
    headers = dict(req.headers)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return Request(req.method, req.raw_path, req.query, headers)


def replace(req: Request, **changes: Any) -> Request:
    return dataclasses.replace(req, **changes)


def check(req: Request, body: bytes = b"", now: float = NOW, secret: str = SECRET) -> tuple[Auth, bytes]:
    """parse, verify, feed the body whole, finish: what a server does; returns the payload out."""
    auth = sigv4.parse(req, now)
    payload = sigv4.verify(auth, req, secret)
    out = b"".join(bytes(piece) for piece in payload.feed(body))
    payload.finish()
    return auth, out


def code_of(fn: Callable[[], object]) -> tuple[str, int]:
    with pytest.raises(S3Error) as info:
        fn()
    assert "\n" not in info.value.message and info.value.message
    return info.value.code, info.value.status


def rejects(req: Request, body: bytes = b"", now: float = NOW, secret: str = SECRET) -> tuple[str, int]:
    return code_of(lambda: check(req, body, now, secret))


def s3_path(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote(key, safe='/~')}"  # as botocore serialises a key


# --- accepted: header auth -------------------------------------------------------------------------

KEYS = [
    "plain.txt",
    "with space/and more  spaces",
    "ünïcödé/日本語/😀",
    "a+b",
    "a=b&c=d",
    "tilde~key",
    "100% sure",
    "a//b///c/",
    "!$&'()*,;:@[]",
    "dot/./dots/../x",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
@pytest.mark.parametrize("key", KEYS)
def test_header_auth_accepts_botocore(method: str, key: str) -> None:
    body = b"some body" if method == "PUT" else b""
    req, sent = sign(method, s3_path("bucket", key), body=body)
    auth, out = check(req, sent)
    assert (auth.access_key_id, auth.region, auth.presigned, auth.date) == (AKID, REGION, False, "20261203")
    assert auth.payload_mode is PayloadMode.SHA256
    assert auth.payload_hash == hashlib.sha256(body).hexdigest()
    assert out == body


def test_header_auth_fields() -> None:
    req, _ = sign("GET", "/bucket/k")
    auth = sigv4.parse(req, NOW)
    assert auth.amz_date == "20261203T101500Z"
    assert auth.timestamp == NOW
    assert auth.scope == f"20261203/{REGION}/s3/aws4_request"
    assert auth.signed_headers == ("host", "x-amz-content-sha256", "x-amz-date")
    assert auth.signature == req.headers["authorization"].rsplit("=", 1)[1]
    assert (auth.expires, auth.decoded_length, auth.trailers) == (None, None, ())


def test_signed_payload_hash_of_a_body() -> None:
    body = bytes(range(256)) * 100
    req, sent = sign("PUT", "/bucket/blob", body=body, headers={"Content-Type": "application/octet-stream"})
    auth, out = check(req, sent)
    assert out == body
    assert auth.decoded_length == len(body)  # Content-Length, which the prepared request carries


def test_unsigned_payload_header_auth() -> None:
    req, sent = sign("PUT", "/bucket/blob", body=b"anything", unsigned=True)
    auth, out = check(req, sent)
    assert auth.payload_mode is PayloadMode.UNSIGNED
    assert req.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert out == b"anything"
    # nothing checks an unsigned body's bytes against anything but its length
    payload = sigv4.verify(auth, req, SECRET)
    assert [bytes(p) for p in payload.feed(b"otherbyt")] == [b"otherbyt"]
    payload.finish()


QUERIES = [
    ("list-type=2&prefix=a%20b", {}),
    ("", {"list-type": "2", "prefix": "a b", "continuation-token": "1/abc==+/xyz", "delimiter": "/"}),
    ("uploads", {}),
    ("", {"partNumber": "3", "uploadId": "VXBsb2FkIElE/+=="}),
    ("versionId=3%2FL4kqtJlcpXroDTDmJ%2Brmsmfi7cBr5&x-id=GetObject", {}),
    ("", {"prefix": "ünï/~*'()", "max-keys": "1000", "encoding-type": "url"}),
    ("delete", {}),
    ("b=2&a=1&a=0&A=3", {}),
]


@pytest.mark.parametrize(("query", "params"), QUERIES)
def test_query_parameters(query: str, params: dict[str, str]) -> None:
    req, sent = sign("GET", "/bucket", query=query, params=params)
    assert req.query  # the parameters are on the URL we verify
    auth, out = check(req, sent)
    assert (auth.access_key_id, out) == (AKID, b"")


def test_plus_in_the_query_is_a_space_and_in_the_path_a_plus() -> None:
    req, _ = sign("GET", "/bucket/a%2Bb", query="prefix=a%20b")
    assert check(replace(req, query="prefix=a+b"))[0].access_key_id == AKID
    assert rejects(replace(req, query="prefix=a%2Bb")) == ("SignatureDoesNotMatch", 403)
    assert check(replace(req, raw_path="/bucket/a+b"))[0].access_key_id == AKID


def test_header_values_are_trimmed_and_collapsed() -> None:
    req, _ = sign("PUT", "/bucket/k", headers={"x-amz-meta-note": "a  b   c", "Content-Type": "text/plain"})
    spaced = with_headers(req, x_amz_meta_note="  a b \t c  ")
    assert check(spaced)[0].access_key_id == AKID


def test_real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_clock(monkeypatch, None)
    req, sent = sign("PUT", "/bucket/now", body=b"x")
    now = calendar.timegm(datetime.datetime.strptime(req.headers["x-amz-date"], "%Y%m%dT%H%M%SZ").timetuple())
    assert check(req, sent, now=now)[1] == b"x"


@given(st.datetimes(min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(9999, 12, 31)))
@settings(max_examples=200, deadline=None)
def test_dates_read_as_calendar_does(when: datetime.datetime) -> None:
    amz = when.strftime("%Y%m%dT%H%M%SZ")
    auth_header = (
        f"AWS4-HMAC-SHA256 Credential={AKID}/{amz[:8]}/r/s3/aws4_request, SignedHeaders=host, "
        f"Signature={'0' * 64}"
    )
    headers = {"host": HOST, "x-amz-date": amz, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    req = Request("GET", "/", "", {**headers, "authorization": auth_header})
    epoch = calendar.timegm(when.timetuple())
    assert sigv4.parse(req, epoch).timestamp == epoch


# --- accepted: presigned -------------------------------------------------------------------------


def test_presigned_get() -> None:
    req, _ = sign("GET", s3_path("bucket", "ünï code+plus=eq"), presign=600)
    auth, out = check(req)
    assert (auth.presigned, auth.expires, auth.payload_hash) == (True, 600, "UNSIGNED-PAYLOAD")
    assert auth.signed_headers == ("host",)
    assert out == b""


def test_presigned_put_takes_any_body() -> None:
    req, _ = sign("PUT", "/bucket/upload", presign=3600, params={"partNumber": "2", "uploadId": "a/b=="})
    auth, out = check(with_headers(req, content_length="5"), b"hello")
    assert (auth.payload_mode, out) == (PayloadMode.UNSIGNED, b"hello")


def test_presigned_with_a_signed_payload_hash_header() -> None:
    body = b"hashed"
    digest = hashlib.sha256(body).hexdigest()
    req, _ = sign("PUT", "/bucket/k", presign=60, headers={"x-amz-content-sha256": digest})
    req = with_headers(req, content_length=str(len(body)))  # the URL was signed without a body
    assert "x-amz-content-sha256" in sigv4.parse(req, NOW).signed_headers
    assert check(req, body)[0].payload_mode is PayloadMode.SHA256
    assert rejects(req, b"hashes") == ("XAmzContentSHA256Mismatch", 400)


# --- accepted: boto3's own client -----------------------------------------------------------------


class Captured(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("captured")
        self.request = request


def _capture(request: AWSPreparedRequest, **_: object) -> None:
    raise Captured(request)  # before-send: the request as it would go out, and no network


@functools.cache
def client(scheme: str) -> Any:
    made = boto3.client(
        "s3",
        endpoint_url=f"{scheme}://127.0.0.1:1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    made.meta.events.register("before-send.s3", _capture)
    return made


def captured(scheme: str, operation: str, **params: Any) -> tuple[Request, bytes]:
    with pytest.raises(Captured) as info:
        getattr(client(scheme), operation)(**params)
    return to_request(info.value.request), body_of(info.value.request)


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("get_object", {"Bucket": "b", "Key": "dir/ünï côde+1=2~%.txt"}),
        ("head_object", {"Bucket": "b", "Key": "a//b"}),
        ("delete_object", {"Bucket": "b", "Key": "x y"}),
        ("list_objects_v2", {"Bucket": "b", "Prefix": "a b/", "ContinuationToken": "t/=+", "Delimiter": "/"}),
        ("create_multipart_upload", {"Bucket": "b", "Key": "big"}),
        ("put_object", {"Bucket": "b", "Key": "k", "Body": b"over http the payload is signed"}),
    ],
)
def test_boto3_client_requests(operation: str, params: dict[str, Any]) -> None:
    req, body = captured("http", operation, **params)
    auth, out = check(req, body)
    assert auth.payload_mode is PayloadMode.SHA256
    assert out == params.get("Body", b"")


def test_boto3_put_over_https_is_aws_chunked_with_a_crc32_trailer() -> None:
    data = b"payload " * 5000
    req, body = captured("https", "put_object", Bucket="b", Key="k", Body=data)
    assert req.headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    auth, out = check(req, body)
    assert (auth.payload_mode, auth.trailers, auth.decoded_length) == (
        PayloadMode.CHUNKED_TRAILER,
        ("x-amz-checksum-crc32",),
        len(data),
    )
    assert out == data
    bad = body.replace(b"payload", b"pAyload", 1)
    assert rejects(req, bad) == ("BadDigest", 400)


@pytest.mark.parametrize(
    ("operation", "params", "method"),
    [
        ("get_object", {"Bucket": "b", "Key": "x y+z/ü"}, "GET"),
        ("put_object", {"Bucket": "b", "Key": "up load"}, "PUT"),
        ("list_objects_v2", {"Bucket": "b", "Prefix": "p q"}, "GET"),
        ("upload_part", {"Bucket": "b", "Key": "k", "PartNumber": 7, "UploadId": "id/=="}, "PUT"),
    ],
)
def test_boto3_presigned_urls(operation: str, params: dict[str, Any], method: str) -> None:
    url = client("http").generate_presigned_url(operation, Params=params, ExpiresIn=900)
    parts = urlsplit(url)
    req = Request(method, parts.path, parts.query, {"host": parts.netloc})
    auth = sigv4.parse(req, NOW + 899)
    assert (auth.presigned, auth.expires) == (True, 900)
    sigv4.verify(auth, req, SECRET).finish()
    assert code_of(lambda: sigv4.verify(auth, req, SECRET + "x")) == ("SignatureDoesNotMatch", 403)
    assert code_of(lambda: sigv4.parse(req, NOW + 901)) == ("AccessDenied", 403)


# --- rejected ------------------------------------------------------------------------------------


@pytest.fixture
def put() -> tuple[Request, bytes]:
    headers = {"Content-Type": "text/plain", "x-amz-meta-owner": "alice", "x-amz-storage-class": "STANDARD"}
    return sign("PUT", "/bucket/some%20key", query="tagging=", headers=headers, body=b"the body")


def test_wrong_secret(put: tuple[Request, bytes]) -> None:
    assert rejects(*put, secret=SECRET[:-1]) == ("SignatureDoesNotMatch", 403)


def test_each_signed_header_changed(put: tuple[Request, bytes]) -> None:
    req, body = put
    signed = sigv4.parse(req, NOW).signed_headers
    assert {"content-type", "x-amz-meta-owner", "x-amz-storage-class", "host", "x-amz-date"} <= set(signed)
    for name in signed:
        if name == "x-amz-date":
            changed = "20261203T101501Z"
        elif name == "x-amz-content-sha256":
            changed = "UNSIGNED-PAYLOAD"
        else:
            changed = req.headers[name] + "x"
        assert rejects(with_headers(req, **{name: changed}), body) == ("SignatureDoesNotMatch", 403), name


def test_a_signed_header_absent(put: tuple[Request, bytes]) -> None:
    req, body = put
    assert rejects(with_headers(req, x_amz_meta_owner=None), body) == ("SignatureDoesNotMatch", 403)


def test_an_unsigned_header_changes_nothing(put: tuple[Request, bytes]) -> None:
    req, body = put
    assert check(with_headers(req, user_agent="curl", x_forwarded_for="1.2.3.4"), body)[1] == body


@pytest.mark.parametrize(
    "change",
    [
        {"method": "POST"},
        {"method": "put"},
        {"raw_path": "/bucket/some%20kez"},
        {"raw_path": "/bucket//some%20key"},
        {"raw_path": "/Bucket/some%20key"},
        {"query": ""},
        {"query": "tagging=1"},
        {"query": "tagging=&versionId=2"},
    ],
)
def test_request_line_changed(put: tuple[Request, bytes], change: dict[str, str]) -> None:
    req, body = put
    assert rejects(replace(req, **change), body) == ("SignatureDoesNotMatch", 403)


def test_equivalent_encodings_of_the_path_and_query_pass(put: tuple[Request, bytes]) -> None:
    # S3 decodes and re-encodes: %7E and ~, %41 and A, lower and upper hex are the same request
    req, _ = sign("GET", "/bucket/a~b%2Bc", query="prefix=%C3%BC")
    assert check(replace(req, raw_path="/bucket/a%7Eb%2bc", query="prefix=%c3%bc"))[0].access_key_id == AKID
    assert check(replace(req, raw_path="/bu%63ket/a~b%2Bc"))[0].access_key_id == AKID


def test_a_byte_of_the_body_changed(put: tuple[Request, bytes]) -> None:
    req, _ = put
    assert rejects(req, b"the bodY") == ("XAmzContentSHA256Mismatch", 400)


def test_body_length_against_content_length(put: tuple[Request, bytes]) -> None:
    req, body = put
    assert rejects(req, body[:-1]) == ("IncompleteBody", 400)
    assert rejects(req, body + b"!") == ("InvalidRequest", 400)


def test_clock_skew(put: tuple[Request, bytes]) -> None:
    req, body = put
    assert check(req, body, now=NOW + 900)[1] == body
    assert check(req, body, now=NOW - 900)[1] == body
    assert rejects(req, body, now=NOW + 901) == ("RequestTimeTooSkewed", 403)
    assert rejects(req, body, now=NOW - 901) == ("RequestTimeTooSkewed", 403)


def test_presigned_expiry() -> None:
    req, _ = sign("GET", "/bucket/k", presign=3600)
    assert check(req, now=NOW + 3600)[0].presigned
    assert check(req, now=NOW - 900)[0].presigned  # a signer's clock a little ahead
    with pytest.raises(S3Error) as info:
        sigv4.parse(req, NOW + 3601)
    assert (info.value.code, info.value.status, info.value.message) == (
        "AccessDenied",
        403,
        "Request has expired",
    )
    assert code_of(lambda: sigv4.parse(req, NOW - 901)) == ("RequestTimeTooSkewed", 403)


@pytest.mark.parametrize("expires", [0, 604801, 10**9])
def test_presigned_expires_out_of_range(expires: int) -> None:
    req, _ = sign("GET", "/bucket/k", presign=expires)
    assert code_of(lambda: sigv4.parse(req, NOW)) == ("AuthorizationQueryParametersError", 400)


def test_presigned_expires_at_the_limit() -> None:
    req, _ = sign("GET", "/bucket/k", presign=604800)
    assert check(req, now=NOW + 604800)[0].expires == 604800


def test_presigned_query_changed() -> None:
    req, _ = sign("GET", "/bucket/k", presign=60, params={"versionId": "1"})
    assert rejects(replace(req, query=req.query.replace("versionId=1", "versionId=2"))) == (
        "SignatureDoesNotMatch",
        403,
    )
    assert rejects(replace(req, query=req.query + "&extra=1")) == ("SignatureDoesNotMatch", 403)
    assert rejects(replace(req, query=req.query.replace("X-Amz-Expires=60", "X-Amz-Expires=61"))) == (
        "SignatureDoesNotMatch",
        403,
    )
    assert rejects(with_headers(req, host="other.test")) == ("SignatureDoesNotMatch", 403)


def replace_authorization(req: Request, old: str, new: str) -> Request:
    assert old in req.headers["authorization"]
    return with_headers(req, authorization=req.headers["authorization"].replace(old, new))


def replace_query(req: Request, old: str, new: str) -> Request:
    assert old in req.query
    return replace(req, query=req.query.replace(old, new))


def test_scope_date_must_be_x_amz_date() -> None:
    req, _ = sign("GET", "/bucket/k")
    bad = replace_authorization(req, "/20261203/", "/20261202/")
    assert code_of(lambda: sigv4.parse(bad, NOW)) == ("AuthorizationHeaderMalformed", 400)
    pre, _ = sign("GET", "/bucket/k", presign=60)
    bad = replace_query(pre, "%2F20261203%2F", "%2F20261204%2F")
    assert code_of(lambda: sigv4.parse(bad, NOW)) == ("AuthorizationQueryParametersError", 400)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/s3/", "/ec2/"),
        ("/aws4_request", "/aws4_reques"),
        ("SignedHeaders=host;", "SignedHeaders="),  # host unsigned
        ("host;x-amz-content-sha256;x-amz-date", "x-amz-content-sha256;host;x-amz-date"),  # unsorted
        ("host;x-amz-content-sha256", "host;host;x-amz-content-sha256"),
        ("AWS4-HMAC-SHA256 ", "AWS4-ECDSA-P256-SHA256 "),
        ("AWS4-HMAC-SHA256 Credential", "AWS4-HMAC-SHA256 Credentials"),
        ("Signature=", "Signature=0"),
        (", Signature=", ", Foo=1, Signature="),
        (", Signature=", ", SignedHeaders=host, Signature="),
    ],
)
def test_malformed_authorization(old: str, new: str) -> None:
    req, _ = sign("GET", "/bucket/k")
    assert code_of(lambda: sigv4.parse(replace_authorization(req, old, new), NOW)) == (
        "AuthorizationHeaderMalformed",
        400,
    )


def test_authorization_without_spaces_and_in_another_order() -> None:
    req, _ = sign("GET", "/bucket/k")
    cred, signed, sig = req.headers["authorization"].removeprefix("AWS4-HMAC-SHA256 ").split(", ")
    header = f"AWS4-HMAC-SHA256 {sig},{cred},{signed}"
    assert check(with_headers(req, authorization=header))[0].access_key_id == AKID


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("%2Fs3%2F", "%2Fsts%2F"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""),
        ("X-Amz-Expires=60&", ""),
        ("X-Amz-Expires=60", "X-Amz-Expires=6O"),
        ("X-Amz-Signature=", "X-Amz-Signature=00&X-Amz-Signature="),
        ("X-Amz-Credential=", "X-Amz-Credential=x%2F"),
    ],
)
def test_malformed_presigned_query(old: str, new: str) -> None:
    req, _ = sign("GET", "/bucket/k", presign=60)
    assert code_of(lambda: sigv4.parse(replace_query(req, old, new), NOW)) == (
        "AuthorizationQueryParametersError",
        400,
    )


@pytest.mark.parametrize(
    "date", [None, "", "20261203", "20261203T101500", "20261303T101500Z", "20260230T000000Z"]
)
def test_bad_or_absent_x_amz_date(date: str | None) -> None:
    req, _ = sign("GET", "/bucket/k")
    assert code_of(lambda: sigv4.parse(with_headers(req, x_amz_date=date), NOW)) == ("AccessDenied", 403)
    pre, _ = sign("GET", "/bucket/k", presign=60)
    bad = replace_query(pre, "X-Amz-Date=20261203T101500Z", "" if date is None else f"X-Amz-Date={date}")
    assert code_of(lambda: sigv4.parse(bad, NOW)) == ("AccessDenied", 403)


def test_leap_day_is_a_date() -> None:
    when = datetime.datetime(2028, 2, 29, 23, 59, 59)
    with pytest.MonkeyPatch.context() as mp:
        _set_clock(mp, when)
        req, _ = sign("GET", "/bucket/k")
    assert check(req, now=calendar.timegm(when.timetuple()))[0].amz_date == "20280229T235959Z"


def test_no_auth_at_all() -> None:
    assert code_of(lambda: sigv4.parse(Request("GET", "/bucket/k", "", {"host": HOST}), NOW)) == (
        "AccessDenied",
        403,
    )


def test_both_auth_mechanisms() -> None:
    pre, _ = sign("GET", "/bucket/k", presign=60)
    hdr, _ = sign("GET", "/bucket/k")
    both = with_headers(pre, authorization=hdr.headers["authorization"])
    assert code_of(lambda: sigv4.parse(both, NOW)) == ("InvalidArgument", 400)


def test_signature_v2_is_refused() -> None:
    v2 = Request("GET", "/b/k", "", {"host": HOST, "authorization": "AWS AKID:c2lnbmF0dXJl", "date": "x"})
    assert code_of(lambda: sigv4.parse(v2, NOW)) == ("AuthorizationHeaderMalformed", 400)
    v2q = Request("GET", "/b/k", "AWSAccessKeyId=AKID&Expires=1&Signature=abc", {"host": HOST})
    assert code_of(lambda: sigv4.parse(v2q, NOW)) == ("AuthorizationQueryParametersError", 400)


def test_payload_hash_header() -> None:
    req, _ = sign("GET", "/bucket/k")
    missing = with_headers(req, x_amz_content_sha256=None)
    assert code_of(lambda: sigv4.parse(missing, NOW)) == ("InvalidRequest", 400)
    garbage = with_headers(req, x_amz_content_sha256="not-a-hash")
    assert code_of(lambda: sigv4.parse(garbage, NOW)) == ("InvalidArgument", 400)
    trailer = with_headers(req, x_amz_content_sha256="STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
    assert code_of(lambda: sigv4.parse(trailer, NOW)) == ("NotImplemented", 501)


def test_bad_length_headers() -> None:
    req, _ = sign("PUT", "/bucket/k", body=b"x")
    assert code_of(lambda: sigv4.parse(with_headers(req, content_length="1_0"), NOW)) == (
        "InvalidArgument",
        400,
    )
    # a digit, to str.isdigit() and int(), but not to HTTP
    assert code_of(lambda: sigv4.parse(with_headers(req, content_length="\u0661"), NOW)) == (
        "InvalidArgument",
        400,
    )


# --- aws-chunked: the AWS documentation's example --------------------------------------------------

DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
DOC_CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)
DOC_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))
DOC_DATA = b"a" * 66560


def doc_request(**changes: str) -> Request:
    signed = (
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
        "x-amz-storage-class"
    )
    headers = {
        "host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "authorization": "AWS4-HMAC-SHA256 "
        "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed},Signature={DOC_SEED}",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "content-length": "66824",
    }
    return with_headers(Request("PUT", "/examplebucket/chunkObject.txt", "", headers), **changes)


def doc_body() -> bytes:
    sizes = (65536, 1024, 0)
    return b"".join(
        b"%x;chunk-signature=%s\r\n%s\r\n" % (size, sig.encode(), b"a" * size)
        for size, sig in zip(sizes, DOC_CHUNK_SIGNATURES, strict=True)
    )


def doc_payload() -> Payload:
    req = doc_request()
    return sigv4.verify(sigv4.parse(req, DOC_NOW), req, DOC_SECRET)


def feed_split(payload: Payload, body: bytes, cuts: list[int]) -> bytes:
    out = bytearray()
    bounds = [0, *sorted(cuts), len(body)]
    for start, end in itertools.pairwise(bounds):
        out += b"".join(bytes(piece) for piece in payload.feed(body[start:end]))
    payload.finish()
    return bytes(out)


def test_doc_example_whole() -> None:
    body = doc_body()
    assert len(body) == 66824  # the example's Content-Length
    req = doc_request()
    auth = sigv4.parse(req, DOC_NOW)
    assert (auth.payload_mode, auth.decoded_length, auth.region) == (
        PayloadMode.CHUNKED_SIGNED,
        66560,
        "us-east-1",
    )
    payload = sigv4.verify(
        auth, req, DOC_SECRET
    )  # the documented seed signature: the canonical request is right
    assert payload.decoded_length == 66560
    pieces = payload.feed(body)
    assert [len(p) for p in pieces] == [65536, 1024]
    payload.finish()
    assert b"".join(bytes(p) for p in pieces) == DOC_DATA


def test_doc_example_byte_by_byte() -> None:
    payload = doc_payload()
    body = doc_body()
    out = bytearray()
    first_chunk_end = body.index(b"\r\n") + 2 + 65536
    for i in range(len(body)):
        pieces = payload.feed(body[i : i + 1])
        # a chunk's data comes out only when its last byte is in and its signature checked
        assert bool(pieces) == (i in (first_chunk_end - 1, first_chunk_end + 2 + 86 + 1024 - 1)), i
        out += b"".join(bytes(p) for p in pieces)
    payload.finish()
    assert out == DOC_DATA


@given(st.lists(st.integers(0, 66824), max_size=12))
@settings(max_examples=40, deadline=None)
def test_doc_example_random_splits(cuts: list[int]) -> None:
    assert feed_split(doc_payload(), doc_body(), cuts) == DOC_DATA


def test_doc_example_from_bytearrays_and_views() -> None:
    payload = doc_payload()
    body = bytearray(doc_body())
    out = payload.feed(memoryview(body)[:1000]) + payload.feed(bytearray(body[1000:]))
    payload.finish()
    assert b"".join(bytes(p) for p in out) == DOC_DATA


def doc_refusal(body: bytes, request: Request | None = None) -> tuple[str, int, int]:
    """The code and status the example's payload refuses `body` with, and how many bytes came out first."""
    req = request or doc_request()
    payload = sigv4.verify(sigv4.parse(req, DOC_NOW), req, DOC_SECRET)
    released = 0

    def run() -> None:
        nonlocal released
        # 1000-byte pieces: each chunk of the example ends in a piece of its own
        for i in range(0, len(body), 1000):
            released += sum(len(p) for p in payload.feed(body[i : i + 1000]))
        payload.finish()

    code, status = code_of(run)
    return code, status, released


def test_doc_example_flipped_data_byte() -> None:
    body = bytearray(doc_body())
    body[100] ^= 1  # in the first chunk's data
    assert doc_refusal(bytes(body)) == ("SignatureDoesNotMatch", 403, 0)
    body = bytearray(doc_body())
    body[-200] ^= 1  # in the second chunk's data: the first was fine and came out
    assert doc_refusal(bytes(body)) == ("SignatureDoesNotMatch", 403, 65536)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_doc_example_flipped_signature(which: int) -> None:
    sig = DOC_CHUNK_SIGNATURES[which]
    flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    body = doc_body().replace(sig.encode(), flipped.encode())
    assert doc_refusal(body)[:2] == ("SignatureDoesNotMatch", 403)


def test_doc_example_wrong_seed_or_secret() -> None:
    req = doc_request(authorization=doc_request().headers["authorization"].replace(DOC_SEED[:4], "0000"))
    assert code_of(lambda: sigv4.verify(sigv4.parse(req, DOC_NOW), req, DOC_SECRET)) == (
        "SignatureDoesNotMatch",
        403,
    )
    assert code_of(lambda: sigv4.verify(sigv4.parse(doc_request(), DOC_NOW), doc_request(), SECRET)) == (
        "SignatureDoesNotMatch",
        403,
    )


def test_doc_example_missing_final_chunk() -> None:
    body = doc_body()
    final = body.rindex(b"0;chunk-signature=")
    assert doc_refusal(body[:final]) == ("IncompleteBody", 400, 66560)


@pytest.mark.parametrize("cut", [1, 30, 88, 5000, 65624, 65625, 65626, 66000, 66740, 66800, 66822, 66823])
def test_doc_example_truncated(cut: int) -> None:
    assert doc_refusal(doc_body()[:cut])[:2] == ("IncompleteBody", 400)


def test_doc_example_chunks_swapped() -> None:
    parts = doc_body().split(b"\r\n")
    # header1, data1, header2, data2, header3, "", "": swap the two data chunks with their headers
    swapped = b"\r\n".join([parts[2], parts[3], parts[0], parts[1], *parts[4:]])
    assert doc_refusal(swapped)[:2] == ("SignatureDoesNotMatch", 403)


def test_doc_example_bytes_after_the_end() -> None:
    assert doc_refusal(doc_body() + b"x")[:2] == ("InvalidRequest", 400)
    payload = doc_payload()
    assert sum(len(p) for p in payload.feed(doc_body())) == 66560
    assert code_of(lambda: payload.feed(b"\r\n")) == ("InvalidRequest", 400)


def test_doc_example_framing() -> None:
    body = doc_body()
    assert doc_refusal(body.replace(b"\r\n400;", b"\n\n400;", 1))[:2] == ("InvalidRequest", 400)
    assert doc_refusal(body.replace(b";chunk-signature=", b";chunk-signaturE=", 1))[:2] == (
        "InvalidRequest",
        400,
    )
    assert doc_refusal(b"+" + body[1:])[:2] == ("InvalidRequest", 400)
    assert doc_refusal(body[:-2] + b"x\r\n")[:2] == ("InvalidRequest", 400)  # a trailer in a signed body


def test_chunk_over_the_cap_is_refused_before_its_data() -> None:
    # no x-amz-decoded-content-length here: only the cap stands between the header and a buffer
    req = cached_chunked_request()
    payload = sigv4.verify(sigv4.parse(req, NOW), req, SECRET)
    header = b"%x;chunk-signature=%s\r\n" % (sigv4.MAX_CHUNK_SIZE + 1, b"0" * 64)
    assert code_of(lambda: payload.feed(header)) == ("InvalidRequest", 400)
    at_cap = sigv4.verify(sigv4.parse(req, NOW), req, SECRET)
    assert at_cap.feed(b"%x;chunk-signature=%s\r\n" % (sigv4.MAX_CHUNK_SIZE, b"0" * 64)) == []
    assert doc_refusal(header) == ("InvalidRequest", 400, 0)


def test_chunk_line_over_the_cap() -> None:
    assert doc_refusal(b"1" * (sigv4.MAX_CHUNK_LINE + 1))[:2] == ("InvalidRequest", 400)
    long_line = b"0" * (sigv4.MAX_CHUNK_LINE - 2 - 82) + b"10000;chunk-signature=" + b"0" * 64 + b"\r\n"
    assert doc_refusal(long_line)[:2] == ("InvalidRequest", 400)


def test_doc_example_decoded_length_mismatch() -> None:
    # x-amz-decoded-content-length is signed in the example: change it and the seed no longer matches
    req = doc_request(x_amz_decoded_content_length="66559")
    assert code_of(lambda: sigv4.verify(sigv4.parse(req, DOC_NOW), req, DOC_SECRET)) == (
        "SignatureDoesNotMatch",
        403,
    )


# --- aws-chunked, signed by us over botocore's seed --------------------------------------------------


def signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def chunked_body(req: Request, chunks: list[bytes], secret: str = SECRET) -> bytes:
    """The aws-chunked body for `req`, as the AWS documentation signs it (the final chunk included)."""
    amz_date = req.headers["x-amz-date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = signing_key(secret, amz_date[:8], REGION)
    previous = req.headers["authorization"].rsplit("Signature=", 1)[1]
    out = bytearray()
    for data in [*chunks, b""]:
        to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256-PAYLOAD",
                amz_date,
                scope,
                previous,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(data).hexdigest(),
            )
        )
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        out += b"%x;chunk-signature=%s\r\n%s\r\n" % (len(data), previous.encode(), data)
    return bytes(out)


def chunked_request(declared: int | None) -> Request:
    headers = {"Content-Encoding": "aws-chunked"}
    if declared is not None:
        headers["x-amz-decoded-content-length"] = str(declared)
    return sign("PUT", "/bucket/chunked", headers=headers, signer=StreamingSigV4)[0]


def test_signed_chunks_from_botocore_seed() -> None:
    chunks = [b"x" * 8192, b"y" * 100, b"z"]
    req = chunked_request(sum(map(len, chunks)))
    assert check(req, chunked_body(req, chunks))[1] == b"".join(chunks)


def test_signed_chunks_without_decoded_length() -> None:
    req = chunked_request(None)
    auth, out = check(req, chunked_body(req, [b"abc", b"def"]))
    assert (auth.decoded_length, out) == (None, b"abcdef")


def test_signed_empty_body() -> None:
    req = chunked_request(0)
    assert check(req, chunked_body(req, []))[1] == b""


def test_signed_chunks_decoded_length_mismatch() -> None:
    short = chunked_request(100)
    assert rejects(short, chunked_body(short, [b"x" * 50])) == ("IncompleteBody", 400)
    long = chunked_request(50)
    assert rejects(long, chunked_body(long, [b"x" * 30, b"y" * 30])) == ("InvalidRequest", 400)


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=5),
    st.lists(st.integers(0, 2000), max_size=10),
)
@settings(max_examples=150, deadline=None)
def test_signed_chunks_random(chunks: list[bytes], cuts: list[int]) -> None:
    req = cached_chunked_request()
    body = chunked_body(req, chunks)
    payload = sigv4.verify(sigv4.parse(req, NOW), req, SECRET)
    assert feed_split(payload, body, [c for c in cuts if c <= len(body)]) == b"".join(chunks)


@functools.cache
def cached_chunked_request() -> Request:
    return chunked_request(None)


def test_poisoned_after_an_error() -> None:
    req = chunked_request(None)
    body = bytearray(chunked_body(req, [b"data"]))
    body[body.index(b"data")] ^= 1
    payload = sigv4.verify(sigv4.parse(req, NOW), req, SECRET)
    assert code_of(lambda: payload.feed(bytes(body))) == ("SignatureDoesNotMatch", 403)
    assert code_of(lambda: payload.feed(b"")) == ("SignatureDoesNotMatch", 403)
    assert code_of(payload.finish) == ("SignatureDoesNotMatch", 403)


def test_feed_after_finish_is_a_bug() -> None:
    req, _ = sign("PUT", "/bucket/k", body=b"")
    payload = sigv4.verify(sigv4.parse(req, NOW), req, SECRET)
    payload.finish()
    assert code_of(lambda: payload.feed(b"x")) == ("InternalError", 500)


# --- aws-chunked with an unsigned trailer ------------------------------------------------------------


def trailer_request(trailer: str | None, declared: int | None) -> Request:
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    }
    if trailer is not None:
        headers["X-Amz-Trailer"] = trailer
    if declared is not None:
        headers["X-Amz-Decoded-Content-Length"] = str(declared)

    class TrailerSigV4(S3SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            return "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    return sign("PUT", "/bucket/t", headers=headers, signer=TrailerSigV4)[0]


CHECKSUMS = {
    "x-amz-checksum-crc32": Crc32Checksum,
    "x-amz-checksum-sha1": Sha1Checksum,
    "x-amz-checksum-sha256": Sha256Checksum,
}


def wrapped(data: bytes, name: str | None, chunk_size: int = 1000) -> bytes:
    """botocore's own aws-chunked encoder."""
    cls = CHECKSUMS[name] if name is not None else None
    return bytes(AwsChunkedWrapper(io.BytesIO(data), cls, name or "x-amz-checksum", chunk_size).read())


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_trailer_checksums(name: str) -> None:
    data = bytes(range(256)) * 20
    req = trailer_request(name, len(data))
    body = wrapped(data, name)
    auth, out = check(req, body)
    assert (auth.payload_mode, auth.trailers, out) == (PayloadMode.CHUNKED_TRAILER, (name,), data)
    flipped = bytearray(body)
    flipped[10] ^= 1
    assert rejects(req, bytes(flipped)) == ("BadDigest", 400)


def test_trailer_crc32_is_zlibs() -> None:
    data = b"hello"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
    req = trailer_request("x-amz-checksum-crc32", 5)
    assert check(req, b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:" + crc + b"\r\n\r\n")[1] == data


def test_trailer_random_splits_and_sizes() -> None:
    data = b"0123456789" * 300
    req = trailer_request("x-amz-checksum-sha256", None)
    for chunk_size in (1, 7, 1000, 5000):
        body = wrapped(data, "x-amz-checksum-sha256", chunk_size)
        payload = sigv4.verify(sigv4.parse(req, NOW), req, SECRET)
        assert feed_split(payload, body, list(range(0, len(body), 13))) == data


def test_trailer_crc32c_is_accepted_unchecked() -> None:
    req = trailer_request("x-amz-checksum-crc32c", 3)
    assert check(req, b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32c:AAAAAA==\r\n\r\n")[1] == b"abc"


def test_trailer_refusals() -> None:
    req = trailer_request("x-amz-checksum-crc32", 3)
    good = wrapped(b"abc", "x-amz-checksum-crc32")
    assert check(req, good)[1] == b"abc"
    assert rejects(req, b"3\r\nabc\r\n0\r\n\r\n") == ("IncompleteBody", 400)  # the declared trailer absent
    assert rejects(req, good.replace(b"crc32:", b"crc32:!")) == ("InvalidRequest", 400)  # not base64
    twice = good[:-2] + good[good.index(b"x-amz") :]
    assert rejects(req, twice) == ("InvalidRequest", 400)
    other = good.replace(b"x-amz-checksum-crc32", b"x-amz-checksum-sha1")
    assert rejects(req, other) == ("InvalidRequest", 400)  # not the one declared
    assert rejects(req, good[:-1]) == ("IncompleteBody", 400)
    assert rejects(req, b"3;ext=1\r\nabc\r\n0\r\n\r\n") == ("InvalidRequest", 400)
    undeclared = trailer_request(None, 3)
    assert check(undeclared, b"3\r\nabc\r\n0\r\n\r\n")[1] == b"abc"
    assert rejects(undeclared, good) == ("InvalidRequest", 400)
    bad = trailer_request("x-amz-checksum-md4", 3)
    assert code_of(lambda: sigv4.parse(bad, NOW)) == ("InvalidRequest", 400)


# --- the module stays sans-IO -------------------------------------------------------------------------


def test_imports_no_io() -> None:
    tree = ast.parse(Path(sigv4.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names.isdisjoint({"asyncio", "aiohttp", "socket", "time", "datetime", "calendar", "os", "logging"})
    assert names >= {"hmac", "hashlib"}


# --- fuzz: nothing but S3Error gets out ------------------------------------------------------------

PARSE_CODES = {
    "AccessDenied",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "InvalidArgument",
    "InvalidRequest",
    "InvalidURI",
    "NotImplemented",
    "RequestTimeTooSkewed",
}


def parse_and_verify(req: Request, now: float = NOW) -> str:
    """ "ok", or the S3Error's code; anything else escapes and fails the test."""
    try:
        sigv4.verify(sigv4.parse(req, now), req, SECRET)
    except S3Error as exc:
        assert exc.code in PARSE_CODES | {"SignatureDoesNotMatch"}, exc.code
        assert exc.message and "\n" not in exc.message
        return exc.code
    return "ok"


@functools.cache
def valid_get() -> Request:
    return sign("GET", "/bucket/k", params={"prefix": "a"})[0]


@functools.cache
def valid_presigned() -> Request:
    return sign("GET", "/bucket/k", presign=600, params={"prefix": "a"})[0]


ODD_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("AWS4-HMAC-SHA256 Credential=/SignedHeaders;Signature,=%0f \t\r\n+~&"),
        st.characters(codec=None),  # every code point, lone surrogates too
    ),
    max_size=120,
)


@given(ODD_TEXT)
@FUZZ
def test_fuzz_random_authorization(value: str) -> None:
    assert parse_and_verify(with_headers(valid_get(), authorization=value)) != "ok"


@given(st.integers(0, 400), st.sampled_from(["replace", "insert", "delete"]), ODD_TEXT)
@FUZZ
def test_fuzz_mutated_authorization(where: int, how: str, text: str) -> None:
    original = valid_get().headers["authorization"]
    i = where % (len(original) + 1)
    bit = text[:3]
    mutated = {
        "replace": original[:i] + bit + original[i + len(bit) :],
        "insert": original[:i] + bit + original[i:],
        "delete": original[:i] + original[i + 1 + len(bit) :],
    }[how]
    result = parse_and_verify(with_headers(valid_get(), authorization=mutated))
    if mutated == original:
        assert result == "ok"


PARAM_NAMES = st.sampled_from(
    [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Content-Sha256",
        "X-Amz-Security-Token",
        "AWSAccessKeyId",
        "Signature",
        "prefix",
        "",
        "%",
        "X-Amz-%41lgorithm",
    ]
)
PARAM_VALUES = st.one_of(
    st.sampled_from(
        [
            "AWS4-HMAC-SHA256",
            f"{AKID}%2F20261203%2F{REGION}%2Fs3%2Faws4_request",
            "20261203T101500Z",
            "600",
            "host",
            "0" * 64,
            "UNSIGNED-PAYLOAD",
            "%ff%fe",
            "%zz",
            "%",
            "99999999999999999999999",
        ]
    ),
    ODD_TEXT,
)


@given(st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES, st.booleans()), max_size=10))
@FUZZ
def test_fuzz_presigned_query(params: list[tuple[str, str, bool]]) -> None:
    query = "&".join(f"{name}={value}" if has_value else name for name, value, has_value in params)
    assert parse_and_verify(Request("GET", "/b/k", query, {"host": HOST})) in PARSE_CODES | {
        "SignatureDoesNotMatch"
    }


@given(st.integers(0, 2000), ODD_TEXT)
@FUZZ
def test_fuzz_mutated_presigned_query(where: int, text: str) -> None:
    original = valid_presigned()
    i = where % (len(original.query) + 1)
    query = original.query[:i] + text[:4] + original.query[i + len(text[:4]) :]
    result = parse_and_verify(replace(original, query=query))
    if query == original.query:
        assert result == "ok"


RAW_PATHS = st.lists(
    st.one_of(
        ODD_TEXT,
        st.sampled_from(["%", "%2", "%zz", "%ff", "%c3", "%C3%BC", "%2F", "//", "/", "%00", "+", "~"]),
    ),
    max_size=8,
).map("".join)


@given(RAW_PATHS)
@FUZZ
def test_fuzz_raw_paths(raw_path: str) -> None:
    original = valid_get()
    result = parse_and_verify(replace(original, raw_path=raw_path))
    try:
        # as a server hands them over: bytes that were not UTF-8 arrive as U+DC80..U+DCFF
        same = unquote_to_bytes(raw_path.encode("utf-8", "surrogateescape")) == unquote_to_bytes(
            original.raw_path
        )
    except UnicodeEncodeError:
        assert result == "InvalidURI"
        return
    assert result == ("ok" if same else "SignatureDoesNotMatch")


@given(
    st.dictionaries(
        st.sampled_from(["x-amz-date", "host", "x-amz-content-sha256", "content-length"]), ODD_TEXT
    )
)
@FUZZ
def test_fuzz_header_values(changes: dict[str, str]) -> None:
    result = parse_and_verify(with_headers(valid_get(), **changes))
    if all(valid_get().headers.get(k) == v for k, v in changes.items()):
        assert result == "ok"


BODY_CODES = {"SignatureDoesNotMatch", "InvalidRequest", "IncompleteBody", "BadDigest"}


def feed_fuzz(payload: Payload, body: bytes, cuts: list[int]) -> bytes | str:
    try:
        return feed_split(payload, body, [c for c in cuts if c <= len(body)])
    except S3Error as exc:
        assert exc.code in BODY_CODES, exc.code
        assert exc.message and "\n" not in exc.message
        return exc.code


CHUNKISH = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"\r\n", b"0", b"10", b"ffffffff", b";chunk-signature=", b"0" * 64, b"x-amz-checksum-"]
        ),
    ),
    max_size=12,
).map(b"".join)


@given(CHUNKISH, st.lists(st.integers(0, 600), max_size=6))
@FUZZ
def test_fuzz_random_chunked_bodies(body: bytes, cuts: list[int]) -> None:
    signed = cached_chunked_request()
    result = feed_fuzz(sigv4.verify(sigv4.parse(signed, NOW), signed, SECRET), body, cuts)
    assert result in BODY_CODES  # no random body carries valid signatures
    trailer = cached_trailer_request()
    result = feed_fuzz(sigv4.verify(sigv4.parse(trailer, NOW), trailer, SECRET), body, cuts)
    assert result in BODY_CODES or isinstance(result, bytes)


@functools.cache
def cached_trailer_request() -> Request:
    return trailer_request("x-amz-checksum-crc32", None)


@given(st.integers(0, 10**6), st.integers(1, 255), st.lists(st.integers(0, 600), max_size=4))
@FUZZ
def test_fuzz_mutated_chunked_bodies(where: int, xor: int, cuts: list[int]) -> None:
    data = [b"first chunk", b"second", b"3"]
    req = cached_chunked_request()
    body = bytearray(chunked_body(req, data))
    body[where % len(body)] ^= xor
    result = feed_fuzz(sigv4.verify(sigv4.parse(req, NOW), req, SECRET), bytes(body), cuts)
    # a hex size's letter changing case leaves the same body; anything else is caught
    assert result in BODY_CODES or result == b"".join(data)


def test_presign_makes_what_botocore_makes_and_verify_takes() -> None:
    """sigv4.presign (the demo's signer) against botocore's presigner at the same instant: the same
    parameters and signature, and verify() takes it."""
    for method, path in (("GET", "/demo/file.bin"), ("PUT", "/demo/a%20b/c%2Bd.txt"), ("PUT", "/demo")):
        theirs, _ = sign(method, path, presign=600)
        ours = sigv4.presign(method, HOST, path, AKID, SECRET, FIXED.strftime("%Y%m%dT%H%M%SZ"), 600, REGION)
        assert dict(p.split("=", 1) for p in ours.split("&")) == dict(
            p.split("=", 1) for p in theirs.query.split("&")
        )
        r = Request(method, path, ours, {"host": HOST})
        sigv4.verify(sigv4.parse(r, NOW + 1), r, SECRET)
