"""The control socket over real Unix sockets in tmp_path, on uvloop and on asyncio's own loop (once in
debug mode), failing if anything reached the loop's exception handler. The client is synchronous, so it
runs in a thread while the server runs on the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from loops import LOOPS, run_on

from p2pfast import errors
from p2pfast.errors import (
    BadInput,
    ConfigError,
    DiskFull,
    IntegrityError,
    InternalError,
    LocalProtocolError,
    NotFound,
    P2PError,
    PeerUnavailable,
    ProtocolError,
    RemoteProtocolError,
    StorageError,
)
from p2pfast.front import ctl
from p2pfast.front.ctl.server import CtlServer, Handler

WAIT = 10.0  # every wait in these tests is bounded by this

Progress = Callable[[dict[str, Any]], None]


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    # An AF_UNIX path has at most 107 bytes; a deep $TMPDIR can make tmp_path too long for one.
    if len(os.fsencode(tmp_path)) <= 80:
        yield tmp_path / ctl.SOCKET_NAME
        return
    with tempfile.TemporaryDirectory(prefix="ctl", dir="/tmp") as d:
        yield Path(d) / ctl.SOCKET_NAME


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def echo(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
    return {"echo": request, "fds": len(fds)}


@contextlib.asynccontextmanager
async def serving(path: Path, handler: Handler = echo) -> AsyncIterator[CtlServer]:
    server = CtlServer(path, handler)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def call(
    path: Path, request: dict[str, Any], fds: list[int] | None = None, **kw: Any
) -> dict[str, Any]:
    return await asyncio.to_thread(ctl.call, path, request, fds or (), timeout=WAIT, **kw)


async def assert_eof(r: int) -> None:
    """The pipe read end `r` reaches EOF: every copy of its write end, the server's too, is closed.
    Waits in a thread, bounded, since the server may close its copy just after replying."""

    def wait() -> bytes:
        ready, _, _ = select.select([r], [], [], WAIT)
        assert ready, "a copy of the write end is still open"
        return os.read(r, 1)

    assert await asyncio.to_thread(wait) == b""
    os.close(r)


def raw_request(path: Path, data: bytes, fds: list[int] | None = None) -> dict[str, Any]:
    """Send `data` as is (with fds), return the final reply line parsed; progress lines are skipped."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(WAIT)
        s.connect(os.fspath(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if fds:
                sent = socket.send_fds(s, [data], fds)
                s.sendall(data[sent:])
            else:
                s.sendall(data)
        buf = b""
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = orjson.loads(line)
                if "ok" in msg:
                    assert isinstance(msg, dict)
                    return msg
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            assert chunk, f"closed without a final line after {buf!r}"
            buf += chunk


# -- requests and replies ----------------------------------------------------------------------------


def test_round_trip(loop_kind: str, sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path):
            req = {"cmd": "store", "key": "photos/cät.jpg", "n": [1, 2.5, None, True]}
            assert await call(sock_path, req) == {"echo": req, "fds": 0}
            # one request per connection, many connections
            results = await asyncio.gather(*(call(sock_path, {"cmd": "x", "i": i}) for i in range(20)))
            assert [r["echo"]["i"] for r in results] == list(range(20))

    run_on(loop_kind, main)


def test_progress_lines_arrive_in_order_from_loop_and_threads(loop_kind: str, sock_path: Path) -> None:
    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        for i in range(50):
            progress({"i": i})
            await asyncio.sleep(0)

        def in_thread() -> None:  # as the store's put_fd does, from the DB thread
            for i in range(50, 100):
                progress({"i": i})

        await asyncio.to_thread(in_thread)
        return {"done": True}

    async def main() -> None:
        async with serving(sock_path, handler):
            seen: list[int] = []
            result = await call(sock_path, {"cmd": "p"}, on_progress=lambda p: seen.append(p["i"]))
            assert result == {"done": True}
            assert seen == list(range(100))

    run_on(loop_kind, main)


def test_slow_client_loses_progress_never_the_final_line(loop_kind: str, sock_path: Path) -> None:
    handler_done = threading.Event()
    total = 3000

    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        for i in range(total):
            progress({"i": i, "pad": "x" * 1000})  # ~3 MB in all: more than the kernel and the queue hold
            await asyncio.sleep(0)
        handler_done.set()
        return {"done": True}

    async def main() -> None:
        async with serving(sock_path, handler):
            seen: list[int] = []

            def on_progress(p: dict[str, Any]) -> None:
                if not seen:  # stop reading until the handler has produced everything
                    assert handler_done.wait(WAIT)
                seen.append(p["i"])

            result = await call(sock_path, {"cmd": "p"}, on_progress=on_progress)
            assert result == {"done": True}
            assert 0 < len(seen) < total
            assert seen == sorted(seen) and len(set(seen)) == len(seen)

    run_on(loop_kind, main)


def test_fds_pass_both_ways_and_the_server_closes_its_copies(loop_kind: str, sock_path: Path) -> None:
    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        src, out = fds
        data = os.pread(src, 1 << 16, 0)
        os.write(out, data.upper())
        return {"read": len(data)}

    async def main() -> None:
        async with serving(sock_path, handler):
            r, w = os.pipe()
            with tempfile.TemporaryFile() as src:
                src.write(b"hello through the socket")
                src.flush()
                result = await call(sock_path, {"cmd": "copy"}, [src.fileno(), w])
            assert result == {"read": 24}
            os.close(w)  # ours; the daemon's copy is closed already, or the read below would not end
            with os.fdopen(r, "rb") as pipe:
                data = await asyncio.wait_for(asyncio.to_thread(pipe.read), WAIT)
            assert data == b"HELLO THROUGH THE SOCKET"

    run_on(loop_kind, main)


@pytest.mark.parametrize(
    "cls",
    # the protocol errors share exit code 9: the reply's "code" says which (a --json error line names it)
    [
        NotFound,
        BadInput,
        IntegrityError,
        StorageError,
        DiskFull,
        ConfigError,
        LocalProtocolError,
        RemoteProtocolError,
    ],
)
def test_a_p2p_error_comes_back_as_its_class(cls: type[P2PError], sock_path: Path) -> None:
    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        raise cls("no file under key photos/cat.jpg")

    async def main() -> None:
        async with serving(sock_path, handler):
            with pytest.raises(cls) as info:
                await call(sock_path, {"cmd": "get"})
            assert type(info.value) is cls
            assert str(info.value) == str(cls("no file under key photos/cat.jpg"))
            assert info.value.exit_code == cls.exit_code and info.value.name == cls.name

    run_on("uvloop", main)


def test_any_other_exception_is_an_internal_error_and_logged(
    loop_kind: str, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        raise ValueError("boom\nsecond line")

    async def main() -> None:
        async with serving(sock_path, handler):
            with pytest.raises(InternalError, match="ValueError: boom second line"):
                await call(sock_path, {"cmd": "x"})

    with caplog.at_level(logging.INFO, logger="p2pfast.ctl"):
        run_on(loop_kind, main)
    lines = [r.getMessage() for r in caplog.records]
    assert any("event=ctl_handler_failed" in ln and "cmd='x'" in ln for ln in lines), lines


def test_handler_results_that_are_not_json_objects_are_internal_errors(sock_path: Path) -> None:
    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> Any:
        return [1] if request["cmd"] == "list" else {"x": object()}

    async def main() -> None:
        async with serving(sock_path, handler):
            with pytest.raises(InternalError, match="not a dict"):
                await call(sock_path, {"cmd": "list"})
            with pytest.raises(InternalError, match="not JSON"):
                await call(sock_path, {"cmd": "obj"})

    run_on("uvloop", main)


# -- malformed requests ------------------------------------------------------------------------------


def test_malformed_requests_get_error_replies_and_the_server_goes_on(loop_kind: str, sock_path: Path) -> None:
    calls: list[str] = []

    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        calls.append(request["cmd"])
        return {}

    bad = {
        b"\xff\xfe garbage\n": "not JSON",
        b"[1, 2]\n": "not a JSON object",
        b'"cmd"\n': "not a JSON object",
        b'{"key": "k"}\n': '"cmd"',
        b'{"cmd": 5}\n': '"cmd"',
        b'{"cmd": "x"}\n{"cmd": "y"}\n': "after the request line",
        b"a" * (ctl.MAX_REQUEST + 100): "over",
        b"a" * ctl.MAX_REQUEST + b"\n": "over",  # one byte too many with its newline
        b"x" * (3 * ctl.MAX_REQUEST): "over",
    }

    async def main() -> None:
        before = open_fds()
        async with serving(sock_path, handler):
            for data, why in bad.items():
                reply = await asyncio.to_thread(raw_request, sock_path, data)
                assert reply["ok"] is False and why in reply["error"], (data[:40], reply)
                assert reply["exit_code"] == ProtocolError.exit_code
            # too many fds: all of them closed by the server, none kept
            pipes = [os.pipe() for _ in range(ctl.MAX_FDS + 1)]
            reply = await asyncio.to_thread(raw_request, sock_path, b'{"cmd": "x"}\n', [w for _, w in pipes])
            assert reply["ok"] is False and "file descriptors" in reply["error"]
            for r, w in pipes:
                os.close(w)
                await assert_eof(r)  # no copy of w is left open in the server
            # exactly at the limit is fine
            line = orjson.dumps({"cmd": "max", "pad": ""})
            line = orjson.dumps({"cmd": "max", "pad": "p" * (ctl.MAX_REQUEST - len(line) - 1)}) + b"\n"
            assert len(line) == ctl.MAX_REQUEST
            assert (await asyncio.to_thread(raw_request, sock_path, line))["ok"] is True
            assert calls == ["max"]
            assert await call(sock_path, {"cmd": "still-serving"}) == {}
        assert open_fds() == before

    run_on(loop_kind, main)


def test_client_side_checks(sock_path: Path) -> None:
    with pytest.raises(LocalProtocolError, match="at most 4"):
        ctl.call(sock_path, {"cmd": "x"}, [0, 1, 2, 0, 1])
    with pytest.raises(LocalProtocolError, match="over"):
        ctl.call(sock_path, {"cmd": "x", "pad": "p" * ctl.MAX_REQUEST})
    with pytest.raises(LocalProtocolError, match="not JSON"):
        ctl.call(sock_path, {"cmd": object()})


# -- the socket file ---------------------------------------------------------------------------------


def test_socket_is_0600_and_close_removes_it(loop_kind: str, sock_path: Path) -> None:
    async def main() -> None:
        assert not ctl.running(sock_path)
        async with serving(sock_path):
            st = os.lstat(sock_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert sorted(p.name for p in sock_path.parent.iterdir()) == [ctl.SOCKET_NAME]  # no temp left
            assert await asyncio.to_thread(ctl.running, sock_path)
        assert not sock_path.exists()
        assert not ctl.running(sock_path)

    old = os.umask(0)  # the widest umask: the mode must not depend on it
    try:
        run_on(loop_kind, main)
    finally:
        os.umask(old)


def test_stale_socket_is_replaced(loop_kind: str, sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(sock_path))  # as a daemon killed with SIGKILL leaves it
    assert sock_path.exists()
    with pytest.raises(ctl.DaemonNotRunning):
        ctl.call(sock_path, {"cmd": "x"})

    async def main() -> None:
        async with serving(sock_path):
            assert (await call(sock_path, {"cmd": "x"}))["echo"] == {"cmd": "x"}

    run_on(loop_kind, main)


def test_a_second_server_on_a_live_socket_fails_clearly(loop_kind: str, sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path):
            second = CtlServer(sock_path, echo)
            with pytest.raises(ConfigError, match="another daemon is serving"):
                await second.start()
            await second.close()  # harmless, and must not remove the first one's socket
            assert (await call(sock_path, {"cmd": "x"}))["echo"] == {"cmd": "x"}

    run_on(loop_kind, main)


def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: Path) -> None:
    sock_path.write_text("not a socket")

    async def main() -> None:
        with pytest.raises(ConfigError, match="not a socket"):
            await CtlServer(sock_path, echo).start()

    run_on("uvloop", main)
    assert sock_path.read_text() == "not a socket"


def test_call_when_nothing_runs(sock_path: Path) -> None:
    with pytest.raises(ctl.DaemonNotRunning, match="nothing serves") as info:
        ctl.call(sock_path, {"cmd": "x"})
    assert isinstance(info.value, PeerUnavailable)
    assert info.value.exit_code == PeerUnavailable.exit_code
    assert not ctl.running(sock_path)


def test_daemon_closing_without_a_final_line(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(os.fspath(sock_path))
        listener.listen()

        def fake_daemon() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b'{"progress": {"n": 1}}\n')

        t = threading.Thread(target=fake_daemon)
        t.start()
        try:
            with pytest.raises(PeerUnavailable, match="without a reply") as info:
                ctl.call(sock_path, {"cmd": "x"}, timeout=WAIT)
            assert not isinstance(info.value, ctl.DaemonNotRunning)
        finally:
            t.join(WAIT)


def test_other_uids_are_refused(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("SO_PEERCRED is Linux-only")
    called: list[str] = []

    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        called.append(request["cmd"])
        return {}

    async def main() -> None:
        async with serving(sock_path, handler):
            # the daemon believes it runs as someone else, so this process is a foreign uid to it
            monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
            r, w = os.pipe()
            with pytest.raises(ConfigError, match=f"uid {os.getuid()} may not use"):
                await call(sock_path, {"cmd": "x"}, [w])
            os.close(w)
            await assert_eof(r)  # the fd never reached (or stayed in) the daemon
            assert called == []

    run_on("uvloop", main)


# -- lifetimes: client gone, shutdown, fd leaks --------------------------------------------------------


def test_client_going_away_cancels_the_request(loop_kind: str, sock_path: Path) -> None:
    loop_handler_cancelled = asyncio.Event()
    handler_started = threading.Event()
    thread_saw_gone: list[P2PError] = []

    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        handler_started.set()
        if request["cmd"] == "thread":
            stop = threading.Event()

            def work() -> None:
                try:
                    while not stop.wait(0.01):
                        progress({"tick": 1})
                except ctl.ClientGone as exc:
                    thread_saw_gone.append(exc)

            fut = asyncio.get_running_loop().run_in_executor(None, work)
            try:
                await asyncio.shield(fut)
            finally:
                await asyncio.wait_for(asyncio.shield(fut), WAIT)  # a thread is waited for, not abandoned
            return {}
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            loop_handler_cancelled.set()
            raise
        return {}

    def hang_up(cmd: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(os.fspath(sock_path))
            s.sendall(orjson.dumps({"cmd": cmd}) + b"\n")
            # (a client gone before its handler starts is fine too: the handler then never runs)
            assert handler_started.wait(WAIT)
            handler_started.clear()
            if cmd == "thread":
                s.settimeout(WAIT)
                assert s.recv(1)  # the thread is running: a progress line came

    async def main() -> None:
        async with serving(sock_path, handler):
            await asyncio.to_thread(hang_up, "wait")
            await asyncio.wait_for(loop_handler_cancelled.wait(), WAIT)
            await asyncio.to_thread(hang_up, "thread")
            await asyncio.wait_for(_until(lambda: bool(thread_saw_gone)), WAIT)

    run_on(loop_kind, main)


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


def test_close_cancels_requests_in_flight_and_tells_their_clients(loop_kind: str, sock_path: Path) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    async def main() -> None:
        before = open_fds()
        server = CtlServer(sock_path, handler)
        await server.start()
        r, w = os.pipe()
        pending = asyncio.ensure_future(call(sock_path, {"cmd": "long"}, [w]))
        await asyncio.wait_for(started.wait(), WAIT)
        await asyncio.wait_for(server.close(), WAIT)
        assert cancelled.is_set()
        with pytest.raises(PeerUnavailable, match="shutting down"):
            await asyncio.wait_for(pending, WAIT)
        assert not sock_path.exists()
        os.close(w)
        await assert_eof(r)
        assert open_fds() == before

    run_on(loop_kind, main)


def test_no_fd_leaks(loop_kind: str, sock_path: Path) -> None:
    kept: list[int] = []

    async def handler(request: dict[str, Any], fds: list[int], progress: Progress) -> dict[str, Any]:
        if request["cmd"] == "keep":
            kept.append(os.dup(fds[0]))  # taking one is a dup; the received ones are closed regardless
        fds.clear()  # what the handler does to its list does not change what the server closes
        if request["cmd"] == "fail":
            raise NotFound("nothing")
        return {}

    async def main() -> None:
        before = open_fds()
        async with serving(sock_path, handler):
            with tempfile.TemporaryFile() as f:
                for cmd in ["plain", "keep", "fail", "plain"]:
                    with contextlib.suppress(NotFound):
                        await call(sock_path, {"cmd": cmd}, [f.fileno(), f.fileno(), f.fileno()])
                for _ in range(5):
                    assert await asyncio.to_thread(ctl.running, sock_path)
        assert len(kept) == 1
        os.close(kept.pop())
        assert open_fds() == before

    run_on(loop_kind, main)


# -- exit codes ------------------------------------------------------------------------------------


def test_every_exit_code_maps_back_to_a_class_with_that_code() -> None:
    codes = {
        c.exit_code
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, P2PError) and c.__module__ == errors.__name__
    }
    for code in codes:
        assert ctl.exception_for(code).exit_code == code
    assert ctl.exception_for(9) is ProtocolError
    assert ctl.exception_for(6) is StorageError
    assert ctl.exception_for(12345) is P2PError
    err = ctl.remote_error(12345, "frobnicate failed")
    assert type(err) is P2PError and "frobnicate failed" in str(err)
