"""Admission of incoming connections still in their handshake: the bookkeeping, without I/O.

Each incoming connection is held here from the moment its transport is made until its handshake finishes
or it goes. Three limits bound them (`net/limits.py` says why each): per source address, per source prefix
(/24 for IPv4, /64 for IPv6; an IPv4-mapped IPv6 address counts as the IPv4 address it maps) and in all.
A newcomer that finds a limit reached is admitted anyway, and the OLDEST connection still in its
handshake is closed to make room: of the newcomer's own address if it has one here, else of its prefix,
else of all. This is RFC 4987 §3.4's "recycling the oldest half-open TCB", one layer up: a member on a
working link finishes its handshake in a few round trips, so the connection that has waited longest is
the one least likely to be a member, and a flood from one place recycles its own slots first and never
those of another address or prefix. A connection whose handshake finished is no longer here, so nothing
here ever closes it.

Time enters only as a parameter (`now`), so the unit tests need no loop, socket or clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

# Why a newcomer found no room, as counted in metrics and logged: the limit reached, by its name in
# NetLimits (the global one is the config key max_pre_handshake).
PER_ADDRESS = "max_pre_handshake_per_address"
PER_PREFIX = "max_pre_handshake_per_prefix"
GLOBAL = "max_pre_handshake"


def source_of(host: str) -> tuple[str, str]:
    """(address, prefix) of a peer's host as the transport reports it: the address in its canonical
    spelling, and its /24 (IPv4) or /64 (IPv6) network. An IPv4-mapped IPv6 address is its IPv4 address,
    so a dual-stack listener counts an IPv4 peer the same as an IPv4 listener does. A host that is not an
    IP address (none should reach here) is its own address and prefix."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host, host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip), str(ipaddress.IPv4Network((int(ip) >> 8 << 8, 24)))
    bare = ipaddress.IPv6Address(int(ip))  # without a scope id: fe80::1%eth0 and %eth1 are one /64 here
    return str(ip), str(ipaddress.IPv6Network((int(bare) >> 64 << 64, 64)))


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    """The newcomer is in. `evicted` is the connection to close for it (None when there was room), and
    `limit` the limit that was reached (None likewise)."""

    evicted: T | None = None
    limit: str | None = None
    evicted_host: str = ""
    evicted_age: float = 0.0  # seconds the evicted connection had been in its handshake


@dataclass(slots=True)
class _Entry:
    address: str
    prefix: str
    host: str
    since: float


class Admission(Generic[T]):
    """Connections in their handshake, oldest first, by address, by prefix and in all."""

    def __init__(self, per_address: int, per_prefix: int, total: int) -> None:
        for name, value in (("per_address", per_address), ("per_prefix", per_prefix), ("total", total)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self.per_address = per_address
        self.per_prefix = per_prefix
        self.total = total
        # dicts keep insertion order, so the first key of each is its oldest connection, and removing
        # one (done, evicted) is O(1) whatever its place
        self._all: dict[T, _Entry] = {}
        self._by_address: dict[str, dict[T, None]] = {}
        self._by_prefix: dict[str, dict[T, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, conn: object) -> bool:
        return conn in self._all

    def count(self, host: str) -> tuple[int, int]:
        """Connections in their handshake from host's address and from its prefix."""
        address, prefix = source_of(host)
        return len(self._by_address.get(address, ())), len(self._by_prefix.get(prefix, ()))

    def admit(self, conn: T, host: str, now: float) -> Admitted[T]:
        """Take conn in, making room by evicting the oldest connection the first limit reached allows."""
        if conn in self._all:
            raise ValueError("connection admitted twice")
        address, prefix = source_of(host)
        same_address = self._by_address.get(address, {})
        same_prefix = self._by_prefix.get(prefix, {})
        if len(same_address) >= self.per_address:
            limit = PER_ADDRESS
        elif len(same_prefix) >= self.per_prefix:
            limit = PER_PREFIX
        elif len(self._all) >= self.total:
            limit = GLOBAL
        else:
            limit = None
        result: Admitted[T] = Admitted() if limit is None else self.make_room(host, limit, now)
        self._all[conn] = _Entry(address, prefix, host, now)
        self._by_address.setdefault(address, {})[conn] = None
        self._by_prefix.setdefault(prefix, {})[conn] = None
        return result

    def make_room(self, host: str, limit: str, now: float) -> Admitted[T]:
        """Evict the oldest connection near host (oldest_near) for a newcomer from host that found `limit`
        reached; `evicted` is None when none is in its handshake."""
        victim = self.oldest_near(host)
        if victim is None:
            return Admitted()
        entry = self._all[victim]
        self.done(victim)
        return Admitted(victim, limit, entry.host, max(0.0, now - entry.since))

    def oldest_near(self, host: str) -> T | None:
        """The oldest connection in its handshake from host's address, else from its prefix, else of
        all; None when there is none."""
        address, prefix = source_of(host)
        for group in (self._by_address.get(address), self._by_prefix.get(prefix), self._all):
            if group:
                return next(iter(group))
        return None

    def done(self, conn: T) -> None:
        """conn finished its handshake, or went, or was evicted: it counts no more. Idempotent."""
        entry = self._all.pop(conn, None)
        if entry is None:
            return
        for index, key in ((self._by_address, entry.address), (self._by_prefix, entry.prefix)):
            group = index[key]
            del group[conn]
            if not group:
                del index[key]  # an address seen once is not remembered: the tables stay bounded


class LogThrottle:
    """At most one log line per `interval` seconds for one kind of event, so that a flood of them cannot
    flood the log: `allow(now)` says whether to log this one, and how many were left out since the last
    line logged (the metrics count every one)."""

    __slots__ = ("_next", "_suppressed", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def allow(self, now: float) -> int | None:
        """None: leave this line out. Otherwise log it, with the returned count of lines left out."""
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.interval
        left_out, self._suppressed = self._suppressed, 0
        return left_out
