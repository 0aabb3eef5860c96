"""The at-rest format of an object file: one class per format version, chosen in one place.

Every object file starts with the magic "P2PO" and a format version byte; what follows is that version's.
`format_of` is the only code that reads the version byte to choose a class (borg branches on
`hdr.version` in one place): a reader calls it on the first bytes of a file, then that class's `open`.
New objects are written in `CURRENT`. A version this code does not know is an integrity error.

An `Envelope` is one object's: its data key and header fields, and its version's rules for the header,
the nonces, the associated data and the sealing and opening of each block. It works on buffers only;
the store (objects.py, upload.py) does the I/O and decides what to read and where to write.

Format version 1 (`EnvelopeV1`; the geometry, plain arithmetic on sizes, is in segments.py):

    offset 0   header, 32 bytes
               +------+---+---+------+----------+-------------+---+----------------+--------+
               |"P2PO"|ver|alg| rsvd | seg size | nonce prefix| 0 | plaintext len  |  rsvd  |
               |  4   | 1 | 1 |  2   |  u32 BE  |   7 bytes   | 1 |    u64 BE      |   4    |
               +------+---+---+------+----------+-------------+---+----------------+--------+
    offset 32  segment 0 .. n-1: AES-256-GCM(data key, nonce_i, plaintext_i, AAD = header[0:20]) || tag
               each SEGMENT_SIZE bytes of plaintext + 16, the last one shorter (an empty object has one
               empty segment: just its tag)
    then       index: AES-256-GCM(data key, index nonce, leaf_0 || ... || leaf_n-1, AAD = header || cid)

Nonces follow the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár; Tink's streaming AEAD):
    nonce_i     = prefix(7) || u32be(i) || last(1)      last = 1 only for segment n-1
    index nonce = prefix(7) || ffffffff  || 02          a flag value segments never use
so flipping a bit, truncating, reordering or swapping segments all fail authentication: the index and the
last flag are inside the nonce, the header inside the AAD. Each object has its own random data key (wrapped
in the repo's `keys` table), so a segment or a whole file taken from another object never authenticates.
The total length is written when the stream ends (the header is rewritten before fsync), so segment AAD
covers only header[0:20]; the index AAD covers the whole header and binds the length and the content id.
Opening uses the header bytes as read, never a re-packed header: the reserved bytes are authenticated too.
"""

from __future__ import annotations

import os
import struct
from abc import ABC, abstractmethod
from typing import ClassVar, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pfast.errors import IntegrityError
from p2pfast.store import segments

MAGIC = b"P2PO"
VERSION_OFFSET = len(MAGIC)  # the version byte follows the magic in every version


class Envelope(ABC):
    """One object's envelope in one format version. A new version is a new subclass in FORMATS."""

    __slots__ = ()

    version: ClassVar[int]  # the header's version byte
    algorithm: ClassVar[str]  # what the repo's `keys.algorithm` column records for an object of it
    header_size: ClassVar[int]
    tag_size: ClassVar[int]  # bytes a sealed segment has over its plaintext
    max_segments: ClassVar[int]  # segment indexes run below this

    segment_size: int
    length: int  # the plaintext length the header records (0 in a new one's start header)

    @classmethod
    @abstractmethod
    def new(cls, data_key: bytes, segment_size: int) -> Self:
        """The envelope of an object about to be written (fresh nonces)."""

    @classmethod
    @abstractmethod
    def open(cls, raw_header: bytes, data_key: bytes, what: str) -> Self:
        """The envelope of a stored object from its header as read; IntegrityError naming `what` when the
        header is not one of this version."""

    # -- geometry: where each block sits (the store checks a file's size before it trusts its header) --
    @staticmethod
    @abstractmethod
    def segment_offset(index: int, segment_size: int) -> int: ...

    @staticmethod
    @abstractmethod
    def data_end(length: int, segment_size: int) -> int:
        """Offset just past the last segment: where the index block starts."""

    @staticmethod
    @abstractmethod
    def index_size(length: int, segment_size: int) -> int: ...

    @staticmethod
    @abstractmethod
    def file_size(length: int, segment_size: int) -> int: ...

    # -- sealing ------------------------------------------------------------------------------------------
    @abstractmethod
    def start_header(self) -> bytes:
        """The header written first, before the length is known."""

    @abstractmethod
    def seal_segment(self, index: int, last: bool, plain: bytes) -> bytes: ...

    @abstractmethod
    def seal_segment_into(self, index: int, last: bool, plain: memoryview, out: memoryview) -> None:
        """seal_segment into `out`, which is exactly len(plain) + tag_size bytes."""

    @abstractmethod
    def seal_index(self, length: int, leaves: bytes, cid: str) -> tuple[bytes, bytes]:
        """(final header, sealed index) once the stream has ended and its content id is known."""

    # -- opening ------------------------------------------------------------------------------------------
    @abstractmethod
    def open_segment_into(
        self, index: int, last: bool, sealed: memoryview, out: memoryview, what: str
    ) -> int:
        """Authenticate and decrypt segment `index` into `out`; returns its plaintext length."""

    @abstractmethod
    def open_index(self, sealed: bytes, cid: str, what: str) -> bytes:
        """The leaf list, authenticated against this header and `cid`."""


