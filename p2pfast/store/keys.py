"""Keys: the node master key file, the keys derived from it, and data-key wrapping.

The master key (32 random bytes) lives in a file created 0600 at init, or comes from a path given in
config (a systemd credential, say). A key file readable by group or others is refused: a node that runs
with a leaked key is worse than one that does not start.

From the master key, HKDF-SHA256 derives two independent keys:
  wrap key  (info "p2pfast v1 wrap"): AES-256-GCM over each object's random data key,
                                      AAD = label + content id,
                                      so a wrapped key moved to another object's row does not unwrap;
  path key  (info "p2pfast v1 path"): HMAC-SHA256 of the content id names the object file, so the disk
                                      layout reveals nothing about content.
A third derivation (info "p2pfast v1 check") gives the 16-byte check value the repo records (its owner
row), so a data dir opened with another master key is refused before anything is read or reconciled. It
reveals nothing of the key (HKDF, then HMAC of a fixed label).
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pfast.errors import ConfigError, IntegrityError
from p2pfast.store.durable import write_file_durably

MASTER_KEY_SIZE = 32
CHECK_SIZE = 16
DATA_KEY_SIZE = 32
WRAP_NONCE_SIZE = 12
WRAP_LABEL = b"p2pfast v1 data key\x00"
WRAPPED_SIZE = WRAP_NONCE_SIZE + DATA_KEY_SIZE + 16


def create_secret_file(path: Path, data: bytes) -> None:
    """Write a new secret file (mode 0600, durably). Never replaces an existing one."""
    write_file_durably(path.parent, path, data, mode=0o600, exclusive=True)


def load_secret_file(path: Path, size: int, what: str, hint: str = "run 'p2pfast init'") -> bytes:
    """Read a secret file of exactly `size` bytes; refuse one that others could read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist ({hint})") from None
    except OSError as exc:
        raise ConfigError(f"cannot open {what} file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{what} file {path} is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to start: chmod 600 {path}"
            )
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(data) != size:
        raise ConfigError(f"{what} file {path} must hold exactly {size} bytes, not {len(data)}")
    return data


def create_master_key(path: Path) -> bytes:
    """Create a new master key file (mode 0600). Never replaces an existing one."""
    key = os.urandom(MASTER_KEY_SIZE)
    create_secret_file(path, key)
    return key


def load_master_key(path: Path, hint: str = "run 'p2pfast init'") -> bytes:
    return load_secret_file(path, MASTER_KEY_SIZE, "master key", hint)


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class KeyRing:
    """Keys derived from the master key; wraps data keys and names object files."""

    def __init__(self, master: bytes) -> None:
        if len(master) != MASTER_KEY_SIZE:
            raise ConfigError(f"master key must be {MASTER_KEY_SIZE} bytes")
        self._wrap = AESGCM(_derive(master, b"p2pfast v1 wrap"))
        self._path_key = _derive(master, b"p2pfast v1 path")
        self.check_value = hmac.digest(_derive(master, b"p2pfast v1 check"), b"p2pfast master key", "sha256")[
            :CHECK_SIZE
        ]

    @staticmethod
    def new_data_key() -> bytes:
        return os.urandom(DATA_KEY_SIZE)

    def wrap(self, cid: str, data_key: bytes) -> bytes:
        nonce = os.urandom(WRAP_NONCE_SIZE)
        return nonce + self._wrap.encrypt(nonce, data_key, WRAP_LABEL + cid.encode())

    def unwrap(self, cid: str, wrapped: bytes) -> bytes:
        if len(wrapped) != WRAPPED_SIZE:
            raise IntegrityError(f"wrapped key for {cid} has {len(wrapped)} bytes, expected {WRAPPED_SIZE}")
        try:
            return self._wrap.decrypt(
                wrapped[:WRAP_NONCE_SIZE], wrapped[WRAP_NONCE_SIZE:], WRAP_LABEL + cid.encode()
            )
        except InvalidTag:
            raise IntegrityError(f"data key for {cid} does not unwrap with this node's master key") from None

    def object_name(self, cid: str) -> bytes:
        """32-byte keyed digest that names (and shards) the object file of `cid`."""
        return hmac.digest(self._path_key, cid.encode(), "sha256")
