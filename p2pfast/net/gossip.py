"""Peer exchange, as the original system does it, made robust: on connect and every gossip interval each
node sends the peers it has seen in the last 30 minutes; a receiver drops itself and peers it is connected
to, records the rest and dials them through the rate-limited dialer."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from p2pfast.net.peers import PeerManager

NODE_ID_RE = re.compile(r"[0-9a-f]{64}")


def pex_message(
    known: list[tuple[str, str, float]], manager: PeerManager, exclude: str
) -> tuple[dict[str, Any], int]:
    """The pex message for one peer, and how many entries were left out for it to fit.

    known: (address, node id, last seen) rows from the peers table. Connected peers count as seen now.
    The freshest entries go first, as many as fit in one control message: at 114-128 entries with DNS
    names or IPv6 addresses the whole list no longer does, and a message that fails to encode would
    leave the peer with no exchange at all (until the membership protocol replaces this message)."""
    now = time.time()
    entries: dict[str, dict[str, Any]] = {}
    for session in manager.sessions.values():
        addr = session.listen_addr
        if addr and session.peer_id != exclude:
            entries[session.peer_id] = {"addr": addr, "id": session.peer_id, "seen": now}
    for addr, node_id, seen in known:
        if node_id and node_id != exclude and node_id not in entries and NODE_ID_RE.fullmatch(node_id):
            entries[node_id] = {"addr": addr, "id": node_id, "seen": min(seen, now)}
    ranked = sorted(entries.values(), key=lambda e: -e["seen"])
    room = manager.limits.proto.max_control_size - len(orjson.dumps({"t": "pex", "peers": []}))
    peers: list[dict[str, Any]] = []
    for entry in ranked[: manager.limits.max_pex_peers]:
        room -= len(orjson.dumps(entry)) + 1  # and its comma
        if room < 0:
            break
        peers.append(entry)
    return {"t": "pex", "peers": peers}, len(ranked) - len(peers)


def new_peers(message: dict[str, Any], manager: PeerManager) -> list[tuple[str, str, float]]:
    """Entries of a received pex worth recording and dialling: not us, not already connected."""
    now = time.time()
    connected = manager.connected_addrs()
    out = []
    for entry in message.get("peers", ()):
        node_id, addr = entry["id"], entry["addr"]
        if node_id == manager.node_id or node_id in manager.sessions or addr in connected:
            continue
        out.append((addr, node_id, min(float(entry["seen"]), now)))
    return out
