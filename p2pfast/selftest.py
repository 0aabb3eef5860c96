"""A start-up check that the kernels in use compute what their pure twins compute, on fixed vectors.

A stale or miscompiled extension would otherwise corrupt paths or frames silently (borg runs a selftest
at every start for the same reason). It costs well under a millisecond and runs before a node opens.
"""

from __future__ import annotations

import os
from types import ModuleType

from p2pfast import _accel
from p2pfast import _frames_py as frames_py
from p2pfast import _pump_py as pump_py
from p2pfast import _shard_py as shard_py
from p2pfast.errors import InternalError

DIGEST = bytes(range(32))
SHARD_EXPECTED = "00/01/" + DIGEST.hex()


def _shard(mod: ModuleType) -> object:
    return (mod.shard_path(DIGEST), mod.shard_path(DIGEST, 3, 1), mod.shard_paths(DIGEST * 2, 1, 3))


def _frames(mod: ModuleType) -> object:
    header = mod.pack_header(3, 1, 7, 5)
    parser = mod.FrameParser()
    parser.feed(header + b"hello" + mod.pack_header(7, 2, 0, 0))
    out = []
    while (frame := parser.next_frame()) is not None:
        out.append((frame.type, frame.flags, frame.stream_id, bytes(frame.payload)))
    return header, out


def _pump(mod: ModuleType) -> object:
    seen: list[tuple[bytes, int, bool]] = []

    def record(view: memoryview, index: int, last: bool) -> None:
        seen.append((bytes(view), index, last))

    r, w = os.pipe()
    try:
        os.write(w, b"abcdefg")
        os.close(w)
        w = -1
        moved = mod.Pump(3, [record]).run_fd(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return moved, seen


CHECKS = {"shard": (_shard, shard_py), "frames": (_frames, frames_py), "pump": (_pump, pump_py)}


def check(name: str, in_use: ModuleType) -> None:
    fn, twin = CHECKS[name]
    got, want = fn(in_use), fn(twin)
    if got != want:
        raise InternalError(
            f"selftest: kernel {in_use.__name__} disagrees with its pure twin on fixed vectors "
            f"(a stale or broken build? reinstall, or set P2PFAST_PURE=1): {got!r} != {want!r}"
        )


def run() -> None:
    if shard_py.shard_path(DIGEST) != SHARD_EXPECTED:
        raise InternalError("selftest: the pure shard kernel is wrong")
    for name, mod in _accel.MODULES.items():
        check(name, mod)
