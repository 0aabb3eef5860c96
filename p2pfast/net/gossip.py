"""Peer exchange, as the original system does it, made robust: on connect and every gossip interval each
node sends the peers it has seen in the last 30 minutes at addresses it verified itself (docs/protocol.md,
Discovery: never one it merely heard of); a receiver drops itself and peers it is connected to, records
the rest and dials them through the rate-limited dialer, which is how it verifies them."""

from __future__ import annotations

import random
import re
import time

import orjson

from p2pfast.net.peers import PeerManager
from p2pfast.proto import messages as m

NODE_ID_RE = re.compile(r"[0-9a-f]{64}")


def pex_message(
    known: list[tuple[str, str, float]], manager: PeerManager, exclude: str, sample: int | None = None
) -> tuple[m.Pex, int]:
    """The pex message for one peer, and how many entries were left out for it to fit.

    known: (address, node id, last seen) rows from the peers table, the verified ones only. Connected
    peers count as seen now, at their verified address; one whose address nobody verified is left out.
    The freshest entries go first, as many as fit in one control message: at 114-128 entries with DNS
    names or IPv6 addresses the whole list no longer does, and a message that fails to encode would
    leave the peer with no exchange at all.

    With `sample`, that many entries taken at random (HyParView's shuffle) for a peer that learns the
    members from the membership view (node/viewsync.py): a sample keeps its addresses fresh at a size
    that does not grow with the network. None: all that fit, for an older build."""
    now = time.time()
    entries: dict[str, m.PexPeer] = {}
    for session in manager.sessions.values():
        addr = session.verified_addr
        if addr and session.peer_id != exclude:
            entries[session.peer_id] = m.PexPeer(addr, session.peer_id, now)
    for addr, node_id, seen in known:
        if node_id and node_id != exclude and node_id not in entries and NODE_ID_RE.fullmatch(node_id):
            entries[node_id] = m.PexPeer(addr, node_id, min(seen, now))
    ranked = sorted(entries.values(), key=lambda e: -e.seen)
    if sample is not None and len(ranked) > sample:
        ranked = sorted(random.sample(ranked, sample), key=lambda e: -e.seen)
    room = manager.limits.proto.max_control_size - len(orjson.dumps(m.to_wire(m.Pex(()))))
    peers: list[m.PexPeer] = []
    for entry in ranked[: manager.limits.max_pex_peers]:
        room -= len(orjson.dumps({"addr": entry.addr, "id": entry.id, "seen": entry.seen})) + 1  # and a comma
        if room < 0:
            break
        peers.append(entry)
    return m.Pex(tuple(peers)), len(ranked) - len(peers)


def new_peers(message: m.Pex, manager: PeerManager) -> list[tuple[str, str, float]]:
    """Entries of a received pex worth recording and dialling: not us, not already connected."""
    now = time.time()
    connected = manager.connected_addrs()
    out = []
    for entry in message.peers:
        if entry.id == manager.node_id or entry.id in manager.sessions or entry.addr in connected:
            continue
        out.append((entry.addr, entry.id, min(entry.seen, now)))
    return out
