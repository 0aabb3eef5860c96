"""ContentStore: put, read (whole or a byte range), delete and reconcile encrypted objects.

Objects are named by the HMAC of their content id (keys.KeyRing.object_name) and placed by the `shard`
kernel; how each is sealed is the envelope's (envelope.py), how a put streams into a temp file the
upload's (upload.py); metadata lives in the repo. The order of writes is what makes a
crash harmless: the object file becomes durable under its final name before its repo row is committed, and
a delete commits the row change before unlinking the file. A crash between the two leaves only an object
file without a row, which reconcile() moves to quarantine/: it was never acknowledged, but a file without
a row may as well be one of a repo the operator lost and will restore, so no file is ever deleted unless
a row whose refcount reached zero says so.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from p2pfast.errors import BadInput, IntegrityError, NotFound, StorageError
from p2pfast.pump import Pump
from p2pfast.repo.repo import ObjectRow, Repo
from p2pfast.shard import shard_path
from p2pfast.store import contentid, envelope, segments
from p2pfast.store.durable import TMP_SUFFIX, fsync_dir, make_dirs, os_error
from p2pfast.store.keys import KeyRing
from p2pfast.store.upload import Progress, PutResult, Transform, Upload, is_small, progress_transform
from p2pfast.store.userkey import MAX_KEY_BYTES, encode_key, show_key

SHARD_WIDTH = 2
SHARD_DEPTH = 2

Sink = int | object  # an fd, or an object with write(view)


@dataclass(slots=True)
class ReconcileReport:
    temp_removed: list[str] = field(default_factory=list)
    # object files no repo row accounts for: (path under objects/, where it now is under quarantine/)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # content ids whose object file is gone
    refcounts_fixed: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.quarantined or self.missing or self.refcounts_fixed)


def object_files(root: Path) -> Iterator[Path]:
    """Every file under the objects dir `root` but the temp files of writes in progress (root/tmp): what
    reconcile matches against the repo, and what tells that a data dir holds objects at all."""
    for dirpath, dirnames, filenames in os.walk(root):  # nothing at all for a missing root
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "tmp"]
        for fn in filenames:
            yield Path(dirpath) / fn


class ContentStore:
    def __init__(
        self,
        root: Path,
        keyring: KeyRing,
        repo: Repo,
        segment_size: int = segments.SEGMENT_SIZE,
        quarantine: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.quarantine = quarantine if quarantine is not None else self.root.parent / "quarantine"
        self.tmp_dir = self.root / "tmp"
        self.keyring = keyring
        self.repo = repo
        self.segment_size = segment_size
        self._hash_pool: ThreadPoolExecutor | None = None
        self._write_pool: ThreadPoolExecutor | None = None

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._hash_pool is None or self._write_pool is None:
            self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pfast-hash")
            self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pfast-write")
        return self._hash_pool, self._write_pool

    def close(self) -> None:
        for pool in (self._hash_pool, self._write_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._hash_pool = self._write_pool = None

    # -- paths ---------------------------------------------------------------------------------------
    def object_path(self, cid: str) -> Path:
        return self.root / shard_path(self.keyring.object_name(cid), SHARD_WIDTH, SHARD_DEPTH)

    # -- put -----------------------------------------------------------------------------------------
    def put_fd(self, key: str | bytes, fd: int, progress: Progress | None = None) -> PutResult:
        """Store what `fd` yields until EOF under `key`. Returns once the object and its row are durable."""
        expected = _remaining(fd)
        upload = self.begin(key, expected, progress)
        try:
            try:
                if expected is not None and is_small(expected, self.segment_size):
                    # Read it whole: Upload seals it in one step, and the pump would cost more than the work.
                    while chunk := os.read(fd, max(expected, 1 << 16)):
                        upload.write(chunk)
                else:
                    upload.length = upload.pump.run_fd(fd)
            except OSError as exc:
                raise os_error(exc, f"cannot store {show_key(upload.key)}") from exc
            return upload.finish()
        finally:
            upload.abort()

    def begin(self, key: str | bytes, size: int | None = None, progress: Progress | None = None) -> Upload:
        """A put fed by pushes (the network receive path): `write()` chunks, then `finish()`.

        `size`, when known, reserves the space up front (a full disk fails here, before any byte moves).
        """
        return Upload(self, encode_key(key), size, progress)

    def _commit(self, upload: Upload, cid: str, length: int, holders: Sequence[str] = ()) -> PutResult:
        raw_key, tmp, seg = upload.key, upload.tmp, self.segment_size
        now = time.time()
        existing = self.repo.get_object(cid)
        final = self.object_path(cid)
        if existing is not None and final.exists():
            # Same content already stored: one object, one more reference. The temp file goes.
            tmp.abort()
            self.unlink_orphan(self.repo.add_file(raw_key, cid, length, now, holders=holders))
            return PutResult(raw_key, cid, length, True, upload.plaintext)
        make_dirs(final.parent)
        tmp.commit(final)
        row = ObjectRow(cid, length, seg, segments.segment_count(length, seg), 1, now)
        wrapped = self.keyring.wrap(cid, upload.data_key)
        try:
            if existing is not None:
                # The row outlived its file (reconcile reports it missing): this write restores the
                # object, under the new data key.
                self.repo.replace_object(row, wrapped, envelope.CURRENT.algorithm)
                existing = None
                old = self.repo.add_file(raw_key, cid, length, now, holders=holders)
            else:
                old = self.repo.add_file(
                    raw_key,
                    cid,
                    length,
                    now,
                    new_object=row,
                    wrapped_key=wrapped,
                    algorithm=envelope.CURRENT.algorithm,
                    holders=holders,
                )
        except BaseException:
            if existing is None and self.repo.get_object(cid) is None:
                # Never acknowledged: the file has no row and no key, so it goes.
                self.unlink_orphan(cid)
            raise
        self.unlink_orphan(old)
        return PutResult(raw_key, cid, length, False, upload.plaintext)

    def _replace(self, upload: Upload, cid: str, length: int) -> PutResult:
        """Upload.finish_repair's commit: rename first, then the key row, as the restore path in _commit
        does. A crash between the two leaves a file the old key cannot open: as unreadable as the bad
        copy it replaced, never a wrong one."""
        if self.repo.get_object(cid) is None:
            raise NotFound(f"object {cid} is not held here: nothing to repair")
        final = self.object_path(cid)
        make_dirs(final.parent)
        upload.tmp.commit(final)
        seg = self.segment_size
        row = ObjectRow(cid, length, seg, segments.segment_count(length, seg), 1, time.time())
        self.repo.replace_object(row, self.keyring.wrap(cid, upload.data_key), envelope.CURRENT.algorithm)
        return PutResult(upload.key, cid, length, False, upload.plaintext)

    def put_path(self, key: str | bytes, path: Path, progress: Progress | None = None) -> PutResult:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise BadInput(f"cannot store {path}: it is a directory")
            return self.put_fd(key, fd, progress)
        finally:
            os.close(fd)

    # -- read ----------------------------------------------------------------------------------------
    def stat(self, key: str | bytes) -> tuple[bytes, str, int]:
        raw_key = encode_key(key)
        row = self.repo.get_file(raw_key)
        if row is None:
            raise NotFound(f"no file under key {show_key(raw_key)}")
        return raw_key, row.cid, row.size

    def read(
        self,
        key: str | bytes,
        sink: Sink,
        offset: int = 0,
        length: int = -1,
        progress: Progress | None = None,
    ) -> int:
        """Write the plaintext of `key` (or the range offset, length) to `sink`; returns bytes written.

        Every segment read is authenticated and checked against its leaf hash, and the leaf list against the
        content id, so what reaches the sink is exactly what was stored. On a failure an IntegrityError names
        the key; bytes of earlier segments may already be in the sink (they were verified).
        """
        raw_key, cid, _size = self.stat(key)
        return self.read_object(cid, sink, offset, length, progress, name=show_key(raw_key))

    def read_object(
        self,
        cid: str,
        sink: Sink,
        offset: int = 0,
        length: int = -1,
        progress: Progress | None = None,
        *,
        name: str | None = None,
    ) -> int:
        """read() by content id (what peers ask for); NotFound when this node does not hold it."""
        name = name or cid
        if offset < 0:
            raise BadInput(f"negative offset {offset}")
        fd, data_key, obj = self._open_object(cid, name)
        try:
            size, seg = obj.size, obj.segment_size
            end = size if length < 0 else min(size, offset + length)
            return self._read_fd(fd, data_key, name, cid, size, seg, offset, end, sink, progress)
        except OSError as exc:
            raise os_error(exc, f"cannot read {name}") from exc
        finally:
            os.close(fd)

    def leaves(self, cid: str) -> tuple[int, bytes]:
        """(size, segment hash list) of a held object, checked against its content id."""
        fd, data_key, obj = self._open_object(cid, cid)
        try:
            leaves = self._read_index(fd, data_key, cid, cid, obj.size, obj.segment_size)[1]
            return obj.size, leaves
        except OSError as exc:
            raise os_error(exc, f"cannot read {cid}") from exc
        finally:
            os.close(fd)

    def _open_object(self, cid: str, name: str) -> tuple[int, bytes, ObjectRow]:
        obj = self.repo.get_object(cid)
        wrapped = self.repo.get_key(cid)
        if obj is None and wrapped is None:
            raise NotFound(f"object {cid} is not held here")
        if obj is None or wrapped is None:
            raise IntegrityError(f"{name}: repo has no object or key row for {cid}")
        try:
            data_key = self.keyring.unwrap(cid, wrapped[0])
        except IntegrityError as exc:
            raise IntegrityError(f"{name}: {exc.args[0]}") from None
        path = self.object_path(cid)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise IntegrityError(f"{name}: object file for {cid} is missing") from None
        except OSError as exc:
            raise os_error(exc, f"cannot open object for {name}") from exc
        return fd, data_key, obj

    def _read_index(
        self, fd: int, data_key: bytes, name: str, cid: str, size: int, seg: int
    ) -> tuple[envelope.Envelope, bytes]:
        """(envelope, leaves) of an open object, every check made."""
        raw_header = os.pread(fd, envelope.HEADER_READ, 0)
        fmt = envelope.format_of(raw_header)
        actual, expected = os.fstat(fd).st_size, fmt.file_size(size, seg)
        if actual != expected:
            raise IntegrityError(
                f"{name}: object file is {actual} bytes, expected {expected} (truncated or extended)"
            )
        env = fmt.open(raw_header, data_key, name)
        if env.length != size or env.segment_size != seg:
            raise IntegrityError(f"{name}: object header does not match the repo")
        leaves = env.open_index(os.pread(fd, fmt.index_size(size, seg), fmt.data_end(size, seg)), cid, name)
        if contentid.root(size, leaves) != cid:
            raise IntegrityError(f"{name}: segment index does not match content id {cid}")
        return env, leaves

    def _read_fd(
        self,
        fd: int,
        data_key: bytes,
        name: str,
        cid: str,
        size: int,
        seg: int,
        offset: int,
        end: int,
        sink: Sink,
        progress: Progress | None,
    ) -> int:
        env, leaves = self._read_index(fd, data_key, name, cid, size, seg)
        nsegs = segments.segment_count(size, seg)
        if offset >= end and not (size == 0 and offset == 0):
            return 0  # nothing in range; an empty object read from 0 still verifies its one segment
        first = offset // seg
        last = max(first, (end - 1) // seg) if size else 0
        start_in_first = offset - first * seg
        plain = bytearray(min(seg, max(size, 1)))
        plain_view = memoryview(plain)
        written = 0

        def open_segment(view: memoryview, i: int, _last: bool) -> memoryview:
            nonlocal written
            index = first + i
            out = plain_view[: len(view) - env.tag_size]
            n = env.open_segment_into(index, index == nsegs - 1, view, out, name)
            if contentid.leaf(plain_view[:n]) != leaves[32 * index : 32 * index + 32]:
                raise IntegrityError(f"{name}: segment {index} does not match its hash")
            lo = start_in_first if index == first else 0
            hi = min(n, end - index * seg)
            written += hi - lo
            return plain_view[lo:hi]

        transforms: list[Transform] = [open_segment]
        if progress is not None:
            transforms.append(progress_transform(progress))
        start = env.segment_offset(first, seg)
        stop = min(env.segment_offset(last + 1, seg), env.data_end(size, seg))
        # A range within one segment (every small object) needs buffers of that segment's size, not 1 MiB.
        chunk = max(1, min(seg + env.tag_size, stop - start))
        Pump(chunk, transforms, [sink]).run_fd(fd, start, stop - start)
        return written

    def read_bytes(self, key: str | bytes, offset: int = 0, length: int = -1) -> bytes:
        """Whole plaintext in memory: for tests and small objects."""
        sink = _Collect()
        self.read(key, sink, offset, length)
        return bytes(sink.buf)

    def read_object_bytes(
        self, cid: str, offset: int = 0, length: int = -1, *, name: str | None = None
    ) -> bytearray:
        """read_object() into memory: one chunk of a transfer (the pump's buffers are reused, so the
        plaintext has to be copied out anyway). `name` is what an error calls it (the cid by default)."""
        sink = _Collect()
        self.read_object(cid, sink, offset, length, name=name)
        return sink.buf

    # -- delete --------------------------------------------------------------------------------------
    def delete(self, key: str | bytes) -> tuple[str, bool]:
        """Drop the key; the object goes when no key refers to it any more (row first, then the file)."""
        raw_key = encode_key(key)
        try:
            cid, orphaned = self.repo.remove_file(raw_key)
        except NotFound:
            raise NotFound(f"no file under key {show_key(raw_key)}") from None
        if orphaned:
            self.unlink_orphan(cid)
        return cid, orphaned

    def unlink_orphan(self, cid: str | None) -> None:
        """Remove the object file of `cid` after its rows went (a no-op for None or a missing file)."""
        if cid is None:
            return
        path = self.object_path(cid)
        try:
            os.unlink(path)
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # The row is gone already; reconcile removes the file at the next open.
            raise os_error(exc, f"cannot remove object file {path}") from exc

    # -- reconcile -----------------------------------------------------------------------------------
    def _quarantine_file(self, path: Path, rel: str) -> Path:
        """Move an object file no row accounts for to quarantine/ (same relative path, a numbered suffix if
        that name is taken), durably: it may be a file stored under a repo the operator will restore, so
        it is never deleted here."""
        target = self.quarantine / rel
        n = 0
        while target.exists():
            n += 1
            target = self.quarantine / f"{rel}.{n}"
        try:
            make_dirs(target.parent)
            os.rename(path, target)
            fsync_dir(target.parent)
            fsync_dir(path.parent)
        except OSError as exc:
            raise os_error(exc, f"cannot move unaccounted object {path} to {self.quarantine}") from exc
        return target

    def remove_temp_files(self) -> list[str]:
        removed = []
        if self.tmp_dir.is_dir():
            for entry in os.scandir(self.tmp_dir):
                if entry.name.endswith(TMP_SUFFIX):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return removed

    def reconcile(self) -> ReconcileReport:
        """Bring disk and repo into agreement after a crash. Only safe repairs are made."""
        report = ReconcileReport(temp_removed=self.remove_temp_files())
        expected = {self.object_path(o.cid): o.cid for o in self.repo.list_objects()}
        on_disk = set(object_files(self.root))
        for path in sorted(on_disk - expected.keys()):
            rel = str(path.relative_to(self.root))
            report.quarantined.append((rel, str(self._quarantine_file(path, rel))))
        report.missing = sorted(cid for path, cid in expected.items() if path not in on_disk)
        report.refcounts_fixed = self.repo.fix_refcounts()
        return report


class _Collect:
    """A pump sink that keeps what it is given."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, view: memoryview) -> None:
        self.buf += view


def _remaining(fd: int) -> int | None:
    """Bytes left to read from a regular file; None for pipes and other streams."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        pos = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None
    return max(0, st.st_size - pos)


__all__ = [
    "MAX_KEY_BYTES",
    "ContentStore",
    "PutResult",
    "ReconcileReport",
    "StorageError",
    "Upload",
    "encode_key",
    "show_key",
]
