"""Typed control messages: one frozen class per kind of `control.SCHEMAS`, and the rules around them.

`control` stays the wire validator (orjson, size cap, every field's type and bounds); this module is the
typed form the layers above work with, so mypy checks every field instead of a `dict[str, Any]`:

    raw --control.decode--> dict --from_wire--> Envelope(msg, id, re)
    msg --to_wire(msg, id=|re=)--> dict --control.encode--> raw

A class's fields are the wire fields minus "t" (the class is the kind), "id" and "re": those belong to the
session's envelope (`Envelope`), not to the message. Kinds fall into three roles: a `Request` carries "id"
and is answered by a `Reply` carrying "re" = that id (`REPLIES` says which reply kinds answer which
request; `Error` answers any); a `Notice` (pex) carries neither and gets no answer.

The rules the schema cannot express live here, sans-IO, rather than in `net/` or the node: who_has names
exactly one of cid and key; the envelope matches the role; a reply is of a kind that answers its request
(`check_reply`); a store announces the stream its sender will send the plaintext on (`inbound_stream`).
docs/protocol.md, "Control messages", is the long form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard, overload

from p2pfast import errors, wire
from p2pfast.proto import control, revocation, view

__all__ = [
    "BY_KIND",
    "KIND",
    "REPLIES",
    "Delete",
    "Envelope",
    "Error",
    "FileEntry",
    "FileList",
    "Get",
    "Have",
    "Held",
    "Holds",
    "KeyMeta",
    "Leaves",
    "ListFiles",
    "Message",
    "Meta",
    "NetKey",
    "Notice",
    "Ok",
    "Pex",
    "PexPeer",
    "Ping",
    "Pong",
    "Probe",
    "Reply",
    "Request",
    "Revoked",
    "Store",
    "ViewDiff",
    "ViewNews",
    "ViewPull",
    "ViewPush",
    "ViewSync",
    "WhoHas",
    "check_reply",
    "from_wire",
    "inbound_stream",
    "is_notice",
    "is_reply",
    "is_request",
    "outbound_stream",
    "to_wire",
]


# -- requests: carry "id" ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness at the application level; answered by `Pong`."""


@dataclass(frozen=True, slots=True)
class WhoHas:
    """Does the peer hold this object, or a file under this key? Exactly one of the two is set."""

    cid: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Get:
    """The peer sends `length` bytes (-1: to the end) of `cid` from `offset` on our stream `sid`."""

    cid: str
    offset: int
    length: int
    sid: int


@dataclass(frozen=True, slots=True)
class Leaves:
    """The segment hashes of `cid`: streamed as raw digests on our stream `sid`, or without one in `Ok`."""

    cid: str
    sid: int | None = None


@dataclass(frozen=True, slots=True)
class Store:
    """The sender streams `size` bytes of plaintext of `cid` on its stream `sid`; `Ok` once durable.
    `repair`: a copy that restores redundancy (node/repair.py), not a user's store, so a tombstone for
    the key wins over it."""

    sid: int
    cid: str
    size: int
    key: str
    repair: bool = False


@dataclass(frozen=True, slots=True)
class Holds:
    """Which of these files (key, content id) does the peer hold? Answered by `Held`, one bit each."""

    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """A tombstone for `key` (naming `cid`), made by node `origin` at `at` (seconds since the epoch)."""

    key: str
    cid: str
    origin: str
    at: float


@dataclass(frozen=True, slots=True)
class ListFiles:
    """A page of the peer's files: at most `limit`, in the order of their keys' UTF-8 bytes, from the
    first key after `after` (None: from the first); answered by `FileList`."""

    limit: int
    after: str | None = None


@dataclass(frozen=True, slots=True)
class Meta:
    """A key's metadata as the members ranked for the key keep it (node/keymeta.py): the content id the
    key names, its plaintext size, when it was stored (`at`: the holder's files row, so a tombstone
    compares with it as with that row), and the members known to hold the object, best first (hints:
    a get still checks the segment hashes a holder sends before anything is used)."""

    cid: str
    size: int
    at: float
    holders: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyMeta:
    """Metadata of keys the recipient ranks among the first for (rendezvous on the key), to record;
    answered by `Ok` once committed. Sent only to a member that speaks "keymeta" (proto/features.py)."""

    entries: tuple[tuple[str, Meta], ...]


