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
    # (config) connections still in the handshake: an unauthenticated peer costs a socket and a Noise
    # handshake (two X25519 operations); bounding them bounds what a flood of connects can take.
    max_pre_handshake: int = 32
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
    # A peer unseen for longer than this is dropped by `cleanup` (the original's one hour).
    stale_after: float = 60 * 60.0
    proto: ProtoLimits = field(default_factory=ProtoLimits)
