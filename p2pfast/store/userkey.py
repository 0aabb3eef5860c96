"""User keys: the names files are stored under. Any UTF-8 string of 1 to MAX_KEY_BYTES bytes; a key is
never used to build a path (object files are named by an HMAC of the content id, keys.py)."""

from __future__ import annotations

from p2pfast.errors import BadInput

MAX_KEY_BYTES = 1024


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


def show_key(key: str | bytes) -> str:
    """A key for one-line messages and tables: printable as is, otherwise escaped (--json has the key
    itself). Light to import: the CLI calls it for results that came from the daemon."""
    text = key if isinstance(key, str) else bytes(key).decode("utf-8", "replace")
    return text if text.isprintable() else repr(text)


# A get names a file by its key or its content by its content id, and both are strings: the prefix of a
# content id ("b3:", contentid.PREFIX) is reserved for content ids, so `get b3:…` always means the
# content, and what it returns always hashes to what was asked. A store under a key with that prefix is
# refused (check_storable): such a file could never be got by its key. The whole prefix is reserved, not
# only well-formed ids, so that a mistyped or cut id is "not a content id" rather than "no such key".
CID_PREFIX = "b3:"
_HEX = frozenset("0123456789abcdef")


def content_id_of(name: str) -> str | None:
    """The content id `name` asks for, or None when it is a key; BadInput for a name with the content-id
    prefix that is not one ("b3:" and 64 lowercase hex digits, as the wire has them)."""
    if not name.startswith(CID_PREFIX):
        return None
    digits = name[len(CID_PREFIX) :]
    if len(digits) != 64 or not _HEX.issuperset(digits):
        raise BadInput(
            f"{show_key(name)[:80]} is not a content id ('b3:' and 64 lowercase hex digits); "
            f"keys starting with {CID_PREFIX!r} are reserved for content ids"
        )
    return name


# A file under this prefix is scratch: kept by the node that stored it and nowhere else (not replicated,
# not repaired, no key metadata placed), though listed, got and deleted like any file. For what a front
# end stages before it stores the real thing, such as the parts of an S3 multipart upload, which would
# otherwise cross the network twice. A store through the CLI under it is a user's choice, and works.
SCRATCH_PREFIX = ".scratch/"


def is_scratch(raw: bytes) -> bool:
    """Whether file key `raw` (as the repo holds it) is a scratch file (SCRATCH_PREFIX)."""
    return raw.startswith(SCRATCH_PREFIX.encode())


def check_storable(key: str) -> None:
    """BadInput for a key a store must refuse: one that `get` would read as a content id."""
    if key.startswith(CID_PREFIX):
        raise BadInput(
            f"cannot store under {show_key(key)[:80]}: keys starting with {CID_PREFIX!r} are reserved for "
            "content ids (get b3:… fetches by content id); choose another key"
        )