@dataclass(frozen=True, slots=True)
class ViewSync:
    """Membership anti-entropy (proto/view.py): the sender's view digest (`root`, 32 hex digits);
    answered by `ViewDiff`."""

    root: str


@dataclass(frozen=True, slots=True)
class ViewPull:
    """The sender's stamps of the view buckets it names (a page of those whose hashes differ); answered
    by `ViewPush`."""

    buckets: tuple[int, ...]
    stamps: tuple[view.Stamp, ...]


@dataclass(frozen=True, slots=True)
class Probe:
    """SWIM's ping-req: can the recipient reach member `node` (its link to it answers a ping)? `ok` when
    it can, an error when it cannot (node/viewsync.py asks a few members before it suspects one)."""

    node: str


# -- replies: carry "re" ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to `Ping`."""


@dataclass(frozen=True, slots=True)
class Have:
    """The answer to `WhoHas`: the object (for a key, the content id it names); all None: not held.
    `meta`, for a key not held here: the key's metadata this member keeps (node/keymeta.py), sent only
    to an asker that speaks "keymeta"."""

    cid: str | None
    size: int | None
    segments: int | None
    meta: Meta | None = None


@dataclass(frozen=True, slots=True)
class Ok:
    """Success; `size` (bytes served or stored) and `leaves` (hex of 32-byte hashes) where they apply."""

    size: int | None = None
    leaves: str | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed: an `ErrorCode` or application code, and a reason (at most 512 UTF-8 bytes)."""

    code: int
    reason: str

    @classmethod
    def of(cls, code: int, reason: str) -> Error:
        """An error whose reason always fits the wire: cut to `control.MAX_REASON_BYTES` of UTF-8 on a
        character boundary, lone surrogates (from undecodable file names) escaped, so that answering with
        any exception's text cannot itself fail to encode."""
        raw = reason.encode("utf-8", "backslashreplace")[: control.MAX_REASON_BYTES]
        return cls(int(code), raw.decode("utf-8", "ignore"))


@dataclass(frozen=True, slots=True)
class Held:
    """The answer to `Holds`: lowercase hex of a bit string, bit i (most significant first in each
    byte) set when the i-th file asked is held (its key names that content id here). `pinned`, the same
    form, sets bit i when that file was stored on the peer by a user (not a copy it received): a pinned
    copy is never dropped as surplus, so repair ranks it first among the holders it keeps."""

    bits: str
    pinned: str = ""

    @classmethod
    def of(cls, held: list[bool], pinned: list[bool] | None = None) -> Held:
        return cls(_hexbits(held), "" if pinned is None or not any(pinned) else _hexbits(pinned))

    def held(self, n: int) -> list[bool]:
        """The first n bits as booleans (a missing bit is False)."""
        return _bools(self.bits, n)

    def pins(self, n: int) -> list[bool]:
        """The first n bits of `pinned` (a peer that sends none pins nothing it says)."""
        return _bools(self.pinned, n)


