"""Which peers hold an object: rendezvous (highest random weight) hashing of (content id, node id), so
each object's placement is stable, spreads evenly and needs no coordination (Thaler & Ravishankar, 1998;
docs/protocol.md, "Placement"). Pure: it ranks what it is given."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TypeVar

import blake3

from p2pfast.net.session import Session

S = TypeVar("S", bound=Session)


def weight(cid: str, node_id: str) -> bytes:
    """The rendezvous weight of a node for an object; higher ranks first."""
    return blake3.blake3(f"{cid}/{node_id}".encode()).digest()


def key_weight(key: bytes, node_id: str) -> bytes:
    """The rendezvous weight of a node for a key's metadata (key -> content id; node/keymeta.py). The
    "key:" prefix puts keys in a hash domain of their own, so a key's metadata holders are drawn
    independently of any object's holders (a key cannot collide with a content id's "b3:" form anyway,
    store/userkey.py); the node id, fixed at 64 hex digits, ends the input, so a "/" in a key is no
    ambiguity."""
    return blake3.blake3(b"key:" + key + b"/" + node_id.encode()).digest()


def ranked(cid: str, sessions: Sequence[S]) -> list[S]:
    """`sessions` best first for `cid`: the order a store or a repair tries them in."""
    return sorted(sessions, key=lambda s: weight(cid, s.peer_id), reverse=True)


def order(cid: str, nodes: Iterable[str]) -> list[str]:
    """Node ids best first for `cid` (as ranked() orders sessions)."""
    return sorted(nodes, key=lambda n: weight(cid, n), reverse=True)


def key_order(key: bytes, nodes: Iterable[str]) -> list[str]:
    """Node ids best first for the metadata of `key`: the members that should know its content id."""
    return sorted(nodes, key=lambda n: key_weight(key, n), reverse=True)


def replica_set(cid: str, sessions: Sequence[S], replicas: int | None) -> list[S]:
    """The peers a new object goes to: every one (replicas None, as the original system does), or the
    `replicas` ranked highest for `cid`."""
    if replicas is None or replicas >= len(sessions):
        return list(sessions)
    return ranked(cid, sessions)[:replicas]


def keep_order(cid: str, nodes: Iterable[str], pinned: Collection[str]) -> list[str]:
    """`nodes` in the order they keep copies of `cid`: the pinned ones (a user stored it there, so it
    stays) first, then by weight. Every node that knows the same holders computes the same order, so the
    first `target` of it never drop theirs (node/repair.py)."""
    return sorted(nodes, key=lambda n: (n in pinned, weight(cid, n)), reverse=True)


def ideal(cid: str, members: Iterable[str], pinned: Collection[str], target: int) -> list[str]:
    """Who should hold `cid` among `members`: its pinned holders, then the best-ranked others up to
    `target` copies in all. Repair moves copies onto these (a member that joined and ranks high gets
    its share), and the holders outside it drop theirs once these hold it."""
    return keep_order(cid, set(members) | set(pinned), pinned)[: max(target, len(pinned))]
