"""messages: every kind round trips through control's codec; the classes cannot drift from SCHEMAS; the
rules the schema cannot express (who_has's one of two, the envelope of each role, which reply answers
which request, the store's announced stream) hold both ways."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast import wire
from p2pfast.errors import LocalProtocolError, RemoteProtocolError
from p2pfast.proto import control, revocation, view
from p2pfast.proto import messages as m

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

CID = "b3:" + "0123456789abcdef" * 4
NODE = "ab" * 32
ENVELOPE = {"t", "id", "re"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies over valid field values (the bounds of control.SCHEMAS) ----------------------------------
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
cids = hex64.map("b3:".__add__)
# no surrogates (not UTF-8); 256 characters of at most 4 bytes each stay within MAX_KEY_BYTES
texts = st.characters(codec="utf-8")
keys = st.text(texts, min_size=1, max_size=control.MAX_KEY_BYTES // 4)
reasons = st.text(texts, max_size=control.MAX_REASON_BYTES // 4)
ids = st.integers(0, control.MAX_ID)
sizes = st.integers(0, control.MAX_ID)
sids = st.integers(1, 2**32 - 1)
times = st.floats(0, control.MAX_ID, allow_nan=False, allow_infinity=False) | st.integers(0, 10**10)
ports = st.integers(1, 65535).map(str)
hosts = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True) | st.sampled_from(["[::1]", "[fe80::1:2]"])
addrs = st.builds(lambda h, p: f"{h}:{p}", hosts, ports)
leaves = st.lists(st.binary(min_size=32, max_size=32), max_size=8).map(lambda ds: b"".join(ds).hex())
peers = st.builds(m.PexPeer, addr=addrs, id=hex64, seen=times)
file_entries = st.builds(m.FileEntry, key=keys, cid=cids, size=sizes)

view_records = st.builds(  # five fields (sk and voucher empty) or eight (proto/view.py)
    view.Record,
    node_id=hex64,
    addr=addrs | st.just(""),
    inc=st.integers(0, control.MAX_ID),
    state=st.sampled_from(list(view.State)),
    at=st.floats(0, 2e9, allow_nan=False),
    sk=hex64 | st.just(""),
    voucher=hex64 | st.just(""),
).map(lambda r: dataclasses.replace(r, vsig="ef" * 64) if r.voucher else r)
metas = st.builds(
    m.Meta,
    cid=cids,
    size=sizes,
    at=times,
    holders=st.lists(hex64, max_size=control.MAX_META_HOLDERS).map(tuple),
)
view_stamps = view_records.map(lambda r: r.stamp) | view_records.map(lambda r: r.stamp.legacy())
view_page = st.lists(view_records, max_size=16).map(tuple)

STRATEGIES: dict[type[m.Message], st.SearchStrategy[Any]] = {
    m.Ping: st.just(m.Ping()),
    m.Pong: st.just(m.Pong()),
    m.Pex: st.builds(m.Pex, peers=st.lists(peers, max_size=16).map(tuple)),
    m.WhoHas: st.builds(m.WhoHas, cid=cids) | st.builds(m.WhoHas, key=keys),
    m.Have: st.builds(m.Have, cid=cids, size=sizes, segments=sizes)
    | st.just(m.Have(None, None, None))
    | st.builds(m.Have, cid=st.none(), size=st.none(), segments=st.none(), meta=metas),
    m.Get: st.builds(m.Get, cid=cids, offset=sizes, length=st.integers(-1, control.MAX_ID), sid=sids),
    m.Leaves: st.builds(m.Leaves, cid=cids, sid=st.none() | sids),
    m.Store: st.builds(m.Store, sid=sids, cid=cids, size=sizes, key=keys, repair=st.booleans()),
    m.Holds: st.builds(m.Holds, files=st.lists(st.tuples(keys, cids), min_size=1, max_size=40).map(tuple)),
    m.Held: st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=control.MAX_HOLDS).map(
        lambda bits: m.Held.of([h for h, _ in bits], [p for _, p in bits])
    ),
    m.Delete: st.builds(m.Delete, key=keys, cid=cids, origin=hex64, at=times),
    m.Ok: st.builds(m.Ok, size=st.none() | sizes, leaves=st.none() | leaves),
    m.Error: st.builds(m.Error, code=st.integers(0, 2**32 - 1), reason=reasons),
    m.ListFiles: st.builds(m.ListFiles, limit=st.integers(1, control.MAX_FILES_PAGE), after=st.none() | keys),
    # up to 8 entries of keys of at most 256 characters stay within the 16 KiB cap
    m.FileList: st.builds(
        m.FileList, files=st.lists(file_entries, max_size=8).map(tuple), more=st.booleans()
    ),
    m.ViewSync: st.builds(m.ViewSync, root=st.binary(min_size=16, max_size=16).map(bytes.hex)),
    m.ViewDiff: st.just(m.ViewDiff("")) | st.just(m.ViewDiff("ab" * 16 * 256)),
    m.ViewPull: st.builds(
        m.ViewPull,
        buckets=st.lists(st.integers(0, 255), min_size=1, max_size=256).map(tuple),
        stamps=st.lists(view_stamps, max_size=16).map(tuple),
    ),
    m.ViewPush: st.builds(m.ViewPush, records=view_page, want=st.lists(hex64, max_size=8).map(tuple)),
    m.ViewNews: st.builds(m.ViewNews, records=view_page),
    m.Revoked: st.lists(
        st.builds(
            revocation.Revocation,
            node=hex64,
            by=hex64,
            at=times,
            signer=hex64,
            sig=st.builds(str.__add__, hex64, hex64),
        ),
        max_size=control.MAX_REVOCATIONS,
    ).map(lambda rs: m.Revoked(tuple(rs))),
    m.NetKey: st.builds(
        revocation.Rotation,
        gen=st.integers(1, control.MAX_ID),
        key=st.binary(min_size=32, max_size=32),
        until=times,
        by=hex64,
        at=times,
    ).map(m.NetKey.of),
    m.Probe: st.builds(m.Probe, node=hex64),
    # up to 8 entries of keys of at most 256 characters and 16 holders stay within the 16 KiB cap
    m.KeyMeta: st.builds(
        m.KeyMeta, entries=st.lists(st.tuples(keys, metas), min_size=1, max_size=8).map(tuple)
    ),
}
messages = st.one_of(list(STRATEGIES.values()))

# one fixed example of each kind, for the tests that need no search
EXAMPLES: list[m.Message] = [
    m.Ping(),
    m.Pong(),
    m.Pex((m.PexPeer("10.0.0.1:7400", NODE, 1700000000.5),)),
    m.WhoHas(cid=CID),
    m.Have(CID, 10, 1),
    m.Get(CID, 0, -1, 5),
    m.Leaves(CID, 7),
    m.Store(3, CID, 10, "photos/a.jpg"),
    m.Delete("photos/a.jpg", CID, NODE, 1.5),
    m.Ok(size=10),
    m.Error(int(wire.ErrorCode.REFUSED), "no"),
    m.Store(3, CID, 10, "photos/a.jpg", repair=True),
    m.Holds((("photos/a.jpg", CID),)),
    m.Held.of([True, False, True]),
    m.Held.of([True, False, True], [False, False, True]),
    m.ListFiles(100, "photos/a.jpg"),
    m.FileList((m.FileEntry("photos/a.jpg", CID, 10),), more=False),
    m.ViewSync("00" * 16),
    m.ViewDiff(""),
    m.ViewPull((3, 200), (view.Stamp(NODE, 7, view.State.SUSPECT, "0a1b2c3d"),)),
    m.ViewPush((view.Record(NODE, "127.0.0.1:7001", 7, view.State.ALIVE),), (NODE,)),
    m.ViewNews((view.Record(NODE, "", 9, view.State.DEAD, 1.7e9),)),
    m.ViewNews((view.Record(NODE, "127.0.0.1:7001", 9, view.State.ALIVE, 0, NODE, "cd" * 32, "ef" * 64),)),
    m.ViewPull((3,), (view.Stamp(NODE, 7, view.State.ALIVE, "0a1b2c3d", 1),)),
    m.Revoked((revocation.Revocation(NODE, NODE, 1.7e9, NODE, NODE + NODE),)),
    m.NetKey.of(revocation.Rotation(2, bytes(range(32)), 1.7e9 + 60, NODE, 1.7e9)),
    m.Probe(NODE),
    m.Have(None, None, None, m.Meta(CID, 10, 1.7e9, (NODE,))),
    m.KeyMeta((("photos/a.jpg", m.Meta(CID, 10, 1.7e9, (NODE, "cd" * 32))),)),
]


def envelope_of(msg: m.Message, n: int = 7) -> dict[str, int]:
    """The keyword arguments of to_wire that the message's role needs."""
    if m.is_request(msg):
        return {"id": n}
    if m.is_reply(msg):
        return {"re": n}
    return {}


