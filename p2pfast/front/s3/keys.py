"""S3 access keys: made by `p2pfast s3 key create` on any member, kept as the file `.s3/keys/AKID`
(names.py) whose content is the secret, so they reach the network as files do (replicated, encrypted
at rest under each holder's keys, deleted everywhere by a tombstone), and any member finds a key it does
not hold in one hop by its key's metadata (node/lookup.py).

A member caches a secret it looked up for CACHE_TTL, so a deleted key stops working on every member
within that time (at once on the member that deleted it), and a request costs no lookup while its key
is cached. A key that is not found is cached too, briefly, so a flood of requests under an unknown key
costs one lookup per NEGATIVE_TTL, not one per request. Secrets are never logged.
"""

from __future__ import annotations

import base64
import secrets
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from p2pfast.errors import BadInput, NotFound, PeerUnavailable
from p2pfast.front.s3 import names
from p2pfast.node import Node
from p2pfast.node.sources import BytesSource, CappedSink

CACHE_TTL = 10.0
NEGATIVE_TTL = 2.0
CACHE_SIZE = 1024
# A key file larger than this is no key of ours (a store by hand under .s3/keys/): read no more of it.
MAX_KEY_FILE = 4096
# Access key ids look like AWS's: 20 characters, upper-case letters and digits, a fixed prefix.
ID_PREFIX = "P2P"
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    created: float


def new_key(now: float | None = None) -> AccessKey:
    akid = ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(17))
    secret = base64.b64encode(secrets.token_bytes(30)).decode()  # 40 characters, as AWS's are
    return AccessKey(akid, secret, time.time() if now is None else now)


def encode(key: AccessKey) -> bytes:
    return orjson.dumps({"secret_access_key": key.secret_access_key, "created": key.created})


def decode(access_key_id: str, data: bytes) -> AccessKey | None:
    """The key a key file holds; None when the file is not one (then no request can sign with it)."""
    try:
        doc = orjson.loads(data)
        secret, created = doc["secret_access_key"], doc["created"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if type(secret) is not str or not secret or type(created) not in (int, float):
        return None
    return AccessKey(access_key_id, secret, float(created))


# Every cache of this process, so that a key deleted here stops working here at once.
_CACHES: weakref.WeakSet[Secrets] = weakref.WeakSet()


class Secrets:
    """The secret of an access key id, through the node (cached; see the module's docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._cache: dict[str, tuple[float, str | None]] = {}
        _CACHES.add(self)

    def forget(self, access_key_id: str) -> None:
        self._cache.pop(access_key_id, None)

    async def secret(self, access_key_id: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(access_key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await self._look_up(access_key_id)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        secret = None if key is None else key.secret_access_key
        self._cache[access_key_id] = (now + (CACHE_TTL if secret else NEGATIVE_TTL), secret)
        return secret

    async def _look_up(self, access_key_id: str) -> AccessKey | None:
        if not access_key_id or len(access_key_id) > 128 or "/" in access_key_id:
            return None
        sink = CappedSink(MAX_KEY_FILE, "an access key file")
        try:
            await self.node.get(names.key_file(access_key_id), sink)
        except NotFound:
            return None
        except PeerUnavailable:
            if not self.node.peers.sessions:  # a lone node that does not hold it: it does not exist
                return None
            raise  # members that may hold it did not answer: 503, the client retries
        except BadInput:
            if sink.over:  # no key of ours
                return None
            raise
        return decode(access_key_id, bytes(sink.data))


# -- `p2pfast s3 key create|list|delete` (front/commands.py) ----------------------------------------------
async def create(node: Node) -> dict[str, Any]:
    """A new access key, stored as its file (replicated like any other, so every member can check it)."""
    key = new_key()
    report = await node.put(names.key_file(key.access_key_id), BytesSource(encode(key)))
    return {**asdict(key), "replicated_to": report.replicated_to}


async def list_ids(node: Node) -> dict[str, Any]:
    """The access key ids this node and its connected members hold (the secrets stay where they are)."""
    listing = await node.network_files()
    ids = sorted(
        {f.key.removeprefix(names.KEYS_PREFIX) for f in listing.files if f.key.startswith(names.KEYS_PREFIX)}
    )
    return {"access_key_ids": ids, "member_count": listing.member_count, "unanswered": listing.unanswered}


async def delete(node: Node, access_key_id: str) -> dict[str, Any]:
    """Delete the key's file, everywhere (its tombstone reaches every member); NotFound if none."""
    if not access_key_id or "/" in access_key_id:
        raise BadInput(f"{access_key_id[:40]!r} is not an access key id")
    try:
        report = await node.delete(names.key_file(access_key_id))
    except NotFound:
        raise NotFound(f"no access key {access_key_id[:40]} (p2pfast s3 key list shows them)") from None
    finally:
        for cache in list(_CACHES):
            cache.forget(access_key_id)
    return {"access_key_id": access_key_id, "confirmed_by": report.confirmed_by}
