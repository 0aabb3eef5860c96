"""A node's data directory: `init`, the single-writer lock, and opening the local store. Its paths (the
tree below) are `Layout`, in layout.py, which a CLI command that only asks the daemon imports alone.

DATA_DIR/
  master.key      32 random bytes, mode 0600 (or master_key_file elsewhere, e.g. a systemd credential)
  node.key        the node's X25519 static key (its identity), mode 0600
  network.key     the network's 32-byte key (the Noise PSK), mode 0600 (or network_key_file elsewhere)
  network.key.old the key before a rotation, kept for its overlap window (beside network.key), 0600
  node.json       pid and listen address of the serving process, once it answers on ctl.sock, while it runs
  p2p.db          the repo (SQLite, WAL)
  scrub.json      the scrub's schedule, last pass and unrepaired copies (node/scrub.py)
  lock            flock()ed by the one process that may write this data dir
  objects/        encrypted objects, sharded by an HMAC of their content id
  objects/tmp/    temp files of writes in progress; removed at open
  quarantine/     object files reconcile could not account for (no repo row), moved here, never deleted
  config          the config file init writes (every key, commented out, at its default)
  dirty           present while a process has the store open; its presence at open means the last
                  process did not close cleanly, so disk and repo are reconciled
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import itertools
import logging
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from p2pfast import identity
from p2pfast.errors import ConfigError, IntegrityError, StorageError
from p2pfast.layout import Layout as Layout  # re-exported: datadir.Layout is what callers import
from p2pfast.repo.db import wal_path
from p2pfast.repo.repo import EmptyRepo, Repo
from p2pfast.store import objects
from p2pfast.store.durable import fsync_dir, make_dirs, os_error, write_file_durably
from p2pfast.store.keys import KeyRing, create_master_key, load_master_key, load_secret_file
from p2pfast.store.objects import ContentStore, ReconcileReport

log = logging.getLogger("p2pfast.datadir")

LOCK_WAIT_S = 10.0  # a CLI command waits this long for another process to finish with the data dir


class AlreadyInitialised(ConfigError):
    """config error: {}"""


def object_files(layout: Layout, limit: int | None = None) -> list[Path]:
    """Object files under objects/ (temp files left out), at most `limit` of them: whether a data dir
    holds objects, and how many an error message counts."""
    return list(itertools.islice(objects.object_files(layout.objects), limit))


def holds_objects(layout: Layout) -> bool:
    return bool(object_files(layout, limit=1))


def _initialised(layout: Layout) -> bool:
    return layout.db.exists() or holds_objects(layout)


def key_hint(layout: Layout) -> str:
    """What to do about a missing key file: in a data dir that holds a repo or objects, a new key would
    read nothing that is stored, so the advice is to restore it; in an empty one, to run init."""
    if _initialised(layout):
        return "restore it from a backup, or point the config (or a --*-key-file flag) at it"
    return "run 'p2pfast init'"


def load_identity(layout: Layout) -> identity.Identity:
    return identity.load(layout.node_key, layout.network_key, key_hint(layout))


def _found(layout: Layout) -> str:
    """What an initialised data dir holds, in words, for init's refusal."""
    parts = []
    if layout.db.exists():
        size = layout.db.stat().st_size
        parts.append(f"{layout.db.name} ({size} bytes)")
    n = len(object_files(layout, limit=1000))
    if n:
        parts.append(f"objects/ ({'1000 or more' if n >= 1000 else n} object file{'s' if n != 1 else ''})")
    keys = (layout.master_key_file, layout.node_key, layout.network_key)
    missing = [p.name for p in keys if not p.exists()]
    found = " and ".join(parts)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        found += f"; {', '.join(missing)} {verb} missing: restore from a backup"
    return found


