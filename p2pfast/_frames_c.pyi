"""Stub for the compiled frame codec (ext/frames.pyx); the pure twin is p2pfast/_frames_py.py."""

from typing import final

from typing_extensions import Buffer

VERSION: int
HEADER_SIZE: int
MAX_PAYLOAD: int
FRAME_TYPE_MIN: int
FRAME_TYPE_MAX: int
KNOWN_FLAGS: int
MAX_PARSER_PAYLOAD: int
MIN_CAPACITY: int
SCRATCH_SIZE: int

__all__ = [
    "FRAME_TYPE_MAX",
    "FRAME_TYPE_MIN",
    "HEADER_SIZE",
    "KNOWN_FLAGS",
    "MAX_PARSER_PAYLOAD",
    "MAX_PAYLOAD",
    "MIN_CAPACITY",
    "SCRATCH_SIZE",
    "VERSION",
    "Frame",
    "FrameParser",
    "pack_header",
    "pack_header_into",
    "unpack_header",
]

@final
class Frame:
    @property
    def type(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def stream_id(self) -> int: ...
    @property
    def payload(self) -> memoryview:
        """BORROWED: valid until the next next_frame/feed/get_buffer/buffer_updated on its parser."""
    def __init__(self, type: int, flags: int, stream_id: int, payload: Buffer) -> None: ...

@final
class FrameParser:
    def __init__(self, max_payload: int = 65535) -> None: ...
    @property
    def max_payload(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    def get_buffer(self, sizehint: int = -1) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def feed(self, data: Buffer) -> None: ...
    def next_frame(self) -> Frame | None: ...
    def feed_eof(self) -> None: ...

def pack_header_into(
    buf: Buffer, offset: int, type: int, flags: int, stream_id: int, length: int
) -> None: ...
def pack_header(type: int, flags: int, stream_id: int, length: int) -> bytes: ...
def unpack_header(buf: Buffer, offset: int = 0) -> tuple[int, int, int, int]: ...
