"""The control socket's codec (p2pfast/ctl/codec.py) without a socket: framing, messages, errors; then the
blocking client against a fake daemon on a real Unix socket that speaks something else."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfast.errors import (
    InternalError,
    LocalProtocolError,
    NotFound,
    ProtocolError,
    RemoteProtocolError,
)
from p2pfast.front import ctl
from p2pfast.front.ctl import codec

WAIT = 10.0

lines_st = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20)


@given(lines=lines_st, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=30))
def test_lines_come_back_whole_however_the_stream_is_cut(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    buf = codec.LineBuffer(64, "a line")
    got: list[bytes] = []
    start = 0
    for end in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        buf.feed(stream[start:end])
        start = max(start, end)
        while (line := buf.next_line()) is not None:
            got.append(line)
    assert got == lines
    assert buf.buffered == 0


def test_a_line_is_at_most_the_limit_with_its_newline() -> None:
    buf = codec.LineBuffer(8, "the thing")
    buf.feed(b"1234567\n")  # 8 with the newline: fits
    assert buf.next_line() == b"1234567"
    buf.feed(b"12345678\n")
    with pytest.raises(RemoteProtocolError, match="the thing is over 8 bytes"):
        buf.next_line()
    # no newline yet, but already at the limit: nothing that comes can make it fit
    buf = codec.LineBuffer(8, "the thing")
    buf.feed(b"12345678")
    with pytest.raises(RemoteProtocolError, match="over 8"):
        buf.next_line()
    # room: never a read past one byte over the limit
    buf = codec.LineBuffer(8, "x")
    assert buf.room == 9
    buf.feed(b"1234")
    assert buf.room == 5


def test_requests_round_trip_and_are_checked_on_both_sides() -> None:
    req = {"cmd": "store", "key": "photos/cät.jpg", "size": None}
    line = codec.encode_request(req, 1)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert codec.decode_request(line[:-1]) == req
    with pytest.raises(LocalProtocolError, match="at most 4"):
        codec.encode_request(req, codec.MAX_FDS + 1)
    with pytest.raises(LocalProtocolError, match="not JSON"):
        codec.encode_request({"cmd": object()})
    with pytest.raises(LocalProtocolError, match="over"):
        codec.encode_request({"cmd": "x", "pad": "p" * codec.MAX_REQUEST})
    for bad, why in [(b"{", "not JSON"), (b"[1]", "not a JSON object"), (b'{"cmd": 1}', '"cmd"')]:
        with pytest.raises(RemoteProtocolError, match=why):
            codec.decode_request(bad)


def test_replies_round_trip() -> None:
    assert codec.decode_reply(codec.encode_progress({"done": 5})[:-1]) == codec.Progress({"done": 5})
    assert codec.decode_reply(codec.encode_result({"rows": []})[:-1]) == codec.Result({"rows": []})
    err = codec.decode_reply(codec.encode_error(NotFound("no file under key k"))[:-1])
    assert err == codec.Error("not found: no file under key k", NotFound.exit_code, NotFound.name)
    assert isinstance(err, codec.Error)
    exc = err.exception()
    assert type(exc) is NotFound and str(exc) == str(NotFound("no file under key k"))
    # a progress line whose value is not an object is advisory: skipped, not an error
    assert codec.decode_reply(b'{"progress": 5}') is None


def test_an_error_reply_is_one_line_and_bounded() -> None:
    e = codec.Error.of(InternalError("first\nsecond\r\nthird " + "x" * 2 * codec.MAX_ERROR))
    assert "\n" not in e.message and "\r" not in e.message
    assert e.message.startswith("internal error") and "first second third" in e.message
    assert len(e.message) == codec.MAX_ERROR and e.message.endswith("…")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not an object"),
        (b'{"ok": true}', "malformed"),
        (b'{"ok": false, "error": "x"}', "malformed"),
        (b'{"ok": false, "error": 1, "exit_code": 3}', "malformed"),
    ],
)
def test_a_reply_that_is_not_the_format_blames_the_daemon(line: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        codec.decode_reply(line)


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not JSON"),
        (b'{"ok": "yes"}\n', "malformed"),
        (b"x" * (codec.MAX_REPLY + 1), "over"),
    ],
)
def test_the_client_blames_what_answers_when_it_does_not_speak_the_format(sent: bytes, why: str) -> None:
    # One error type for the receive path, on either side: RemoteProtocolError (exit 9), not a generic
    # ProtocolError, and not PeerUnavailable (it did answer).
    with tempfile.TemporaryDirectory(prefix="ctl", dir="/tmp") as d:
        path = Path(d) / codec.SOCKET_NAME
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(os.fspath(path))
            listener.listen()

            def fake_daemon() -> None:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(1024)
                    # the client stops reading at the limit and hangs up: what it should do
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        conn.sendall(sent)

            t = threading.Thread(target=fake_daemon)
            t.start()
            try:
                with pytest.raises(RemoteProtocolError, match=why) as info:
                    ctl.call(path, {"cmd": "status"}, timeout=WAIT)
                assert isinstance(info.value, ProtocolError) and info.value.exit_code == 9
                assert info.value.name == "remote_protocol_error"
            finally:
                t.join(WAIT)