def init(layout: Layout, network_key: bytes | None = None) -> None:
    """Create the data dir, master key, node key, network key (random unless given) and repo.

    Refuses (AlreadyInitialised) a data dir that already holds a repo or objects, whatever else it lacks:
    a new master key or an empty repo there would disown every stored object. Key files left by an
    init that stopped before its repo existed are kept."""
    if _initialised(layout):
        raise AlreadyInitialised(
            f"{layout.root} is already initialised: it holds {_found(layout)}. Nothing was changed; "
            "'p2pfast serve' uses it as it is, and a new node needs another --data-dir"
        )
    try:
        make_dirs(layout.root)
        os.chmod(layout.root, 0o700)
        if not layout.master_key_file.exists():
            make_dirs(layout.master_key_file.parent)
            create_master_key(layout.master_key_file)
        keyring = KeyRing(load_master_key(layout.master_key_file))
        identity.create_node_key(layout.node_key)
        identity.create_network_key(layout.network_key, network_key)
        make_dirs(layout.objects / "tmp")
        make_dirs(layout.db.parent)
        # Made 0600 before SQLite opens it: its -wal and -shm files take the database file's mode.
        os.close(os.open(layout.db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        with Repo.open(layout.db) as repo:
            repo.set_owner(identity.load_node_id(layout.node_key), keyring.check_value, time.time())
        private_files(layout)
    except OSError as exc:
        raise os_error(exc, f"cannot initialise {layout.root}") from exc


def adopt_network(layout: Layout, network_key: bytes, rotated: bool = False) -> bool:
    """`serve --join`: make the invite's network this node's. True if the key changed.

    A node that holds no data yet (no files, no objects) takes the new key and forgets the peers of its
    old network; one that holds data is refused, since its files belong to the network it has. With
    `rotated` (`--rotated-key`: its own network rotated the key while it was away for the whole overlap
    window, node/revocation.py) it takes the key and keeps its data and peers: the same network."""
    current = load_secret_file(layout.network_key, identity.KEY_SIZE, "network key", key_hint(layout))
    if current == network_key:
        return False
    if rotated:
        try:
            write_file_durably(layout.network_key.parent, layout.network_key, network_key, mode=0o600)
        except OSError as exc:
            raise os_error(exc, f"cannot write {layout.network_key}") from exc
        return True
    with Repo.open(layout.db, readonly=True) as repo:
        files = repo.stats()["files"]
    if files or holds_objects(layout):
        raise ConfigError(
            f"{layout.root} belongs to another network and holds {files} file{'s' if files != 1 else ''}: "
            "it cannot join this one. Run the joining node with another --data-dir, or serve without --join "
            "(or, if its own network rotated its key while it was away, add --rotated-key)"
        )
    try:
        # beside the key file: network_key_file may name another file system than the data dir's
        write_file_durably(layout.network_key.parent, layout.network_key, network_key, mode=0o600)
    except OSError as exc:
        raise os_error(exc, f"cannot write {layout.network_key}") from exc
    with Repo.open(layout.db) as repo:
        repo.forget_peers()
    return True


def private_files(layout: Layout) -> None:
    """The repo (with its WAL and SHM) and node.json hold key names and addresses: 0600 whatever the
    umask, which SQLite follows when it creates them."""
    for path in (layout.db, wal_path(layout.db), Path(f"{layout.db}-shm"), layout.root / "node.json"):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(path.stat().st_mode) != 0o600:
                os.chmod(path, 0o600)


class LocalNode:
    """The data dir opened for use: lock held, key loaded, repo open and proven to be this node's,
    store reconciled."""

    def __init__(self, layout: Layout, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.layout = layout
        if not layout.db.exists():
            if holds_objects(layout):
                raise ConfigError(
                    f"{layout.db} is missing while {layout.objects} holds objects: restore the repo from "
                    "a backup or point 'db' at it (a new repo would disown every stored object)"
                )
            raise ConfigError(f"{layout.root} is not an initialised data dir (run 'p2pfast init')")
        self._lock_fd = _acquire_lock(layout.lock, lock_wait_s)
        try:
            keyring = KeyRing(load_master_key(layout.master_key_file, key_hint(layout)))
            self.repo = _open_own_repo(layout, keyring)
            try:
                private_files(layout)
                _warn_if_open(layout.root)
                self.store = ContentStore(layout.objects, keyring, self.repo, quarantine=layout.quarantine)
                self.report = self._recover()
            except BaseException:
                self.repo.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _recover(self) -> ReconcileReport:
        if self.layout.dirty.exists():
            report = self.store.reconcile()
            for name, moved_to in report.quarantined:
                log.warning(
                    "event=reconcile action=quarantined_object path=%s moved_to=%s "
                    "reason=no_repo_row hint=%s",
                    name,
                    moved_to,
                    _QUARANTINE_HINT,
                )
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


_QUARANTINE_HINT = "kept, not deleted (p2pfast status); move it back to objects/ once its repo is in place"


def _warn_if_open(root: Path) -> None:
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "event=data_dir_mode path=%s mode=%04o hint=%s",
            root,
            mode,
            f"others can list it (it holds key names and keys): chmod 700 {root}",
        )


def _open_own_repo(layout: Layout, keyring: KeyRing) -> Repo:
    """The repo, refused unless it is this data dir's own: not empty, foreign or newer while objects
    exist, and recorded (owner row) for this node id and this master key. Anything else would make
    reconcile and repair treat every stored object as an orphan or a corrupt copy."""
    try:
        repo = Repo.open(layout.db, create=False)
    except EmptyRepo:
        if holds_objects(layout):
            raise ConfigError(
                f"{layout.db} is empty (no p2pfast schema) while {layout.objects} holds objects: restore "
                "this node's p2p.db from a backup or point 'db' at it; nothing was changed"
            ) from None
        repo = Repo.open(layout.db)  # an empty repo over an empty store: nothing to disown
    try:
        _check_owner(layout, repo, keyring)
    except BaseException:
        repo.close()
        raise
    return repo


def _check_owner(layout: Layout, repo: Repo, keyring: KeyRing) -> None:
    node_id = identity.load_node_id(layout.node_key)
    owner = repo.owner()
    if owner is not None:
        if owner.node_id and node_id and owner.node_id != node_id:
            raise ConfigError(
                f"{layout.db} is the repo of node {owner.node_id[:16]}, not of this data dir's node "
                f"{node_id[:16]} ({layout.node_key}): put this node's own p2p.db back or point 'db' at it"
            )
        if not hmac.compare_digest(owner.master_key_check, keyring.check_value):
            raise ConfigError(_wrong_master_key(layout))
        return
    # A repo from before owner rows (or a fresh one): prove it is ours before recording it as ours.
    if repo.stats()["objects"] == 0 and holds_objects(layout):
        raise ConfigError(
            f"{layout.db} records no objects while {layout.objects} holds some: it is not this node's "
            "repo (or it was emptied). Restore this node's p2p.db or point 'db' at it; nothing was changed"
        )
    wrapped = repo.any_wrapped_key()
    if wrapped is not None:
        try:
            keyring.unwrap(*wrapped)
        except IntegrityError:
            raise ConfigError(_wrong_master_key(layout)) from None
    repo.set_owner(node_id, keyring.check_value, time.time())


def _wrong_master_key(layout: Layout) -> str:
    return (
        f"master key {layout.master_key_file} is not the key of this repo ({layout.db}): restore the "
        "original key file, or point master_key_file (--master-key-file) at it; nothing was changed"
    )


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
