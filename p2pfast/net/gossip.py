"""Peer exchange, as the original system does it, made robust: on connect and every gossip interval each
node sends the peers it has seen in the last 30 minutes; a receiver drops itself and peers it is connected
to, records the rest and dials them through the rate-limited dialer."""

from __future__ import annotations

import re
import time
from typing import Any

from p2pfast.net.peers import PeerManager

NODE_ID_RE = re.compile(r"[0-9a-f]{64}")


def pex_message(known: list[tuple[str, str, float]], manager: PeerManager, exclude: str) -> dict[str, Any]:
    """known: (address, node id, last seen) rows from the peers table. Connected peers count as seen now."""
    now = time.time()
    entries: dict[str, dict[str, Any]] = {}
    for session in manager.sessions.values():
        addr = session.listen_addr
        if addr and session.peer_id != exclude:
            entries[session.peer_id] = {"addr": addr, "id": session.peer_id, "seen": now}
    for addr, node_id, seen in known:
        if node_id and node_id != exclude and node_id not in entries and NODE_ID_RE.fullmatch(node_id):
            entries[node_id] = {"addr": addr, "id": node_id, "seen": min(seen, now)}
    peers = sorted(entries.values(), key=lambda e: -e["seen"])[: manager.limits.max_pex_peers]
    return {"t": "pex", "peers": peers}


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
