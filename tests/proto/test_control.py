"""control: every message kind round trips; every field is checked for type and bounds, both ways."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from p2pfast import wire
from p2pfast.errors import LocalProtocolError, RemoteProtocolError
from p2pfast.proto import control

CID = "b3:" + "0123456789abcdef" * 4
NODE = "ab" * 32

VALID: list[dict[str, Any]] = [
    {"t": "ping", "id": 0},
    {"t": "pong", "re": 2**53},
    {"t": "pex", "peers": []},
    {
        "t": "pex",
        "peers": [
            {"addr": "10.0.0.1:7400", "id": NODE, "seen": 1700000000.5},
            {"addr": "[::1]:1", "id": NODE, "seen": 0},
            {"addr": "node-7.example.org:65535", "id": NODE, "seen": 12},
        ],
    },
    {"t": "who_has", "id": 7, "cid": CID},
    {"t": "have", "re": 7, "cid": CID, "size": 123, "segments": 1},
    {"t": "have", "re": 7, "cid": CID, "size": None, "segments": None},
    {"t": "get", "id": 1, "cid": CID, "offset": 0, "length": -1, "sid": 5},
    {"t": "get", "id": 1, "cid": CID, "offset": 10, "length": 0, "sid": 2**32 - 1},
    {"t": "leaves", "id": 3, "cid": CID},
    {"t": "store", "id": 4, "sid": 2, "cid": CID, "size": 0, "key": "k"},
    {"t": "store", "id": 4, "sid": 2, "cid": CID, "size": 10, "key": "é" * 512},
    {"t": "delete", "id": 5, "key": "photos/2024/a.jpg", "cid": CID, "origin": NODE, "at": 1.5},
    {"t": "ok", "re": 4},
    {"t": "ok", "re": 4, "size": 99},
    {"t": "ok", "re": 4, "leaves": "00" * 64},
    {"t": "ok", "re": 4, "leaves": ""},
    {"t": "error", "re": 4, "code": 3, "reason": "not found"},
    {"t": "error", "re": 4, "code": 2**32 - 1, "reason": ""},
    {"t": "list_files", "id": 6, "limit": 1},
    {"t": "list_files", "id": 6, "limit": control.MAX_FILES_PAGE, "after": "photos/2024/a.jpg"},
    {"t": "file_list", "re": 6, "files": [{"key": "photos/a.jpg", "cid": CID, "size": 10}], "more": True},
    {"t": "file_list", "re": 6, "files": [], "more": False},
    {"t": "revoked", "records": [["ab" * 32, "cd" * 32, 1.7e9, "ef" * 32, "01" * 64]]},
    {"t": "revoked", "records": []},
    {"t": "net_key", "gen": 1, "key": "5a" * 32, "until": 1.7e9 + 60, "by": "cd" * 32, "at": 1.7e9},
    {"t": "probe", "id": 6, "node": "ab" * 32},
    {"t": "have", "re": 7, "cid": None, "size": None, "segments": None, "meta": [CID, 3, 1.5, [NODE]]},
    {"t": "key_meta", "id": 8, "entries": [["k", CID, 3, 1.5, [NODE, NODE]], ["é" * 512, CID, 0, 0, []]]},
    # records with a signing key and a vouch, stamps with the vouched bit (builds since vouches)
    {"t": "view_news", "records": [["ab" * 32, "127.0.0.1:7001", 9, 0, 0, "cd" * 32, "ef" * 32, "01" * 64]]},
    {"t": "view_pull", "id": 6, "buckets": [1], "stamps": [["ab" * 32, 3, 1, "0011aabb", 1]]},
    # the entries from here on are named from the end of the list by INVALID
    {"t": "held", "re": 6, "bits": "c0", "pinned": "40"},
    {"t": "view_sync", "id": 6, "root": "0f" * 16},
    {"t": "view_diff", "re": 6, "buckets": ""},
    {"t": "view_diff", "re": 6, "buckets": "ab" * 4096},
    {"t": "view_pull", "id": 6, "buckets": [0, 255], "stamps": [["ab" * 32, 3, 1, "0011aabb"]]},
    {"t": "view_push", "re": 6, "records": [["ab" * 32, "127.0.0.1:7001", 3, 0, 0]], "want": ["cd" * 32]},
    {"t": "view_news", "records": [["ab" * 32, "", 9, 2, 1.7e9]]},
    {"t": "store", "id": 4, "sid": 2, "cid": CID, "size": 1, "key": "k", "repair": True},
    {"t": "holds", "id": 6, "files": [["k", CID]]},
    {"t": "holds", "id": 6, "files": [["k", CID]] * control.MAX_HOLDS},
    {"t": "held", "re": 6, "bits": "80"},
    {"t": "held", "re": 6, "bits": "ff" * 25},
]


@pytest.mark.parametrize("msg", VALID, ids=lambda m: str(m["t"]))
def test_valid_messages_round_trip(msg: dict[str, Any]) -> None:
    raw = control.encode(msg)
    assert orjson.loads(raw) == msg
    assert control.decode(raw) == msg
    assert control.decode(memoryview(raw)) == msg
    assert control.decode(bytearray(raw)) == msg


# the key metadata's entries, found by what they hold (other branches add entries before them)
HAVE_META = next(i for i, v in enumerate(VALID) if "meta" in v)
VOUCHED = next(i for i, v in enumerate(VALID) if v["t"] == "view_news" and len(v["records"][0]) == 8)
STAMP_V = VOUCHED + 1
KEY_META = next(i for i, v in enumerate(VALID) if v["t"] == "key_meta")

# (base message index in VALID, path to change, new value); "DEL" removes the field
INVALID: list[tuple[int, tuple[Any, ...], Any]] = [
    (0, ("id",), -1),
    (0, ("id",), 2**53 + 1),
    (0, ("id",), True),
    (0, ("id",), 1.0),
    (0, ("id",), "1"),
    (0, ("id",), "DEL"),
    (0, ("extra",), 1),
    (-5, ("repair",), 1),  # a store's repair flag is a bool
    (-4, ("files",), []),  # holds: 1..MAX_HOLDS [key, cid] pairs
    (-4, ("files",), [["k", "b3:" + "0" * 64]] * (control.MAX_HOLDS + 1)),
    (-4, ("files", 0, 1), "b3:xyz"),
    (-4, ("files", 0, 0), ""),
    (-4, ("files", 0), ["k"]),
    (-4, ("files", 0), "k"),
    (-2, ("bits",), ""),  # held: 1..25 bytes of lowercase hex
    (-2, ("bits",), "8"),
    (-2, ("bits",), "FF"),
    (-2, ("bits",), "00" * 26),
    (-11, ("root",), "0F" * 16),  # view_sync: 32 lowercase hex digits
    (-9, ("buckets",), "ab" * 4095),  # view_diff: empty or exactly 256 hashes
    (-8, ("buckets",), []),  # view_pull: 1..256 bucket numbers
    (-8, ("buckets", 0), 256),
    (-8, ("stamps", 0, 3), "xyz"),
    (-8, ("stamps", 0), ["ab" * 32, 3, 1]),
    (-7, ("records", 0, 3), 4),  # a state is 0..3
    (-7, ("records", 0, 1), "nohost"),
    (-7, ("records",), [["ab" * 32, "", 1, 0, 0]] * (control.MAX_VIEW_RECORDS + 1)),
    (-7, ("want",), ["cd" * 32] * (control.MAX_VIEW_WANT + 1)),
    (-6, ("records", 0, 0), "AB" * 32),
    (VOUCHED, ("records", 0, 5), "CD" * 32),  # a signing key: empty or 64 lowercase hex
    (VOUCHED, ("records", 0, 6), "ef" * 31),
    (VOUCHED, ("records", 0, 7), ""),  # a voucher without its signature
    (VOUCHED, ("records", 0, 7), "01" * 63),
    (VOUCHED, ("records", 0), ["ab" * 32, "", 1, 0, 0, ""]),  # five fields or eight
    (STAMP_V, ("stamps", 0, 4), 2),  # vouched: 0 or 1
    (STAMP_V, ("stamps", 0, 4), True),
    (HAVE_META, ("meta",), [CID, 3, 1.5]),  # have's meta: [cid, size, at, holders]
    (HAVE_META, ("meta", 0), "b3:x"),
    (HAVE_META, ("meta", 2), -1),
    (HAVE_META, ("meta", 3), [NODE] * (control.MAX_META_HOLDERS + 1)),
    (HAVE_META, ("meta", 3, 0), "AB" * 32),
    (KEY_META, ("entries",), []),  # key_meta: 1..MAX_KEY_META entries
    (KEY_META, ("entries",), [["k", CID, 1, 1, []]] * (control.MAX_KEY_META + 1)),
    (KEY_META, ("entries", 0, 0), ""),
    (KEY_META, ("entries", 0, 1), "b3:x"),
    (KEY_META, ("entries", 0, 2), -1),
    (KEY_META, ("entries", 0), ["k", CID, 1, 1]),
    (KEY_META, ("entries", 0, 4), "ab" * 32),
    (0, ("t",), "pingg"),
    (0, ("t",), 1),
    (0, ("t",), "DEL"),
    (3, ("peers",), [{"addr": "h:1", "id": NODE, "seen": 1}] * (control.MAX_PEX_PEERS + 1)),
    (3, ("peers", 0, "addr"), ":7400"),
    (3, ("peers", 0, "addr"), "host:0"),
    (3, ("peers", 0, "addr"), "host:65536"),
    (3, ("peers", 0, "addr"), "host"),
    (3, ("peers", 0, "addr"), "a b:80"),
    (3, ("peers", 0, "addr"), "a" * 250 + ".com:80"),
    (3, ("peers", 0, "id"), "AB" * 32),
    (3, ("peers", 0, "id"), "ab" * 31),
    (3, ("peers", 0, "seen"), -1),
    (3, ("peers", 0, "seen"), "now"),
    (3, ("peers", 0, "port"), 1),
    (3, ("peers", 0), "10.0.0.1:7400"),
    (3, ("peers",), {"addr": "h:1"}),
    (4, ("cid",), "b3:" + "0" * 63),
    (4, ("cid",), "b3:" + "A" * 64),
    (4, ("cid",), "sha256:" + "0" * 64),
    (4, ("cid",), "b3:" + "0" * 64 + "\n"),
    (5, ("size",), -1),
    (5, ("segments",), "DEL"),
    (7, ("offset",), -1),
    (7, ("length",), -2),
    (7, ("sid",), 0),
    (7, ("sid",), 2**32),
    (10, ("key",), ""),
    (10, ("key",), "x" * (control.MAX_KEY_BYTES + 1)),
    (10, ("key",), "é" * 513),  # 1026 UTF-8 bytes
    (10, ("key",), "\ud800"),  # a lone surrogate is not UTF-8
    (10, ("key",), 5),
    (12, ("origin",), "me"),
    (12, ("at",), None),
    (15, ("leaves",), "0" * 63),
    (15, ("leaves",), "zz" * 32),
    (17, ("reason",), "r" * (control.MAX_REASON_BYTES + 1)),
    (17, ("code",), -1),
    (17, ("code",), 2**32),
    (19, ("limit",), 0),
    (19, ("limit",), control.MAX_FILES_PAGE + 1),
    (20, ("after",), ""),
    (20, ("after",), "x" * (control.MAX_KEY_BYTES + 1)),
    (20, ("after",), None),
    (21, ("more",), "DEL"),
    (21, ("more",), 1),
    (21, ("files",), [{"key": "k", "cid": CID, "size": 1}] * (control.MAX_FILES_PAGE + 1)),
    (21, ("files", 0, "key"), ""),
    (21, ("files", 0, "cid"), "b3:" + "0" * 63),
    (21, ("files", 0, "size"), -1),
    (21, ("files", 0, "created"), 1.0),
    (21, ("files", 0), "photos/a.jpg"),
]


def _mutate(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    msg = copy.deepcopy(base)
    target: Any = msg
    for key in path[:-1]:
        target = target[key]
    if value == "DEL":
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return msg


@pytest.mark.parametrize(("index", "path", "value"), INVALID, ids=lambda v: str(v)[:30])
def test_invalid_messages_are_rejected_both_ways(index: int, path: tuple[Any, ...], value: Any) -> None:
    msg = _mutate(VALID[index], path, value)
    with pytest.raises(LocalProtocolError):
        control.encode(msg)
    try:
        raw = orjson.dumps(msg)
    except TypeError:  # the lone surrogate: orjson will not write it, so send it escaped
        raw = orjson.dumps(_mutate(VALID[index], path, "SURROGATE")).replace(b"SURROGATE", b"\\ud800")
    with pytest.raises(RemoteProtocolError) as info:
        control.decode(raw)
    assert info.value.code == wire.ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b"1",
        b'"t"',
        b'{"t": "ping", "id": 1',
        b"\xff\xfe",
        b'{"t":"ping","id":1e400}',
    ],
)
def test_garbage_is_a_remote_protocol_error(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        control.decode(raw)
    assert info.value.code == wire.ErrorCode.PROTOCOL


def test_size_is_checked_before_parsing() -> None:
    raw = b"[" * (wire.MAX_CONTROL_SIZE + 1)  # would be a nesting error if orjson saw it
    with pytest.raises(RemoteProtocolError, match="exceeds max"):
        control.decode(raw)
    with pytest.raises(RemoteProtocolError, match="exceeds max 100"):
        control.decode(control.encode({"t": "error", "re": 1, "code": 1, "reason": "x" * 200}), max_size=100)


def test_encode_caps_the_size() -> None:
    msg = {"t": "ok", "re": 1, "leaves": "00" * 32 * 300}  # 19 KiB of hex
    with pytest.raises(LocalProtocolError, match="exceeds max"):
        control.encode(msg)
    assert control.decode(control.encode(msg, max_size=32 * 1024), max_size=32 * 1024) == msg


def test_encode_rejects_non_dicts_and_odd_keys() -> None:
    bads: list[Any] = [None, [], "ping", {"t": "ping", "id": 1, 2: 3}]
    for bad in bads:
        with pytest.raises(LocalProtocolError):
            control.encode(bad)


@pytest.mark.parametrize("listen", ["", ":7400", "127.0.0.1:7400", "[2001:db8::1]:443", "example.org:1"])
def test_hello_round_trip(listen: str) -> None:
    hello = {"v": 1, "listen": listen, "agent": "p2pfast/0.1.0"}
    assert control.decode_hello(control.encode_hello(hello)) == hello


@pytest.mark.parametrize(
    "hello",
    [
        {"v": 2, "listen": "", "agent": "a"},
        {"v": 1, "listen": "host", "agent": "a"},
        {"v": 1, "listen": ":0", "agent": "a"},
        {"v": 1, "listen": "", "agent": ""},
        {"v": 1, "listen": "", "agent": "a" * (control.MAX_AGENT + 1)},
        {"v": 1, "listen": ""},
        {"v": 1, "listen": "", "agent": "a", "x": 1},
        {"v": True, "listen": "", "agent": "a"},
    ],
)
def test_bad_hellos(hello: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        control.encode_hello(hello)
    with pytest.raises(RemoteProtocolError):
        control.decode_hello(orjson.dumps(hello))


def test_every_kind_has_a_valid_sample() -> None:
    assert {m["t"] for m in VALID} == set(control.SCHEMAS)


REVOKED = {"t": "revoked", "records": [["ab" * 32, "cd" * 32, 1.7e9, "ef" * 32, "01" * 64]]}
NET_KEY = {"t": "net_key", "gen": 1, "key": "5a" * 32, "until": 1.7e9 + 60, "by": "cd" * 32, "at": 1.7e9}


@pytest.mark.parametrize(
    ("base", "path", "value"),
    [
        (REVOKED, ("records",), [REVOKED["records"][0]] * (control.MAX_REVOCATIONS + 1)),
        (REVOKED, ("records", 0), REVOKED["records"][0][:4]),
        (REVOKED, ("records", 0, 0), "AB" * 32),
        (REVOKED, ("records", 0, 1), "cd" * 31),
        (REVOKED, ("records", 0, 2), -1),
        (REVOKED, ("records", 0, 3), "ef" * 33),
        (REVOKED, ("records", 0, 4), "01" * 63),
        (NET_KEY, ("gen",), 0),
        (NET_KEY, ("key",), "5a" * 31),
        (NET_KEY, ("until",), "soon"),
        (NET_KEY, ("by",), "DEL"),
        (NET_KEY, ("extra",), 1),
    ],
    ids=lambda v: str(v)[:30],
)
def test_revocation_messages_are_checked(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        control.decode(orjson.dumps(_mutate(base, path, value)))


def test_a_string_check_that_passed_a_value_still_refuses_others() -> None:
    # the checks remember the strings they passed (control.MEMO_SIZE): what they refuse stays refused,
    # and past the memory's size they go on checking
    good = "ab" * 32
    for i in range(control.MEMO_SIZE + 10):
        control.decode(orjson.dumps({"t": "probe", "id": i, "node": f"{i:064x}"}))
    for _ in range(2):
        control.decode(orjson.dumps({"t": "probe", "id": 1, "node": good}))
        for bad in (good.upper(), good[:-1], good + "a", "g" * 64, f" {good[1:]}"):
            with pytest.raises(RemoteProtocolError, match="64 lowercase hex"):
                control.decode(orjson.dumps({"t": "probe", "id": 1, "node": bad}))
    for addr in ("127.0.0.1:3000", "127.0.0.1:3000"):  # the second from memory
        control.decode(orjson.dumps({"t": "view_news", "records": [[good, addr, 1, 0, 0]]}))
    with pytest.raises(RemoteProtocolError, match="host:port"):
        control.decode(orjson.dumps({"t": "view_news", "records": [[good, "127.0.0.1:0", 1, 0, 0]]}))
