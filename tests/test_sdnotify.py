"""sdnotify.py: the systemd notify protocol, against real AF_UNIX datagram sockets bound by the test.

The receiver stands in for the service manager: each datagram is parsed as `KEY=value` lines, as systemd
does, and compared with the fields the call should have sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import FrameType

import pytest

from p2pfast.front.sdnotify import Notifier

TIMEOUT = 5.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for sun_path (108 bytes), which tmp_path can outgrow."""
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def receiver_path(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for the service manager, and its path."""
    path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(TIMEOUT)
    with sock:
        yield sock, path


@pytest.fixture
def receiver(receiver_path: tuple[socket.socket, str]) -> socket.socket:
    return receiver_path[0]


@pytest.fixture
def notifier(receiver_path: tuple[socket.socket, str]) -> Iterator[Notifier]:
    with closing(Notifier(receiver_path[1])) as n:
        yield n


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record of the "p2pfast.sdnotify" logger, DEBUG included.

    A handler of our own rather than caplog: log.setup() turns propagation off on the "p2pfast" logger,
    after which caplog (on the root logger) sees nothing.
    """
    got: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    logger = logging.getLogger("p2pfast.sdnotify")
    handler = Collect(logging.DEBUG)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def parse(datagram: bytes) -> dict[str, str]:
    """The fields of one notify datagram, as the manager reads them: one KEY=value per line."""
    fields: dict[str, str] = {}
    for line in datagram.decode().split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        assert sep and key and key.isupper(), f"not a KEY=value line: {line!r} in {datagram!r}"
        assert key not in fields, f"{key} twice in {datagram!r}"
        fields[key] = value
    return fields


def receive_one(sock: socket.socket) -> dict[str, str]:
    """The next datagram's fields; and there must be no other datagram behind it."""
    fields = parse(sock.recv(65536))
    sock.setblocking(False)
    try:
        extra = sock.recv(65536)
    except BlockingIOError:
        pass
    else:
        pytest.fail(f"a second datagram: {extra!r}")
    finally:
        sock.settimeout(TIMEOUT)
    return fields


# --- from_environ and the watchdog -------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
        {"NOTIFY_SOCKET": "vsock-stream:2:1234"},
        {"NOTIFY_SOCKET": "run/systemd/notify"},
        {"WATCHDOG_USEC": "400000"},
    ],
)
def test_from_environ_none_without_a_usable_socket(env: dict[str, str]) -> None:
    assert Notifier.from_environ(env) is None


def test_from_environ_reads_os_environ_by_default(
    monkeypatch: pytest.MonkeyPatch, receiver_path: tuple[socket.socket, str]
) -> None:
    receiver, path = receiver_path
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier.from_environ() is None
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier.from_environ()
    assert n is not None
    with closing(n):
        assert n.status("from os.environ")
    assert receive_one(receiver) == {"STATUS": "from os.environ"}