class EnvelopeV1(Envelope):
    """Format version 1 (the module docstring draws it): AES-256-GCM STREAM segments, BLAKE3 leaves."""

    __slots__ = ("_aead", "_raw_header", "_segment_aad", "length", "nonce_prefix", "segment_size")

    version = 1
    algorithm = "aes-256-gcm-stream+blake3"
    header_size = segments.HEADER_SIZE
    tag_size = segments.TAG_SIZE
    max_segments = segments.MAX_SEGMENTS  # the index in the nonce is u32; 0xffffffff is the index block's

    ALG_AES256GCM_BLAKE3 = 1  # the header's alg byte
    HEADER = struct.Struct(">4sBBHI7sxQ4x")
    NONCE_PREFIX_SIZE = 7
    SEGMENT_AAD_SIZE = 20  # header bytes known before the stream starts: all but the length
    INDEX_TAIL = b"\xff\xff\xff\xff\x02"

    def __init__(
        self, data_key: bytes, raw_header: bytes, segment_size: int, nonce_prefix: bytes, length: int
    ) -> None:
        self._aead = AESGCM(data_key)
        self._raw_header = raw_header
        self._segment_aad = raw_header[: self.SEGMENT_AAD_SIZE]
        self.segment_size = segment_size
        self.nonce_prefix = nonce_prefix
        self.length = length

    @classmethod
    def _pack(cls, segment_size: int, nonce_prefix: bytes, length: int) -> bytes:
        return cls.HEADER.pack(
            MAGIC, cls.version, cls.ALG_AES256GCM_BLAKE3, 0, segment_size, nonce_prefix, length
        )

    @classmethod
    def new(cls, data_key: bytes, segment_size: int) -> Self:
        prefix = os.urandom(cls.NONCE_PREFIX_SIZE)
        return cls(data_key, cls._pack(segment_size, prefix, 0), segment_size, prefix, 0)

    @classmethod
    def open(cls, raw_header: bytes, data_key: bytes, what: str) -> Self:
        raw = raw_header[: cls.header_size]
        if len(raw) != cls.header_size:
            raise IntegrityError(f"{what}: object header is {len(raw)} bytes, expected {cls.header_size}")
        magic, version, alg, _, seg, prefix, length = cls.HEADER.unpack(raw)
        if magic != MAGIC:
            raise IntegrityError(f"{what}: not a p2pfast object (bad magic)")
        if version != cls.version:  # format_of gives the newest class a header it cannot place
            raise IntegrityError(f"{what}: object format version {version} is not supported")
        if alg != cls.ALG_AES256GCM_BLAKE3:
            raise IntegrityError(f"{what}: unknown object algorithm {alg}")
        if seg <= 0:
            raise IntegrityError(f"{what}: bad segment size {seg}")
        return cls(data_key, raw, seg, prefix, length)

    @staticmethod
    def segment_offset(index: int, segment_size: int) -> int:
        return segments.segment_offset(index, segment_size)

    @staticmethod
    def data_end(length: int, segment_size: int) -> int:
        return segments.data_end(length, segment_size)

    @staticmethod
    def index_size(length: int, segment_size: int) -> int:
        return segments.index_size(length, segment_size)

    @staticmethod
    def file_size(length: int, segment_size: int) -> int:
        return segments.file_size(length, segment_size)

    def _segment_nonce(self, index: int, last: bool) -> bytes:
        return self.nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")

    def start_header(self) -> bytes:
        return self._raw_header

    def seal_segment(self, index: int, last: bool, plain: bytes) -> bytes:
        return self._aead.encrypt(self._segment_nonce(index, last), plain, self._segment_aad)

    def seal_segment_into(self, index: int, last: bool, plain: memoryview, out: memoryview) -> None:
        self._aead.encrypt_into(self._segment_nonce(index, last), plain, self._segment_aad, out)

    def seal_index(self, length: int, leaves: bytes, cid: str) -> tuple[bytes, bytes]:
        header = self._pack(self.segment_size, self.nonce_prefix, length)
        return header, self._aead.encrypt(self.nonce_prefix + self.INDEX_TAIL, leaves, header + cid.encode())

    def open_segment_into(
        self, index: int, last: bool, sealed: memoryview, out: memoryview, what: str
    ) -> int:
        try:
            return self._aead.decrypt_into(self._segment_nonce(index, last), sealed, self._segment_aad, out)
        except InvalidTag:
            raise IntegrityError(f"{what}: segment {index} failed authentication") from None

    def open_index(self, sealed: bytes, cid: str, what: str) -> bytes:
        try:
            return self._aead.decrypt(
                self.nonce_prefix + self.INDEX_TAIL, sealed, self._raw_header + cid.encode()
            )
        except InvalidTag:
            raise IntegrityError(f"{what}: segment index failed authentication") from None


FORMATS: dict[int, type[Envelope]] = {EnvelopeV1.version: EnvelopeV1}
SUPPORTED_VERSIONS = frozenset(FORMATS)
CURRENT: type[Envelope] = EnvelopeV1  # what new objects are written in
HEADER_READ = max(f.header_size for f in FORMATS.values())  # what a reader reads before format_of


def format_of(raw_header: bytes) -> type[Envelope]:
    """The format class the first bytes of an object file name: the one place that branches on the
    version byte. A header too short, without the magic, or of a version not in FORMATS gets CURRENT,
    whose `open` refuses it with the reason; its size is checked first, by CURRENT's geometry, so such
    a file fails as it did before versions were classes (a short file as truncated)."""
    if len(raw_header) > VERSION_OFFSET and raw_header[:VERSION_OFFSET] == MAGIC:
        return FORMATS.get(raw_header[VERSION_OFFSET], CURRENT)
    return CURRENT
