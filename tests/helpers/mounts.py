"""A small real file system for tests that need a full disk: a tmpfs of a given size, mounted for the test
and unmounted after it. Mounting needs root (CI runs as root); elsewhere the test is skipped, saying why."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """`path` (created) with a tmpfs of `size` (mount's syntax: 1m, 32m) mounted on it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        # lazily: a process the test killed may hold a file open there a moment longer
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)
