"""frames: header codec and incremental parser. Runs over both twins (`impl`) and crosses them (`both`)."""

from __future__ import annotations

import array
import gc
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast import _accel, wire
from p2pfast.errors import RemoteProtocolError
from p2pfast.wire import ErrorCode

# impl/both only return modules, so sharing them across examples is safe.
HYP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# (type, flags, stream_id, payload)
FRAMES = [
    (3, 1, 5, b"hello"),
    (2, 0, 0, b""),
    (7, 3, 0xFFFFFFFF, b"\x00" * 16),
    (1, 0, 1, bytes(range(256)) * 10),
    (4, 2, 123456, b"\xff\xfe\xfd\xfc"),
    (6, 0, 9, b""),
    (5, 1, 2**31, b"x" * 64),
    (3, 0, 7, bytes(range(256)) * 256),  # exactly MAX_PAYLOAD + 1 bytes, then cut below
]
FRAMES[-1] = (3, 0, 7, FRAMES[-1][3][: wire.MAX_PAYLOAD])

frame_st = st.tuples(
    st.integers(wire.FRAME_TYPE_MIN, wire.FRAME_TYPE_MAX),
    st.integers(0, wire.KNOWN_FLAGS),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)


def raw_header(version=1, type=3, flags=0, stream_id=1, length=0) -> bytes:
    return struct.pack(">BBHII", version, type, flags, stream_id, length)


def encode(m, frames) -> bytes:
    return b"".join(m.pack_header(t, f, s, len(p)) + p for t, f, s, p in frames)


def drain(parser) -> list[tuple[int, int, int, bytes]]:
    out = []
    while (frame := parser.next_frame()) is not None:
        out.append((frame.type, frame.flags, frame.stream_id, bytes(frame.payload)))
    return out


