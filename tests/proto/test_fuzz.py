"""Fuzz the receive paths (h11 `fuzz/`): whatever the peer sends, only ProtocolError comes out.

Bounded (max_examples ~200, no deadline) so it runs with the suite, over whichever frames kernel the
facade picked (P2PFAST_PURE=1 for the pure twin).
"""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import orjson
import pytest
from connection_pair import ConnectionPair, Data, drain, feed_buffered
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast import frames, wire
from p2pfast.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pfast.proto import control
from p2pfast.proto.connection import MAX_PLAINTEXT, ConnState, Limits
from p2pfast.wire import ErrorCode, FrameType

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = sorted({name for req, opt in control.SCHEMAS.values() for name in (*req, *opt)} | {"peers"})
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner)
    ),
    max_leaves=20,
)
json_messages = st.fixed_dictionaries(
    {"t": st.sampled_from([*control.SCHEMAS, "nope", ""])},
    optional={
        name: json_values | st.just("b3:" + "a" * 64) | st.just("ab" * 32) for name in FIELDS if name != "t"
    },
)


def _only_remote(raw: bytes) -> None:
    try:
        msg = control.decode(raw)
    except RemoteProtocolError as exc:
        assert exc.code == ErrorCode.PROTOCOL
        return
    assert control.decode(control.encode(msg)) == msg  # what decodes also encodes


@FUZZ
@given(st.binary(max_size=400))
def test_control_decode_arbitrary_bytes(raw: bytes) -> None:
    _only_remote(raw)


@FUZZ
@given(json_messages)
def test_control_decode_jsonish_messages(msg: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(msg)
    except TypeError:  # NaN is fine for orjson (null), huge ints are not
        return
    _only_remote(raw)
    with contextlib.suppress(LocalProtocolError):  # encode checks the same schema, locally
        control.encode(msg)


def _feed_all(conn: Any, data: bytes, cuts: list[int], buffered: bool, now: float) -> None:
    """data in pieces cut at `cuts`, then EOF, draining events after each piece."""
    pos = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        piece = data[pos:cut]
        pos = max(pos, cut)
        if buffered:
            feed_buffered(conn, piece)
        elif piece:
            conn.receive_data(piece)
        drain(conn, now)
    conn.receive_data(b"")
    drain(conn, now)


frame_headers = st.builds(
    lambda t, f, s, n: frames.pack_header(t, f, s, n),
    st.integers(wire.FRAME_TYPE_MIN, wire.FRAME_TYPE_MAX),
    st.integers(0, wire.KNOWN_FLAGS),
    st.integers(0, 8),
    st.integers(0, 80),
)
# mostly well-formed headers with random payloads, sometimes raw junk
streams_of_frames = st.lists(
    st.tuples(frame_headers, st.binary(max_size=80)).map(lambda hp: hp[0] + hp[1]) | st.binary(max_size=40),
    max_size=8,
).map(b"".join)


@FUZZ
@given(streams_of_frames, st.lists(st.integers(0, 2000), max_size=6), st.booleans())
def test_responder_fed_arbitrary_bytes(data: bytes, cuts: list[int], buffered: bool) -> None:
    pair = ConnectionPair()
    try:
        _feed_all(pair.server, data, cuts, buffered, pair.now)
    except ProtocolError:
        assert pair.server.state is ConnState.ERROR


@FUZZ
@given(streams_of_frames, st.lists(st.integers(0, 2000), max_size=6), st.booleans())
def test_open_connection_fed_arbitrary_bytes(data: bytes, cuts: list[int], buffered: bool) -> None:
    pair = ConnectionPair()
    pair.handshake()
    try:
        _feed_all(pair.server, data, cuts, buffered, pair.now)
    except ProtocolError:
        assert pair.server.state is ConnState.ERROR


def _dumps_or_empty(msg: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(msg)
    except TypeError:
        return b""


# Authentic frames with arbitrary contents: encrypted with the peer's real keys, so they reach the
# per-type checks, stream table and control decoder instead of stopping at the tag.
authentic_frames = st.lists(
    st.tuples(
        st.sampled_from([t for t in FrameType if t != FrameType.HANDSHAKE]),
        st.integers(0, wire.KNOWN_FLAGS),
        st.sampled_from([0, 1, 2, 3, 4, 5, 2**32 - 1]) | st.integers(0, 2**32 - 1),
        st.binary(max_size=64)
        | st.integers(0, 2**32 - 1).map(lambda v: v.to_bytes(4, "big"))
        | json_messages.map(_dumps_or_empty)
        | st.sampled_from([b'{"t":"ping","id":1}', b"\0" * 8, b"\0\0\0\0bye"]),
    ),
    max_size=12,
)


@FUZZ
@given(authentic_frames, st.booleans())
def test_open_connection_fed_authentic_arbitrary_frames(
    frame_list: list[tuple[int, int, int, bytes]], also_send: bool
) -> None:
    pair = ConnectionPair(limits=Limits(max_streams=2))
    pair.handshake()
    if also_send:  # some live streams of the server's own, so WINDOW/RESET/DATA find state to hit
        sid = pair.server.open_stream()
        pair.server.send_data(sid, b"x" * 100)
        pair.pump()
    for ftype, flags, sid, payload in frame_list:
        pair.client._queue_frame(ftype, flags, sid, payload)
    try:
        pair.transfer(pair.client)
        for ev in drain(pair.server, pair.now):
            if isinstance(ev, Data) and pair.server.state is ConnState.OPEN:
                pair.server.consumed(ev.stream_id, len(ev.data))
        pair.server.receive_data(b"")
        drain(pair.server, pair.now)
    except ProtocolError:
        assert pair.server.state is ConnState.ERROR


@pytest.mark.parametrize("opened", [False, True])
def test_a_4_gib_header_is_rejected_on_the_header_without_allocating(opened: bool) -> None:
    pair = ConnectionPair()
    if opened:
        pair.handshake()
    header = frames.pack_header(FrameType.DATA, 0, 1, 0)[:8] + (2**32 - 1).to_bytes(4, "big")
    tracemalloc.start()
    try:
        pair.server.receive_data(header)
        with pytest.raises(RemoteProtocolError) as info:
            pair.server.next_event(pair.now)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert peak < 256 * 1024, peak


def test_max_plaintext_frames_are_accepted() -> None:
    pair = ConnectionPair()
    pair.handshake()
    sid = pair.client.open_stream()
    assert pair.client.send_data(sid, bytes(MAX_PLAINTEXT)) == MAX_PLAINTEXT
    (frame,) = pair.client.data_to_send()
    assert len(frame) == wire.MAX_FRAME_SIZE
    pair.server.receive_data(frame)
    assert len(drain(pair.server, pair.now)[0].data) == MAX_PLAINTEXT
