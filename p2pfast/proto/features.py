"""What a peer speaks, from the software version in its HELLO (`agent`, "p2pfast/X.Y.Z").

A message kind or field that a build adds is refused by builds before it: an unknown kind or field is a
protocol error there, which ends the connection (proto/control.py). So a node sends what a later build
added only to peers whose agent names that build or a later one, and a network can be upgraded one node
at a time. A peer whose agent is not p2pfast's, or not parseable, is sent only what every build speaks.
"""

from __future__ import annotations

import functools
import re

# feature -> the first version that speaks it
SINCE: dict[str, tuple[int, int]] = {
    "view": (0, 2),  # view_sync, view_diff, view_pull, view_push, view_news (proto/view.py)
    "held_pinned": (0, 2),  # held's optional `pinned` bits (node/repair.py)
    "revoke": (0, 2),  # revoked, net_key (proto/revocation.py, node/revocation.py)
    "probe": (0, 2),  # probe: SWIM's ping-req (node/viewsync.py)
    "keymeta": (0, 2),  # key_meta, and have's optional `meta` (node/keymeta.py)
    "vouch": (0, 3),  # view records' signing key and vouch, stamps' vouched bit (proto/view.py)
}

_AGENT = re.compile(r"p2pfast/(\d+)\.(\d+)(?:\.\d+)?(?:[-+.].*)?")


def version_of(agent: str) -> tuple[int, int] | None:
    """(major, minor) of a p2pfast agent string, or None for anything else."""
    m = _AGENT.fullmatch(agent)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


@functools.lru_cache(maxsize=1024)
def speaks(agent: str, feature: str) -> bool:
    # cached: asked per session for every piece of news and every exchange, of a few agent strings
    version = version_of(agent)
    return version is not None and version >= SINCE[feature]