def feed_in_pieces(parser, blob: bytes, sizes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    for n in sizes:
        parser.feed(blob[pos : pos + n])
        pos += n
        out += drain(parser)
    assert pos >= len(blob)
    return out


def receive(
    parser, blob: bytes, rng: random.Random, max_write: int, check_room: bool = True
) -> list[tuple[int, int, int, bytes]]:
    """The BufferedProtocol path: get_buffer, write a random amount, buffer_updated, drain."""
    out = []
    pos = 0
    while pos < len(blob):
        view = parser.get_buffer(rng.choice([-1, 0, 1, 65536]))
        assert len(view) > 0
        assert not view.readonly
        if check_room:
            # The view always has room for the rest of the frame at the head (compaction is not lazier).
            head = pos - parser.buffered
            known = blob[head : head + 12] if pos - head >= 12 else b""
            need = 12 + (int.from_bytes(known[8:], "big") if known else 0) - (pos - head)
            assert len(view) >= min(need, len(blob) - pos)
        n = min(len(view), rng.randint(1, max_write), len(blob) - pos)
        view[:n] = blob[pos : pos + n]
        parser.buffer_updated(n)
        pos += n
        out += drain(parser)
    return out


def outcome(m, chunks, max_payload=wire.MAX_PAYLOAD, eof=True):
    """Everything a parser does with these chunks: frames, then an error (code, message) or 'ok'."""
    parser = m.FrameParser(max_payload)
    out: list[object] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (frame := parser.next_frame()) is not None:
                out.append((frame.type, frame.flags, frame.stream_id, bytes(frame.payload)))
        if eof:
            parser.feed_eof()
        out.append(("ok", parser.buffered))
    except RemoteProtocolError as exc:
        out.append((int(exc.code), str(exc)))
    return out


# ---------------------------------------------------------------------------------------------- constants


def test_constants_match_wire(impl):
    m = impl("frames")
    assert m.VERSION == wire.VERSION == 1
    assert m.HEADER_SIZE == wire.HEADER_SIZE == 12
    assert m.MAX_PAYLOAD == wire.MAX_PAYLOAD
    assert m.FRAME_TYPE_MIN == wire.FRAME_TYPE_MIN
    assert m.FRAME_TYPE_MAX == wire.FRAME_TYPE_MAX
    assert m.KNOWN_FLAGS == wire.KNOWN_FLAGS
    assert m.MAX_PARSER_PAYLOAD == 1 << 24
    assert m.FrameParser().max_payload == wire.MAX_PAYLOAD
    assert len(m.pack_header(1, 0, 0, 0)) == wire.HEADER_SIZE


def test_compiled_loaded_unless_pure():
    mod = _accel.module("frames")
    if _accel.PURE:
        assert mod.__name__ == "p2pfast._frames_py"
    else:
        assert mod.__name__ == "p2pfast._frames_c"


# ---------------------------------------------------------------------------------------------- interface


# Signatures of both twins are compared in test_iface.py, with the other kernels.


def public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def test_same_public_api(both):
    c, py = both("frames")
    assert sorted(c.__all__) == sorted(py.__all__)
    for name in py.__all__:
        assert hasattr(c, name), name
        assert hasattr(py, name), name
    for name in ("Frame", "FrameParser"):
        assert public(getattr(c, name)) == public(getattr(py, name)), name
    assert public(py.Frame) == {"type", "flags", "stream_id", "payload"}
    assert public(py.FrameParser) == {
        "max_payload",
        "buffered",
        "get_buffer",
        "buffer_updated",
        "feed",
        "next_frame",
        "feed_eof",
    }


def test_values_agree(both):
    c, py = both("frames")
    for name in c.__all__:
        if name.isupper():
            assert getattr(c, name) == getattr(py, name), name


# ---------------------------------------------------------------------------------------------- encoder


def test_known_vector(impl):
    m = impl("frames")
    assert m.pack_header(3, 1, 5, 1200) == bytes([1, 3, 0, 1, 0, 0, 0, 5, 0, 0, 4, 0xB0])
    assert m.pack_header(7, 3, 0xFFFFFFFF, 65535) == bytes([1, 7, 0, 3, 255, 255, 255, 255, 0, 0, 255, 255])
    assert m.unpack_header(bytes([1, 3, 0, 1, 0, 0, 0, 5, 0, 0, 4, 0xB0])) == (3, 1, 5, 1200)


def test_pack_header_into_offsets(impl):
    m = impl("frames")
    buf = bytearray(b"\xaa" * 40)
    m.pack_header_into(buf, 0, 3, 1, 5, 1200)
    m.pack_header_into(buf, 14, 2, 0, 7, 0)
    m.pack_header_into(buf, 28, 7, 2, 2**32 - 1, 65535)
    assert buf[0:12] == m.pack_header(3, 1, 5, 1200)
    assert buf[12:14] == b"\xaa\xaa"
    assert buf[14:26] == m.pack_header(2, 0, 7, 0)
    assert buf[26:28] == b"\xaa\xaa"
    assert buf[28:40] == m.pack_header(7, 2, 2**32 - 1, 65535)
    # Into a memoryview slice and an array: offsets count bytes of the view.
    target = bytearray(30)
    m.pack_header_into(memoryview(target)[10:], 1, 4, 0, 9, 4)
    assert target[11:23] == m.pack_header(4, 0, 9, 4)
    assert target[:11] == bytes(11) and target[23:] == bytes(7)
    arr = array.array("I", [0] * 4)
    m.pack_header_into(arr, 4, 1, 0, 0, 0)
    assert arr.tobytes()[4:16] == m.pack_header(1, 0, 0, 0)


@pytest.mark.parametrize(("size", "offset"), [(11, 0), (12, 1), (40, 29), (40, -1), (0, 0), (40, 2**70)])
def test_pack_header_into_bad_offset(impl, size, offset):
    m = impl("frames")
    buf = bytearray(size)
    with pytest.raises(ValueError, match="does not fit"):
        m.pack_header_into(buf, offset, 3, 0, 1, 1)
    assert buf == bytearray(size)


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((0, 0, 1, 1), "type"),
        ((8, 0, 1, 1), "type"),
        ((-1, 0, 1, 1), "type"),
        ((2**70, 0, 1, 1), "type"),
        ((3, 4, 1, 1), "flags"),
        ((3, 0x8000, 1, 1), "flags"),
        ((3, 0x10001, 1, 1), "flags"),
        ((3, -1, 1, 1), "flags"),
        ((3, 0, -1, 1), "stream id"),
        ((3, 0, 2**32, 1), "stream id"),
        ((3, 0, 1, -1), "length"),
        ((3, 0, 1, wire.MAX_PAYLOAD + 1), "length"),
        ((3, 0, 1, -(2**70)), "length"),
    ],
)
def test_pack_bad_values(impl, args, what):
    m = impl("frames")
    with pytest.raises(ValueError, match=what):
        m.pack_header(*args)
    buf = bytearray(12)
    with pytest.raises(ValueError, match=what):
        m.pack_header_into(buf, 0, *args)
    assert buf == bytearray(12)


