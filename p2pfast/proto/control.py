"""Control messages: orjson objects on stream 0, size-capped before parsing and checked field by field.

Every message is a JSON object with a string "t" naming its kind and exactly the fields its schema lists
(required or optional); an unknown kind or an unknown field is an error, not ignored. `decode` checks the
size before orjson sees a byte, then every field's type and bounds, and turns anything wrong into
RemoteProtocolError(code=PROTOCOL); `encode` runs the same checks on what we are about to send and raises
LocalProtocolError. Payload bytes never pass through orjson: they travel in DATA frames. The schema table
is `SCHEMAS`; docs/protocol.md, "Control messages", is its long form.

The HELLO (handshake payload of messages 2 and 3) has its own pair, `encode_hello`/`decode_hello`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from p2pfast import errors, wire

__all__ = [
    "HELLO_VERSION",
    "MAX_ADDR",
    "MAX_AGENT",
    "MAX_FILES_PAGE",
    "MAX_HOLDS",
    "MAX_ID",
    "MAX_KEY_BYTES",
    "MAX_KEY_META",
    "MAX_META_HOLDERS",
    "MAX_PEX_PEERS",
    "MAX_REASON_BYTES",
    "SCHEMAS",
    "decode",
    "decode_hello",
    "encode",
    "encode_hello",
]

MAX_ID = 2**53  # request ids and sizes stay exact in any JSON reader (IEEE double)
MAX_KEY_BYTES = 1024  # a user's object key, UTF-8
MAX_ADDR = 255  # "host:port": a DNS name is at most 253 characters
MAX_PEX_PEERS = 256  # one pex message; 256 entries of ~150 bytes stay well under MAX_CONTROL_SIZE
MAX_REASON_BYTES = 512  # an error reply's text, UTF-8
MAX_AGENT = 128  # the HELLO's software name and version
MAX_HOLDS = 200  # files asked about in one holds request (the sender also keeps it under the size cap)
# Entries of one file_list reply. An entry is at least ~90 bytes of JSON, so the byte cap (MAX_CONTROL_SIZE)
# binds first and the holder fills a page by size (node/listing.py); this bounds the validator's loop.
MAX_FILES_PAGE = 256
# Membership view messages (proto/view.py): records and stamps per message, and ids asked back. A record
# is at most ~340 bytes of JSON (a 255-character address), so the sender fills a page by size too.
MAX_VIEW_RECORDS = 128
MAX_VIEW_STAMPS = 160
MAX_VIEW_WANT = 64
# Revocation records in one `revoked` message: a record is ~370 bytes of JSON, so 32 stay under
# MAX_CONTROL_SIZE (16 KiB) with room; a longer list goes in several messages (node/revocation.py).
MAX_REVOCATIONS = 32
# Key metadata (node/keymeta.py): entries of one key_meta request, and holders named per entry (a
# file's holders are its target copies plus the pinned ones: a handful). An entry is at most ~7 KiB of
# JSON (a 1 KiB key, escaped), so the sender fills a request by size too.
MAX_KEY_META = 64
MAX_META_HOLDERS = 16
MAX_STREAM_ID = 0xFFFFFFFF
MAX_CODE = 0xFFFFFFFF
HELLO_VERSION = 1

_CID_RE = re.compile(r"b3:[0-9a-f]{64}")
_NODE_ID_RE = re.compile(r"[0-9a-f]{64}")
# host is a DNS name or IPv4 address, or an IPv6 address in brackets; port 1..65535 is checked apart.
_ADDR_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})?:([0-9]{1,5})")
_HEX_RE = re.compile(r"(?:[0-9a-f]{64})*")


class _Invalid(Exception):
    """A schema violation; decode re-raises it as RemoteProtocolError, encode as LocalProtocolError."""


Check = Callable[[str, Any], None]


def _int(lo: int, hi: int) -> Check:
    def check(name: str, v: Any) -> None:
        if type(v) is not int or not lo <= v <= hi:
            raise _Invalid(f"{name} must be an int in {lo}..{hi}")

    return check


def _optional(inner: Check) -> Check:
    def check(name: str, v: Any) -> None:
        if v is not None:
            inner(name, v)

    return check


def _time(name: str, v: Any) -> None:
    # seconds since the epoch; ints are accepted because JSON writers may drop ".0"
    if type(v) not in (int, float) or not (math.isfinite(v) and 0 <= v <= MAX_ID):
        raise _Invalid(f"{name} must be a finite number in 0..2**53")


def _utf8(max_bytes: int, *, min_chars: int = 0) -> Check:
    def check(name: str, v: Any) -> None:
        if type(v) is not str or len(v) < min_chars or len(v) > max_bytes:
            raise _Invalid(f"{name} must be a string of {min_chars}..{max_bytes} UTF-8 bytes")
        try:
            size = len(v.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates (from "\ud800" escapes)
            raise _Invalid(f"{name} is not valid UTF-8") from None
        if size > max_bytes:
            raise _Invalid(f"{name} must be a string of {min_chars}..{max_bytes} UTF-8 bytes")

    return check


# The strings a string check passed lately, per check, so a string seen again costs a set lookup, not a
# regex: the same node ids, addresses and signatures arrive over and over (every record of a view pull,
# every news relayed by each link); the regexes were 15% of a 1000-node simulated boot's CPU. Bounded:
# emptied when full (at most ~2 MB over all checks), and only for strings of MEMO_CHARS or less.
MEMO_SIZE = 2048
MEMO_CHARS = 256


def _regex(pattern: re.Pattern[str], what: str) -> Check:
    passed: set[str] = set()

    def check(name: str, v: Any) -> None:
        if type(v) is str and v in passed:
            return
        if type(v) is not str or pattern.fullmatch(v) is None:
            raise _Invalid(f"{name} must be {what}")
        _remember(passed, v)

    return check


def _remember(passed: set[str], v: str) -> None:
    if len(v) <= MEMO_CHARS:
        if len(passed) >= MEMO_SIZE:
            passed.clear()
        passed.add(v)


def _addr(*, host_required: bool, empty_ok: bool) -> Check:
    passed: set[str] = set()

    def check(name: str, v: Any) -> None:
        if type(v) is not str or len(v) > MAX_ADDR:
            raise _Invalid(f"{name} must be a 'host:port' string of at most {MAX_ADDR} characters")
        if v in passed or (v == "" and empty_ok):
            return
        m = _ADDR_RE.fullmatch(v)
        if m is None or not 1 <= int(m.group(1)) <= 65535 or (host_required and v.startswith(":")):
            raise _Invalid(f"{name} must be 'host:port'{' or :port' if not host_required else ''}")
        _remember(passed, v)

    return check


def _leaves(name: str, v: Any) -> None:
    if type(v) is not str or _HEX_RE.fullmatch(v) is None:
        raise _Invalid(f"{name} must be lowercase hex of whole 32-byte hashes")


_id = _int(0, MAX_ID)
_cid = _regex(_CID_RE, "'b3:' and 64 lowercase hex digits")
_node_id = _regex(_NODE_ID_RE, "64 lowercase hex digits")
_key = _utf8(MAX_KEY_BYTES, min_chars=1)
_sid = _int(1, MAX_STREAM_ID)
_size = _int(0, MAX_ID)
_peer_fields: dict[str, Check] = {
    "addr": _addr(host_required=True, empty_ok=False),
    "id": _node_id,
    "seen": _time,
}


def _fields(name: str, obj: Any, required: Mapping[str, Check], optional: Mapping[str, Check]) -> None:
    if type(obj) is not dict:
        raise _Invalid(f"{name} must be an object")
    for key, value in obj.items():
        check = required.get(key) or optional.get(key)
        if check is None:
            raise _Invalid(f"{name} has an unknown field {str(key)[:40]!r}")
        check(f"{name}.{key}", value)
    missing = [key for key in required if key not in obj]
    if missing:
        raise _Invalid(f"{name} lacks {', '.join(missing)}")


def _peers(name: str, v: Any) -> None:
    if type(v) is not list or len(v) > MAX_PEX_PEERS:
        raise _Invalid(f"{name} must be a list of at most {MAX_PEX_PEERS} peers")
    for i, peer in enumerate(v):
        _fields(f"{name}[{i}]", peer, _peer_fields, {})


def _file_pairs(name: str, v: Any) -> None:
    if type(v) is not list or not 1 <= len(v) <= MAX_HOLDS:
        raise _Invalid(f"{name} must be a list of 1..{MAX_HOLDS} [key, cid] pairs")
    for i, pair in enumerate(v):
        if type(pair) is not list or len(pair) != 2:
            raise _Invalid(f"{name}[{i}] must be a [key, cid] pair")
        _key(f"{name}[{i}][0]", pair[0])
        _cid(f"{name}[{i}][1]", pair[1])


def _bool(name: str, v: Any) -> None:
    if type(v) is not bool:
        raise _Invalid(f"{name} must be true or false")


_HELD_BYTES = (MAX_HOLDS + 7) // 8
_bits = _regex(
    re.compile(f"(?:[0-9a-f]{{2}}){{1,{_HELD_BYTES}}}"), f"lowercase hex of 1..{_HELD_BYTES} bytes"
)
_file_fields: dict[str, Check] = {"key": _key, "cid": _cid, "size": _size}


def _files(name: str, v: Any) -> None:
    if type(v) is not list or len(v) > MAX_FILES_PAGE:
        raise _Invalid(f"{name} must be a list of at most {MAX_FILES_PAGE} files")
    for i, entry in enumerate(v):
        _fields(f"{name}[{i}]", entry, _file_fields, {})


_view_root = _regex(re.compile(r"[0-9a-f]{32}"), "32 lowercase hex digits")
_view_buckets_hex = _regex(re.compile(r"(?:[0-9a-f]{8192})?"), "empty or 256 16-byte hashes in lowercase hex")
_inc = _int(0, MAX_ID)
_state = _int(0, 3)
_tag = _regex(re.compile(r"[0-9a-f]{8}"), "8 lowercase hex digits")
_vouched = _int(0, 1)
_listen = _addr(host_required=True, empty_ok=True)


def _tuple_list(name: str, v: Any, n: int | tuple[int, ...], most: int, what: str) -> None:
    sizes = (n,) if isinstance(n, int) else n
    if type(v) is not list or len(v) > most:
        raise _Invalid(f"{name} must be a list of at most {most} {what}")
    for i, x in enumerate(v):
        if type(x) is not list or len(x) not in sizes:
            raise _Invalid(f"{name}[{i}] must be a list of {' or '.join(map(str, sizes))} fields")


_maybe_hex32 = _regex(re.compile(r"(?:[0-9a-f]{64})?"), "empty or 64 lowercase hex digits")
_maybe_hex64 = _regex(re.compile(r"(?:[0-9a-f]{128})?"), "empty or 128 lowercase hex digits")


def _view_records(name: str, v: Any) -> None:
    # five fields from a build before vouches; eight with the signing key and the vouch
    _tuple_list(
        name,
        v,
        (5, 8),
        MAX_VIEW_RECORDS,
        "[node id, addr, incarnation, state, at(, signing key, voucher, vouch signature)] records",
    )
    for i, x in enumerate(v):
        _node_id(f"{name}[{i}][0]", x[0])
        _listen(f"{name}[{i}][1]", x[1])
        _inc(f"{name}[{i}][2]", x[2])
        _state(f"{name}[{i}][3]", x[3])
        _time(f"{name}[{i}][4]", x[4])
        if len(x) == 8:
            _maybe_hex32(f"{name}[{i}][5]", x[5])
            _maybe_hex32(f"{name}[{i}][6]", x[6])
            _maybe_hex64(f"{name}[{i}][7]", x[7])
            if bool(x[6]) != bool(x[7]):
                raise _Invalid(f"{name}[{i}] must have both a voucher and its signature, or neither")


def _view_stamps(name: str, v: Any) -> None:
    _tuple_list(name, v, (4, 5), MAX_VIEW_STAMPS, "[node id, incarnation, state, tag(, vouched)] stamps")
    for i, x in enumerate(v):
        _node_id(f"{name}[{i}][0]", x[0])
        _inc(f"{name}[{i}][1]", x[1])
        _state(f"{name}[{i}][2]", x[2])
        _tag(f"{name}[{i}][3]", x[3])
        if len(x) == 5:
            _vouched(f"{name}[{i}][4]", x[4])


def _view_bucket_list(name: str, v: Any) -> None:
    if (
        type(v) is not list
        or not 1 <= len(v) <= 256
        or any(type(b) is not int or not 0 <= b < 256 for b in v)
    ):
        raise _Invalid(f"{name} must be a list of 1..256 bucket numbers in 0..255")


def _view_want(name: str, v: Any) -> None:
    if type(v) is not list or len(v) > MAX_VIEW_WANT:
        raise _Invalid(f"{name} must be a list of at most {MAX_VIEW_WANT} node ids")
    for i, node in enumerate(v):
        _node_id(f"{name}[{i}]", node)


_hex32 = _regex(re.compile(r"[0-9a-f]{64}"), "64 lowercase hex digits")
_hex64 = _regex(re.compile(r"[0-9a-f]{128}"), "128 lowercase hex digits")


def _revocations(name: str, v: Any) -> None:
    _tuple_list(name, v, 5, MAX_REVOCATIONS, "[node id, by, at, signer key, signature] records")
    for i, (node, by, at, signer, sig) in enumerate(v):
        _node_id(f"{name}[{i}][0]", node)
        _node_id(f"{name}[{i}][1]", by)
        _time(f"{name}[{i}][2]", at)
        _hex32(f"{name}[{i}][3]", signer)
        _hex64(f"{name}[{i}][4]", sig)


def _meta_fields(name: str, v: list[Any], first: int) -> None:
    """[cid, size, at, [holders]] from index `first` of `v` (a have's meta, or a key_meta entry)."""
    cid, size, at, holders = v[first:]
    _cid(f"{name}[{first}]", cid)
    _size(f"{name}[{first + 1}]", size)
    _time(f"{name}[{first + 2}]", at)
    if type(holders) is not list or len(holders) > MAX_META_HOLDERS:
        raise _Invalid(f"{name}[{first + 3}] must be a list of at most {MAX_META_HOLDERS} node ids")
    for i, node in enumerate(holders):
        _node_id(f"{name}[{first + 3}][{i}]", node)


def _meta(name: str, v: Any) -> None:
    if type(v) is not list or len(v) != 4:
        raise _Invalid(f"{name} must be [cid, size, at, holders]")
    _meta_fields(name, v, 0)


def _meta_entries(name: str, v: Any) -> None:
    if type(v) is not list or not 1 <= len(v) <= MAX_KEY_META:
        raise _Invalid(f"{name} must be a list of 1..{MAX_KEY_META} [key, cid, size, at, holders] entries")
    for i, entry in enumerate(v):
        if type(entry) is not list or len(entry) != 5:
            raise _Invalid(f"{name}[{i}] must be [key, cid, size, at, holders]")
        _key(f"{name}[{i}][0]", entry[0])
        _meta_fields(f"{name}[{i}]", entry, 1)


def _t(name: str, v: Any) -> None:  # "t" is looked up in SCHEMAS before the fields are checked
    pass


# kind -> (required fields, optional fields); "t" is required everywhere.
SCHEMAS: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "ping": ({"id": _id}, {}),
    "pong": ({"re": _id}, {}),
    "pex": ({"peers": _peers}, {}),
    "who_has": ({"id": _id}, {"cid": _cid, "key": _key}),
    "have": (
        {"re": _id, "cid": _optional(_cid), "size": _optional(_size), "segments": _optional(_size)},
        {"meta": _meta},
    ),
    "get": (
        {"id": _id, "cid": _cid, "offset": _size, "length": _int(-1, MAX_ID), "sid": _sid},
        {},
    ),
    "leaves": ({"id": _id, "cid": _cid}, {"sid": _sid}),
    "store": ({"id": _id, "sid": _sid, "cid": _cid, "size": _size, "key": _key}, {"repair": _bool}),
    "delete": ({"id": _id, "key": _key, "cid": _cid, "origin": _node_id, "at": _time}, {}),
    "ok": ({"re": _id}, {"size": _size, "leaves": _leaves}),
    "error": ({"re": _id, "code": _int(0, MAX_CODE), "reason": _utf8(MAX_REASON_BYTES)}, {}),
    "holds": ({"id": _id, "files": _file_pairs}, {}),
    "held": ({"re": _id, "bits": _bits}, {"pinned": _bits}),
    "list_files": ({"id": _id, "limit": _int(1, MAX_FILES_PAGE)}, {"after": _key}),
    "file_list": ({"re": _id, "files": _files, "more": _bool}, {}),
    "view_sync": ({"id": _id, "root": _view_root}, {}),
    "view_diff": ({"re": _id, "buckets": _view_buckets_hex}, {}),
    "view_pull": ({"id": _id, "buckets": _view_bucket_list, "stamps": _view_stamps}, {}),
    "view_push": ({"re": _id, "records": _view_records, "want": _view_want}, {}),
    "view_news": ({"records": _view_records}, {}),
    "revoked": ({"records": _revocations}, {}),
    "net_key": ({"gen": _int(1, MAX_ID), "key": _hex32, "until": _time, "by": _node_id, "at": _time}, {}),
    "probe": ({"id": _id, "node": _node_id}, {}),
    "key_meta": ({"id": _id, "entries": _meta_entries}, {}),
}
for _required, _ in SCHEMAS.values():
    _required["t"] = _t