def through_the_wire(d: dict[str, Any]) -> m.Envelope:
    return m.from_wire(control.decode(control.encode(d)))


# -- the table and the classes cannot drift --------------------------------------------------------------
def test_every_schema_kind_has_a_class_and_every_class_a_kind() -> None:
    assert set(m.BY_KIND) == set(control.SCHEMAS)
    assert {cls: kind for kind, cls in m.BY_KIND.items()} == m.KIND
    assert set(m.KIND) == set(get_args(m.Message)) == set(STRATEGIES)
    assert {type(msg) for msg in EXAMPLES} == set(m.KIND)


@pytest.mark.parametrize("kind", sorted(control.SCHEMAS))
def test_class_fields_are_the_schema_fields_minus_the_envelope(kind: str) -> None:
    required, optional = control.SCHEMAS[kind]
    fields = [f.name for f in dataclasses.fields(m.BY_KIND[kind])]
    assert set(fields) == (set(required) | set(optional)) - ENVELOPE
    assert len(fields) == len(set(fields))


@pytest.mark.parametrize("kind", sorted(control.SCHEMAS))
def test_role_matches_the_envelope_fields_the_schema_requires(kind: str) -> None:
    required, optional = control.SCHEMAS[kind]
    cls = m.BY_KIND[kind]
    assert ("id" in required) is (cls in get_args(m.Request))
    assert ("re" in required) is (cls in get_args(m.Reply))
    assert (not ENVELOPE & (set(required) | set(optional)) - {"t"}) is (cls in get_args(m.Notice))


