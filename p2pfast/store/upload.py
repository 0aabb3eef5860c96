"""The put pipeline: plaintext in (pulled from an fd by the pump, or pushed with write()), a sealed
object in a durable temp file out, handed to its store to commit.

A small object (is_small: one segment at most) never builds the pump and its segment-sized buffers: its
bytes collect in memory and are sealed in one step. A larger one goes through the pump, whose _Sealer
hashes, seals and writes each segment, on worker threads when segments are large (THREADED_SEGMENT_MIN).
The envelope (envelope.CURRENT) decides how each block is sealed; this module decides when and where.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from p2pfast.errors import BadInput, IntegrityError
from p2pfast.pump import Pump
from p2pfast.store import contentid, envelope
from p2pfast.store.durable import DurableFile, make_dirs, os_error, write_all
from p2pfast.store.keys import KeyRing
from p2pfast.store.userkey import show_key

Progress = Callable[[int], object]
Transform = Callable[[memoryview, int, bool], memoryview | None]

# Segments at least this long are hashed and written on worker threads while the next one is sealed;
# shorter ones inline, since a thread hand-off costs more than it saves there. A cost per segment, not the
# small-object rule (is_small): with 1 MiB segments it only ever meets the last, short segment of a large
# object (a small one never reaches the _Sealer), and stores built with small segments (tests).
THREADED_SEGMENT_MIN = 64 << 10


def is_small(size: int, segment_size: int) -> bool:
    """The store's one rule for a "small object": it fits in one segment (segments.SEGMENT_SIZE, 1 MiB,
    except in stores that tests build with small segments). Such an object is sealed in one step from
    memory, without the pump and its segment-sized buffers (they would cost more than the work), and its
    plaintext comes back in PutResult, for the fan-out to replicas without reading it back. put_fd reads
    such a file whole; Upload.write collects such an object until it outgrows the rule."""
    return size <= segment_size


@dataclass(frozen=True, slots=True)
class PutResult:
    key: bytes
    cid: str
    size: int
    deduplicated: bool
    # the whole plaintext of a small object (is_small), which is stored from memory: what a store fans
    # out to its replicas without reading the object back
    plaintext: bytes | None = field(default=None, repr=False)


class Store(Protocol):
    """What an Upload needs of the store it belongs to (ContentStore): where temp files go, the segment
    size and keys, worker threads for large segments, and the commit of a sealed object."""

    tmp_dir: Path
    segment_size: int
    keyring: KeyRing

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]: ...

    def _commit(self, upload: Upload, cid: str, length: int, holders: Sequence[str] = ()) -> PutResult: ...

    def _replace(self, upload: Upload, cid: str, length: int) -> PutResult: ...


class Upload:
    """One put in progress: plaintext in (pulled by put_fd, or pushed with write()), a durable encrypted
    object and its repo rows out. Until finish() returns, nothing is visible: the bytes sit in a temp file
    that abort() (or a failure) removes.

    A small object (is_small; most files) never builds the pump and its four segment-sized buffers: its
    bytes collect in a small buffer and are sealed in one step at finish(), exactly as the pump would seal
    a single final segment. The pump starts as soon as the data outgrow one segment."""

    def __init__(self, store: Store, key: bytes, size: int | None, progress: Progress | None) -> None:
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
            transforms: list[Transform] = [] if progress is None else [progress_transform(progress)]
            transforms.append(self._sealer)
            self._pump = Pump(store.segment_size, transforms)
            if self._small:
                small, self._small = self._small, bytearray()
                self._pump.push(small)
        return self._pump

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            if self._pump is None and is_small(len(self._small) + len(data), self.store.segment_size):
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


class _Sealer:
    """The store's pump transform: per plaintext segment, hash it (BLAKE3), encrypt it (AES-256-GCM) and
    write the ciphertext to the temp file.

    The three run at once: BLAKE3, AES-GCM and write() all release the GIL, so the hash runs on one worker
    thread and the write of segment i on another while this thread encrypts segment i+1 into the second of
    two output buffers. A buffer is reused only after its write has finished; the pump's view is used only
    until the hash of it has returned. Segments shorter than THREADED_SEGMENT_MIN are done inline.
    """

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
        if len(view) < THREADED_SEGMENT_MIN:
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


def progress_transform(progress: Progress) -> Transform:
    def report(view: memoryview, index: int, last: bool) -> None:
        progress(len(view))

    return report