def _hexbits(flags: list[bool]) -> str:
    raw = bytearray((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            raw[i // 8] |= 0x80 >> (i % 8)
    return raw.hex()


def _bools(bits: str, n: int) -> list[bool]:
    raw = bytes.fromhex(bits)
    return [i // 8 < len(raw) and bool(raw[i // 8] & (0x80 >> (i % 8))) for i in range(n)]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of `FileList`: a file the peer holds, its content id and plaintext size."""

    key: str
    cid: str
    size: int


@dataclass(frozen=True, slots=True)
class FileList:
    """The answer to `ListFiles`, in key order. The holder may send fewer than `limit` files to keep the
    reply within the control message cap, so only `more` says that the list goes on (ask again with the
    last key as `after`)."""

    files: tuple[FileEntry, ...]
    more: bool


@dataclass(frozen=True, slots=True)
class ViewDiff:
    """The answer to `ViewSync`: "" when the views agree, else the 256 bucket hashes (16 bytes each, as
    lowercase hex, in bucket order)."""

    buckets: str


@dataclass(frozen=True, slots=True)
class ViewPush:
    """The answer to `ViewPull`: the records the asker lacks or holds older, and the ids of the members
    the asker knows better (it sends those records back in a `ViewNews`)."""

    records: tuple[view.Record, ...]
    want: tuple[str, ...]


# -- notices: carry neither -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PexPeer:
    """One entry of `Pex`: a peer's listening address, node id and when the sender last saw it."""

    addr: str
    id: str
    seen: float


@dataclass(frozen=True, slots=True)
class Pex:
    """Peer exchange; no reply."""

    peers: tuple[PexPeer, ...]


@dataclass(frozen=True, slots=True)
class ViewNews:
    """Member records for the recipient's view: news the sender heard (spread once along each link) or
    the records a `ViewPush` asked for; no reply."""

    records: tuple[view.Record, ...]


@dataclass(frozen=True, slots=True)
class Revoked:
    """Revocation records (proto/revocation.py) the recipient is to enforce and pass on: a new one as it
    spreads, or all the sender holds when a member connects; no reply."""

    records: tuple[revocation.Revocation, ...]


@dataclass(frozen=True, slots=True)
class NetKey:
    """A network key rotation (proto/revocation.py Rotation), pushed over the session to members that
    are not revoked; no reply."""

    gen: int
    key: bytes
    until: float
    by: str
    at: float

    @classmethod
    def of(cls, x: revocation.Rotation) -> NetKey:
        return cls(x.gen, x.key, x.until, x.by, x.at)

    @property
    def rotation(self) -> revocation.Rotation:
        return revocation.Rotation(self.gen, self.key, self.until, self.by, self.at)


Request: TypeAlias = (
    Ping | WhoHas | Get | Leaves | Store | Delete | Holds | ListFiles | ViewSync | ViewPull | Probe | KeyMeta
)
Reply: TypeAlias = Pong | Have | Ok | Error | Held | FileList | ViewDiff | ViewPush
Notice: TypeAlias = Pex | ViewNews | Revoked | NetKey
Message: TypeAlias = Request | Reply | Notice

KIND: dict[type[Message], str] = {
    Ping: "ping",
    Pong: "pong",
    Pex: "pex",
    WhoHas: "who_has",
    Have: "have",
    Get: "get",
    Leaves: "leaves",
    Store: "store",
    Delete: "delete",
    Ok: "ok",
    Error: "error",
    Holds: "holds",
    Held: "held",
    ListFiles: "list_files",
    FileList: "file_list",
    ViewSync: "view_sync",
    ViewDiff: "view_diff",
    ViewPull: "view_pull",
    ViewPush: "view_push",
    ViewNews: "view_news",
    Revoked: "revoked",
    NetKey: "net_key",
    Probe: "probe",
    KeyMeta: "key_meta",
}
BY_KIND: dict[str, type[Message]] = {kind: cls for cls, kind in KIND.items()}

# Which reply kinds answer which request. Error is listed for every request (any request can fail), so
# `isinstance(reply, REPLIES[type(request)])` is the whole check.
REPLIES: dict[type[Request], tuple[type[Reply], ...]] = {
    Ping: (Pong, Error),
    WhoHas: (Have, Error),
    Get: (Ok, Error),
    Leaves: (Ok, Error),
    Store: (Ok, Error),
    Delete: (Ok, Error),
    Holds: (Held, Error),
    ListFiles: (FileList, Error),
    ViewSync: (ViewDiff, Error),
    ViewPull: (ViewPush, Error),
    Probe: (Ok, Error),
    KeyMeta: (Ok, Error),
}


def is_request(msg: Message) -> TypeGuard[Request]:
    """A request: carries "id" and gets exactly one reply."""
    return isinstance(msg, Request)


def is_reply(msg: Message) -> TypeGuard[Reply]:
    """A reply: carries "re", the id of the request it answers."""
    return isinstance(msg, Reply)


def is_notice(msg: Message) -> TypeGuard[Notice]:
    """A notice: carries neither "id" nor "re" and is never answered."""
    return isinstance(msg, Notice)


def inbound_stream(msg: Message) -> int | None:
    """The stream on which the peer that sent this request will send us data, or None.

    Only a store announces one: its sender opens `sid` and streams the plaintext on it, maybe before the
    handler runs, so the session must keep that stream (and the data arriving on it) for the handler
    rather than refuse it as unannounced. A get's or a leaves' `sid` is the other way round: the requester
    opened it for us to send on (`outbound_stream`), and receives nothing on it from us before we answer.
    """
    return msg.sid if isinstance(msg, Store) else None


def outbound_stream(msg: Message) -> int | None:
    """The peer's stream on which we send data in answer to this request (get, leaves with sid), or None."""
    if isinstance(msg, Get | Leaves):
        return msg.sid
    return None


@overload
def check_reply(request: Ping, reply: Reply) -> Pong | Error: ...
@overload
def check_reply(request: WhoHas, reply: Reply) -> Have | Error: ...
@overload
def check_reply(request: Get | Leaves | Store | Delete | Probe | KeyMeta, reply: Reply) -> Ok | Error: ...
@overload
def check_reply(request: Holds, reply: Reply) -> Held | Error: ...
@overload
def check_reply(request: ListFiles, reply: Reply) -> FileList | Error: ...
@overload
def check_reply(request: ViewSync, reply: Reply) -> ViewDiff | Error: ...
@overload
def check_reply(request: ViewPull, reply: Reply) -> ViewPush | Error: ...
def check_reply(request: Request, reply: Reply) -> Reply:
    """`reply` if its kind answers `request` (`REPLIES`; an Error answers any), else RemoteProtocolError:
    the peer answered our request with something that makes no sense for it."""
    if not isinstance(reply, REPLIES[type(request)]):
        raise errors.RemoteProtocolError(
            f"{KIND[type(reply)]} does not answer {KIND[type(request)]}", wire.ErrorCode.PROTOCOL
        )
    return reply


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as it travelled: `id` on a request, `re` on a reply, neither on a notice."""

    msg: Message
    id: int | None = None
    re: int | None = None


def _local(reason: str) -> errors.LocalProtocolError:
    return errors.LocalProtocolError(reason, wire.ErrorCode.PROTOCOL)


def _remote(reason: str) -> errors.RemoteProtocolError:
    return errors.RemoteProtocolError(reason, wire.ErrorCode.PROTOCOL)


def _fields(msg: Message) -> dict[str, Any]:
    # Optional fields that the schema does not allow as null are left out when None, exactly as the
    # callers wrote their dicts before; have's fields are always sent (null: not held).
    match msg:
        case Get():
            return {"cid": msg.cid, "offset": msg.offset, "length": msg.length, "sid": msg.sid}
        case Ok():
            d: dict[str, Any] = {}
            if msg.size is not None:
                d["size"] = msg.size
            if msg.leaves is not None:
                d["leaves"] = msg.leaves
            return d
        case Store():
            d = {"sid": msg.sid, "cid": msg.cid, "size": msg.size, "key": msg.key}
            if msg.repair:  # only when set: a user's store reads as before
                d["repair"] = True
            return d
        case Holds():
            return {"files": [[key, cid] for key, cid in msg.files]}
        case Held():
            return {"bits": msg.bits, "pinned": msg.pinned} if msg.pinned else {"bits": msg.bits}
        case ViewSync():
            return {"root": msg.root}
        case Probe():
            return {"node": msg.node}
        case ViewDiff():
            return {"buckets": msg.buckets}
        case ViewPull():
            return {"buckets": list(msg.buckets), "stamps": [_stamp_out(x) for x in msg.stamps]}
        case ViewPush():
            return {"records": [_record_out(r) for r in msg.records], "want": list(msg.want)}
        case ViewNews():
            return {"records": [_record_out(r) for r in msg.records]}
        case Revoked():
            return {"records": [[r.node, r.by, r.at, r.signer, r.sig] for r in msg.records]}
        case NetKey():
            return {"gen": msg.gen, "key": msg.key.hex(), "until": msg.until, "by": msg.by, "at": msg.at}
        case Error():
            return {"code": msg.code, "reason": msg.reason}
        case Leaves():
            return {"cid": msg.cid} if msg.sid is None else {"cid": msg.cid, "sid": msg.sid}
        case WhoHas():
            if (msg.cid is None) == (msg.key is None):
                raise _local("who_has needs exactly one of cid and key")
            return {"cid": msg.cid} if msg.key is None else {"key": msg.key}
        case Have():
            d = {"cid": msg.cid, "size": msg.size, "segments": msg.segments}
            if msg.meta is not None:  # only when set: a have reads as before
                d["meta"] = _meta_out(msg.meta)
            return d
        case KeyMeta():
            return {"entries": [[key, *_meta_out(meta)] for key, meta in msg.entries]}
        case Delete():
            return {"key": msg.key, "cid": msg.cid, "origin": msg.origin, "at": msg.at}
        case Pex():
            return {"peers": [{"addr": p.addr, "id": p.id, "seen": p.seen} for p in msg.peers]}
        case Ping() | Pong():
            return {}
        case ListFiles():
            return {"limit": msg.limit} if msg.after is None else {"limit": msg.limit, "after": msg.after}
        case FileList():
            return {
                "files": [{"key": f.key, "cid": f.cid, "size": f.size} for f in msg.files],
                "more": msg.more,
            }
    raise TypeError(f"not a control message: {msg!r}")


def to_wire(msg: Message, *, id: int | None = None, re: int | None = None) -> dict[str, Any]:
    """The dict `control.encode` takes for `msg`: a request needs `id`, a reply `re`, a notice neither
    (LocalProtocolError(PROTOCOL) otherwise, as for a who_has without exactly one of cid and key)."""
    kind = KIND.get(type(msg))
    if kind is None:  # a caller's bug (a subclass, or not a message at all), not a protocol matter
        raise TypeError(f"not a control message: {msg!r}")
    d: dict[str, Any] = {"t": kind}
    if isinstance(msg, Request):
        if id is None or re is not None:
            raise _local(f"a {kind} request needs an id and no re")
        d["id"] = id
    elif isinstance(msg, Reply):
        if re is None or id is not None:
            raise _local(f"a {kind} reply needs a re and no id")
        d["re"] = re
    elif id is not None or re is not None:
        raise _local(f"a {kind} notice takes neither id nor re")
    d.update(_fields(msg))
    return d


def _message(kind: Any, d: dict[str, Any]) -> Message:
    match kind:
        case "get":
            return Get(d["cid"], d["offset"], d["length"], d["sid"])
        case "ok":
            return Ok(d.get("size"), d.get("leaves"))
        case "store":
            return Store(d["sid"], d["cid"], d["size"], d["key"], d.get("repair", False))
        case "holds":
            return Holds(tuple((key, cid) for key, cid in d["files"]))
        case "held":
            return Held(d["bits"], d.get("pinned", ""))
        case "view_sync":
            return ViewSync(d["root"])
        case "probe":
            return Probe(d["node"])
        case "view_diff":
            return ViewDiff(d["buckets"])
        case "view_pull":
            return ViewPull(tuple(d["buckets"]), tuple(_stamp_in(x) for x in d["stamps"]))
        case "view_push":
            return ViewPush(tuple(_record_in(r) for r in d["records"]), tuple(d["want"]))
        case "view_news":
            return ViewNews(tuple(_record_in(r) for r in d["records"]))
        case "revoked":
            return Revoked(tuple(revocation.Revocation(*r) for r in d["records"]))
        case "net_key":
            return NetKey(d["gen"], bytes.fromhex(d["key"]), d["until"], d["by"], d["at"])
        case "error":
            return Error(d["code"], d["reason"])
        case "leaves":
            return Leaves(d["cid"], d.get("sid"))
        case "who_has":
            cid, key = d.get("cid"), d.get("key")
            if (cid is None) == (key is None):
                raise _remote("who_has needs exactly one of cid and key")
            return WhoHas(cid, key)
        case "have":
            meta = d.get("meta")
            return Have(d["cid"], d["size"], d["segments"], None if meta is None else _meta_in(meta))
        case "key_meta":
            return KeyMeta(tuple((e[0], _meta_in(e[1:])) for e in d["entries"]))
        case "delete":
            return Delete(d["key"], d["cid"], d["origin"], float(d["at"]))
        case "pex":
            return Pex(tuple(PexPeer(p["addr"], p["id"], float(p["seen"])) for p in d["peers"]))
        case "ping":
            return Ping()
        case "pong":
            return Pong()
        case "list_files":
            return ListFiles(d["limit"], d.get("after"))
        case "file_list":
            return FileList(tuple(FileEntry(f["key"], f["cid"], f["size"]) for f in d["files"]), d["more"])
    raise _remote(f"unknown control message kind {str(kind)[:40]!r}")


def _meta_out(x: Meta) -> list[Any]:
    return [x.cid, x.size, x.at, list(x.holders)]


def _meta_in(x: list[Any]) -> Meta:
    return Meta(x[0], x[1], float(x[2]), tuple(x[3]))


# A state by its number (the schema checked it is 0..3): indexing, where State(n) costs a microsecond
# (EnumType.__call__ was 8% of a 1000-node simulated boot's CPU: a view pull carries thousands of stamps)
_STATES: tuple[view.State, ...] = tuple(sorted(view.State))
assert all(s == i for i, s in enumerate(_STATES))


# A record or stamp without what a build before vouches lacks goes in that build's shorter form (the
# sender strips them for such a peer: node/viewsync.py), so one schema serves both.
def _record_out(r: view.Record) -> list[Any]:
    if not (r.sk or r.voucher):
        return [r.node_id, r.addr, r.inc, int(r.state), r.at]
    return [r.node_id, r.addr, r.inc, int(r.state), r.at, r.sk, r.voucher, r.vsig]


def _record_in(x: list[Any]) -> view.Record:
    if len(x) == 5:
        return view.Record(x[0], x[1], x[2], _STATES[x[3]], float(x[4]))
    return view.Record(x[0], x[1], x[2], _STATES[x[3]], float(x[4]), x[5], x[6], x[7])


def _stamp_out(s: view.Stamp) -> list[Any]:
    if s.v < 0:
        return [s.node_id, s.inc, int(s.state), s.tag]
    return [s.node_id, s.inc, int(s.state), s.tag, s.v]


def _stamp_in(x: list[Any]) -> view.Stamp:
    return view.Stamp(x[0], x[1], _STATES[x[2]], x[3], x[4] if len(x) == 5 else -1)


def from_wire(d: dict[str, Any]) -> Envelope:
    """The typed message and envelope of `d`, a dict `control.decode` has validated; RemoteProtocolError
    for what the schema cannot express (who_has with both or neither of cid and key) and for an envelope
    that does not match the kind's role (a request without "id", a reply without "re", a notice with
    either)."""
    kind = d.get("t")
    try:
        msg = _message(kind, d)
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # not validated after all: the peer's fault
        raise _remote(f"{str(kind)[:40]!r} message is malformed: {exc!r}") from None
    rid, re = d.get("id"), d.get("re")
    if isinstance(msg, Request):
        if type(rid) is not int or re is not None:
            raise _remote(f"a {kind} request needs an id and no re")
    elif isinstance(msg, Reply):
        if type(re) is not int or rid is not None:
            raise _remote(f"a {kind} reply needs a re and no id")
    elif rid is not None or re is not None:
        raise _remote(f"a {kind} notice takes neither id nor re")
    return Envelope(msg, rid, re)
