"""A node's identity and membership: its X25519 static key (node id = hex SHA-256 of the public key) and
the 32-byte network key that every member holds (the Noise PSK). Both live in 0600 files; neither is
ever logged. An invite is one line that carries the network key and one member's address and id:

    p2p1:<network key, base64url>@<host:port>/<node id>
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pfast.errors import BadInput, ConfigError
from p2pfast.store.keys import create_secret_file, load_secret_file

KEY_SIZE = 32
INVITE_RE = re.compile(r"p2p1:([A-Za-z0-9_-]{43})@([^/\s]+:\d{1,5})/([0-9a-f]{64})")


def node_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True)
class Identity:
    static_key: X25519PrivateKey
    network_key: bytes

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.static_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)


def revocation_key(static_key: X25519PrivateKey) -> Ed25519PrivateKey:
    """The node's Ed25519 key for signing revocations (proto/revocation.py), derived from its static key
    with HKDF-SHA256 under its own label: an X25519 key cannot sign, and deriving keeps one secret file.
    Knowing the derived key reveals nothing of the static key (HKDF is one-way)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = static_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    seed = HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=b"p2pfast revocation key/1").derive(raw)
    return Ed25519PrivateKey.from_private_bytes(seed)


def create_node_key(path: Path) -> bool:
    if path.exists():
        return False
    from cryptography.hazmat.primitives import serialization

    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    create_secret_file(path, raw)
    return True


def create_network_key(path: Path, key: bytes | None = None) -> bool:
    """Create the network key file (a new random key, or the given one). False if one exists already;
    a different existing key is a config error (this node belongs to another network)."""
    if path.exists():
        if key is not None and load_secret_file(path, KEY_SIZE, "network key") != key:
            raise ConfigError(f"{path} holds a different network key: this node belongs to another network")
        return False
    create_secret_file(path, key if key is not None else os.urandom(KEY_SIZE))
    return True


def load(node_key: Path, network_key: Path, hint: str = "run 'p2pfast init'") -> Identity:
    """The node's keys; `hint` is what a missing file's error advises (datadir.key_hint)."""
    raw = load_secret_file(node_key, KEY_SIZE, "node key", hint)
    net = load_secret_file(network_key, KEY_SIZE, "network key", f"{hint}; or 'serve --join INVITE'")
    return Identity(X25519PrivateKey.from_private_bytes(raw), net)


def load_node_id(node_key: Path) -> str | None:
    """The node id of the node key file, None if there is none (a data dir from before node keys)."""
    if not node_key.exists():
        return None
    raw = load_secret_file(node_key, KEY_SIZE, "node key")
    return Identity(X25519PrivateKey.from_private_bytes(raw), b"").node_id


def make_invite(network_key: bytes, addr: str, node_id: str) -> str:
    b64 = base64.urlsafe_b64encode(network_key).decode().rstrip("=")
    return f"p2p1:{b64}@{addr}/{node_id}"


def parse_invite(line: str) -> tuple[bytes, str, str]:
    """(network key, address, node id) of an invite line."""
    m = INVITE_RE.fullmatch(line.strip())
    if m is None:
        raise BadInput("not a p2pfast invite (expected p2p1:KEY@HOST:PORT/NODEID, from 'p2pfast invite')")
    key = base64.urlsafe_b64decode(m.group(1) + "=")
    return key, m.group(2), m.group(3)
