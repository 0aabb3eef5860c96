"""The membership view, sans-IO (the caller passes the time, Unix seconds, where it matters): every
member's record, how two records of one member are ordered, and the digests two nodes compare to find, in
a few small messages, where their views differ (docs/protocol.md, "Membership that scales").

A record says what is known of one member: its node id, the address it advertises, its incarnation and
its state (alive, suspect, dead, left), its Ed25519 signing key (`sk`, the key its revocations are signed
with), and a vouch: the id of another member that dialled that address and completed the handshake there
with this member's id, and that member's signature of (node id, incarnation, address). Only a vouched
address is dialled by a node that did not verify it itself (node/links.py), so a member that advertises an
address it does not listen on gets no dials from the view (docs/protocol.md, "Vouched addresses"). Records
of one member are totally ordered by their `key` (incarnation, state, address tag, vouched): of two, every
node keeps the greater, so views
merge like a join-semilattice (a CRDT: merging is commutative, associative and idempotent) and any order
of delivery ends in the same view. Only a member raises its own incarnation (SWIM's refutation, Das,
Gupta & Motivala 2002): a suspicion or death claim about it carries the incarnation it was about, and the
member answers a claim with an alive record one incarnation higher. A restart starts from the time in
milliseconds, so a node that lost its state still outranks what was said of it before.

Reconciliation is Scuttlebutt-like anti-entropy (van Renesse et al. 2008) with a hashed digest in place of
Scuttlebutt's per-member version list, so an idle exchange costs one message of constant size whatever
the network's size: each record hashes to 16 bytes, a bucket (the first byte of the node id: 256 buckets)
is the XOR of its records' hashes, and the root is the XOR of all of them, each kept up to date in O(1)
per change. Two nodes whose roots agree are done; otherwise they compare the 256 bucket hashes, then the
stamps (node id and key) of the buckets that differ, and send each other the records the other lacks.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

BUCKETS = 256
HASH_SIZE = 16
ZERO = bytes(HASH_SIZE)
# A dead or left member's record is kept this long after the death was declared (or the member left),
# so that every node hears of it before any forgets it; then it goes everywhere at about the same time.
FORGET_AFTER = 24 * 3600.0


class State(enum.IntEnum):
    """A member's state; at equal incarnations, a greater state wins (a suspicion over an alive record, a
    death over a suspicion), so a claim spreads until the member refutes it with a higher incarnation."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@functools.lru_cache(maxsize=4096)
def addr_tag(addr: str) -> str:
    """8 hex digits naming an address in keys and stamps (the address itself is in the record). Cached:
    every record decoded from the wire makes its key, and a member's address seldom changes (hashing
    it each time was 13% of a 1000-node simulation's CPU)."""
    return blake3.blake3(addr.encode()).hexdigest(4)


@dataclass(frozen=True, slots=True)
class Record:
    node_id: str  # 64 lowercase hex digits
    addr: str  # its listen address as the member advertises it ("" when it listens nowhere)
    inc: int  # incarnation: raised only by the member itself
    state: State
    at: float = 0.0  # for DEAD and LEFT: when it was declared (Unix time); 0 otherwise
    sk: str = ""  # the member's Ed25519 public key, 64 hex ("" from a build before vouches)
    voucher: str = ""  # the member that verified `addr` at incarnation `inc` ("": nobody yet)
    vsig: str = ""  # the voucher's signature of vouch_bytes(node_id, inc, addr), 128 hex
    # The order of records of one member: the greater is kept. Made once: every merge compares keys.
    key: tuple[int, int, str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vouched = 1 if self.voucher else 0
        object.__setattr__(self, "key", (self.inc, int(self.state), addr_tag(self.addr), vouched))

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.node_id, self.inc, self.state, self.key[2], self.key[3])

    @property
    def gone(self) -> bool:
        return self.state >= State.DEAD

    @property
    def vouched(self) -> bool:
        return bool(self.voucher)

    def unvouched(self) -> Record:
        return dataclasses.replace(self, voucher="", vsig="") if self.voucher else self

    def legacy(self) -> Record:
        """The record as a build before vouches reads it (its five fields)."""
        return dataclasses.replace(self, sk="", voucher="", vsig="") if self.sk or self.voucher else self


VOUCH_LABEL = b"p2pfast vouch/1\0"


def vouch_bytes(node_id: str, inc: int, addr: str) -> bytes:
    """What a voucher signs: the label, the member's id (32 bytes), its incarnation (u64 BE) and the
    address (UTF-8). The state is left out: a claim about the member keeps the vouch of its address."""
    return VOUCH_LABEL + bytes.fromhex(node_id) + struct.pack(">Q", inc) + addr.encode()


