"""Process-wide event counters, read by the metrics endpoint (metrics.py) and `status`.

Plain ints bumped where things happen (the network layer, transfers, the commands), with no dependency
and no lock: each bump is one `+=` on the event loop thread, where all of them run. They are per process
rather than per Node because a daemon is one node per process and Prometheus scrapes processes; nodes
run together in one process (tests, the demo) share them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Store and get latency buckets, in seconds: from a 4 KiB store on loopback (a few ms) to a large file
# over a slow link (minutes).
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # last: +Inf
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of observations <= le) per bucket, "+Inf" last: the Prometheus form."""
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class Counters:
    bytes_in: int = 0  # encrypted bytes read from peers' connections
    bytes_out: int = 0  # and written to them
    handshake_failures: int = 0  # connections that closed or failed before the Noise handshake finished
    # limit -> incoming connections closed in their handshake to admit a newer one (net/admission.py):
    # per_address, per_prefix, global (max_pre_handshake) or max_connections
    admission_evicted: dict[str, int] = field(default_factory=dict)
    # limit -> connections refused at once (max_connections reached, none in its handshake to evict)
    admission_refused: dict[str, int] = field(default_factory=dict)
    integrity_failures: int = 0  # bytes that did not match their hash or tag: from a peer or on disk
    # (kind, result) -> count; kind: store, get, delete (asked of this node), receive, serve (for peers)
    transfers: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(default_factory=lambda: {"store": Histogram(), "get": Histogram()})
    repair_copies: int = 0  # repair copies acknowledged by their receiver (node/repair.py)
    repair_bytes: int = 0  # the bytes of those copies
    repair_failed: int = 0  # repair copies tried that did not land
    repair_dropped: int = 0  # surplus copies dropped once others held the file at its target

    def evicted(self, limit: str) -> None:
        self.admission_evicted[limit] = self.admission_evicted.get(limit, 0) + 1

    def refused(self, limit: str) -> None:
        self.admission_refused[limit] = self.admission_refused.get(limit, 0) + 1

    def transfer(self, kind: str, ok: bool) -> None:
        k = (kind, "ok" if ok else "failed")
        self.transfers[k] = self.transfers.get(k, 0) + 1


COUNTERS = Counters()
