"""Noise Protocol Framework (revision 34), the subset p2pfast speaks: XX and XXpsk3 over 25519/AESGCM/SHA256.

Handshake (spec sections 5, 7.5 and 9; `-> ` is initiator to responder)::

    Noise_XX_25519_AESGCM_SHA256         Noise_XXpsk3_25519_AESGCM_SHA256
      -> e                                 -> e
      <- e, ee, s, es                      <- e, ee, s, es
      -> s, se                             -> s, se, psk

In a psk handshake every "e" token is followed by MixKey(e.public_key), so even the first payload is
encrypted. A wrong psk changes only the keys of the third message: the responder is the side that detects
it (a bad tag while reading message 3); the initiator sees nothing wrong until the first transport message
it receives fails to decrypt.

Transport messages are AES-256-GCM with the 12-byte nonce ``00000000 || n (u64 big-endian)``, at most
MAX_MESSAGE bytes including the 16-byte tag. n = 2**64-1 is reserved (spec 5.1): reaching it raises
LocalProtocolError. The CipherStates from split() call REKEY (spec 11.3) just before message number
k * REKEY_INTERVAL (k >= 1) in each direction; n keeps counting, and both sides do the same, so they stay in
step without any signalling.

Errors: a bad tag or a malformed message from the peer raises RemoteProtocolError (code INTEGRITY for a tag,
PROTOCOL for a malformed message), and the object is poisoned: one bad message ends the session. Misuse on
our side (out-of-turn write, split before completion, nonce exhaustion) raises LocalProtocolError; a wrong
buffer size or argument raises ValueError.

Sans-IO: no asyncio, socket, time or logging here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pfast import wire
from p2pfast.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE",
    "MAX_PLAINTEXT",
    "PROTOCOL_XX",
    "PROTOCOL_XXPSK3",
    "REKEY_INTERVAL",
    "TAG",
    "CipherState",
    "HandshakeState",
    "generate_keypair",
    "private_from_bytes",
    "public_bytes",
]

MAX_MESSAGE = wire.NOISE_MAX_MESSAGE  # 65535, spec section 3
TAG = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG
DHLEN = 32
HASHLEN = 32
PROTOCOL_XX = "Noise_XX_25519_AESGCM_SHA256"
PROTOCOL_XXPSK3 = "Noise_XXpsk3_25519_AESGCM_SHA256"
# Transport messages per direction between automatic rekeys: 2**20 messages of up to 64 KiB is 64 GiB per
# key, far below AES-GCM's limits, and a rekey costs one AES block encryption.
REKEY_INTERVAL = 1 << 20

_MAX_NONCE = (1 << 64) - 1  # reserved, never used for a message
_NEVER = 1 << 64  # a counter bound n never reaches
_nonce = struct.Struct(">4xQ").pack  # 4 zero bytes || n big-endian: one allocation
_ZEROS32 = bytes(32)

_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    PROTOCOL_XX: (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    PROTOCOL_XXPSK3: (("e",), ("e", "ee", "s", "es"), ("s", "se", "psk")),
}

Buffer = bytes | bytearray | memoryview


def generate_keypair() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _hkdf(ck: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """HKDF as spec section 4.3 defines it, over HMAC-SHA256; returns 2 or 3 outputs of HASHLEN bytes."""
    temp_key = hmac.digest(ck, ikm, "sha256")
    out = [hmac.digest(temp_key, b"\x01", "sha256")]
    for i in range(2, outputs + 1):
        out.append(hmac.digest(temp_key, out[-1] + bytes((i,)), "sha256"))
    return out


def _integrity(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"noise: {what}", code=wire.ErrorCode.INTEGRITY)


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"noise: {what}", code=wire.ErrorCode.PROTOCOL)


class CipherState:
    """k and n (spec 5.1). Without a key, encrypt/decrypt_with_ad pass data through (handshake only).

    The hot path (encrypt_into/decrypt_into) is one comparison of n against a precomputed bound, two length
    checks, one nonce allocation and the AEAD call. Everything rare (no key, poisoned, rekey due, nonce
    exhausted) sits behind that one comparison, in _slow_path().
    """

    __slots__ = ("_aead", "_interval", "_k", "_limit", "_poisoned", "_rekey_at", "n")

    def __init__(self, key: bytes | None = None, *, rekey_interval: int | None = None) -> None:
        if key is not None and len(key) != 32:
            raise ValueError("noise: a cipher key is 32 bytes")
        if rekey_interval is not None and rekey_interval < 1:
            raise ValueError("noise: rekey_interval must be positive")
        self._k = key
        self._aead = AESGCM(key) if key is not None else None
        self.n = 0
        self._interval = rekey_interval
        self._rekey_at = rekey_interval if rekey_interval is not None else _NEVER
        self._poisoned = False
        # n >= _limit sends us to _slow_path: rekey due, nonce exhausted, no key or poisoned.
        self._limit = min(self._rekey_at, _MAX_NONCE) if key is not None else 0

    def has_key(self) -> bool:
        return self._k is not None

    def _slow_path(self) -> AESGCM | None:
        """Handle whatever made n >= _limit; return the AEAD to use (None: no key, pass through)."""
        if self._poisoned:
            raise _integrity("cipher state failed earlier")
        if self._k is None:
            return None
        n = self.n
        if n >= _MAX_NONCE:
            raise LocalProtocolError("noise: nonce exhausted")
        if n >= self._rekey_at:
            assert self._interval is not None
            self.rekey()
            self._rekey_at = (n // self._interval + 1) * self._interval
            self._limit = min(self._rekey_at, _MAX_NONCE)
        return self._aead

    def _poison(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._poisoned = True
        self._aead = None
        self._limit = 0
        return exc

    def rekey(self) -> None:
        """REKEY (spec 11.3): k = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]; n is unchanged."""
        if self._aead is None:
            raise LocalProtocolError("noise: rekey without a key")
        self._k = self._aead.encrypt(_nonce(_MAX_NONCE), _ZEROS32, b"")[:32]
        self._aead = AESGCM(self._k)

    def encrypt_with_ad(self, ad: bytes, plaintext: Buffer) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"noise: plaintext over {MAX_PLAINTEXT} bytes")
        n = self.n
        aead = self._aead if n < self._limit else self._slow_path()
        if aead is None:
            return bytes(plaintext)
        ct = aead.encrypt(_nonce(n), plaintext, ad)
        self.n = n + 1
        return ct

    def decrypt_with_ad(self, ad: bytes, ciphertext: Buffer) -> bytes:
        n = self.n
        aead = self._aead if n < self._limit else self._slow_path()
        if aead is None:
            return bytes(ciphertext)
        size = len(ciphertext)
        if size < TAG or size > MAX_MESSAGE:
            raise self._poison(_malformed(f"transport message of {size} bytes"))
        try:
            pt = aead.decrypt(_nonce(n), ciphertext, ad)
        except InvalidTag:
            raise self._poison(_integrity("bad tag")) from None
        self.n = n + 1
        return pt

    def encrypt_into(self, ad: bytes, plaintext: Buffer, out: bytearray | memoryview) -> int:
        """Encrypt into `out`, which must be exactly len(plaintext) + TAG bytes; return that size."""
        size = len(plaintext)
        if size > MAX_PLAINTEXT or len(out) != size + TAG:
            raise ValueError(f"noise: encrypt_into needs plaintext <= {MAX_PLAINTEXT} and out of len+{TAG}")
        n = self.n
        aead = self._aead if n < self._limit else self._slow_path()
        if aead is None:
            raise LocalProtocolError("noise: encrypt_into needs a key")
        written = aead.encrypt_into(_nonce(n), plaintext, ad, out)
        self.n = n + 1
        return written

    def decrypt_into(self, ad: bytes, ciphertext: Buffer, out: bytearray | memoryview) -> int:
        """Decrypt into `out`, which must be exactly len(ciphertext) - TAG bytes; return that size."""
        n = self.n
        aead = self._aead if n < self._limit else self._slow_path()
        if aead is None:
            raise LocalProtocolError("noise: decrypt_into needs a key")
        size = len(ciphertext)
        if size < TAG or size > MAX_MESSAGE:
            raise self._poison(_malformed(f"transport message of {size} bytes"))
        if len(out) != size - TAG:
            raise ValueError(f"noise: decrypt_into needs out of len(ciphertext)-{TAG} bytes")
        try:
            written = aead.decrypt_into(_nonce(n), ciphertext, ad, out)
        except InvalidTag:
            raise self._poison(_integrity("bad tag")) from None
        self.n = n + 1
        return written


class _SymmetricState:
    """ck, h and the handshake CipherState (spec 5.2)."""

    __slots__ = ("ck", "cs", "h")

    def __init__(self, protocol_name: str) -> None:
        name = protocol_name.encode("ascii")
        self.h = name.ljust(HASHLEN, b"\0") if len(name) <= HASHLEN else hashlib.sha256(name).digest()
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cs = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs = CipherState(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = _hkdf(self.ck, b"", 2)
        return (
            CipherState(temp_k1, rekey_interval=REKEY_INTERVAL),
            CipherState(temp_k2, rekey_interval=REKEY_INTERVAL),
        )


class HandshakeState:
    """One side of an XX or XXpsk3 handshake (spec 5.3). Poisoned after any exception.

    read_message() blames the peer (RemoteProtocolError) for anything wrong with what it received,
    including a message arriving when it is not the peer's turn; write_message() and split() raise
    LocalProtocolError for calls out of turn. split() may be called once: a second pair of CipherStates
    would reuse nonces.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        s: X25519PrivateKey,
        *,
        prologue: bytes = b"",
        psks: Sequence[bytes] = (),
        alt_psks: Sequence[bytes] = (),
        e: X25519PrivateKey | None = None,
    ) -> None:
        pattern = _PATTERNS.get(protocol_name)
        if pattern is None:
            raise ValueError(f"noise: unsupported protocol {protocol_name!r}")
        self._psk_mode = protocol_name == PROTOCOL_XXPSK3
        if self._psk_mode:
            if len(psks) != 1 or len(psks[0]) != 32:
                raise ValueError("noise: XXpsk3 needs exactly one 32-byte psk")
            self._psk: bytes | None = bytes(psks[0])
        else:
            if psks:
                raise ValueError("noise: XX takes no psk")
            self._psk = None
        # Other psks a responder accepts (a network key's rotation overlap: node/revocation.py). Only the
        # reader of the psk's message can try them: it re-reads that message from the state before it.
        if any(len(k) != 32 for k in alt_psks) or (alt_psks and not self._psk_mode):
            raise ValueError("noise: alternative psks are 32 bytes, for XXpsk3 only")
        self._alt_psks = tuple(bytes(k) for k in alt_psks)
        self._pattern = pattern
        self._initiator = initiator
        self._s = s
        self._s_pub = public_bytes(s)
        self._e = e
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._ss = _SymmetricState(protocol_name)
        self._ss.mix_hash(bytes(prologue))
        self._index = 0  # next message of the pattern
        self._failed = False
        self._split_done = False

    @property
    def complete(self) -> bool:
        return self._index == len(self._pattern)

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def psk(self) -> bytes | None:
        """The psk in use: after a read that tried alternatives, the one that checked out."""
        return self._psk

    def _check_alive(self) -> None:
        if self._failed:
            raise LocalProtocolError("noise: handshake failed earlier")

    def _our_turn(self) -> bool:
        return (self._index % 2 == 0) == self._initiator

    def _dh(self, local: X25519PrivateKey, remote: bytes | None) -> bytes:
        assert remote is not None
        try:
            return local.exchange(X25519PublicKey.from_public_bytes(remote))
        except ValueError:  # all-zero shared secret: a low-order point from the peer
            raise _malformed("low-order public key") from None

    def _mix_dh(self, token: str) -> None:
        # Token "xy": x is the initiator's key, y the responder's; each side uses its private half.
        i_key, r_key = token[0], token[1]
        if self._initiator:
            local = self._e if i_key == "e" else self._s
            remote = self._re if r_key == "e" else self._rs
        else:
            local = self._e if r_key == "e" else self._s
            remote = self._re if i_key == "e" else self._rs
        assert local is not None
        self._ss.mix_key(self._dh(local, remote))

    def write_message(self, payload: bytes = b"") -> bytes:
        self._check_alive()
        try:
            return self._write(payload)
        except BaseException:
            self._failed = True
            raise

    def _write(self, payload: bytes) -> bytes:
        if self.complete:
            raise LocalProtocolError("noise: handshake already complete")
        if not self._our_turn():
            raise LocalProtocolError("noise: not our turn to write a handshake message")
        ss = self._ss
        out = bytearray()
        for token in self._pattern[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = generate_keypair()
                e_pub = public_bytes(self._e)
                out += e_pub
                ss.mix_hash(e_pub)
                if self._psk_mode:
                    ss.mix_key(e_pub)
            elif token == "s":
                out += ss.encrypt_and_hash(self._s_pub)
            elif token == "psk":
                assert self._psk is not None
                ss.mix_key_and_hash(self._psk)
            else:
                self._mix_dh(token)
        if len(out) + len(payload) + (TAG if ss.cs.has_key() else 0) > MAX_MESSAGE:
            raise ValueError("noise: handshake payload too large")
        out += ss.encrypt_and_hash(payload)
        self._index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        self._check_alive()
        known_static = self._rs
        try:
            if self._alt_psks and "psk" in self._pattern[self._index] and not self._our_turn():
                return self._read_any_psk(message)
            return self._read(message)
        except BaseException:
            self._failed = True
            self._rs = known_static  # never report a static key from a message that failed
            raise

    def _read_any_psk(self, message: bytes) -> bytes:
        """_read() with each accepted psk in turn, from the same state: a wrong psk fails the payload's
        tag, and the next try starts from ck, h and the cipher state as they were before the message."""
        ss = self._ss
        ck, h, k, n, rs = ss.ck, ss.h, ss.cs._k, ss.cs.n, self._rs
        first: RemoteProtocolError | None = None
        for psk in (self._psk, *self._alt_psks):
            self._psk = psk
            try:
                return self._read(message)
            except RemoteProtocolError as exc:
                first = first or exc
                ss.ck, ss.h, ss.cs, self._rs = ck, h, CipherState(k), rs
                ss.cs.n = n
        assert first is not None
        raise first

    def _read(self, message: bytes) -> bytes:
        if self.complete:
            raise _malformed("handshake message after the handshake completed")
        if self._our_turn():
            raise _malformed("handshake message out of turn")
        if len(message) > MAX_MESSAGE:
            raise RemoteProtocolError(
                "noise: handshake message too large", code=wire.ErrorCode.FRAME_TOO_LARGE
            )
        message = bytes(message)
        ss = self._ss
        pos = 0
        for token in self._pattern[self._index]:
            if token == "e":
                if len(message) - pos < DHLEN:
                    raise _malformed("truncated handshake message")
                self._re = re = message[pos : pos + DHLEN]
                pos += DHLEN
                ss.mix_hash(re)
                if self._psk_mode:
                    ss.mix_key(re)
            elif token == "s":
                size = DHLEN + (TAG if ss.cs.has_key() else 0)
                if len(message) - pos < size:
                    raise _malformed("truncated handshake message")
                self._rs = ss.decrypt_and_hash(message[pos : pos + size])
                pos += size
            elif token == "psk":
                assert self._psk is not None
                ss.mix_key_and_hash(self._psk)
            else:
                self._mix_dh(token)
        if ss.cs.has_key() and len(message) - pos < TAG:
            raise _malformed("truncated handshake message")
        payload = ss.decrypt_and_hash(message[pos:])
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator -> responder, responder -> initiator), each rekeying every REKEY_INTERVAL messages."""
        self._check_alive()
        if not self.complete:
            raise LocalProtocolError("noise: split before the handshake completed")
        if self._split_done:
            raise LocalProtocolError("noise: split called twice")
        self._split_done = True
        return self._ss.split()
