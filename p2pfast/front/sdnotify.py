"""systemd's notify protocol (sd_notify(3)), spoken directly: one datagram of `KEY=value` lines to the
AF_UNIX socket NOTIFY_SOCKET names. The protocol is a dozen lines; a binding to libsystemd would be a
compiled dependency for it, and the pure-Python packages for it are unmaintained.

Sending never blocks the event loop: the socket is non-blocking and a datagram the manager cannot take
at once is dropped with a debug line (the next STATUS or WATCHDOG message supersedes it).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("p2pfast.sdnotify")


class Notifier:
    """Messages to the service manager at `address` (a path, or "@name" for the abstract namespace)."""

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        """The notifier systemd asked for (Type=notify sets NOTIFY_SOCKET), or None outside systemd."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address or address[0] not in "/@":
            return None  # unset, or a vsock address: not a socket this node can use
        return cls(address, _watchdog_usec(env))

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, **fields: str | int) -> bool:
        """One datagram; True if the manager took it."""
        message = "".join(f"{k}={_one_line(v)}\n" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            # One warning, not one per ping: a manager that went away stays away.
            full = isinstance(exc, BlockingIOError)  # the manager is busy, not gone
            level = logging.DEBUG if self._failed or full else logging.WARNING
            self._failed = self._failed or not full
            log.log(level, "event=notify_failed socket=%r error=%r", self.address, exc.strerror or str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        self._sock.close()


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID unset or ours)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec


def _one_line(value: str | int) -> str:
    # A newline inside a value would start a new KEY= line in the datagram.
    return str(value).replace("\n", " ")
