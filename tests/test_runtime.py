"""runtime.py: the malloc tuning a node runs with (checked in a fresh process: it is process-wide)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from p2pfast import runtime
applied = runtime.tune_malloc()
# after tuning, a 4 MiB block freed and allocated again comes back from the heap (same address), where
# glibc's default would unmap it and map fresh pages
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
a = libc.malloc(4 << 20); libc.free(a); b = libc.malloc(4 << 20); libc.free(b)
print(applied, a == b)
"""


def probe(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_keeps_large_buffers_in_the_heap() -> None:
    assert probe({}) == "True True"
    assert probe({"P2PFAST_MALLOC": "default"}).startswith("False")
