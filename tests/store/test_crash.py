"""Crashes and recovery: a SIGKILLed store, orphan object files, missing object files, the dirty marker, and
the single-writer lock. Real processes, killed by PID; every wait is bounded.

Not tested here: the fsync-error rule (an fsync failure fails the write and is never retried). Provoking
a real fsync EIO needs a faulty block device (dm-error / dm-flakey) or a FUSE filesystem, i.e. root and
kernel modules; monkeypatching os.fsync would be a mock. ENOSPC -> DiskFull is covered through a real
full device (/dev/full) in tests/cli/test_cli.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from pathlib import Path

import apsw
import pytest
from nodetools import (
    assert_layout,
    cli_argv,
    cli_env,
    killing,
    object_files,
    pattern,
    python_script,
    sigkill,
    temp_files,
    wait_for,
)

from p2pfast.datadir import Layout, LocalNode
from p2pfast.errors import IntegrityError, StorageError
from p2pfast.store import segments

SEG = segments.SEGMENT_SIZE


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line from proc.stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line from pid {proc.pid} within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"pid {proc.pid} closed stdout (exit {proc.poll()}), got {buf!r}")
            buf += chunk
    return buf


def test_sigkilled_store_leaves_no_object_and_a_consistent_repo(layout: Layout) -> None:
    root = layout.root
    proc = subprocess.Popen(
        cli_argv("store", "big/key", "-", "--data-dir", root),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    fed = pattern(3 * SEG, seed=4)
    writer_error: list[BaseException] = []

    def feed() -> None:
        # Three segments and no EOF: the store is mid-stream when it is killed.
        assert proc.stdin is not None
        try:
            proc.stdin.write(fed)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        except BaseException as exc:
            writer_error.append(exc)

    writer = threading.Thread(target=feed, daemon=True)
    with killing(proc):
        writer.start()
        # Wait until segment 0 is sealed and written to the temp file (header + 1 MiB + tag).
        wait_for(
            lambda: [
                n for n in temp_files(root) if (root / "objects/tmp" / n).stat().st_size >= 32 + SEG + 16
            ],
            timeout=30,
            what="a temp file holding a sealed segment",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert sigkill(proc) == -9
    writer.join(timeout=30)
    assert not writer.is_alive() and not writer_error

    (tmp_name,) = temp_files(root)
    assert tmp_name.endswith(".p2ptmp")
    assert layout.dirty.exists()  # the killed process had the store open
    assert object_files(root) == []

    with LocalNode(layout) as node:
        assert node.report.temp_removed == [tmp_name]
        assert node.report.quarantined == [] and node.report.missing == []
        assert node.report.clean
        assert temp_files(root) == []
        assert object_files(root) == []
        assert node.repo.list_files() == [] and node.repo.list_objects() == []
        assert node.repo.stats() == {"files": 0, "objects": 0, "bytes": 0}
        # The node works: store and read back what the killed process was storing.
        r, w = os.pipe()
        try:
            os.write(w, fed[:60000])
            os.close(w)
            w = -1
            node.store.put_fd("big/key", r)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        assert node.store.read_bytes("big/key") == fed[:60000]
        assert_layout(root)
    assert not layout.dirty.exists()


def _delete_rows(layout: Layout) -> None:
    conn = apsw.Connection(str(layout.db))
    try:
        with conn:
            conn.execute("DELETE FROM files")
            conn.execute("DELETE FROM keys")
            conn.execute("DELETE FROM objects")
    finally:
        conn.close()


def _mark_dirty(layout: Layout) -> None:
    layout.dirty.write_bytes(b"12345")


def test_object_file_without_row_is_quarantined_at_next_open(layout: Layout, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"never acknowledged")
    with LocalNode(layout) as node:
        node.store.put_path("k", tmp_path / "in")
    (rel,) = object_files(layout.root)
    content = (layout.root / rel).read_bytes()
    _delete_rows(layout)  # as if the process died between the rename and the commit
    _mark_dirty(layout)
    with LocalNode(layout) as node:
        inner = rel.removeprefix("objects/")
        assert node.report.quarantined == [(inner, str(layout.quarantine / inner))]
        assert node.report.missing == []
        assert not node.report.clean
    assert object_files(layout.root) == []
    # moved, never deleted: the same bytes, where the report says
    assert (layout.quarantine / rel.removeprefix("objects/")).read_bytes() == content
    assert not layout.dirty.exists()


def test_fake_object_file_in_a_shard_dir_is_quarantined(layout: Layout) -> None:
    name = "ab" * 32
    shard = layout.objects / "ab" / "ab"
    shard.mkdir(parents=True)
    (shard / name).write_bytes(b"junk")
    (layout.quarantine / "ab" / "ab").mkdir(parents=True)
    (layout.quarantine / "ab" / "ab" / name).write_bytes(b"an earlier one")  # a name already taken
    (layout.objects / "tmp" / "stale.p2ptmp").write_bytes(b"partial")
    _mark_dirty(layout)
    with LocalNode(layout) as node:
        assert node.report.quarantined == [(f"ab/ab/{name}", str(layout.quarantine / f"ab/ab/{name}.1"))]
        assert node.report.temp_removed == ["stale.p2ptmp"]
    assert object_files(layout.root) == [] and temp_files(layout.root) == []
    assert (layout.quarantine / "ab" / "ab" / f"{name}.1").read_bytes() == b"junk"
    assert (layout.quarantine / "ab" / "ab" / name).read_bytes() == b"an earlier one"


def test_stale_temp_file_removed_after_clean_shutdown_too(layout: Layout) -> None:
    (layout.objects / "tmp" / "x.p2ptmp").write_bytes(b"partial")
    with LocalNode(layout) as node:
        assert node.report.temp_removed == ["x.p2ptmp"]
        assert node.report.clean
    assert temp_files(layout.root) == []


def test_row_without_object_file_is_reported(layout: Layout, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(pattern(5000, seed=8))
    (tmp_path / "in2").write_bytes(b"other")
    with LocalNode(layout) as node:
        res = node.store.put_path("lost", tmp_path / "in")
        node.store.put_path("kept", tmp_path / "in2")
        path = node.store.object_path(res.cid)
    path.unlink()
    _mark_dirty(layout)
    with LocalNode(layout) as node:
        assert node.report.missing == [res.cid]
        assert node.report.quarantined == []
        assert [f.key for f in node.repo.list_files()] == [b"kept", b"lost"]  # rows are kept
        with pytest.raises(IntegrityError, match=r"lost: .* is missing"):
            node.store.read_bytes("lost")
        assert node.store.read_bytes("kept") == b"other"


def test_storing_lost_content_again_makes_it_readable(layout: Layout, tmp_path: Path) -> None:
    """After an object file is lost, `store` of the same content reports success: it must then be readable
    (today it deduplicates onto the missing object and drops the new copy)."""
    data = pattern(5000, seed=8)
    (tmp_path / "in").write_bytes(data)
    with LocalNode(layout) as node:
        res = node.store.put_path("lost", tmp_path / "in")
    layout.objects.joinpath(object_files(layout.root)[0].removeprefix("objects/")).unlink()
    _mark_dirty(layout)
    with LocalNode(layout) as node:
        assert node.report.missing == [res.cid]
        node.store.put_path("again", tmp_path / "in")
        assert node.store.read_bytes("again") == data
        assert node.store.read_bytes("lost") == data


def test_dirty_marker_absent_after_clean_close(layout: Layout) -> None:
    node = LocalNode(layout)
    try:
        assert layout.dirty.exists()
        assert layout.dirty.read_bytes() == str(os.getpid()).encode()
    finally:
        node.close()
    assert not layout.dirty.exists()
    node.close()  # idempotent
    with LocalNode(layout) as again:
        assert again.report.clean and again.report.temp_removed == []


HOLDER = r"""
import sys
from p2pfast.datadir import Layout, LocalNode
node = LocalNode(Layout.of(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()  # hold the node open until killed
"""


def test_dirty_marker_present_after_sigkill_and_lock_released(layout: Layout) -> None:
    proc = python_script(
        HOLDER, [str(layout.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    with killing(proc):
        assert _read_line(proc, timeout=30) == b"ready\n"
        assert layout.dirty.read_bytes() == str(proc.pid).encode()
        # Another process holds the lock: a second open waits its bounded time and fails.
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="in use"):
            LocalNode(layout, lock_wait_s=0.2)
        assert 0.2 <= time.monotonic() - t0 < 10
        assert sigkill(proc) == -9
    assert layout.dirty.exists()
    # The kernel dropped the dead process's flock: the next open gets the lock at once and reconciles.
    with LocalNode(layout, lock_wait_s=5) as node:
        assert node.report.clean
    assert not layout.dirty.exists()


def test_second_local_node_fails_while_first_is_open(layout: Layout, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"data")
    first = LocalNode(layout)
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            LocalNode(layout, lock_wait_s=0.2)
        waited = time.monotonic() - t0
        assert 0.2 <= waited < 10, waited
        assert str(layout.root) in str(info.value)
        assert layout.dirty.exists()  # the failed open did not touch the first node's marker
        first.store.put_path("still-works", tmp_path / "in")
    finally:
        first.close()
    with LocalNode(layout, lock_wait_s=0.2) as second:
        assert [f.key for f in second.repo.list_files()] == [b"still-works"]


def test_no_lock_wait_when_free(layout: Layout) -> None:
    t0 = time.monotonic()
    with contextlib.closing(LocalNode(layout, lock_wait_s=0.0)):
        assert time.monotonic() - t0 < 5
