"""The one durable write path (borg SaveFile): temp file in a directory on the same filesystem, write,
fdatasync, rename to the final name, fsync the directory. A failure unlinks the temp file. An fsync error
fails the write: it is never retried and then acknowledged (after a failed fsync the kernel may have
dropped the dirty pages, so a second fsync that succeeds proves nothing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from p2pfast.errors import DiskFull, StorageError

TMP_SUFFIX = ".p2ptmp"


def os_error(exc: OSError, what: str) -> StorageError:
    """One-line StorageError (DiskFull for ENOSPC/EDQUOT) for an OSError while doing `what`."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what}: {reason}")
    return StorageError(f"{what}: {reason}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory it creates so the new entries are durable too."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


class DurableFile:
    """A file that appears under its final name only once its bytes are durable.

    with DurableFile(tmp_dir) as f:
        os.write(f.fd, ...)
        f.commit(final_path)
    Leaving the block without commit() (or with an exception) unlinks the temp file.
    """

    def __init__(self, tmp_dir: Path, mode: int = 0o600, prefix: str = "") -> None:
        self.tmp_dir = Path(tmp_dir)
        self.path = self.tmp_dir / f"{prefix}{secrets.token_hex(8)}{TMP_SUFFIX}"
        try:
            self.fd: int = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise os_error(exc, f"cannot create temp file in {self.tmp_dir}") from exc
        self.committed = False
        self._closed = False

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise os_error(exc, f"fdatasync {self.path} failed") from exc

    def commit(self, final: Path, exclusive: bool = False) -> None:
        """fdatasync, rename to `final`, fsync final's directory (and the temp dir if it differs).

        exclusive=True never replaces an existing `final` (link + unlink instead of rename): key files.
        """
        final = Path(final)
        self.sync()
        self._close()
        try:
            if exclusive:
                os.link(self.path, final)
                os.unlink(self.path)
            else:
                os.replace(self.path, final)
            fsync_dir(final.parent)
            if final.parent != self.tmp_dir:
                fsync_dir(self.tmp_dir)
        except FileExistsError as exc:
            raise StorageError(f"{final} already exists; not replacing it") from exc
        except OSError as exc:
            raise os_error(exc, f"cannot commit {final}") from exc
        self.committed = True

    def abort(self) -> None:
        self._close()
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> DurableFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (a short write is not an error; an OSError is)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def writev_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """write_all of the parts' concatenation, in as few writev() calls as the kernel allows."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + IOV_MAX])
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]


def write_file_durably(
    tmp_dir: Path, final: Path, data: bytes, mode: int = 0o600, exclusive: bool = False
) -> None:
    with DurableFile(tmp_dir, mode=mode) as f:
        try:
            write_all(f.fd, data)
        except OSError as exc:
            raise os_error(exc, f"cannot write {final}") from exc
        f.commit(final, exclusive=exclusive)