def test_roles_partition_the_kinds() -> None:
    requests, replies, notices = set(get_args(m.Request)), set(get_args(m.Reply)), set(get_args(m.Notice))
    assert requests | replies | notices == set(m.KIND)
    assert not requests & replies and not notices & (requests | replies)
    for msg in EXAMPLES:
        assert [m.is_request(msg), m.is_reply(msg), m.is_notice(msg)].count(True) == 1


def test_pex_peer_fields_are_the_schema_peer_fields() -> None:
    # control keeps the peer schema private; its validator shows it: the peer dict to_wire writes passes
    # (no field too many) and fails without any one of its fields (none too few).
    d = m.to_wire(m.Pex((m.PexPeer("10.0.0.1:7400", NODE, 1.0),)))
    control.encode(d)
    peer = d["peers"][0]
    assert set(peer) == {f.name for f in dataclasses.fields(m.PexPeer)}
    for name in peer:
        short = {**d, "peers": [{k: v for k, v in peer.items() if k != name}]}
        with pytest.raises(LocalProtocolError, match="lacks"):
            control.encode(short)


def test_file_entry_fields_are_the_schema_file_fields() -> None:
    # as for pex's peers: the entry dict to_wire writes passes, and fails without any one of its fields
    d = m.to_wire(m.FileList((m.FileEntry("k", CID, 1),), more=True), re=1)
    control.encode(d)
    entry = d["files"][0]
    assert set(entry) == {f.name for f in dataclasses.fields(m.FileEntry)}
    for name in entry:
        short = {**d, "files": [{k: v for k, v in entry.items() if k != name}]}
        with pytest.raises(LocalProtocolError, match="lacks"):
            control.encode(short)


