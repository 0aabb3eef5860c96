"""The control socket between the `p2pfast` CLI and a running node daemon (docs/protocol.md).

  codec.py    the format, sans-IO: the JSON lines, their bounds and messages, the error replies
  client.py   the blocking client a CLI command calls: no asyncio, no apsw, no cryptography
  server.py   the daemon's asyncio server (`from p2pfast.ctl.server import CtlServer`)

This package re-exports the client's API and the codec's names a caller needs, never the server: a CLI
command that asks a running daemon imports no asyncio (tests/test_layers.py checks both).
"""

from p2pfast.front.ctl.client import call, running
from p2pfast.front.ctl.codec import (
    MAX_FDS,
    MAX_REQUEST,
    SOCKET_NAME,
    ClientGone,
    DaemonNotRunning,
    exception_for,
    remote_error,
)

__all__ = [
    "MAX_FDS",
    "MAX_REQUEST",
    "SOCKET_NAME",
    "ClientGone",
    "DaemonNotRunning",
    "call",
    "exception_for",
    "remote_error",
    "running",
]