def test_pack_bad_types(impl):
    m = impl("frames")
    with pytest.raises(TypeError):
        m.pack_header(3.0, 0, 1, 1)
    with pytest.raises(TypeError):
        m.pack_header(3, 0, "1", 1)
    with pytest.raises(TypeError):
        m.pack_header_into(bytes(12), 0, 3, 0, 1, 1)
    with pytest.raises(TypeError):
        m.pack_header_into(memoryview(bytearray(12)).toreadonly(), 0, 3, 0, 1, 1)
    with pytest.raises(TypeError):
        m.pack_header_into(memoryview(bytearray(24))[::2], 0, 3, 0, 1, 1)
    with pytest.raises(TypeError):
        m.pack_header_into(None, 0, 3, 0, 1, 1)
    assert m.pack_header(True, False, True, 0) == m.pack_header(1, 0, 1, 0)


def test_unpack_header(impl):
    m = impl("frames")
    blob = b"xx" + m.pack_header(5, 1, 77, 4) + b"abcd"
    assert m.unpack_header(blob, 2) == (5, 1, 77, 4)
    assert m.unpack_header(memoryview(blob)[2:]) == (5, 1, 77, 4)
    assert m.unpack_header(bytearray(blob), offset=2) == (5, 1, 77, 4)
    for offset in (-1, 7, 2**70):
        with pytest.raises(ValueError, match="does not fit"):
            m.unpack_header(blob, offset)
    with pytest.raises(ValueError, match="does not fit"):
        m.unpack_header(b"\x01" * 11)
    with pytest.raises(RemoteProtocolError, match="65536 bytes exceeds max 65535") as info:
        m.unpack_header(raw_header(length=65536))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