@pytest.mark.parametrize(
    "d",
    [
        {"t": "list_files", "id": 1, "limit": 0},
        {"t": "list_files", "id": 1, "limit": control.MAX_FILES_PAGE + 1},
        {"t": "list_files", "id": 1, "limit": 5, "after": ""},
        {"t": "file_list", "re": 1, "files": [], "more": 1},
        {"t": "file_list", "re": 1, "files": [{"key": "k", "cid": CID, "size": 1}] * 257, "more": False},
        {"t": "file_list", "re": 1, "files": [{"key": "k", "cid": "b3:x", "size": 1}], "more": False},
    ],
    ids=["limit 0", "limit over", "empty cursor", "more not bool", "too many files", "bad cid"],
)
def test_the_listing_messages_keep_their_bounds(d: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        control.encode(d)


def test_messages_are_frozen_and_slotted() -> None:
    for msg in EXAMPLES:
        assert not hasattr(msg, "__dict__")
        for f in dataclasses.fields(msg):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(msg, f.name, None)
        assert hash(msg) == hash(dataclasses.replace(msg))


# -- round trips -----------------------------------------------------------------------------------------
@SETTINGS
@given(messages, ids)
def test_every_kind_round_trips_through_control(msg: m.Message, n: int) -> None:
    env = envelope_of(msg, n)
    got = through_the_wire(m.to_wire(msg, **env))
    assert got == m.Envelope(msg, **env)
    assert type(got.msg) is type(msg)


@SETTINGS
@given(st.builds(m.Delete, key=keys, cid=cids, origin=hex64, at=st.integers(0, 10**10)), ids)
def test_times_come_back_as_floats(msg: m.Delete, n: int) -> None:
    # a JSON writer may drop the ".0" of a time; the class says float, so from_wire makes it one
    got = through_the_wire(m.to_wire(msg, id=n)).msg
    assert isinstance(got, m.Delete) and type(got.at) is float
    pex = through_the_wire({"t": "pex", "peers": [{"addr": "h:1", "id": NODE, "seen": 3}]}).msg
    assert isinstance(pex, m.Pex) and type(pex.peers[0].seen) is float
    meta = through_the_wire({"t": "key_meta", "id": 1, "entries": [["k", CID, 1, 3, []]]}).msg
    assert isinstance(meta, m.KeyMeta) and type(meta.entries[0][1].at) is float


@pytest.mark.parametrize(
    ("msg", "env", "wire_dict"),
    [
        (m.WhoHas(key="k"), {"id": 1}, {"t": "who_has", "id": 1, "key": "k"}),
        (m.WhoHas(cid=CID), {"id": 1}, {"t": "who_has", "id": 1, "cid": CID}),
        (m.Leaves(CID), {"id": 2}, {"t": "leaves", "id": 2, "cid": CID}),
        (m.Leaves(CID, 5), {"id": 2}, {"t": "leaves", "id": 2, "cid": CID, "sid": 5}),
        (m.Ok(), {"re": 3}, {"t": "ok", "re": 3}),
        (m.Ok(size=4), {"re": 3}, {"t": "ok", "re": 3, "size": 4}),
        (m.Ok(size=0, leaves=""), {"re": 3}, {"t": "ok", "re": 3, "size": 0, "leaves": ""}),
        (
            m.Have(None, None, None),
            {"re": 4},
            {"t": "have", "re": 4, "cid": None, "size": None, "segments": None},
        ),
        (m.Pex(()), {}, {"t": "pex", "peers": []}),
        (m.Ping(), {"id": 0}, {"t": "ping", "id": 0}),
        (m.Error(9, "x"), {"re": 0}, {"t": "error", "re": 0, "code": 9, "reason": "x"}),
        (m.ListFiles(5), {"id": 1}, {"t": "list_files", "id": 1, "limit": 5}),
        (m.ListFiles(5, "k"), {"id": 1}, {"t": "list_files", "id": 1, "limit": 5, "after": "k"}),
        (m.FileList((), False), {"re": 2}, {"t": "file_list", "re": 2, "files": [], "more": False}),
        (
            m.Have(None, None, None, m.Meta(CID, 4, 1.5, (NODE,))),
            {"re": 4},
            {
                "t": "have",
                "re": 4,
                "cid": None,
                "size": None,
                "segments": None,
                "meta": [CID, 4, 1.5, [NODE]],
            },
        ),
        (
            m.KeyMeta((("k", m.Meta(CID, 4, 1.5)),)),
            {"id": 5},
            {"t": "key_meta", "id": 5, "entries": [["k", CID, 4, 1.5, []]]},
        ),
    ],
    ids=lambda v: type(v).__name__ if dataclasses.is_dataclass(v) else None,
)
def test_to_wire_sends_what_the_callers_sent(
    msg: m.Message, env: dict[str, int], wire_dict: dict[str, Any]
) -> None:
    # unset optional fields the schema does not allow as null are left out; have's nulls are sent
    d = m.to_wire(msg, **env)
    assert d == wire_dict
    control.encode(d)


# -- envelope and cross-field errors ---------------------------------------------------------------------
@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda msg: m.KIND[type(msg)])
def test_to_wire_refuses_an_envelope_that_does_not_fit_the_role(msg: m.Message) -> None:
    right = envelope_of(msg, 1)
    wrong: list[dict[str, int]] = [{}, {"id": 1}, {"re": 1}, {"id": 1, "re": 1}]
    wrong.remove(right)
    for env in wrong:
        with pytest.raises(LocalProtocolError) as info:
            m.to_wire(msg, **env)
        assert info.value.code == wire.ErrorCode.PROTOCOL


