"""Stub for the compiled pump kernel (ext/pump.pyx); the pure twin is p2pfast/_pump_py.py."""

from collections.abc import Callable, Iterable
from typing import Protocol

MAX_CHUNK_SIZE: int

__all__ = ["MAX_CHUNK_SIZE", "Pump"]

class _Writer(Protocol):
    def write(self, view: memoryview, /) -> object: ...

# t(view, index, last) -> a new memoryview, or None to pass `view` on unchanged.
_Transform = Callable[[memoryview, int, bool], memoryview | None]

class Pump:
    def __init__(
        self,
        chunk_size: int,
        transforms: Iterable[_Transform] = (),
        sinks: Iterable[int | _Writer] = (),
    ) -> None: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def moved(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    def run_fd(self, fd: int, offset: int = -1, length: int = -1) -> int: ...
    def push(self, data: bytes | bytearray | memoryview) -> int: ...
    def finish(self) -> int: ...