del _required, _

HELLO_SCHEMA: dict[str, Check] = {
    "v": _int(HELLO_VERSION, HELLO_VERSION),
    "listen": _addr(host_required=False, empty_ok=True),
    "agent": _utf8(MAX_AGENT, min_chars=1),
}


def _check_message(msg: Any) -> None:
    if type(msg) is not dict:
        raise _Invalid("a control message must be a JSON object")
    kind = msg.get("t")
    schema = SCHEMAS.get(kind) if type(kind) is str else None
    if schema is None:
        raise _Invalid(f"unknown control message kind {str(kind)[:40]!r}")
    _fields(str(kind), msg, *schema)


def _dumps(msg: Any, max_size: int, what: str) -> bytes:
    try:
        raw = orjson.dumps(msg)
    except orjson.JSONEncodeError as exc:
        raise errors.LocalProtocolError(
            f"{what} is not serializable: {exc}", wire.ErrorCode.PROTOCOL
        ) from None
    return capped(raw, max_size, what)


def capped(raw: bytes, max_size: int, what: str = "control message") -> bytes:
    """`raw`, if it is within `max_size` bytes; LocalProtocolError(PROTOCOL) if not."""
    if len(raw) > max_size:
        raise errors.LocalProtocolError(
            f"{what} of {len(raw)} bytes exceeds max {max_size}", wire.ErrorCode.PROTOCOL
        )
    return raw