def test_from_environ_path_socket_reaches_the_manager(receiver_path: tuple[socket.socket, str]) -> None:
    receiver, path = receiver_path
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert isinstance(n, Notifier)
    with closing(n):
        assert n.watchdog_interval is None
        assert n.watchdog()
    assert receive_one(receiver) == {"WATCHDOG": "1"}


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("400000", None, 0.2),
        ("400000", "self", 0.2),
        ("3000000", "self", 1.5),
        ("400000", "other", None),
        ("400000", "", None),
        ("abc", None, None),
        ("abc", "self", None),
        ("", None, None),
        ("0", None, None),
        ("0", "self", None),
        ("-400000", None, None),
        (None, "self", None),
        (None, None, None),
    ],
)
def test_watchdog_interval_from_environ(usec: str | None, pid: str | None, interval: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        env["WATCHDOG_PID"] = pid
    n = Notifier.from_environ(env)
    assert n is not None
    with closing(n):
        if interval is None:
            assert n.watchdog_usec is None
            assert n.watchdog_interval is None
        else:
            assert n.watchdog_usec == int(usec or "")
            assert n.watchdog_interval == pytest.approx(interval)


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    with closing(Notifier("/run/systemd/notify", 400_000)) as n:
        assert n.watchdog_interval == pytest.approx(0.2)
    with closing(Notifier("/run/systemd/notify")) as n:
        assert n.watchdog_interval is None


# --- the messages -------------------------------------------------------------------------------------


def test_ready_is_one_datagram_with_status_and_mainpid(receiver: socket.socket, notifier: Notifier) -> None:
    assert notifier.ready("serving 3 peers") is True
    assert receive_one(receiver) == {"READY": "1", "STATUS": "serving 3 peers", "MAINPID": str(os.getpid())}


def test_status(receiver: socket.socket, notifier: Notifier) -> None:
    assert notifier.status("replicating 12/40 objects") is True
    assert receive_one(receiver) == {"STATUS": "replicating 12/40 objects"}


def test_stopping(receiver: socket.socket, notifier: Notifier) -> None:
    assert notifier.stopping("draining 2 connections") is True
    assert receive_one(receiver) == {"STOPPING": "1", "STATUS": "draining 2 connections"}


def test_watchdog(receiver: socket.socket, notifier: Notifier) -> None:
    assert notifier.watchdog() is True
    assert receive_one(receiver) == {"WATCHDOG": "1"}


def test_send_any_fields(receiver: socket.socket, notifier: Notifier) -> None:
    assert notifier.send(RELOADING=1, STATUS="reloading", MONOTONIC_USEC=123456) is True
    assert receive_one(receiver) == {"RELOADING": "1", "STATUS": "reloading", "MONOTONIC_USEC": "123456"}


def test_messages_arrive_in_order(receiver: socket.socket, notifier: Notifier) -> None:
    assert notifier.ready("up")
    assert notifier.watchdog()
    assert notifier.stopping("down")
    assert parse(receiver.recv(65536)) == {"READY": "1", "STATUS": "up", "MAINPID": str(os.getpid())}
    assert parse(receiver.recv(65536)) == {"WATCHDOG": "1"}
    assert receive_one(receiver) == {"STOPPING": "1", "STATUS": "down"}


@pytest.mark.parametrize(
    ("call", "keys"),
    [("status", {"STATUS"}), ("stopping", {"STOPPING", "STATUS"}), ("ready", {"READY", "STATUS", "MAINPID"})],
)
def test_newline_in_status_adds_no_line(
    receiver: socket.socket, notifier: Notifier, call: str, keys: set[str]
) -> None:
    # a status built from a peer's error text must not be able to say READY=1 or MAINPID= itself
    text = "peer said:\nREADY=1\nMAINPID=1\nERRNO=5"
    assert getattr(notifier, call)(text) is True
    fields = receive_one(receiver)
    assert set(fields) == keys
    assert "\n" not in fields["STATUS"]
    assert fields["STATUS"].startswith("peer said:")
    assert "ERRNO=5" in fields["STATUS"]
    if call == "ready":
        assert fields["MAINPID"] == str(os.getpid())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the abstract namespace is Linux's")
def test_abstract_namespace_address() -> None:
    name = f"p2pfast-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(TIMEOUT)
        with closing(Notifier("@" + name)) as n:
            assert n.ready("abstract") is True
        assert receive_one(receiver) == {"READY": "1", "STATUS": "abstract", "MAINPID": str(os.getpid())}
        n2 = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n2 is not None
        with closing(n2):
            assert n2.watchdog() is True
        assert receive_one(receiver) == {"WATCHDOG": "1"}


# --- failures -----------------------------------------------------------------------------------------


def warnings_of(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.WARNING]


def test_no_manager_returns_false_and_warns_once(short_dir: Path, records: list[logging.LogRecord]) -> None:
    path = str(short_dir / "nobody")  # no socket file at all: ENOENT
    with closing(Notifier(path)) as n:
        assert n.ready("up") is False
        assert n.status("still up") is False
        assert n.watchdog() is False
        assert n.stopping("down") is False
    assert len(records) == 4
    warned = warnings_of(records)
    assert len(warned) == 1 and warned[0] is records[0]
    assert warned[0].levelno == logging.WARNING and warned[0].name == "p2pfast.sdnotify"
    assert "event=notify_failed" in warned[0].getMessage()
    assert all(r.levelno == logging.DEBUG for r in records[1:])


def test_manager_gone_returns_false_and_warns_once(
    receiver_path: tuple[socket.socket, str], records: list[logging.LogRecord]
) -> None:
    receiver, path = receiver_path
    with closing(Notifier(path)) as n:
        assert n.status("up") is True
        assert receive_one(receiver) == {"STATUS": "up"}
        receiver.close()  # the socket file stays, nobody reads it: ECONNREFUSED
        results = [n.watchdog() for _ in range(5)]
    assert results == [False] * 5
    assert len(warnings_of(records)) == 1
    assert len(records) == 5


def test_send_after_close_returns_false(receiver: socket.socket, notifier: Notifier) -> None:
    notifier.close()
    assert notifier.watchdog() is False
    notifier.close()  # twice is harmless


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Fail, rather than hang, if the body is still running after `seconds` (a blocked sendto included:
    SIGALRM interrupts it, and pytest.fail's exception is no OSError for send() to swallow)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        pytest.fail(f"still running after {seconds} s: send blocked")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fill(n: Notifier) -> list[bool]:
    """Send until the receiver's queue refuses; each call must return at once, never block."""
    results: list[bool] = []
    with bounded(TIMEOUT):
        for i in range(5000):
            start = time.monotonic()
            results.append(n.status(f"ping {i} " + "x" * 200))
            assert time.monotonic() - start < 1.0, f"send {i} took more than 1 s"
            if results.count(False) >= 20:
                break
    return results


def test_full_receiver_never_blocks(
    receiver: socket.socket, notifier: Notifier, records: list[logging.LogRecord]
) -> None:
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    results = fill(notifier)
    assert results[0] is True
    assert False in results, "the queue never filled"
    # a full queue is not a gone manager: dropped with debug lines, no warning
    assert warnings_of(records) == []
    assert records and all(r.levelno == logging.DEBUG for r in records)
    # what was taken is intact, and once the manager reads, sending works again
    taken = results.count(True)
    receiver.setblocking(False)
    got = 0
    while True:
        try:
            data = receiver.recv(65536)
        except BlockingIOError:
            break
        assert parse(data)["STATUS"].startswith(f"ping {got} ")
        got += 1
    receiver.settimeout(TIMEOUT)
    assert got == taken
    assert notifier.watchdog() is True
    assert receive_one(receiver) == {"WATCHDOG": "1"}


def test_full_queue_does_not_silence_the_warning_for_a_gone_manager(
    receiver_path: tuple[socket.socket, str], records: list[logging.LogRecord]
) -> None:
    receiver, path = receiver_path
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    with closing(Notifier(path)) as n:
        assert False in fill(n)
        assert warnings_of(records) == []
        receiver.close()
        assert n.watchdog() is False
        assert n.watchdog() is False
    assert len(warnings_of(records)) == 1
