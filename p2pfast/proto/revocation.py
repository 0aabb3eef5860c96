"""Revocation records and network key rotations, sans-IO (docs/protocol.md, "Revocation and key rotation").

A revocation says "node N is no member from time `at` on, said by member `by`". It is signed with `by`'s
Ed25519 revocation key, derived from its static X25519 key (identity.revocation_key): the static key
cannot sign (X25519 only agrees keys), and one derived key keeps a node at one signing identity without a
second key file. The record carries the signer's public key; a receiver checks the signature and, when the
record comes from `by` itself over its Noise-authenticated session, that the signer key is that node's
(node/revocation.py). The signed bytes are fixed-width and versioned:

    b"p2pfast-revoke/1" | node id (32 bytes) | by (32 bytes) | at (IEEE double, big-endian)

A rotation carries a new network key to current members over their sessions (which are encrypted, so the
key never travels in the clear): `gen` orders rotations (the highest wins; equal gens by `at`, then `by`,
so all members pick the same one), and `until` (wall-clock seconds) ends the overlap window in which the
previous key is still accepted at the handshake.
"""

from __future__ import annotations

import struct
from collections.abc import Container
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"p2pfast-revoke/1"


@dataclass(frozen=True, slots=True)
class Revocation:
    node: str  # the revoked node id (64 hex digits)
    by: str  # the revoking member's node id
    at: float  # when, seconds since the epoch (the revoker's clock)
    signer: str  # the revoker's Ed25519 public key, 64 hex digits
    sig: str  # Ed25519 signature of signed_bytes(), 128 hex digits


@dataclass(frozen=True, slots=True)
class Rotation:
    gen: int  # 1 for a network's first rotation, then one more each time
    key: bytes  # the new network key (32 bytes)
    until: float  # the previous key is refused from this wall-clock time on
    by: str
    at: float

    def order(self) -> tuple[int, float, str]:
        return (self.gen, self.at, self.by)


def supersedes(new: Rotation, current: Rotation | None, revoked: Container[str]) -> bool:
    """Whether a member holding `current` takes `new`. Never a rotation by a revoked node (it may have
    rotated before it was revoked, or hand a key it knows to a member that has not heard yet); a
    current rotation by a revoked node yields to any other, whatever its `gen` (a thief could have set
    the highest one to make later rotations lose); otherwise the greater (gen, at, by)."""
    if new.by in revoked:
        return False
    if current is None or current.by in revoked:
        return current is None or new.key != current.key
    return new.order() > current.order()


def signed_bytes(node: str, by: str, at: float) -> bytes:
    return DOMAIN + bytes.fromhex(node) + bytes.fromhex(by) + struct.pack(">d", at)


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign(key: Ed25519PrivateKey, node: str, by: str, at: float) -> Revocation:
    sig = key.sign(signed_bytes(node, by, at)).hex()
    return Revocation(node, by, at, public_hex(key), sig)


def valid(r: Revocation) -> bool:
    """The signature checks out under the record's signer key (the schema checked the fields' form)."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(r.signer)).verify(
            bytes.fromhex(r.sig), signed_bytes(r.node, r.by, r.at)
        )
    except (InvalidSignature, ValueError):
        return False
    return True
