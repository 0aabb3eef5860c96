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
