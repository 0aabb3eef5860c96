"""ContentStore: put, read (whole or a byte range), delete and reconcile encrypted objects.

Objects are named by the HMAC of their content id (keys.KeyRing.object_name) and placed by the `shard`
kernel; the envelope is in segments.py; metadata lives in the repo. The order of writes is what makes a
crash harmless: the object file becomes durable under its final name before its repo row is committed, and
a delete commits the row change before unlinking the file. A crash between the two leaves only an object
file without a row, which reconcile() moves to quarantine/: it was never acknowledged, but a file without
a row may as well be one of a repo the operator lost and will restore, so no file is ever deleted unless
a row whose refcount reached zero says so.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from p2pfast.errors import BadInput, IntegrityError, NotFound, StorageError
from p2pfast.pump import Pump
from p2pfast.repo.repo import ObjectRow, Repo
from p2pfast.shard import shard_path
from p2pfast.store import contentid, envelope, segments
from p2pfast.store.durable import TMP_SUFFIX, DurableFile, fsync_dir, make_dirs, os_error, write_all
from p2pfast.store.keys import KeyRing

MAX_KEY_BYTES = 1024
SHARD_WIDTH = 2
SHARD_DEPTH = 2

Progress = Callable[[int], object]
Transform = Callable[[memoryview, int, bool], memoryview | None]
Sink = int | object  # an fd, or an object with write(view)


def encode_key(key: str | bytes) -> bytes:
    """A user key is any UTF-8 string of 1 to 1024 bytes; it is never used to build a path."""
    if isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(f"key {key!r} is not valid UTF-8") from None
    else:
        raw = bytes(key)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"key {raw!r} is not valid UTF-8") from None
    if not raw:
        raise BadInput("key is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise BadInput(f"key is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}")
    return raw


def show_key(key: bytes) -> str:
    """A key for one-line messages: printable as is, otherwise escaped."""
    text = key.decode("utf-8", "replace")
    return text if text.isprintable() else repr(text)


@dataclass(frozen=True, slots=True)
class PutResult:
    key: bytes
    cid: str
    size: int
    deduplicated: bool
    # the whole plaintext, for an object of one segment at most that was stored from memory: what a
    # store fans out to its replicas without reading the object back
    plaintext: bytes | None = field(default=None, repr=False)


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
                if expected is not None and expected <= self.segment_size:
                    # A small file: read it whole (the pump's buffers would cost more than the work).
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
            transforms.append(_progress_transform(progress))
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
        on_disk: set[Path] = set()
        if self.root.is_dir():
            for dirpath, dirnames, filenames in os.walk(self.root):
                if Path(dirpath) == self.tmp_dir:
                    dirnames.clear()
                    continue
                for fn in filenames:
                    on_disk.add(Path(dirpath) / fn)
        for path in sorted(on_disk - expected.keys()):
            rel = str(path.relative_to(self.root))
            report.quarantined.append((rel, str(self._quarantine_file(path, rel))))
        report.missing = sorted(cid for path, cid in expected.items() if path not in on_disk)
        report.refcounts_fixed = self.repo.fix_refcounts()
        return report


class Upload:
    """One put in progress: plaintext in (pulled by put_fd, or pushed with write()), a durable encrypted
    object and its repo rows out. Until finish() returns, nothing is visible: the bytes sit in a temp file
    that abort() (or a failure) removes.

    An object of one segment at most (most small files) never builds the pump and its four segment-sized
    buffers: its bytes collect in a small buffer and are sealed in one step at finish(), exactly as the
    pump would seal a single final segment. The pump starts as soon as the data outgrow one segment."""

    def __init__(self, store: ContentStore, key: bytes, size: int | None, progress: Progress | None) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.progress = progress
        seg = store.segment_size
        self.data_key = store.keyring.new_data_key()
        self.env = envelope.CURRENT.new(self.data_key, seg)
        self._pump: Pump | None = None
        self._sealer: _Sealer | None = None
        self._small = bytearray()
        make_dirs(store.tmp_dir)
        self.tmp = DurableFile(store.tmp_dir)
        try:
            if size is not None:
                # Reserving the whole object up front fails early on a full disk and, on tmpfs and
                # ext4 alike, makes the writes below about twice as fast (no allocation per page).
                os.posix_fallocate(self.tmp.fd, 0, self.env.file_size(size, seg))
            os.write(self.tmp.fd, self.env.start_header())
        except OSError as exc:
            self.tmp.abort()
            raise os_error(exc, f"cannot store {show_key(key)}") from exc
        except BaseException:
            self.tmp.abort()
            raise
        self.length: int | None = None  # set when a pull (run_fd) ended the stream
        self.plaintext: bytes | None = None  # set by finish() for an object sealed in one step

    @property
    def pump(self) -> Pump:
        if self._pump is None:
            store = self.store
            self._sealer = _Sealer(self.env, self.tmp.fd, *store._pools())
            progress = self.progress
            transforms: list[Transform] = [] if progress is None else [_progress_transform(progress)]
            transforms.append(self._sealer)
            self._pump = Pump(store.segment_size, transforms)
            if self._small:
                small, self._small = self._small, bytearray()
                self._pump.push(small)
        return self._pump

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            if self._pump is None and len(self._small) + len(data) <= self.store.segment_size:
                self._small += data
                return
            self.pump.push(data)
        except OSError as exc:
            raise os_error(exc, f"cannot store {show_key(self.key)}") from exc

    def _seal_small(self) -> tuple[int, bytes]:
        """The whole object as its one final segment: what the pump and sealer would write for it."""
        data = self.plaintext = bytes(self._small)
        ciphertext = self.env.seal_segment(0, True, data)
        write_all(self.tmp.fd, ciphertext)
        if self.progress is not None:
            self.progress(len(data))
        return len(data), contentid.leaf(data)

    def finish(
        self, expect_cid: str | None = None, holders: Sequence[str] = (), *, repair: bool = False
    ) -> PutResult:
        """Seal and commit; with `expect_cid`, an object whose content id differs is an IntegrityError and
        leaves nothing behind (a replica checks what it received against what the sender announced).
        `holders` go into `shares` in the same transaction (the peer that sent the object)."""
        seg = self.store.segment_size
        name = show_key(self.key)
        try:
            if self._pump is None and self.length is None:
                length, leaves = self._seal_small()
            else:
                try:
                    length = self.length if self.length is not None else self.pump.finish()
                finally:
                    # No write may still be running when the temp file is closed or finished.
                    assert self._sealer is not None
                    self._sealer.drain()
                leaves = bytes(self._sealer.leaves)
            cid = contentid.root(length, leaves)
            if expect_cid is not None and cid != expect_cid:
                raise IntegrityError(f"{name}: received {length} bytes hash to {cid}, not {expect_cid}")
            final_header, index = self.env.seal_index(length, leaves, cid)
            write_all(self.tmp.fd, index)
            if self.size != length:  # the source changed size while we read it
                os.ftruncate(self.tmp.fd, self.env.file_size(length, seg))
            os.pwrite(self.tmp.fd, final_header, 0)
        except OSError as exc:
            raise os_error(exc, f"cannot store {name}") from exc
        if repair:
            return self.store._replace(self, cid, length)
        return self.store._commit(self, cid, length, holders)

    def finish_repair(self, cid: str) -> None:
        """finish() for a verified copy of `cid` that replaces a local object file which failed its
        check: the file is renamed over the bad one and the object's key row replaced, and no files row
        changes (which keys name it, and where they came from, stay as they were)."""
        self.finish(cid, repair=True)

    def abort(self) -> None:
        """Drop the upload if it did not finish (idempotent; a no-op after finish())."""
        if self._sealer is not None:
            with contextlib.suppress(BaseException):
                self._sealer.drain()
        self.tmp.abort()


class _Collect:
    """A pump sink that keeps what it is given."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, view: memoryview) -> None:
        self.buf += view