# ---------------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize("mode", ["all", "bytewise", "random", "pieces-of-7"])
def test_round_trip_feed(impl, mode):
    m = impl("frames")
    blob = encode(m, FRAMES)
    parser = m.FrameParser()
    if mode == "all":
        sizes = [len(blob)]
    elif mode == "bytewise":
        sizes = [1] * len(blob)
    elif mode == "pieces-of-7":
        sizes = [7] * (len(blob) // 7 + 1)
    else:
        rng = random.Random(1)
        sizes = [rng.randint(0, 3000) for _ in range(len(blob))]
    assert feed_in_pieces(parser, blob, sizes) == FRAMES
    assert parser.buffered == 0
    assert parser.next_frame() is None
    parser.feed_eof()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_payload", [30000, wire.MAX_PAYLOAD])
def test_round_trip_get_buffer(impl, seed, max_payload):
    m = impl("frames")
    rng = random.Random(seed)
    frames = [
        (
            rng.randint(1, 7),
            rng.randint(0, 3),
            rng.getrandbits(32),
            rng.randbytes(rng.randint(0, max_payload)),
        )
        for _ in range(30)
    ]
    blob = encode(m, frames)
    parser = m.FrameParser(max_payload)
    assert receive(parser, blob, rng, max_write=[499, 4096, 20000, 140000][seed]) == frames
    assert parser.buffered == 0


@pytest.mark.parametrize("seed", range(3))
def test_large_frames_random_slices(impl, seed):
    # Frames near half the buffer force compactions whose source and destination overlap.
    m = impl("frames")
    rng = random.Random(seed)
    frames = [(3, 0, i, rng.randbytes(rng.randint(20000, 32000))) for i in range(40)]
    blob = encode(m, frames)
    parser = m.FrameParser(32000)
    sizes = [rng.randint(1, 50000) for _ in range(len(blob) // 1000)]
    assert feed_in_pieces(parser, blob, sizes) == frames


def test_feed_everything_at_once_beyond_capacity(impl):
    m = impl("frames")
    frames = [(3, i % 4, i, bytes([i % 256]) * (i % 300)) for i in range(3000)]
    blob = encode(m, frames)
    parser = m.FrameParser(1000)
    assert len(blob) > 5 * len(parser.get_buffer())
    parser.feed(blob)
    assert parser.buffered == len(blob)
    first = parser.next_frame()
    assert (first.type, first.stream_id, bytes(first.payload)) == (3, 0, b"")
    assert parser.buffered == len(blob) - 12
    second = parser.next_frame()
    assert (second.flags, second.stream_id, bytes(second.payload)) == (1, 1, b"\x01")
    assert parser.buffered == len(blob) - len(encode(m, frames[:2]))
    assert drain(parser) == frames[2:]
    assert parser.buffered == 0


def test_fed_mutable_input_is_copied(impl):
    m = impl("frames")
    frames = [(3, 0, i, bytes([i % 256]) * 200) for i in range(600)]
    source = bytearray(encode(m, frames))
    parser = m.FrameParser(200)
    parser.feed(source)  # far more than the buffer holds: the overflow must be a private copy
    assert len(source) > len(m.FrameParser(200).get_buffer())
    source[:] = bytes(len(source))
    parser.feed(memoryview(bytearray(encode(m, frames[:3]))))
    assert drain(parser) == frames + frames[:3]


def test_buffer_types(impl):
    m = impl("frames")
    blob = encode(m, FRAMES[:4])
    for data in (
        blob,
        bytearray(blob),
        memoryview(blob),
        memoryview(b"\x00" + blob + b"\x00")[1:-1],
        array.array("B", blob),
        memoryview(bytes(x for b in blob for x in (b, 0)))[::2],  # not contiguous: copied
    ):
        parser = m.FrameParser()
        parser.feed(data)
        assert drain(parser) == FRAMES[:4], type(data)
    parser = m.FrameParser()
    with pytest.raises(TypeError):
        parser.feed("text")
    with pytest.raises(TypeError):
        parser.feed(12)
    parser.feed(b"")
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("header", "code", "message"),
    [
        (raw_header(version=0), ErrorCode.BAD_VERSION, "frame version 0 is not supported (expected 1)"),
        (raw_header(version=2, length=10**9), ErrorCode.BAD_VERSION, "frame version 2 is not supported"),
        (raw_header(type=0), ErrorCode.UNKNOWN_TYPE, "frame type 0 is unknown (expected 1..7)"),
        (raw_header(type=8), ErrorCode.UNKNOWN_TYPE, "frame type 8 is unknown"),
        (raw_header(type=255, flags=0xFFFF), ErrorCode.UNKNOWN_TYPE, "frame type 255 is unknown"),
        (raw_header(flags=4), ErrorCode.BAD_FLAGS, "frame flags 0x0004 have unknown bits 0x0004"),
        (raw_header(flags=0x8003), ErrorCode.BAD_FLAGS, "frame flags 0x8003 have unknown bits 0x8000"),
        (raw_header(length=70000), ErrorCode.FRAME_TOO_LARGE, "frame payload 70000 bytes exceeds max 65535"),
        (raw_header(length=2**32 - 1), ErrorCode.FRAME_TOO_LARGE, "frame payload 4294967295 bytes exceeds"),
    ],
)
@pytest.mark.parametrize("path", ["feed", "get_buffer"])
def test_header_errors_before_payload(impl, header, code, message, path):
    m = impl("frames")
    parser = m.FrameParser()
    good = m.pack_header(2, 0, 1, 3) + b"abc"
    data = good + header  # only the 12 header bytes of the bad frame: no payload has arrived
    if path == "feed":
        parser.feed(data)
    else:
        view = parser.get_buffer()
        view[: len(data)] = data
        parser.buffer_updated(len(data))
    frame = parser.next_frame()
    assert (frame.type, bytes(frame.payload)) == (2, b"abc")
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_frame()
    assert info.value.code == code
    assert isinstance(info.value.code, ErrorCode)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    # The same verdict from unpack_header on the header alone.
    with pytest.raises(RemoteProtocolError) as info2:
        m.unpack_header(header)
    assert info2.value.code == code


def test_poisoned_after_error(impl):
    m = impl("frames")
    parser = m.FrameParser()
    parser.feed(raw_header(type=9) + b"junk")
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_frame()
    error = info.value
    for call in (
        parser.next_frame,
        lambda: parser.feed(m.pack_header(1, 0, 0, 0)),
        lambda: parser.buffer_updated(0),
        parser.feed_eof,
        parser.next_frame,
    ):
        with pytest.raises(RemoteProtocolError) as again:
            call()
        assert again.value is error
        assert again.value.code == ErrorCode.UNKNOWN_TYPE
    # get_buffer never raises (asyncio and uvloop treat that as fatal) and never lends an empty view.
    assert len(parser.get_buffer()) > 0
    with pytest.raises(RemoteProtocolError):
        parser.buffer_updated(1)


def test_feed_eof(impl):
    m = impl("frames")
    blob = encode(m, FRAMES[:3])
    parser = m.FrameParser()
    parser.feed_eof()  # empty: clean
    parser.feed(blob)
    parser.feed_eof()  # whole frames not yet read: clean, and they stay readable
    assert drain(parser) == FRAMES[:3]
    parser.feed_eof()
    parser.feed_eof()

    parser = m.FrameParser()
    parser.feed(blob + m.pack_header(3, 0, 1, 20)[:5])
    with pytest.raises(RemoteProtocolError, match=r"header \(5 of 12 bytes") as info:
        parser.feed_eof()
    assert info.value.code == ErrorCode.TRUNCATED
    with pytest.raises(RemoteProtocolError) as again:
        parser.next_frame()
    assert again.value is info.value

    parser = m.FrameParser()
    parser.feed(blob + m.pack_header(3, 0, 1, 20) + b"x" * 3)
    assert drain(parser) == FRAMES[:3]
    with pytest.raises(RemoteProtocolError, match=r"\(15 of 32 bytes received\)") as info:
        parser.feed_eof()
    assert info.value.code == ErrorCode.TRUNCATED


def test_feed_eof_with_pending_input(impl):
    m = impl("frames")
    frames = [(3, 0, i, b"p" * 500) for i in range(400)]
    blob = encode(m, frames)
    parser = m.FrameParser(500)
    parser.feed(blob)
    parser.feed_eof()
    parser.feed(m.pack_header(3, 0, 1, 10) + b"\x00" * 9)
    with pytest.raises(RemoteProtocolError, match=r"\(21 of 22 bytes") as info:
        parser.feed_eof()
    assert info.value.code == ErrorCode.TRUNCATED
    # A bad header deep in the pending input is reported before the truncation after it.
    parser = m.FrameParser(500)
    parser.feed(blob + raw_header(flags=8) + b"\x00")
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed_eof()
    assert info.value.code == ErrorCode.BAD_FLAGS


def test_borrowed_payloads(impl):
    m = impl("frames")
    parser = m.FrameParser(1000)
    frames = [(3, 0, i, bytes([i % 256]) * 999) for i in range(500)]
    blob = encode(m, frames)
    held = []
    for i in range(0, len(blob), 5000):
        parser.feed(blob[i : i + 5000])
        while (frame := parser.next_frame()) is not None:
            # Valid now: check the contents before the next call.
            assert frame.payload == frames[frame.stream_id][3]
            assert frame.payload.readonly
            assert frame.payload.nbytes == 999
            with pytest.raises(TypeError):
                frame.payload[0] = 1
            held.append(frame.payload)  # held views must never stop the parser (no resize)
    assert len(held) == 500


def test_payload_is_an_ordinary_view(impl):
    m = impl("frames")
    parser = m.FrameParser()
    parser.feed(
        m.pack_header(3, 0, 1, 5) + b"hello" + m.pack_header(3, 0, 2, 300) + bytes(range(256)) + b"z" * 44
    )
    first = parser.next_frame()
    view = first.payload
    assert (view.format, view.itemsize, view.ndim, view.shape, view.strides) == ("B", 1, 1, (5,), (1,))
    assert view.c_contiguous and view.contiguous and view.readonly
    assert view.tolist() == list(b"hello")
    assert view[1:4] == b"ell" and view[-1] == ord("o")
    assert bytes(memoryview(view)) == b"hello"
    second = parser.next_frame().payload
    assert second[250:260] == bytes(range(250, 256)) + b"zzzz"
    assert len(second) == second.nbytes == 300
    # A payload kept after its parser is gone is stale by contract, but never dangling: the view owns
    # a reference to the buffer, like any memoryview slice.
    del parser, first
    gc.collect()
    assert bytes(view) == b"hello"
    view.release()


def test_zero_length_payloads(impl):
    m = impl("frames")
    frames = [(t, 0, i, b"") for i, t in enumerate([1, 2, 3, 4, 5, 6, 7] * 20)]
    blob = encode(m, frames)
    assert len(blob) == 12 * len(frames)
    parser = m.FrameParser(1)
    assert feed_in_pieces(parser, blob, [12] * len(frames)) == frames
    parser.feed(blob[:12])
    frame = parser.next_frame()
    assert frame.payload.nbytes == 0
    assert bytes(frame.payload) == b""


@pytest.mark.parametrize("max_payload", [1, 100, 65535, 70000])
def test_max_payload_limit(impl, max_payload):
    m = impl("frames")
    payload = bytes(range(256)) * (max_payload // 256) + bytes(max_payload % 256)
    parser = m.FrameParser(max_payload)
    assert parser.max_payload == max_payload
    parser.feed(raw_header(type=3, length=max_payload) + payload)
    assert bytes(parser.next_frame().payload) == payload
    parser.feed(raw_header(type=3, length=max_payload + 1))
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert str(info.value).endswith(f"frame payload {max_payload + 1} bytes exceeds max {max_payload}")


def test_largest_parser_max_payload(impl):
    m = impl("frames")
    limit = m.MAX_PARSER_PAYLOAD
    payload = random.Random(5).randbytes(limit)
    parser = m.FrameParser(limit)
    assert len(parser.get_buffer()) >= 2 * (12 + limit)
    parser.feed(raw_header(length=limit) + payload + raw_header(length=limit + 1))
    assert parser.next_frame().payload == payload
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("bad", [0, -1, (1 << 24) + 1, 2**70, -(2**70)])
def test_bad_max_payload(impl, bad):
    with pytest.raises(ValueError, match="max_payload"):
        impl("frames").FrameParser(bad)


def test_bad_max_payload_type(impl):
    with pytest.raises(TypeError):
        impl("frames").FrameParser(1.5)


@pytest.mark.parametrize("max_payload", [1, 100, 32756, 65535, 100000])
def test_capacity(impl, max_payload):
    parser = impl("frames").FrameParser(max_payload)
    cap = len(parser.get_buffer())
    assert cap >= 4 * (12 + max_payload)
    assert cap >= 64 * 1024
    assert cap == len(parser.get_buffer(10**9))  # sizehint is advisory: the buffer never grows


def test_get_buffer_never_empty_when_full(impl):
    # A caller that never parses fills the buffer; get_buffer must still lend a non-empty view.
    m = impl("frames")
    frames = [(3, 0, i, bytes([i % 251]) * 200) for i in range(1200)]
    blob = encode(m, frames)
    parser = m.FrameParser(200)
    pos = 0
    while pos < len(blob):
        view = parser.get_buffer()
        assert len(view) > 0
        n = min(len(view), len(blob) - pos)
        view[:n] = blob[pos : pos + n]
        parser.buffer_updated(n)
        pos += n
    assert parser.buffered == len(blob)
    assert drain(parser) == frames


def test_feed_then_get_buffer_keeps_order(impl):
    m = impl("frames")
    frames = [(3, 0, i, bytes([i % 256]) * 300) for i in range(600)]
    blob = encode(m, frames)
    parser = m.FrameParser(300)
    parser.feed(blob[:150000])  # more than fits: input is pending
    rest = blob[150000:]
    rng = random.Random(3)
    got = receive(parser, rest, rng, max_write=20000, check_room=False)
    got = [*got, *drain(parser)]
    assert got == frames


def test_buffer_updated_bounds(impl):
    m = impl("frames")
    parser = m.FrameParser()
    with pytest.raises(ValueError):
        parser.buffer_updated(1)  # nothing lent
    view = parser.get_buffer()
    with pytest.raises(ValueError):
        parser.buffer_updated(len(view) + 1)
    with pytest.raises(ValueError):
        parser.buffer_updated(-1)
    header = m.pack_header(1, 0, 0, 0)
    view[:12] = header
    parser.buffer_updated(12)
    with pytest.raises(ValueError):
        parser.buffer_updated(12)  # one get_buffer, one buffer_updated
    parser.get_buffer()
    parser.feed(header)  # the lent view is stale after any other call
    with pytest.raises(ValueError):
        parser.buffer_updated(12)
    parser.buffer_updated(0)
    assert len(drain(parser)) == 2


def test_uninitialized_parser_is_inert(impl):
    m = impl("frames")
    parser = m.FrameParser.__new__(m.FrameParser)  # __init__ skipped: an error, never a crash or a hang
    for call in (lambda: parser.feed(b"\x01" * 100), parser.next_frame, parser.feed_eof):
        with pytest.raises((TypeError, AttributeError)):
            call()


def test_frame_object(impl):
    m = impl("frames")
    parser = m.FrameParser()
    parser.feed(m.pack_header(3, 1, 5, 1200) + bytes(1200))
    frame = parser.next_frame()
    assert repr(frame) == "Frame(type=3, flags=1, stream_id=5, len=1200)"
    for attr in ("type", "flags", "stream_id", "payload"):
        with pytest.raises(AttributeError):
            setattr(frame, attr, 1)
    built = m.Frame(2, 0, 9, memoryview(b"ab"))
    assert (built.type, built.flags, built.stream_id, bytes(built.payload)) == (2, 0, 9, b"ab")
    assert repr(built) == "Frame(type=2, flags=0, stream_id=9, len=2)"


# ---------------------------------------------------------------------------------------------- properties


chunks_st = st.lists(
    st.one_of(
        st.binary(max_size=40),
        frame_st.map(lambda f: struct.pack(">BBHII", 1, f[0], f[1], f[2], len(f[3])) + f[3]),
    ),
    max_size=12,
)


cuts_st = st.lists(st.integers(0, 10**6), max_size=10)


def _resplit(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@HYP
@given(pieces=chunks_st, cuts=cuts_st, mp=st.sampled_from([1, 50, 65535]))
def test_fuzz_only_protocol_errors(impl, pieces, cuts, mp):
    m = impl("frames")
    data = b"".join(pieces)
    result = outcome(m, _resplit(data, cuts), mp)  # anything but RemoteProtocolError fails the test
    # Splitting never changes the verdict.
    assert result == outcome(m, [data], mp)


@HYP
@given(pieces=chunks_st, cuts=cuts_st, mp=st.sampled_from([1, 50, 65535]))
def test_twins_agree_on_any_bytes(both, pieces, cuts, mp):
    c, py = both("frames")
    chunks = _resplit(b"".join(pieces), cuts)
    assert outcome(c, chunks, mp) == outcome(py, chunks, mp)
    assert outcome(c, chunks, mp, eof=False) == outcome(py, chunks, mp, eof=False)


@HYP
@given(frames=st.lists(frame_st, max_size=20), seed=st.integers(0, 2**32))
def test_twins_cross_round_trip(both, frames, seed):
    c, py = both("frames")
    for enc, dec in ((c, py), (py, c), (c, c), (py, py)):
        blob = encode(enc, frames)
        assert blob == encode(c if enc is py else py, frames)
        parser = dec.FrameParser()
        assert receive(parser, blob, random.Random(seed), max_write=500) == frames
        for t, f, s, p in frames:
            assert dec.unpack_header(enc.pack_header(t, f, s, len(p))) == (t, f, s, len(p))


@HYP
@given(frames=st.lists(frame_st, max_size=20), seed=st.integers(0, 2**32))
def test_round_trip_property(impl, frames, seed):
    m = impl("frames")
    blob = encode(m, frames)
    rng = random.Random(seed)
    assert receive(m.FrameParser(300), blob, rng, max_write=rng.choice([1, 7, 100, 5000])) == frames
    sizes = [rng.randint(0, 200) for _ in range(len(blob) + 1)]
    assert feed_in_pieces(m.FrameParser(300), blob, sizes) == frames


@HYP
@given(header=st.binary(min_size=12, max_size=12))
def test_twins_agree_on_headers(both, header):
    c, py = both("frames")
    results = []
    for m in (c, py):
        try:
            results.append(m.unpack_header(header))
        except RemoteProtocolError as exc:
            results.append((int(exc.code), str(exc)))
    assert results[0] == results[1]


@HYP
@given(
    args=st.tuples(*[st.integers(-(2**33), 2**33)] * 4) | st.tuples(*[st.integers(-2, 70000)] * 4),
    offset=st.integers(-3, 30),
)
def test_twins_agree_on_encoder_errors(both, args, offset):
    c, py = both("frames")
    results = []
    for m in (c, py):
        buf = bytearray(24)
        try:
            m.pack_header_into(buf, offset, *args)
            results.append((m.pack_header(*args), bytes(buf)))
        except ValueError as exc:
            results.append(str(exc))
    assert results[0] == results[1]
