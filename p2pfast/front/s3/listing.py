"""ListObjectsV2 over a sorted list of a bucket's objects: prefix, delimiter (common prefixes), start-after,
max-keys and continuation tokens, as S3 defines them. Pure: the server gathers the objects.

The continuation token is the last key or common prefix the page returned, base64url-encoded: the next
page starts after it, so a listing stays consistent under concurrent writes the way S3's does (keys
added behind the cursor are not shown, keys added ahead are).
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Sequence

from p2pfast.front.s3.errors import S3Error

MAX_KEYS = 1000
# Above every character: name + _TOP sorts after every key that begins with name.
_TOP = "\U0010ffff"


def encode_token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise S3Error("InvalidArgument", 400, "the continuation token is not one this node gave") from None


def page(
    keys: Sequence[str], prefix: str, delimiter: str, after: str, max_keys: int, resumed: bool = False
) -> tuple[list[str], list[str], str]:
    """(object keys, common prefixes, the last name shown if the listing goes on else "") for the page of
    sorted `keys` that begins after `after`. `resumed`: `after` came from a continuation token, so when
    it is a common prefix the previous page showed, the keys under it were shown with it."""
    start = bisect.bisect_right(keys, after) if after else 0
    if resumed and delimiter and after.endswith(delimiter):
        start = bisect.bisect_left(keys, after + _TOP, start)
    if prefix:
        start = max(start, bisect.bisect_left(keys, prefix))
    contents: list[str] = []
    prefixes: list[str] = []
    last = ""
    i = start
    while i < len(keys):
        key = keys[i]
        if not key.startswith(prefix):
            break
        if len(contents) + len(prefixes) == max_keys:
            return contents, prefixes, last
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[: cut + len(delimiter)]
            prefixes.append(common)
            last = common
            # every key under this common prefix is rolled up into it: skip past them all
            i = bisect.bisect_left(keys, common + _TOP, i)
            continue
        contents.append(key)
        last = key
        i += 1
    return contents, prefixes, ""
