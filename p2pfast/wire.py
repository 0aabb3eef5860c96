"""The wire format: one frame = a 12-byte header followed by its payload.

    0        1        2                 4                                 8                                12
    +--------+--------+-----------------+---------------------------------+---------------------------------+
    | version|  type  |  flags (u16 BE) |      stream id (u32 BE)         |   payload length (u32 BE)       |
    +--------+--------+-----------------+---------------------------------+---------------------------------+
    | payload: `length` bytes (after the handshake, a Noise transport message with the header as AD)     ...

The parser rejects a frame on its header alone (bad version, unknown type, unknown flag bits, length above
the receiver's maximum), before any byte of the payload is buffered. docs/protocol.md is the long form;
ext/_common.pxd mirrors these constants and a test checks that the compiled kernels agree.
"""

from __future__ import annotations

import enum

VERSION = 1
HEADER_SIZE = 12

# A Noise transport message is at most 65535 bytes including its 16-byte tag (Noise spec, section 3),
# so one frame carries at most one Noise message.
NOISE_MAX_MESSAGE = 65535
MAX_PAYLOAD = NOISE_MAX_MESSAGE
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD
# Control messages (orjson) are far smaller than bulk data; a tighter cap keeps decoding cheap.
MAX_CONTROL_SIZE = 16 * 1024


class FrameType(enum.IntEnum):
    HANDSHAKE = 1  # Noise handshake message (stream 0)
    CONTROL = 2  # orjson control message
    DATA = 3  # bulk bytes on a stream
    WINDOW = 4  # flow-control credit for a stream (payload: u32 BE increment)
    RESET = 5  # abort one stream (payload: u32 BE error code)
    GOAWAY = 6  # close the connection (payload: u32 BE error code)
    PING = 7  # liveness (payload echoed)


FRAME_TYPE_MIN = min(FrameType)
FRAME_TYPE_MAX = max(FrameType)


class Flag(enum.IntFlag):
    END_STREAM = 0x0001  # last frame the sender sends on this stream
    ACK = 0x0002  # a PING answer


KNOWN_FLAGS = int(Flag.END_STREAM | Flag.ACK)


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL = 1  # malformed frame or message
    FRAME_TOO_LARGE = 2
    BAD_VERSION = 3
    UNKNOWN_TYPE = 4
    BAD_FLAGS = 5
    TRUNCATED = 6  # the peer closed in the middle of a frame
    INTEGRITY = 7
    REFUSED = 8
    INTERNAL = 9
    FLOW_CONTROL = 10  # the peer sent more DATA on a stream than it had credit for
    STREAM_LIMIT = 11  # no stream id or stream slot left (local: open_stream at max_streams)
    IDLE_TIMEOUT = 12  # nothing received for Limits.idle_timeout
    HANDSHAKE_TIMEOUT = 13  # the handshake did not complete within Limits.handshake_timeout
