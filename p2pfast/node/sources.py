"""The byte sources a store reads and the sinks a get writes: what the node's API takes, so that any
front end can use it (the control socket's file descriptors, an HTTP body, a repair's buffer).

A source or sink may name a regular file (`file`): the node then reads or writes it itself on its DB
thread, with no hop through the event loop per chunk, and a get into a file can take back what it wrote
(a local copy that fails its check half way is replaced by a peer's, `readrepair.py`). Anything else
(a pipe, a socket, memory) is awaited chunk by chunk on the loop, so a client that stops reading or
writing holds no thread. The fd adapters are `front.clientio`'s; this module has the in-memory ones.
"""

from __future__ import annotations

from typing import Protocol

from p2pfast.errors import BadInput


class Source(Protocol):
    # A regular file the node may read itself (from its current position to EOF), or None.
    file: int | None

    async def read(self, limit: int) -> bytes | bytearray:
        """Up to `limit` bytes, at least one; empty at the end."""
        ...


class Sink(Protocol):
    # A regular file the node may write itself (from its current position) and truncate, or None.
    file: int | None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """All of `data`, once there is room (back-pressure reaches the transfer)."""
        ...


class BytesSource:
    """A source over bytes held in memory."""

    file: int | None = None

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    async def read(self, limit: int) -> bytes:
        chunk = bytes(self._view[self._pos : self._pos + limit])
        self._pos += len(chunk)
        return chunk


class BufferSink:
    """A sink that collects what it is given (`data`)."""

    file: int | None = None

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data


class CappedSink(BufferSink):
    """A BufferSink for a small file of the node's own (an access key, an object's attributes): one over
    `cap` bytes is not one of them, and is refused (BadInput, `over` set) before it is all read."""

    def __init__(self, cap: int, what: str) -> None:
        super().__init__()
        self.cap, self.what = cap, what
        self.over = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(self.data) + len(data) > self.cap:
            self.over = True
            raise BadInput(f"{self.what} is at most {self.cap} bytes")
        self.data += data
