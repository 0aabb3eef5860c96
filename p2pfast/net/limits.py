"""Every network bound, with its reason. Config may override the ones marked (config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pfast.proto.connection import Limits as ProtoLimits

# Write-buffer marks per transport. High: a few frames in flight keep the socket busy (a 64 KiB frame is
# the unit); above it the producers wait on `writable`. Low at a quarter, like uvloop's own default ratio.
WRITE_HIGH = 1 << 20
WRITE_LOW = WRITE_HIGH // 4

# Requests from one peer being handled at once. Past this the connection stops reading until one finishes:
# a peer that sends requests without reading our answers fills our write buffer, not our memory.
MAX_INFLIGHT_REQUESTS = 32

# Unread received bytes per connection are bounded by credit: max_streams x initial_window
# (proto Limits: 16 x 1 MiB = 16 MiB at the defaults), whatever the peer sends.

# How long a request waits for its answer.
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class NetLimits:
    # (config) connections of any kind; one node serving a small network needs few.
    max_connections: int = 256
    # (config) sessions a node keeps open to other members once they are idle (node/links.py): it links
    # to ceil(log2 N) + 2 members, at most max_links - 4, and closes what is idle beyond that plus 4. 16
    # leaves 1000 members at 12 links, above the ln N a random graph needs to stay connected.
    max_links: int = 16
    # A session beyond the link target closes once it carried no request or stream for this long: what
    # a get, a store or a repair opened to the member it needed.
    idle_close: float = 30.0
    # (config) incoming connections still in the handshake, in all: an unauthenticated peer costs a
    # socket, about 320 KiB of buffers and a Noise handshake (two X25519 operations); bounding them bounds
    # what a flood of connects can take. A newcomer past a limit is still admitted: the oldest connection
    # in its handshake from the same address, else the same prefix, else any, is closed for it
    # (net/admission.py, after RFC 4987 §3.4), so a flood recycles its own slots rather than keep
    # members out.
    max_pre_handshake: int = 32
    # Of those, from one source address. A member dials at most max_dials_in_flight (4) at once, so two
    # nodes behind one NAT or on one host fit; a flood from one address holds at most a quarter of the
    # global slots and, once at this limit, evicts only its own connections.
    max_pre_handshake_per_address: int = 8
    # From one /24 (IPv4) or /64 (IPv6). A /24 is the longest IPv4 prefix networks commonly accept from
    # each other (RFC 7454) and a /64 one IPv6 subnet, whose 2**64 addresses one host may pick from at
    # will (RFC 4291 interface ids, RFC 8981 temporary addresses): without it one IPv6 host would be any
    # number of "addresses". Half the global slots, so one prefix alone can never fill them.
    max_pre_handshake_per_prefix: int = 16
    # Admission log lines (evictions, refusals): at most one per kind per this many seconds, each saying
    # how many were left out since the last; the metrics count every one. A flood must not flood the log.
    admission_log_interval: float = 10.0
    # Dials in flight and new dials per second, so that a peer list of hundreds does not become a burst.
    max_dials_in_flight: int = 4
    dials_per_second: float = 8.0
    # Backoff per address after a failed dial: doubles from min to max.
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    # Peer exchange: peers seen in this window are shared (as the original system does), re-sent this often.
    gossip_window: float = 30 * 60.0
    gossip_interval: float = 30.0
    # Entries per peer-exchange message (control messages are size-capped).
    max_pex_peers: int = 128
    # Failure detection (node/viewsync.py): a member whose session ended is suspected once it has not come
    # back for suspect_after (a restart or a blip reconnects sooner), and declared dead when the suspicion
    # stands dead_after more (time for the member, if alive, to hear it and refute it).
    suspect_after: float = 5.0
    dead_after: float = 30.0
    # A member declared dead or gone is not redialled every round; every dead_retry one of them, taken at
    # random, is tried all the same (node/membership.py): one dial per node and minute heals a partition.
    dead_retry: float = 60.0
    # A peer unseen for longer than this is dropped by `cleanup` (the original's one hour).
    stale_after: float = 60 * 60.0
    proto: ProtoLimits = field(default_factory=ProtoLimits)
