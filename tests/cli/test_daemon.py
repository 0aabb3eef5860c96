"""The daemon side of the control socket with real processes: a CLI command that goes away mid-request
(Ctrl-C, a killed pipeline) leaves nothing stored and nothing half-written."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from netnodes import make_nodes, running, wait_until
from nodetools import cli_argv, cli_env


def tmp_files(root: Path) -> list[Path]:
    tmp = root / "objects" / "tmp"
    return [p for p in tmp.iterdir()] if tmp.is_dir() else []


def test_a_store_whose_client_dies_stores_nothing(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    with running([a]):
        a.start()
        client = subprocess.Popen(
            cli_argv("store", "half", "-", "--data-dir", a.root),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cli_env(),
        )
        try:
            assert client.stdin is not None
            client.stdin.write(b"x" * (3 << 20))  # a pipeline still producing: the daemon is reading it
            client.stdin.flush()
            wait_until(lambda: bool(tmp_files(a.root)), 20, "the daemon to start the store")
            client.kill()  # the CLI dies (kill -9 of the pipeline); its stdin then ends
            client.wait(timeout=20)
            client.stdin.close()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=20)
        # The daemon saw the client go: the store is abandoned, not completed with what it had read.
        wait_until(lambda: not tmp_files(a.root), 20, "the temp file to be removed")
        out = subprocess.run(
            cli_argv("files", "--json", "--data-dir", a.root), capture_output=True, env=cli_env(), timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == []
        # logged as the cancelled store unwinds, which may come after its temp file went: wait, bounded
        wait_until(lambda: "event=ctl_client_gone cmd=store" in a.log(), 20, "the client_gone log line")


# -- readiness ---------------------------------------------------------------------------------------
_IN_MOVED_TO = 0x80
_IN_CLOSE_WRITE = 0x08


def _renames_into(directory: Path, run: Callable[[], object]) -> list[str]:
    """Names renamed into (or written and closed in) `directory` while `run()` ran, in the kernel's order.

    inotify queues events in the order the operations happened, so this tells what was published first
    without racing the process that does it (no polling)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
    try:
        if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_MOVED_TO | _IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        run()
        names: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                buf = os.read(fd, 1 << 16)
                at = 0
                while at < len(buf):  # struct inotify_event: int wd; u32 mask, cookie, len; char name[len]
                    _wd, _mask, _cookie, size = struct.unpack_from("iIII", buf, at)
                    names.append(buf[at + 16 : at + 16 + size].rstrip(b"\0").decode())
                    at += 16 + size
        return names
    finally:
        os.close(fd)


def test_node_json_is_written_once_the_daemon_answers(tmp_path: Path) -> None:
    # node.json naming a live pid means "talk to me": it was written before ctl.sock was bound and before
    # the metrics address was known, so a test (or tool) that read it raced the daemon's start-up.
    (a,) = make_nodes(tmp_path, 1)
    with running([a]):
        names = _renames_into(a.root, lambda: a.start("--metrics-listen", "127.0.0.1:0"))
        published = [n for n in names if n in ("node.json", "ctl.sock")]
        assert published == ["ctl.sock", "node.json"], names
        info = json.loads((a.root / "node.json").read_bytes())
        assert info["pid"] == a.proc.pid and info["metrics"].startswith("127.0.0.1:")
