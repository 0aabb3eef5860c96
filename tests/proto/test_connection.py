"""proto.Connection through ConnectionPair: handshake, control, streams, credit, errors, timers.

The frames facade follows P2PFAST_PURE, so the suite runs over the compiled parser and, with
P2PFAST_PURE=1, over its pure twin (STYLE.md 5).
"""

from __future__ import annotations

import ast
import hashlib
import random
from pathlib import Path

import pytest
from connection_pair import (
    CLIENT_HELLO,
    NETWORK_KEY,
    SERVER_HELLO,
    ConnectionPair,
    Data,
    drain,
    feed_buffered,
)

from p2pfast import _accel, frames, wire
from p2pfast.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pfast.proto import control, noise, state
from p2pfast.proto.connection import MAX_PLAINTEXT, Connection, ConnState, Limits, Role
from p2pfast.proto.events import (
    NEED_DATA,
    ConnectionClosed,
    ControlReceived,
    DataReceived,
    HandshakeComplete,
    StreamReset,
    WindowUpdated,
)
from p2pfast.wire import ErrorCode, FrameType

CID = "b3:" + "ab" * 32


def opened(**kw: object) -> ConnectionPair:
    pair = ConnectionPair(**kw)  # type: ignore[arg-type]
    pair.handshake()
    return pair