@pytest.mark.parametrize("msg", [m.WhoHas(), m.WhoHas(cid=CID, key="k")], ids=["neither", "both"])
def test_to_wire_refuses_who_has_without_exactly_one_of_cid_and_key(msg: m.WhoHas) -> None:
    with pytest.raises(LocalProtocolError, match="exactly one of cid and key") as info:
        m.to_wire(msg, id=1)
    assert info.value.code == wire.ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "d",
    [{"t": "who_has", "id": 1}, {"t": "who_has", "id": 1, "cid": CID, "key": "k"}],
    ids=["neither", "both"],
)
def test_from_wire_refuses_who_has_without_exactly_one_of_cid_and_key(d: dict[str, Any]) -> None:
    valid = control.decode(control.encode(d))  # the schema lets both through: the rule is messages'
    with pytest.raises(RemoteProtocolError, match="exactly one of cid and key") as info:
        m.from_wire(valid)
    assert info.value.code == wire.ErrorCode.PROTOCOL


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda msg: m.KIND[type(msg)])
def test_from_wire_refuses_an_envelope_that_does_not_fit_the_role(msg: m.Message) -> None:
    bare = {k: v for k, v in m.to_wire(msg, **envelope_of(msg)).items() if k not in ("id", "re")}
    right = envelope_of(msg, 1)
    for env in ({}, {"id": 1}, {"re": 1}, {"id": 1, "re": 1}):
        if env == right:
            assert m.from_wire({**bare, **env}) == m.Envelope(msg, **env)
            continue
        with pytest.raises(RemoteProtocolError) as info:
            m.from_wire({**bare, **env})
        assert info.value.code == wire.ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "d",
    [
        {"t": "nope", "id": 1},
        {"id": 1},
        {"t": "get", "id": 1, "cid": CID},
        {"t": "pex", "peers": [{"addr": "h:1"}]},
    ],
    ids=["unknown kind", "no kind", "missing field", "bad peer"],
)
def test_from_wire_blames_the_peer_for_a_dict_the_schema_would_refuse(d: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.from_wire(d)
    assert info.value.code == wire.ErrorCode.PROTOCOL


# -- which reply answers which request -------------------------------------------------------------------
def test_replies_cover_every_request_and_error_answers_any() -> None:
    assert set(m.REPLIES) == set(get_args(m.Request))
    for answers in m.REPLIES.values():
        assert m.Error in answers
        assert set(answers) <= set(get_args(m.Reply))


@pytest.mark.parametrize(
    "request_", [msg for msg in EXAMPLES if m.is_request(msg)], ids=lambda msg: m.KIND[type(msg)]
)
def test_check_reply_passes_the_right_kinds_and_blames_the_peer_for_the_rest(request_: m.Request) -> None:
    special: dict[type[m.Request], set[type[m.Reply]]] = {
        m.Ping: {m.Pong},
        m.WhoHas: {m.Have},
        m.Holds: {m.Held},
        m.ListFiles: {m.FileList},
        m.ViewSync: {m.ViewDiff},
        m.ViewPull: {m.ViewPush},
    }
    expected = special.get(type(request_), {m.Ok}) | {m.Error}
    for reply in (msg for msg in EXAMPLES if m.is_reply(msg)):
        if type(reply) in expected:
            assert m.check_reply(request_, reply) is reply
        else:
            with pytest.raises(RemoteProtocolError, match="does not answer") as info:
                m.check_reply(request_, reply)
            assert info.value.code == wire.ErrorCode.PROTOCOL


# -- streams a request names -----------------------------------------------------------------------------
def test_only_a_store_announces_a_stream_the_peer_sends_on() -> None:
    assert m.inbound_stream(m.Store(9, CID, 1, "k")) == 9
    for msg in EXAMPLES:
        if not isinstance(msg, m.Store):
            assert m.inbound_stream(msg) is None


def test_get_and_leaves_name_the_stream_we_send_on() -> None:
    assert m.outbound_stream(m.Get(CID, 0, -1, 5)) == 5
    assert m.outbound_stream(m.Leaves(CID, 7)) == 7
    assert m.outbound_stream(m.Leaves(CID)) is None
    for msg in EXAMPLES:
        if not isinstance(msg, m.Get | m.Leaves):
            assert m.outbound_stream(msg) is None


# -- Error.of --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reason",
    ["é" * 500, "€" * 300, "x" * 511 + "é", "bad name \udcff.txt", ""],
    ids=["2-byte", "3-byte", "edge", "surrogate", "empty"],
)
def test_error_of_always_fits_the_wire(reason: str) -> None:
    # str(exc)[:500] is up to 2000 UTF-8 bytes, and a file name may hold a lone surrogate: both would make
    # an error reply fail to encode
    err = m.Error.of(wire.ErrorCode.REFUSED, reason)
    assert type(err.code) is int
    assert len(err.reason.encode()) <= control.MAX_REASON_BYTES
    assert reason.startswith(err.reason) or "\\udcff" in err.reason
    assert through_the_wire(m.to_wire(err, re=1)).msg == err


def test_to_wire_refuses_what_is_not_one_of_the_classes() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Louder(m.Ping):
        pass

    for thing in (Louder(), {"t": "ping"}):
        with pytest.raises(TypeError, match="not a control message"):
            m.to_wire(thing, id=1)  # type: ignore[arg-type]


def test_held_carries_which_files_the_peer_pinned_and_a_peer_that_sends_none_pins_nothing() -> None:
    held = m.Held.of([True, True, False, True], [False, True, False, False])
    back = through_the_wire(m.to_wire(held, re=3)).msg
    assert isinstance(back, m.Held)
    assert back.held(4) == [True, True, False, True]
    assert back.pins(4) == [False, True, False, False]
    older = through_the_wire({"t": "held", "re": 3, "bits": "d0"}).msg  # a peer of an earlier version
    assert isinstance(older, m.Held) and older.pins(4) == [False] * 4 and older.held(4)[3]
    assert "pinned" not in m.to_wire(m.Held.of([True], [False]), re=1)  # nothing pinned: not sent
