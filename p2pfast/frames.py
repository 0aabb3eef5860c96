"""Frame codec: facade over the compiled kernel or its pure twin (chosen by _accel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfast import _accel

if TYPE_CHECKING:
    from p2pfast._frames_py import Frame, FrameParser, pack_header, pack_header_into, unpack_header
else:
    _m = _accel.module("frames")
    Frame = _m.Frame
    FrameParser = _m.FrameParser
    pack_header = _m.pack_header
    pack_header_into = _m.pack_header_into
    unpack_header = _m.unpack_header

__all__ = ["Frame", "FrameParser", "pack_header", "pack_header_into", "unpack_header"]