def frames_of(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(offset, type, flags, stream id, length) of each frame in a byte string."""
    out = []
    pos = 0
    while pos < len(data):
        ftype, flags, sid, length = frames.unpack_header(data, pos)
        out.append((pos, ftype, flags, sid, length))
        pos += wire.HEADER_SIZE + length
    return out


# -- layers and kernels ---------------------------------------------------------------------------------


def test_proto_imports_no_io_clock_or_upper_layers() -> None:
    forbidden = {"asyncio", "socket", "time", "logging", "p2pfast.store", "p2pfast.repo", "p2pfast.net"}
    for path in (Path(noise.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), (path, name)


def test_frames_kernel_follows_p2pfast_pure() -> None:
    expected = "p2pfast._frames_py" if _accel.PURE else "p2pfast._frames_c"
    assert frames.FrameParser.__module__ == expected


# -- handshake ---------------------------------------------------------------------------------------------


def test_handshake_completes_with_peer_ids_and_hellos() -> None:
    pair = ConnectionPair()
    assert pair.client.state is ConnState.HANDSHAKE
    client_done, server_done = pair.handshake()
    client_pub = noise.public_bytes(pair.client_static)
    server_pub = noise.public_bytes(pair.server_static)
    assert client_done == HandshakeComplete(server_pub, hashlib.sha256(server_pub).hexdigest(), SERVER_HELLO)
    assert server_done == HandshakeComplete(client_pub, hashlib.sha256(client_pub).hexdigest(), CLIENT_HELLO)
    for conn, done in ((pair.client, client_done), (pair.server, server_done)):
        assert conn.state is ConnState.OPEN
        assert (conn.peer_id, conn.peer_key, conn.peer_hello) == (done.peer_id, done.peer_key, done.hello)
    assert pair.client.bytes_sent == pair.server.bytes_received > 0
    assert pair.server.bytes_sent == pair.client.bytes_received > 0


def test_handshake_frames_are_the_raw_noise_messages() -> None:
    pair = ConnectionPair()
    pair.client.initiate()
    msg1 = b"".join(pair.client.data_to_send())
    assert frames_of(msg1) == [(0, FrameType.HANDSHAKE, 0, 0, 32 + 16)]  # -> e, empty payload + tag (psk)
    pair.server.receive_data(msg1)
    assert pair.server.next_event(pair.now) is NEED_DATA
    msg2 = b"".join(pair.server.data_to_send())
    ((_, ftype, _, sid, length),) = frames_of(msg2)
    assert (ftype, sid) == (FrameType.HANDSHAKE, 0) and length > 32 + 48  # e, s, hello
    assert b"p2pfast/test-server" not in msg2  # the hello is encrypted


def test_initiator_waits_for_key_confirmation() -> None:
    pair = ConnectionPair()
    pair.client.initiate()
    pair.transfer(pair.client)
    drain(pair.server, pair.now)
    pair.transfer(pair.server)
    assert drain(pair.client, pair.now) == []  # message 3 is queued, the psk is unconfirmed
    assert pair.client.state is ConnState.HANDSHAKE
    with pytest.raises(LocalProtocolError):
        pair.client.send_control({"t": "ping", "id": 1})
    pair.transfer(pair.client)
    (done,) = drain(pair.server, pair.now)
    assert isinstance(done, HandshakeComplete)
    pair.server.send_control({"t": "ping", "id": 9})  # behind the confirming PING
    pair.transfer(pair.server)
    events = drain(pair.client, pair.now)
    assert isinstance(events[0], HandshakeComplete)
    assert events[1:] == [ControlReceived({"t": "ping", "id": 9})]


def test_wrong_network_key_fails_at_the_responder_and_the_initiator_never_completes() -> None:
    pair = ConnectionPair(client_key=bytes(32))
    pair.client.initiate()
    pair.transfer(pair.client)
    drain(pair.server, pair.now)
    pair.transfer(pair.server)
    assert drain(pair.client, pair.now) == []
    pair.transfer(pair.client)  # message 3, under the wrong psk
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.next_event(pair.now)
    assert info.value.code == ErrorCode.INTEGRITY
    assert pair.server.state is ConnState.ERROR
    assert pair.server.data_to_send() == []  # no keys in common: nothing to tell the peer
    pair.client.receive_data(b"")  # the responder closes the transport
    with pytest.raises(RemoteProtocolError, match="during the handshake"):
        pair.client.next_event(pair.now)
    assert pair.client.peer_id is None and pair.client.state is ConnState.ERROR


def test_frames_other_than_handshake_before_completion_are_errors() -> None:
    pair = ConnectionPair()
    pair.server.receive_data(frames.pack_header(FrameType.DATA, 0, 1, 3) + b"abc")
    with pytest.raises(RemoteProtocolError, match="DATA frame before the handshake") as info:
        pair.server.next_event(pair.now)
    assert info.value.code == ErrorCode.PROTOCOL


def test_handshake_frame_to_an_initiator_before_initiate_is_an_error() -> None:
    pair = ConnectionPair()
    pair.client.receive_data(frames.pack_header(FrameType.HANDSHAKE, 0, 0, 32) + bytes(32))
    with pytest.raises(RemoteProtocolError):
        pair.client.next_event(pair.now)


def test_handshake_frame_after_completion_is_an_error() -> None:
    pair = opened()
    pair.client.receive_data(frames.pack_header(FrameType.HANDSHAKE, 0, 0, 32) + bytes(32))
    with pytest.raises(RemoteProtocolError, match="HANDSHAKE frame after the handshake"):
        pair.client.next_event(pair.now)
    # it was OPEN: the GOAWAY tells the peer why
    pair.transfer(pair.client)
    assert drain(pair.server, pair.now) == [
        ConnectionClosed(ErrorCode.PROTOCOL, "HANDSHAKE frame after the handshake")
    ]


def test_initiate_is_for_the_initiator_once() -> None:
    pair = ConnectionPair()
    with pytest.raises(LocalProtocolError):
        pair.server.initiate()
    pair.client.initiate()
    with pytest.raises(LocalProtocolError):
        pair.client.initiate()


def test_bad_constructor_arguments() -> None:
    key = noise.generate_keypair()
    with pytest.raises(ValueError, match="network key"):
        Connection(Role.INITIATOR, key, b"short", CLIENT_HELLO, now=0)
    with pytest.raises(LocalProtocolError, match="hello"):
        Connection(Role.INITIATOR, key, NETWORK_KEY, {"v": 1}, now=0)
    with pytest.raises(ValueError):
        Limits(max_streams=0)
    with pytest.raises(ValueError):
        Limits(max_control_size=MAX_PLAINTEXT + 1)
    with pytest.raises(ValueError):
        Limits(ping_interval=0)


# -- control -----------------------------------------------------------------------------------------------


def test_control_messages_round_trip_both_ways() -> None:
    pair = opened()
    pair.client.send_control({"t": "who_has", "id": 1, "cid": CID})
    pair.server.send_control({"t": "ping", "id": 2})
    client_events, server_events = pair.pump()
    assert server_events == [ControlReceived({"t": "who_has", "id": 1, "cid": CID})]
    assert client_events == [ControlReceived({"t": "ping", "id": 2})]


def test_bad_control_message_is_refused_locally_and_the_connection_lives_on() -> None:
    pair = opened()
    with pytest.raises(LocalProtocolError):
        pair.client.send_control({"t": "nope"})
    with pytest.raises(LocalProtocolError, match="exceeds max"):
        pair.client.send_control({"t": "ok", "re": 1, "leaves": "00" * 32 * 300})
    assert pair.client.data_to_send() == []  # nothing was queued
    pair.client.send_control({"t": "error", "re": 1, "code": 1, "reason": "x" * 500})
    assert pair.client.state is ConnState.OPEN
    _, server_events = pair.pump()
    assert len(server_events) == 1


def test_a_message_encoded_once_goes_to_several_peers_and_keeps_the_senders_cap() -> None:
    raw = control.encode({"t": "who_has", "id": 1, "cid": CID})
    pairs = [opened(), opened()]
    for pair in pairs:
        pair.client.send_control_encoded(raw)
        _, server_events = pair.pump()
        assert server_events == [ControlReceived({"t": "who_has", "id": 1, "cid": CID})]
    capped = opened(limits=Limits(max_control_size=len(raw) - 1), server_limits=Limits())
    with pytest.raises(LocalProtocolError, match="exceeds max"):
        capped.client.send_control_encoded(raw)
    assert capped.client.data_to_send() == []  # nothing was queued


def test_control_over_the_receivers_limit_is_a_remote_error() -> None:
    pair = opened(server_limits=Limits(max_control_size=100))
    pair.client.send_control({"t": "error", "re": 1, "code": 1, "reason": "x" * 200})
    pair.transfer(pair.client)
    with pytest.raises(RemoteProtocolError, match="exceeds max 100"):
        pair.server.next_event(pair.now)


# -- streams -----------------------------------------------------------------------------------------------


def test_stream_ids_by_role() -> None:
    pair = opened()
    assert [pair.client.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [pair.server.open_stream() for _ in range(3)] == [2, 4, 6]


def test_data_both_ways_store_and_get_patterns() -> None:
    pair = opened()
    # store: the client reserves a stream, announces it and streams on it
    sid = pair.client.open_stream()
    pair.client.send_control({"t": "store", "id": 1, "sid": sid, "cid": CID, "size": 5, "key": "k"})
    assert pair.client.send_data(sid, b"hello", end_stream=True) == 5
    _, server_events = pair.pump()
    assert server_events == [
        ControlReceived({"t": "store", "id": 1, "sid": sid, "cid": CID, "size": 5, "key": "k"}),
        Data(sid, b"hello", True),
    ]
    # get: the client reserves a stream, the server answers on it
    sid = pair.client.open_stream()
    pair.client.send_control({"t": "get", "id": 2, "cid": CID, "offset": 0, "length": -1, "sid": sid})
    _, server_events = pair.pump()
    assert server_events[0].message["sid"] == sid
    assert pair.server.send_data(sid, b"wor") == 3
    assert pair.server.send_data(sid, b"ld", end_stream=True) == 2
    client_events, _ = pair.pump()
    assert client_events == [Data(sid, b"wor", False), Data(sid, b"ld", True)]
    # both streams are closed now: more DATA is a local error
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.server.send_data(sid, b"x")
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send_data(1, b"x")
    assert pair.client._streams.streams == {} and pair.server._streams.streams == {}


def test_empty_end_stream_needs_no_credit_and_a_receiving_stream_cannot_send() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    assert pair.client.send_data(sid, b"abc") == 3
    pair.pump()
    with pytest.raises(LocalProtocolError, match="from the peer"):
        pair.server.send_data(sid, b"x")
    assert pair.client.send_data(sid, b"", end_stream=True) == 0
    _, server_events = pair.pump()
    assert server_events == [Data(sid, b"", True)]


def test_many_concurrent_streams_interleaved() -> None:
    rng = random.Random(7)
    pair = opened()
    payloads = {}
    for _ in range(Limits().max_streams):
        sid = pair.client.open_stream()
        payloads[sid] = rng.randbytes(rng.randint(0, 200_000))
    sent = dict.fromkeys(payloads, 0)
    got: dict[int, bytearray] = {sid: bytearray() for sid in payloads}
    ended: set[int] = set()
    while len(ended) < len(payloads):
        for sid in rng.sample(sorted(payloads), len(payloads)):
            data = payloads[sid]
            if sent[sid] < len(data) or sid not in ended:
                chunk = data[sent[sid] : sent[sid] + rng.randint(1, 90_000)]
                last = sent[sid] + len(chunk) == len(data)
                if pair.client.send_credit(sid) or (last and not chunk):
                    sent[sid] += pair.client.send_data(sid, chunk, end_stream=last)
        _, server_events = pair.pump()
        for ev in server_events:
            got[ev.stream_id] += ev.data
            pair.server.consumed(ev.stream_id, len(ev.data))
            if ev.end_stream:
                ended.add(ev.stream_id)
        pair.pump()  # WINDOW frames back to the client
    assert {sid: bytes(b) for sid, b in got.items()} == payloads


def test_sender_is_blocked_at_the_initial_window_until_consumed() -> None:
    window = Limits().initial_window
    pair = opened()
    sid = pair.client.open_stream()
    data = bytes(range(256)) * (2 * window // 256)  # twice the window
    assert pair.client.send_credit(sid) == window
    assert pair.client.send_data(sid, data, end_stream=True) == window
    assert pair.client.send_credit(sid) == 0
    assert pair.client.send_data(sid, data[window:], end_stream=True) == 0
    out = pair.client.data_to_send()
    sizes = [len(f) - wire.HEADER_SIZE - noise.TAG for f in out]
    full, rest = divmod(window, MAX_PLAINTEXT)
    assert sizes == [MAX_PLAINTEXT] * full + ([rest] if rest else [])
    pair.server.receive_data(b"".join(out))
    received = sum(len(ev.data) for ev in drain(pair.server, pair.now))
    assert received == window
    pair.server.consumed(sid, window // 2 - 1)
    assert pair.server.data_to_send() == []  # below half the window: no WINDOW yet
    pair.server.consumed(sid, 1)
    client_events, _ = pair.pump()
    assert client_events == [WindowUpdated(sid, window // 2)]
    assert pair.client.send_credit(sid) == window // 2
    with pytest.raises(LocalProtocolError, match="unread"):
        pair.server.consumed(sid, window)


def test_receiving_beyond_credit_is_a_flow_control_error() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    window = Limits().initial_window
    assert pair.client.send_data(sid, bytes(window)) == window
    pair.client._streams.streams[sid].send_credit = 10  # a sender that ignores its credit
    assert pair.client.send_data(sid, b"0123456789x") == 10
    pair.transfer(pair.client)
    with pytest.raises(RemoteProtocolError, match="exceeds its credit") as info:
        drain(pair.server, pair.now)
    assert info.value.code == ErrorCode.FLOW_CONTROL
    pair.transfer(pair.server)  # the GOAWAY says why
    events = drain(pair.client, pair.now)
    assert events[-1] == ConnectionClosed(ErrorCode.FLOW_CONTROL, str(info.value.args[0]))


def test_window_on_a_stream_that_never_sent_is_an_error() -> None:
    pair = opened()
    sid = pair.server.open_stream()  # reserved by the server, nothing sent on it
    pair.client._queue_frame(FrameType.WINDOW, 0, sid, (100).to_bytes(4, "big"))  # a confused peer
    pair.transfer(pair.client)
    with pytest.raises(RemoteProtocolError, match="WINDOW on stream 2, which we have not sent on"):
        drain(pair.server, pair.now)
    # a WINDOW of 0 is an error too, and one for an id of the server's never handed out
    for sid, increment in ((2, 0), (4, 1)):
        pair = opened()
        pair.server.open_stream()
        pair.client._queue_frame(FrameType.WINDOW, 0, sid, increment.to_bytes(4, "big"))
        pair.transfer(pair.client)
        with pytest.raises(RemoteProtocolError, match="WINDOW"):
            drain(pair.server, pair.now)


def test_max_streams_refuses_the_extra_stream_with_reset() -> None:
    pair = opened(limits=Limits(max_streams=8), server_limits=Limits(max_streams=2))
    sids = [pair.client.open_stream() for _ in range(3)]
    for sid in sids:
        pair.client.send_data(sid, b"a")
    pair.client.send_data(sids[2], b"b")  # in flight before the RESET arrives: dropped quietly
    client_events, server_events = pair.pump()
    assert server_events == [Data(sids[0], b"a", False), Data(sids[1], b"a", False)]
    assert client_events == [StreamReset(sids[2], ErrorCode.REFUSED)]
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send_data(sids[2], b"c")
    # a slot frees when a stream ends; then a new stream is accepted
    pair.client.send_data(sids[0], b"", end_stream=True)
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"z")
    _, server_events = pair.pump()
    assert server_events == [Data(sids[0], b"", True), Data(sid, b"z", False)]
    assert pair.server.state is ConnState.OPEN


def test_open_stream_at_the_local_limit_raises_stream_limit() -> None:
    pair = opened(limits=Limits(max_streams=2))
    pair.client.open_stream()
    pair.client.open_stream()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.open_stream()
    assert info.value.code == ErrorCode.STREAM_LIMIT
    assert pair.client.state is ConnState.OPEN


def test_reset_stream_mid_transfer_and_crossing_frames() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    pair.client.send_control({"t": "get", "id": 1, "cid": CID, "offset": 0, "length": -1, "sid": sid})
    pair.pump()
    pair.server.send_data(sid, b"first")
    pair.pump()
    pair.server.send_data(sid, b"in flight")  # crosses the RESET
    pair.client.reset_stream(sid, ErrorCode.NO_ERROR)
    pair.client.reset_stream(sid, ErrorCode.NO_ERROR)  # idempotent
    client_events, server_events = pair.pump()
    assert client_events == []  # the crossing DATA was dropped quietly
    assert server_events == [StreamReset(sid, ErrorCode.NO_ERROR)]
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.server.send_data(sid, b"more")
    assert pair.client.state is pair.server.state is ConnState.OPEN


def test_reset_of_an_announced_but_unused_stream_reaches_the_peer() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    pair.client.send_control({"t": "get", "id": 1, "cid": CID, "offset": 0, "length": -1, "sid": sid})
    pair.pump()
    pair.server.reset_stream(sid, ErrorCode.REFUSED)  # the server will not serve it
    client_events, _ = pair.pump()
    assert client_events == [StreamReset(sid, ErrorCode.REFUSED)]
    assert pair.client._streams.streams == {}


def test_data_after_end_stream_is_a_protocol_error() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"x", end_stream=True)
    pair.pump()
    pair.client._queue_frame(FrameType.DATA, 0, sid, b"y")  # a peer that ignores its own END_STREAM
    pair.transfer(pair.client)
    with pytest.raises(RemoteProtocolError, match="closed stream"):
        drain(pair.server, pair.now)


def test_stream_misuse_is_local_and_harmless() -> None:
    pair = opened()
    for call in (
        lambda: pair.client.send_data(3, b"x"),  # ours, never opened
        lambda: pair.client.send_data(0, b"x"),
        lambda: pair.client.reset_stream(7, 0),
        lambda: pair.client.consumed(9, 1),
        lambda: pair.client.reset_stream(1, -1),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    assert pair.client.state is ConnState.OPEN and pair.client.data_to_send() == []


def test_each_frame_is_a_fresh_buffer() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, bytes(3 * MAX_PLAINTEXT))
    out = pair.client.data_to_send()
    assert len(out) == 3 and len({id(b) for b in out}) == 3
    copies = [bytes(b) for b in out]
    pair.client.send_data(sid, bytes(MAX_PLAINTEXT))
    pair.client.data_to_send()
    assert [bytes(b) for b in out] == copies


# -- close, EOF, errors ------------------------------------------------------------------------------------


def test_close_sends_goaway_and_the_peer_sees_connection_closed() -> None:
    pair = opened()
    pair.client.close(ErrorCode.NO_ERROR, "bye ✓")
    pair.client.close()  # idempotent
    assert pair.client.state is ConnState.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send_control({"t": "ping", "id": 1})
    pair.server.send_control({"t": "ping", "id": 1})  # crosses the GOAWAY: dropped by the client
    client_events, server_events = pair.pump()
    assert server_events == [ConnectionClosed(ErrorCode.NO_ERROR, "bye ✓")]
    assert client_events == []
    assert pair.server.state is ConnState.CLOSED
    pair.server.receive_data(b"")
    assert pair.server.next_event(pair.now) is NEED_DATA  # closed once only


def test_eof_after_the_handshake_is_a_clean_close() -> None:
    pair = opened()
    pair.client.receive_data(b"")
    assert pair.client.next_event(pair.now) == ConnectionClosed(ErrorCode.NO_ERROR, "eof")
    assert pair.client.next_event(pair.now) is NEED_DATA
    assert pair.client.state is ConnState.CLOSED
    assert pair.client.get_timer() is None


def test_eof_mid_frame_is_truncated() -> None:
    pair = opened()
    pair.client.send_control({"t": "ping", "id": 1})
    data = b"".join(pair.client.data_to_send())
    pair.server.receive_data(data[:-3])
    assert pair.server.next_event(pair.now) is NEED_DATA
    pair.server.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.next_event(pair.now)
    assert info.value.code == ErrorCode.TRUNCATED


def test_after_an_error_every_call_raises_the_same_error() -> None:
    pair = opened()
    pair.server.receive_data(b"\x09" * 12)
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.next_event(pair.now)
    err = info.value
    assert err.code == ErrorCode.BAD_VERSION and pair.server.state is ConnState.ERROR
    goaway = pair.server.data_to_send()
    assert [f[1] for f in frames_of(b"".join(goaway))] == [FrameType.GOAWAY]
    for call in (
        lambda: pair.server.next_event(pair.now),
        lambda: pair.server.receive_data(b"x"),
        lambda: pair.server.buffer_updated(0),
        lambda: pair.server.send_control({"t": "ping", "id": 1}),
        lambda: pair.server.open_stream(),
        lambda: pair.server.send_data(1, b"x"),
        lambda: pair.server.send_credit(1),
        lambda: pair.server.consumed(1, 0),
        lambda: pair.server.reset_stream(1, 0),
        lambda: pair.server.handle_timer(pair.now),
    ):
        with pytest.raises(RemoteProtocolError) as again:
            call()
        assert again.value is err
    assert len(pair.server.get_buffer()) > 0
    assert pair.server.get_timer() is None
    pair.server.close()  # a no-op
    assert pair.server.data_to_send() == []


@pytest.mark.parametrize("kind", ["control", "data", "ping", "window"])
def test_a_flipped_bit_in_any_post_handshake_frame_is_caught(kind: str) -> None:
    # one fresh session per bit position: after the flip the receiver is poisoned
    for bit in range(0, (wire.HEADER_SIZE + noise.TAG + 8) * 8, 7):
        pair = opened()
        conn = pair.client
        if kind == "control":
            conn.send_control({"t": "ping", "id": 1})
        elif kind == "data":
            conn.send_data(conn.open_stream(), b"8 bytes!")
        elif kind == "ping":
            conn._queue_ping()
        else:
            sid = conn.open_stream()
            conn.send_data(sid, bytes(200_000))
            pair.pump()
            pair.server.consumed(sid, 200_000)
            conn = pair.server
        data = bytearray(b"".join(conn.data_to_send()))
        if bit >= len(data) * 8:
            continue
        data[bit // 8] ^= 1 << (bit % 8)
        peer = pair.peer_of(conn)
        peer.receive_data(bytes(data))
        peer.receive_data(b"")
        with pytest.raises(RemoteProtocolError) as info:
            drain(peer, pair.now)
        if bit >= wire.HEADER_SIZE * 8 or 32 <= bit < 64:  # payload or stream id: authenticated
            assert info.value.code == ErrorCode.INTEGRITY, bit
        assert peer.state is ConnState.ERROR
        with pytest.raises(RemoteProtocolError):
            peer.next_event(pair.now)


# -- timers ------------------------------------------------------------------------------------------------


def test_ping_after_silence_is_answered_with_ack() -> None:
    pair = opened()
    start = pair.now
    assert pair.client.get_timer() == start + 15.0
    pair.client.handle_timer(start + 14.9)
    assert pair.client.data_to_send() == []
    pair.now = start + 15.0
    pair.client.handle_timer(pair.now)
    (ping,) = pair.client.data_to_send()
    assert pair.client.get_timer() == start + 60.0  # a PING is out: the idle deadline is next
    pair.server.receive_data(ping)
    assert pair.server.next_event(pair.now) is NEED_DATA  # PINGs are no events
    (ack,) = pair.server.data_to_send()
    pair.now += 1
    pair.client.receive_data(ack)
    assert pair.client.next_event(pair.now) is NEED_DATA
    assert pair.client.get_timer() == pair.now + 15.0  # the ACK counted as traffic
    assert pair.client.state is ConnState.OPEN


def test_idle_timeout() -> None:
    pair = opened()
    pair.now += 59.0
    pair.client.handle_timer(pair.now)  # sends a PING, which is never answered
    ping = pair.client.data_to_send()
    assert ping
    pair.now += 1.0
    with pytest.raises(RemoteProtocolError, match="idle timeout") as info:
        pair.client.handle_timer(pair.now)
    assert info.value.code == ErrorCode.IDLE_TIMEOUT
    assert pair.client.state is ConnState.ERROR
    pair.server.receive_data(b"".join(ping))
    pair.transfer(pair.client)
    assert drain(pair.server, pair.now)[-1].code == ErrorCode.IDLE_TIMEOUT


def test_handshake_timeout() -> None:
    pair = ConnectionPair()
    pair.client.initiate()
    assert pair.client.get_timer() == pair.now + 10.0
    pair.server.handle_timer(pair.now + 9.99)
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.handle_timer(pair.now + 10.0)
    assert info.value.code == ErrorCode.HANDSHAKE_TIMEOUT
    assert pair.server.data_to_send() == []  # no keys: no GOAWAY


# -- bulk ---------------------------------------------------------------------------------------------------


def test_one_mib_byte_exact_through_get_buffer_with_random_chunks() -> None:
    rng = random.Random(1)
    pair = opened()
    data = rng.randbytes(1 << 20)
    sid = pair.client.open_stream()
    pos = 0
    got = bytearray()
    done = False
    while not done:
        pos += pair.client.send_data(sid, memoryview(data)[pos:], end_stream=True)
        wire_bytes = b"".join(pair.client.data_to_send())
        feed_buffered(pair.server, wire_bytes, rng, max_chunk=20_000)
        while (ev := pair.server.next_event(pair.now)) is not NEED_DATA:
            assert isinstance(ev, DataReceived)
            got += ev.data  # borrowed: copied before the next call
            pair.server.consumed(sid, len(ev.data))
            done = ev.end_stream
        pair.client.receive_data(b"".join(pair.server.data_to_send()))
        drain(pair.client, pair.now)
    assert bytes(got) == data
    assert pair.server.bytes_received == pair.client.bytes_sent


def test_protocol_errors_are_protocol_errors() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)


# -- details -----------------------------------------------------------------------------------------------


def test_data_is_a_borrowed_read_only_view() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"first")
    pair.client.send_data(sid, b"second")
    pair.transfer(pair.client)
    first = pair.server.next_event(pair.now)
    assert isinstance(first, DataReceived) and first.data.readonly and bytes(first.data) == b"first"
    second = pair.server.next_event(pair.now)
    assert isinstance(second, DataReceived) and bytes(second.data) == b"second"
    assert bytes(first.data) != b"first"  # borrowed: overwritten by the next frame, as documented


def test_eof_twice_is_harmless_and_data_after_eof_is_a_local_error() -> None:
    pair = opened()
    pair.client.receive_data(b"")
    pair.client.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        pair.client.receive_data(b"late")
    assert pair.client.next_event(pair.now) == ConnectionClosed(ErrorCode.NO_ERROR, "eof")


def test_goaway_reason_is_cut_at_a_character_boundary() -> None:
    pair = opened()
    pair.client.close(ErrorCode.INTERNAL, "é" * 2000)
    _, server_events = pair.pump()
    assert server_events == [ConnectionClosed(ErrorCode.INTERNAL, "é" * 512)]


def test_transition_tables_raise_local_protocol_error_for_missing_moves() -> None:
    for conn_state in state.ConnState:
        for conn_event in state.ConnEvent:
            if (conn_state, conn_event) in state.CONNECTION_TRANSITIONS:
                state.conn_transition(conn_state, conn_event)
            else:
                with pytest.raises(LocalProtocolError):
                    state.conn_transition(conn_state, conn_event)
    for stream_state in state.StreamState:
        for stream_event in state.StreamEvent:
            if (stream_state, stream_event) in state.STREAM_TRANSITIONS:
                assert state.stream_transition(stream_state, stream_event, 1) in state.StreamState
            else:
                with pytest.raises(LocalProtocolError):
                    state.stream_transition(stream_state, stream_event, 1)
    # the terminal states have no way out
    assert not any(s is state.StreamState.CLOSED for s, _ in state.STREAM_TRANSITIONS)
    out_of_error = {e for s, e in state.CONNECTION_TRANSITIONS if s is state.ConnState.ERROR}
    assert out_of_error == {state.ConnEvent.FAIL}


def test_events_are_frozen_and_validated() -> None:
    ev = StreamReset(1, 0)
    with pytest.raises(AttributeError):
        ev.code = 2  # type: ignore[misc]
    with pytest.raises(ValueError):
        StreamReset(0, 0)
    with pytest.raises(ValueError):
        WindowUpdated(1, 0)


def test_pooled_frame_buffers_are_never_reused_while_handed_out() -> None:
    """Outgoing frames come from a pool; a buffer the caller still holds (a transport that has not
    written it yet) must never be written again, and one released is reused."""
    pair = opened()
    sid = pair.client.open_stream()
    first = pair.client.send_data(sid, bytes(range(256)) * 256)  # 64 KiB: a pooled frame
    held = pair.client.data_to_send()
    snapshot = [bytes(b) for b in held]
    pair.server.receive_data(b"".join(snapshot))
    drain(pair.server, pair.now)
    pair.server.consumed(sid, first)
    pair.pump()
    for _ in range(8):  # many more frames while `held` is alive
        pair.client.send_data(sid, b"\xff" * 65519)
        sent = pair.client.data_to_send()
        pair.server.receive_data(b"".join(bytes(b) for b in sent))
        for ev in drain(pair.server, pair.now):
            pair.server.consumed(sid, len(ev.data))
        pair.pump()
        del sent
    assert [bytes(b) for b in held] == snapshot
    pool_size = len(pair.client._pool)
    del held
    pair.client.send_data(sid, b"\x01" * 65519)
    pair.client.data_to_send()
    assert len(pair.client._pool) == pool_size  # a released buffer was taken, not a new one


def test_grant_gives_the_sender_more_credit_once_data_flows() -> None:
    pair = opened()
    sid = pair.client.open_stream()
    window = pair.client.limits.initial_window
    pair.server.grant(sid, 1 << 20)  # before any DATA: nothing to grant yet (the stream is not receiving)
    assert pair.server.data_to_send() == []
    pair.client.send_data(sid, b"x" * 1000)
    pair.pump()
    pair.server.grant(sid, 3 << 20)
    pair.pump()
    assert pair.client.send_credit(sid) == window - 1000 + (3 << 20)
    # the peer may now send more than the initial window before we read: no FLOW_CONTROL error
    taken = pair.client.send_data(sid, b"y" * (window + (1 << 20)))
    assert taken == window + (1 << 20)
    pair.pump()
    with pytest.raises(LocalProtocolError):
        pair.server.grant(sid, -1)
