"""A node's data directory: its layout, `init`, the single-writer lock, and opening the local store.

DATA_DIR/
  master.key      32 random bytes, mode 0600 (or master_key_file elsewhere, e.g. a systemd credential)
  node.key        the node's X25519 static key (its identity), mode 0600
  network.key     the network's 32-byte key (the Noise PSK), mode 0600 (or network_key_file elsewhere)
  node.json       pid and listen address of the serving process, once it answers on ctl.sock, while it runs
  p2p.db          the repo (SQLite, WAL)
  lock            flock()ed by the one process that may write this data dir
  objects/        encrypted objects, sharded by an HMAC of their content id
  objects/tmp/    temp files of writes in progress; removed at open
  dirty           present while a process has the store open; its presence at open means the last
                  process did not close cleanly, so disk and repo are reconciled
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from p2pfast.errors import ConfigError, StorageError
from p2pfast.repo.repo import Repo
from p2pfast.store.durable import fsync_dir, make_dirs, os_error, write_file_durably
from p2pfast.store.keys import KeyRing, create_master_key, load_master_key
from p2pfast.store.objects import ContentStore, ReconcileReport

log = logging.getLogger("p2pfast.datadir")

LOCK_WAIT_S = 10.0  # a CLI command waits this long for another process to finish with the data dir


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path
    master_key_file: Path
    db: Path
    network_key: Path

    @classmethod
    def of(
        cls,
        data_dir: str | os.PathLike[str],
        master_key_file: str | os.PathLike[str] | None = None,
        db: str | os.PathLike[str] | None = None,
        network_key_file: str | os.PathLike[str] | None = None,
    ) -> Layout:
        root = Path(data_dir).expanduser()

        def where(given: str | os.PathLike[str] | None, default: str) -> Path:
            return Path(given).expanduser() if given else root / default

        return cls(
            root,
            where(master_key_file, "master.key"),
            where(db, "p2p.db"),
            where(network_key_file, "network.key"),
        )

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def dirty(self) -> Path:
        return self.root / "dirty"


def init(layout: Layout, network_key: bytes | None = None) -> bool:
    """Create the data dir, master key, node key, network key (random unless given) and repo.
    Returns False when it was initialised already."""
    from p2pfast import identity

    created = False
    try:
        make_dirs(layout.root)
        os.chmod(layout.root, 0o700)
        if not layout.master_key_file.exists():
            make_dirs(layout.master_key_file.parent)
            create_master_key(layout.master_key_file)
            created = True
        load_master_key(layout.master_key_file)
        created |= identity.create_node_key(layout.node_key)
        created |= identity.create_network_key(layout.network_key, network_key)
        make_dirs(layout.objects / "tmp")
        if not layout.db.exists():
            created = True
            make_dirs(layout.db.parent)
        Repo.open(layout.db).close()
    except OSError as exc:
        raise os_error(exc, f"cannot initialise {layout.root}") from exc
    return created


class LocalNode:
    """The data dir opened for use: lock held, key loaded, repo open, store reconciled."""

    def __init__(self, layout: Layout, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.layout = layout
        if not layout.db.exists():
            raise ConfigError(f"{layout.root} is not an initialised data dir (run 'p2pfast init')")
        self._lock_fd = _acquire_lock(layout.lock, lock_wait_s)
        try:
            keyring = KeyRing(load_master_key(layout.master_key_file))
            self.repo = Repo.open(layout.db)
            self.store = ContentStore(layout.objects, keyring, self.repo)
            self.report = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _recover(self) -> ReconcileReport:
        if self.layout.dirty.exists():
            report = self.store.reconcile()
            for name in report.orphans_removed:
                log.warning("event=reconcile action=removed_orphan_object path=%s", name)
            for cid in report.missing:
                log.warning("event=reconcile action=missing_object cid=%s", cid)
            for cid, old, new in report.refcounts_fixed:
                log.warning("event=reconcile action=fixed_refcount cid=%s old=%d new=%d", cid, old, new)
        else:
            report = ReconcileReport(temp_removed=self.store.remove_temp_files())
        for name in report.temp_removed:
            log.info("event=reconcile action=removed_temp_file name=%s", name)
        write_file_durably(self.layout.root, self.layout.dirty, str(os.getpid()).encode())
        return report

    def close(self) -> None:
        if self._lock_fd < 0:
            return
        try:
            self.store.close()
            self.repo.close()
            self.layout.dirty.unlink(missing_ok=True)
            fsync_dir(self.layout.root)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> LocalNode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _acquire_lock(path: Path, wait_s: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StorageError(f"data dir {path.parent} is in use by another p2pfast process") from None
            # Backoff while another command holds the lock; bounded by wait_s.
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
