"""Revocation and network key rotation (docs/protocol.md, "Revocation and key rotation").

`revoke(node_id)` makes a signed record (proto/revocation.py), keeps it in the repo and sends it to every
connected member that speaks it; each member that hears a record for the first time keeps it, passes it
on, and from then on refuses the revoked id at the handshake in both directions (net/peers.py `refused`,
checked by proto/connection.py as soon as the peer's static key is known) and closes a live session with
it. Every member sends all its records to each member that connects, so one that was offline learns them
on its first session.

`rotate(window)` makes a new network key and pushes it over the sessions (each Noise-encrypted) to the
members connected; each keeps the new key in the key file and the old one beside it (network.key.old),
accepts both at the handshake until the window ends, then refuses the old one and closes the sessions
that were made with it. The revoked node never gets the new key: once the window ends, its copy of the
old one opens nothing, even under a fresh node identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from p2pfast import identity, wire
from p2pfast.errors import BadInput
from p2pfast.net.session import Session
from p2pfast.node.context import Context
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.proto import revocation as rv
from p2pfast.store.durable import fsync_dir, os_error, write_file_durably
from p2pfast.store.keys import load_secret_file
from p2pfast.units import rfc3339

log = logging.getLogger("p2pfast.node")

# How long the old network key is still accepted after a rotation, unless `rotate-key --window` says
# otherwise. Long enough for the key to reach every member that is online (seconds) and for a member
# that restarts or loses its link briefly to come back and be handed it; short, because within it the
# old key still lets a holder of it join under a fresh node id (a revoked node id stays refused).
ROTATION_WINDOW = 3600.0
MIN_WINDOW = 1.0  # tests use seconds; below this no member could take the key in time
MAX_WINDOW = 30 * 86400.0


class Revocations:
    def __init__(self, ctx: Context, static_key: Any) -> None:
        self.ctx = ctx
        # the node's one signing key: its revocations, and its vouches for members' addresses (view.py)
        self.sign_key = identity.revocation_key(static_key)
        self.records: dict[str, rv.Revocation] = {}
        self.rotation: rv.Rotation | None = None  # the newest this node took (its key: the network key)
        self.old_until = 0.0  # the previous key is accepted until then (wall clock)
        self._window_end: asyncio.TimerHandle | None = None

    # -- start ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Before the node listens or dials: the revocations and the rotation window from the repo."""
        ctx = self.ctx
        rows = await ctx.ex.db(ctx.repo.list_revocations)
        for node, by, at, signer, sig in rows:
            self._enforce(rv.Revocation(node, by, at, signer, sig))
        last = await ctx.ex.db(ctx.repo.last_key_rotation)
        if last is None:
            return
        gen, until, by, at = last
        self.rotation = rv.Rotation(gen, ctx.peers.network_key, until, by, at)
        old = await ctx.ex.db(self._read_old_key)
        if old is not None and until > time.time():
            self._open_window(old, until)
        elif old is not None:
            await ctx.ex.db(self._drop_old_key)

    def _read_old_key(self) -> bytes | None:
        path = self.ctx.layout.network_key_old
        if not path.exists():
            return None
        return load_secret_file(path, identity.KEY_SIZE, "old network key")

    def _drop_old_key(self) -> None:
        if self._window_end is not None:
            return  # a rotation taken since the window ended wrote the file anew: its window needs it
        path = self.ctx.layout.network_key_old
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except OSError as exc:
            raise os_error(exc, f"cannot remove {path}") from exc

    # -- revocation ----------------------------------------------------------------------------------
    def revoked(self, node_id: str) -> bool:
        return node_id in self.records

    async def revoke(self, node_id: str) -> dict[str, Any]:
        """`p2pfast revoke NODE_ID`: record, enforce and spread a revocation of `node_id`."""
        node_id = node_id.strip().lower()
        if len(node_id) != 64 or any(c not in "0123456789abcdef" for c in node_id):
            raise BadInput(f"{node_id[:70]!r} is not a node id (64 hex digits, as 'p2pfast peers' shows)")
        if node_id == self.ctx.node_id:
            raise BadInput("a node cannot revoke itself: run 'p2pfast revoke' on another member")
        existing = self.records.get(node_id)
        record = existing or rv.sign(self.sign_key, node_id, self.ctx.node_id, time.time())
        if existing is None:
            await self._keep(record)
        sent = self._spread((record,), source=None)
        return {  # docs/cli.md, "revoke --json"
            "peer_id": node_id,
            "revoked_by": record.by,
            "revoked_at": rfc3339(record.at),
            "already": existing is not None,
            "sent_to": sent,
        }

    async def on_revoked(self, session: Session, msg: m.Revoked) -> None:
        fresh = []
        for r in msg.records:
            if r.node in self.records:
                continue
            if not rv.valid(r):
                log.warning(
                    "event=revocation_refused from=%s node=%s why=bad_signature",
                    session.peer_id[:12],
                    r.node[:12],
                )
                continue
            await self._keep(r)
            fresh.append(r)
        if fresh:
            self._spread(tuple(fresh), source=session)

    async def _keep(self, r: rv.Revocation) -> None:
        """Durable first, then enforced (a record we hold is one we re-send after a restart)."""
        ctx = self.ctx
        await ctx.ex.db(ctx.repo.add_revocation, r.node, r.by, r.at, r.signer, r.sig, time.time())
        self._enforce(r)
        log.warning("event=node_revoked node=%s by=%s at=%.3f", r.node[:12], r.by[:12], r.at)

    def _enforce(self, r: rv.Revocation) -> None:
        self.records[r.node] = r
        if r.node == self.ctx.node_id:
            # This node is the one revoked: the members refuse it; it has nothing to enforce.
            log.warning("event=this_node_revoked by=%s", r.by[:12])
            return
        self.ctx.peers.refused.add(r.node)
        session = self.ctx.peers.sessions.get(r.node)
        if session is not None:
            session.close(wire.ErrorCode.REFUSED, "revoked")

    def _members(self, source: Session | None) -> list[Session]:
        return [
            s
            for s in self.ctx.peers.sessions.values()
            if s is not source and not s.closed and s.speaks("revoke") and s.peer_id not in self.records
        ]

    def _spread(self, records: tuple[rv.Revocation, ...], source: Session | None) -> list[str]:
        sent = []
        for s in self._members(source):
            if self._send_records(s, records):
                sent.append(s.peer_id)
        return sent

    @staticmethod
    def _send_records(session: Session, records: tuple[rv.Revocation, ...]) -> bool:
        try:
            for i in range(0, len(records), control.MAX_REVOCATIONS):
                session.notify(m.Revoked(records[i : i + control.MAX_REVOCATIONS]))
        except Exception as exc:  # a session closing under us: it gets them all when it is back
            log.info("event=revocation_not_sent peer=%s reason=%r", session.peer_id[:12], str(exc))
            return False
        return True

    def on_ready(self, session: Session) -> None:
        """A member connected: hand it every record and the current rotation, so a member that was away
        learns what it missed (an older build, which would end the link on them, gets neither)."""
        if not session.speaks("revoke"):
            return
        if self.records:
            self._send_records(session, tuple(self.records.values()))
        if self.rotation is not None:
            with contextlib.suppress(Exception):
                session.notify(m.NetKey.of(self.rotation))

    # -- rotation ------------------------------------------------------------------------------------
    async def rotate(self, window: float) -> dict[str, Any]:
        """`p2pfast network rotate-key`: a new network key, taken here and pushed to the members."""
        if not MIN_WINDOW <= window <= MAX_WINDOW:
            raise BadInput(f"--window must be {MIN_WINDOW:g}..{MAX_WINDOW:g} seconds, not {window:g}")
        now = time.time()
        gen = 1 if self.rotation is None else min(self.rotation.gen + 1, control.MAX_ID)
        rotation = rv.Rotation(gen, os.urandom(identity.KEY_SIZE), now + window, self.ctx.node_id, now)
        await self._take(rotation)
        sent = self._push(rotation, source=None)
        members = [s for s in self.ctx.peers.sessions.values() if s.peer_id not in self.records]
        return {  # docs/cli.md, "network rotate-key --json"
            "generation": gen,
            "window_s": window,
            "old_key_refused_at": rfc3339(rotation.until),
            "sent_to": sent,
            "not_sent_to": sorted(s.peer_id for s in members if s.peer_id not in sent),
        }

    async def on_net_key(self, session: Session, msg: m.NetKey) -> None:
        x = msg.rotation
        if not rv.supersedes(x, self.rotation, self.records):
            return
        await self._take(x)
        self._push(x, source=session)

    async def _take(self, x: rv.Rotation) -> None:
        """Keep the new key durably, the current one beside it, then the rotation's row: a crash after
        the key file but before the row leaves the new key in use and the old one on disk, and the next
        member that connects re-sends the rotation, which restores the row."""
        ctx = self.ctx
        peers = ctx.peers
        if self.rotation is not None and x.gen == self.rotation.gen and self._window_open():
            # Two members rotated at once: this one wins (Rotation.order). The key before that gen is
            # the one to keep accepting, not the loser's.
            old = peers.accept_keys[0] if peers.accept_keys else peers.network_key
        else:
            old = peers.network_key
        layout = ctx.layout

        def write() -> None:
            write_file_durably(layout.network_key_old.parent, layout.network_key_old, old, mode=0o600)
            write_file_durably(layout.network_key.parent, layout.network_key, x.key, mode=0o600)
            ctx.repo.add_key_rotation(x.gen, x.until, x.by, x.at)

        await ctx.ex.db(write)
        self.rotation = x
        peers.network_key = x.key
        log.warning("event=network_key_rotated gen=%d by=%s old_key_until=%.0f", x.gen, x.by[:12], x.until)
        if x.until > time.time():
            self._open_window(old, x.until)
        else:  # heard after its window: nothing to accept the old key for
            self._close_window()

    def _push(self, x: rv.Rotation, source: Session | None) -> list[str]:
        sent = []
        for s in self._members(source):
            try:
                s.notify(m.NetKey.of(x))
            except Exception as exc:  # closing: it is handed the rotation when it connects again
                log.info("event=net_key_not_sent peer=%s reason=%r", s.peer_id[:12], str(exc))
                continue
            sent.append(s.peer_id)
        return sent

    def _window_open(self) -> bool:
        return self._window_end is not None

    def _open_window(self, old: bytes, until: float) -> None:
        self.ctx.peers.accept_keys = (old,)
        self.old_until = until
        if self._window_end is not None:
            self._window_end.cancel()
        loop = asyncio.get_running_loop()
        self._window_end = loop.call_later(max(0.0, until - time.time()), self._close_window)

    def _close_window(self) -> None:
        """The window is over: the old key opens nothing, and links made with it close (a member that
        holds the new key dials again with it)."""
        if self._window_end is not None:
            self._window_end.cancel()
            self._window_end = None
        peers = self.ctx.peers
        peers.accept_keys = ()
        self.old_until = 0.0
        closed = 0
        for s in list(peers.sessions.values()):
            if s.conn.network_key_used != peers.network_key:
                s.close(wire.ErrorCode.REFUSED, "the network key it used has been rotated out")
                closed += 1
        log.info("event=rotation_window_over closed=%d", closed)
        self.ctx.spawn(self.ctx.ex.db(self._drop_old_key))