def vouch(record: Record, voucher: str, key: Ed25519PrivateKey) -> Record:
    """`record` vouched for by `voucher`, which dialled its address and met its member there."""
    sig = key.sign(vouch_bytes(record.node_id, record.inc, record.addr)).hex()
    return dataclasses.replace(record, voucher=voucher, vsig=sig)


def vouch_valid(record: Record, signer_sk: str) -> bool:
    """The record's vouch checks out under `signer_sk` (its voucher's key, from the voucher's record)."""
    if not record.voucher or not signer_sk or record.voucher == record.node_id:
        return False
    return _verify(signer_sk, record.vsig, vouch_bytes(record.node_id, record.inc, record.addr))


@functools.lru_cache(maxsize=4096)
def _verify(sk: str, sig: str, data: bytes) -> bool:
    # cached: a vouch reaches a node along several links, and the simulator runs many nodes in one
    # process; a verification is a pure function of its inputs
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(sk)).verify(bytes.fromhex(sig), data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a digest exchange says of one record: enough to order it, without its address."""

    node_id: str
    inc: int
    state: State
    tag: str
    v: int = -1  # 1 vouched, 0 not; -1 from a build before vouches, which orders records without it

    @property
    def key(self) -> tuple[int, int, str] | tuple[int, int, str, int]:
        if self.v < 0:
            return (self.inc, int(self.state), self.tag)
        return (self.inc, int(self.state), self.tag, self.v)

    def legacy(self) -> Stamp:
        return dataclasses.replace(self, v=-1) if self.v >= 0 else self


def _shuffled(node_id: str) -> str:
    return os.urandom(4).hex() + node_id


def bucket_of(node_id: str) -> int:
    return int(node_id[:2], 16)


def _hash(r: Record) -> bytes:
    # `at` is left out: two nodes that heard of one death at different moments agree on the view; so is
    # who vouched (two nodes that took two vouches for one address agree), but not whether it is vouched
    v = "/v" if r.voucher else ""
    return blake3.blake3(f"{r.node_id}/{r.inc}/{int(r.state)}/{r.addr}{v}".encode()).digest(HASH_SIZE)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(HASH_SIZE, "big")


class View:
    """One node's view of every member, itself included."""

    def __init__(self, me: Record) -> None:
        self.me = me.node_id
        self._records: dict[str, Record] = {}
        self._by_bucket: list[dict[str, Record]] = [{} for _ in range(BUCKETS)]
        self._buckets = [ZERO] * BUCKETS
        self._root = ZERO
        self._put(me)

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records.values())

    def get(self, node_id: str) -> Record | None:
        return self._records.get(node_id)

    @property
    def mine(self) -> Record:
        return self._records[self.me]

    def alive(self) -> list[Record]:
        """Members not known to be gone, this node left out (a suspect is still a member)."""
        return [r for r in self._records.values() if not r.gone and r.node_id != self.me]

    # -- changing ------------------------------------------------------------------------------------
    def merge(self, record: Record, now: float) -> Record | None:
        """Keep `record` if it is news (greater than what is known of its member); returns what this
        view now holds for the member when that changed (the record, or this node's refutation of a
        claim about itself), None when it was not news."""
        old = self._records.get(record.node_id)
        if record.node_id == self.me:
            if old is not None and record.key[:3] == old.key[:3] and record.voucher and not old.voucher:
                # a member vouches for this node's address: kept, and passed on like any news
                return self._put(dataclasses.replace(old, voucher=record.voucher, vsig=record.vsig))
            if old is not None and record.key > old.key:
                # A claim that this node is suspect, dead or gone, or an alive record of a past life of it
                # that outranks this one: refute it (SWIM), one incarnation up.
                return self._put(Record(self.me, old.addr, record.inc + 1, State.ALIVE, sk=old.sk))
            return None
        if old is not None and old.sk and not record.sk:
            # one member's key never changes (it derives from its static key): a record that came
            # through a build before vouches lacks it
            record = dataclasses.replace(record, sk=old.sk)
        if old is not None and (record.inc, record.addr) == (old.inc, old.addr):
            # A vouch is of the address at an incarnation, whatever the state: the record kept has it
            # if either had it (an OR beside the order, so delivery order still does not matter).
            if old.voucher and not record.voucher and record.key[:3] > old.key[:3]:
                record = dataclasses.replace(record, voucher=old.voucher, vsig=old.vsig)
            elif record.voucher and not old.voucher and record.key[:3] < old.key[:3]:
                return self._put(dataclasses.replace(old, voucher=record.voucher, vsig=record.vsig))
        if old is not None and record.key < old.key:
            return None
        if old is not None and record.key == old.key:
            if record.gone and 0 < record.at < old.at:  # the earliest declaration, wherever it came from
                self._records[record.node_id] = record
                self._by_bucket[bucket_of(record.node_id)][record.node_id] = record
            return None
        if record.gone and record.at and record.at + FORGET_AFTER < now:
            return None  # long forgotten everywhere: do not bring it back
        return self._put(record)

    def claim(self, node_id: str, state: State, now: float) -> Record | None:
        """This node declares a member suspect, dead (or, for itself, left), at the incarnation it knows;
        returns the new record (None if the view already says as much or more)."""
        old = self._records.get(node_id)
        if old is None:
            return None
        at = now if state >= State.DEAD else 0.0
        new = dataclasses.replace(old, state=state, at=at)  # the vouch stays: it is of the address
        if new.key <= old.key:
            return None
        if node_id == self.me:
            return self._put(new) if state == State.LEFT else None
        return self._put(new)

    def forget(self, now: float) -> list[str]:
        """Drop the records of members gone longer than FORGET_AFTER; returns their ids."""
        old = [r.node_id for r in self._records.values() if r.gone and r.at + FORGET_AFTER < now]
        for node_id in old:
            if node_id != self.me:
                self._drop(node_id)
        return [n for n in old if n != self.me]

    def _put(self, record: Record) -> Record:
        old = self._records.get(record.node_id)
        b = bucket_of(record.node_id)
        h = _hash(record)
        if old is not None:
            h = _xor(h, _hash(old))
        self._buckets[b] = _xor(self._buckets[b], h)
        self._root = _xor(self._root, h)
        self._records[record.node_id] = record
        self._by_bucket[b][record.node_id] = record
        return record

    def _drop(self, node_id: str) -> None:
        old = self._records.pop(node_id)
        h = _hash(old)
        b = bucket_of(node_id)
        del self._by_bucket[b][node_id]
        self._buckets[b] = _xor(self._buckets[b], h)
        self._root = _xor(self._root, h)

    # -- reconciliation ------------------------------------------------------------------------------
    def root(self) -> bytes:
        """The digest of the whole view: equal roots, equal views (but for hash collisions)."""
        return self._root

    def buckets(self) -> list[bytes]:
        return list(self._buckets)

    def differing(self, theirs: Sequence[bytes]) -> list[int]:
        """The buckets whose hashes differ from `theirs` (a peer's `buckets()`)."""
        return [i for i, (a, b) in enumerate(zip(self._buckets, theirs, strict=True)) if a != b]

    def stamps_page(self, buckets: Sequence[int], limit: int) -> tuple[list[int], list[Stamp]]:
        """The stamps of as many of `buckets` (in order, whole buckets, at least one) as `limit` stamps
        hold: one message's worth; the buckets it covers, and the stamps."""
        covered: list[int] = []
        out: list[Stamp] = []
        for b in buckets:
            page = self.stamps([b])
            if covered and len(out) + len(page) > limit:
                break
            covered.append(b)
            out.extend(page)
        return covered, out

    def stamps(self, buckets: Iterable[int]) -> list[Stamp]:
        out = [r.stamp for b in set(buckets) for r in self._by_bucket[b].values()]
        return sorted(out, key=lambda s: s.node_id)

    def compare(
        self, buckets: Iterable[int], theirs: Iterable[Stamp], limit: int | None = None
    ) -> tuple[list[Record], list[str]]:
        """Given a peer's stamps of `buckets`: the records of those buckets it lacks or holds older (to
        send it), and the ids of the members it knows better (to ask it for), at most `limit` of each (a
        message's worth: the next exchange goes on where this one stopped, as the digests still differ)."""
        wanted = set(buckets)
        known = {s.node_id: s for s in theirs if bucket_of(s.node_id) in wanted}
        send: list[tuple[int, str, Record]] = []
        # (a stamp from a build before vouches has a shorter key: compared on its three fields)
        for b in wanted:
            for r in self._by_bucket[b].values():
                s = known.get(r.node_id)
                if s is None:
                    send.append((0, r.node_id, r))
                elif s.key < r.key[: len(s.key)]:
                    # a vouch the peer lacks comes after what it lacks otherwise, in an order that
                    # changes: a page cut to fit must not always bring the same vouches it may refuse
                    only_vouch = s.key[:3] == r.key[:3]
                    send.append((2, _shuffled(r.node_id), r) if only_vouch else (1, r.node_id, r))
        want = [
            n
            for n, s in known.items()
            if (mine := self._records.get(n)) is None or mine.key[: len(s.key)] < s.key
        ]
        send.sort(key=lambda x: x[:2])
        want.sort()
        return [r for _, _, r in send][:limit], want[:limit]

    def records(self, node_ids: Iterable[str]) -> list[Record]:
        return [r for n in node_ids if (r := self._records.get(n)) is not None]