def _loads(raw: bytes | bytearray | memoryview, max_size: int, what: str) -> Any:
    size = memoryview(raw).nbytes
    if size > max_size:  # before parsing: orjson never sees an oversized message
        raise errors.RemoteProtocolError(
            f"{what} of {size} bytes exceeds max {max_size}", wire.ErrorCode.PROTOCOL
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.RemoteProtocolError(
            f"{what} is not valid JSON: {exc}", wire.ErrorCode.PROTOCOL
        ) from None


def encode(msg: dict[str, Any], max_size: int = wire.MAX_CONTROL_SIZE) -> bytes:
    """The wire bytes of a control message; LocalProtocolError if it breaks the schema or the size cap."""
    try:
        _check_message(msg)
    except _Invalid as exc:
        raise errors.LocalProtocolError(f"invalid control message: {exc}", wire.ErrorCode.PROTOCOL) from None
    return _dumps(msg, max_size, "control message")


def decode(raw: bytes | bytearray | memoryview, max_size: int = wire.MAX_CONTROL_SIZE) -> dict[str, Any]:
    """A validated control message from the peer; RemoteProtocolError(PROTOCOL) for anything wrong."""
    msg = _loads(raw, max_size, "control message")
    try:
        _check_message(msg)
    except _Invalid as exc:
        raise errors.RemoteProtocolError(f"invalid control message: {exc}", wire.ErrorCode.PROTOCOL) from None
    assert type(msg) is dict
    return msg


def _check_hello(hello: Any) -> None:
    _fields("hello", hello, HELLO_SCHEMA, {})


def encode_hello(hello: dict[str, Any]) -> bytes:
    """The HELLO as handshake payload: {"v": 1, "listen": "host:port" | ":port" | "", "agent": str}."""
    try:
        _check_hello(hello)
    except _Invalid as exc:
        raise errors.LocalProtocolError(f"invalid hello: {exc}", wire.ErrorCode.PROTOCOL) from None
    return _dumps(hello, wire.MAX_CONTROL_SIZE, "hello")


def decode_hello(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The peer's HELLO; RemoteProtocolError(PROTOCOL) for anything wrong."""
    hello = _loads(raw, wire.MAX_CONTROL_SIZE, "hello")
    try:
        _check_hello(hello)
    except _Invalid as exc:
        raise errors.RemoteProtocolError(f"invalid hello: {exc}", wire.ErrorCode.PROTOCOL) from None
    assert type(hello) is dict
    return hello