class _Sealer:
    """The store's pump transform: per plaintext segment, hash it (BLAKE3), encrypt it (AES-256-GCM) and
    write the ciphertext to the temp file.

    The three run at once: BLAKE3, AES-GCM and write() all release the GIL, so the hash runs on one worker
    thread and the write of segment i on another while this thread encrypts segment i+1 into the second of
    two output buffers. A buffer is reused only after its write has finished; the pump's view is used only
    until the hash of it has returned. Small segments (below PIPELINE_MIN) are done inline: a thread
    hand-off costs more than it saves there.
    """

    PIPELINE_MIN = 64 << 10

    def __init__(
        self,
        env: envelope.Envelope,
        fd: int,
        hash_pool: ThreadPoolExecutor,
        write_pool: ThreadPoolExecutor,
    ) -> None:
        self.env = env
        self.fd = fd
        self.hash_pool = hash_pool
        self.write_pool = write_pool
        self.bufs = (
            memoryview(bytearray(env.segment_size + env.tag_size)),
            memoryview(bytearray(env.segment_size + env.tag_size)),
        )
        self.writes: list[Future[None] | None] = [None, None]
        self.leaves = bytearray()

    def __call__(self, view: memoryview, index: int, last: bool) -> None:
        if index >= self.env.max_segments:
            raise BadInput(f"object too large: more than {self.env.max_segments} segments")
        slot = index & 1
        pending = self.writes[slot]
        if pending is not None:
            self.writes[slot] = None
            pending.result()  # its buffer is free again (and a write error surfaces here)
        # encrypt_into wants an output of exactly len(view) + tag bytes.
        out = self.bufs[slot][: len(view) + self.env.tag_size]
        if len(view) < self.PIPELINE_MIN:
            self.drain()  # writes go to the file in order: the previous segment's first
            self.leaves.extend(contentid.leaf(view))
            self.env.seal_segment_into(index, last, view, out)
            write_all(self.fd, out)
            return
        leaf = self.hash_pool.submit(contentid.leaf, view)
        self.env.seal_segment_into(index, last, view, out)
        self.writes[slot] = self.write_pool.submit(write_all, self.fd, out)
        self.leaves.extend(leaf.result())

    def drain(self) -> None:
        """Wait for every write; the first error raises (after all have finished)."""
        error: BaseException | None = None
        for slot, pending in enumerate(self.writes):
            self.writes[slot] = None
            if pending is not None:
                try:
                    pending.result()
                except BaseException as exc:
                    error = error or exc
        if error is not None:
            raise error


def _progress_transform(progress: Progress) -> Transform:
    def report(view: memoryview, index: int, last: bool) -> None:
        progress(len(view))

    return report


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


__all__ = ["ContentStore", "PutResult", "ReconcileReport", "StorageError", "Upload", "encode_key", "show_key"]
