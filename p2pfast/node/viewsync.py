"""The membership view kept in step with the other members (proto/view.py holds the view and its
rules; docs/protocol.md, "Membership that scales", the design).

* News spreads eagerly: a record that was news here (a member joined, changed its address, refuted a
  claim, was declared dead) goes once to `fanout(N)` = ln N + 3 connected members chosen at random (but
  not the one it came from), gathered per loop turn into one `view_news` each. Pushing to ln N + c
  others, once, reaches every member with probability about exp(-exp(-c)) (Kermarrec, Massoulié,
  Ganesh 2003; the rumour mongering of Demers et al. 1987), so a join costs the network N·(ln N + 3)
  small messages rather than N², and anti-entropy finds the rare member it missed.
* Anti-entropy repairs what news missed: every gossip interval this node sends one member, chosen at
  random, its view's root (16 bytes). Equal roots end the exchange, so an idle network costs one small
  request per node and interval whatever its size. Otherwise the member answers with its bucket hashes,
  this node sends the stamps of a page of the buckets that differ, the member sends back the records this
  node lacks and names those it lacks, which this node sends it: each message under the control cap. The
  exchange pages once through every bucket that differed (at most MAX_ROUNDS pages; a page that came
  full and brought news is asked again), so one that does not reconcile keeps none after it waiting.
* A member that connects is synced with at once, so a joining node learns the view in its first seconds.

* Failure detection, SWIM's suspicion (Das, Gupta, Motivala 2002) on the links this node has: a member
  whose session ended and that has not reconnected within `suspect_after` is declared suspect at the
  incarnation it had; a suspicion not refuted (the member, hearing it, answers with an alive record one
  incarnation up) within `dead_after` more becomes a death, declared once here and spread like any
  news. Every node that lost the link makes the same claim, and equal claims are not news, so a death
  costs one record per link, not a storm. A node that stops gracefully says it left (state `left`)
  before it closes its sessions, so nobody has to suspect it.

  Before it suspects a member, a node asks up to 3 others whether their link to it answers a ping
  (SWIM's ping-req, `probe`): a link of its own that broke is no reason to suspect a member that is up.

* Vouches (proto/view.py): a node that dialled a member at the address its record advertises, and
  met that member there, signs a vouch for the address and spreads the vouched record as news; a node
  checks a vouch's signature against the voucher's key (from the voucher's own record) before it takes
  it. Links dial a member they have not verified themselves only at a vouched address.

Links (node/links.py) are the bounded set of sessions news and anti-entropy run over; a member this node
has no session with is probed, when a probe asks, over one dialled for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pfast import wire
from p2pfast.errors import P2PError, PeerUnavailable
from p2pfast.net.session import Session
from p2pfast.node import links
from p2pfast.node.context import Context
from p2pfast.node.flow import by_size
from p2pfast.proto import control, view
from p2pfast.proto import messages as m
from p2pfast.proto.revocation import public_hex

log = logging.getLogger("p2pfast.view")

# Exchanges of one anti-entropy session: enough for a joining node to learn a few thousand members at
# once; what is left waits for the next interval.
MAX_ROUNDS = 32
SYNC_TIMEOUT = 10.0
# A view_push of this many records or more may have been cut to fit: its page is asked again.
FULL_PAGE = 32
# Room for the records of one message: the control cap less the message's own fields.
_ROOM = wire.MAX_CONTROL_SIZE - 512


# Defaults of NetLimits.suspect_after / dead_after (net/limits.py says why).
SUSPECT_AFTER = 5.0
DEAD_AFTER = 30.0
# Indirect probes: members asked whether they reach one this node lost (SWIM's k), and how long the
# asked member's ping may take.
PROBES = 3
PROBE_TIMEOUT = 2.0
# About how long a node that a member dialled waits before it dials the member's address to vouch for it
# (jittered ±50%): the member's other links, or a dial of its own, may vouch first.
VERIFY_DELAY = 2.0
# Vouchers whose vouches wait for their own (a join burst's worth; past it, anti-entropy brings them).
MAX_AWAITING = 1024


class ViewSync:
    def __init__(
        self,
        ctx: Context,
        interval: float,
        rnd: random.Random | None = None,
        suspect_after: float = SUSPECT_AFTER,
        dead_after: float = DEAD_AFTER,
        sign_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.ctx = ctx
        # the node's signing key (node/revocation.py's): its vouches, and its own record names it
        self.sign_key = sign_key or Ed25519PrivateKey.generate()
        self.interval = interval
        self.suspect_after, self.dead_after = suspect_after, dead_after
        self.closing = False
        self.rnd = rnd or random.Random()
        # A restart begins at the time in milliseconds: it outranks whatever was said of a past life.
        me = view.Record(
            ctx.node_id,
            ctx.peers.listen_addr,
            int(time.time() * 1000),
            view.State.ALIVE,
            sk=public_hex(self.sign_key),
        )
        self.view = view.View(me)
        self._news: dict[str, tuple[view.Record, str | None]] = {}  # node id -> (record, heard from)
        self._flush: asyncio.Handle | None = None
        self.syncs = 0  # exchanges this node began (tests, bench/simulate.py)
        self.vouches = 0  # vouches this node signed, and those it refused (tests)
        self.vouches_refused = 0
        self._verifying: set[tuple[str, int]] = set()  # (member, incarnation) dialled or to be, once
        # voucher -> {member: record}: vouches by members whose own address is not vouched for yet
        self._awaiting: dict[str, dict[str, view.Record]] = {}
        # set once an exchange ended (agreed, or gave up): a short-lived CLI node waits for it, so the
        # members it places and looks up by are the network's (Node.wait_settled)
        self.synced = asyncio.Event()
        # called once per member that the view comes to say died or left (repair counts its copies
        # no more once its grace period ends)
        self.on_gone: Callable[[str], None] | None = None

    # -- the background loop -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * (0.5 + self.rnd.random()))  # jitter: no lockstep rounds
            sessions = self._members()
            if sessions:
                await self.sync(self.rnd.choice(sessions))

    def _members(self) -> list[Session]:
        """Connected members whose build speaks the view (proto/features.py): an older one would end
        the connection on a kind it does not know."""
        return [s for s in self.ctx.peers.sessions.values() if s.speaks("view")]

    def on_ready(self, session: Session) -> None:
        self._vouch_for(session.peer_id)
        self.ctx.spawn(self.sync(session))

    # -- failure detection ---------------------------------------------------------------------------
    def on_closed(self, session: Session) -> None:
        r = self.view.get(session.peer_id)
        if self.closing or r is None or r.gone or session.peer_id == self.ctx.node_id:
            return
        if session.close_reason == links.IDLE:
            return  # closed because idle, by either side (node/links.py): no failure
        self.ctx.spawn(self._watch(session.peer_id, r.inc))

    async def _watch(self, node_id: str, inc: int) -> None:
        """Suspect, then declare dead, a member that went and did not come back at the same incarnation.
        Before suspecting it, ask up to PROBES other members whether their link to it answers (SWIM's
        indirect probe): a link of this node that broke, with the member still up, is no reason to
        suspect it, and the watch ends (the member's other links watch it)."""
        await asyncio.sleep(self.suspect_after)  # the detector's timeout, not a wait for a peer
        if not self._still_away(node_id, inc):
            return
        r = self.view.get(node_id)
        if r is None or r.state < view.State.SUSPECT:  # else another member suspects it already
            if await self._reached_by_others(node_id):
                return
            claim = self.view.claim(node_id, view.State.SUSPECT, time.time())
            if claim is not None:
                log.info("event=member_suspect node=%s inc=%d", node_id[:12], inc)
                self._spread(claim, None)
        await asyncio.sleep(self.dead_after)
        r = self.view.get(node_id)
        if not self._still_away(node_id, inc) or r is None or r.state != view.State.SUSPECT:
            return  # back, refuted, restarted, or declared already
        claim = self.view.claim(node_id, view.State.DEAD, time.time())
        if claim is not None:
            log.info("event=member_dead node=%s inc=%d", node_id[:12], inc)
            self._gone(node_id)
            self._spread(claim, None)

    def _still_away(self, node_id: str, inc: int) -> bool:
        r = self.view.get(node_id)
        return not self.closing and node_id not in self.ctx.peers.sessions and r is not None and r.inc == inc

    async def _reached_by_others(self, node_id: str) -> bool:
        others = [s for s in self._members() if s.peer_id != node_id and s.speaks("probe")]
        asked = self.rnd.sample(others, min(PROBES, len(others)))

        async def ask(s: Session) -> bool:
            try:
                await s.request(m.Probe(node_id), timeout=PROBE_TIMEOUT * 2)
                return True
            except (P2PError, TimeoutError):
                return False

        return any(await asyncio.gather(*(ask(s) for s in asked)))

    async def on_probe(self, session: Session, msg: m.Probe) -> m.Ok:
        """Another member asks whether this node's link to `msg.node` answers."""
        # SWIM's ping-req: this node pings the member, over a session dialled now if it has none (never
        # to one this node's view says is gone: node/links.py)
        target = await self.ctx.links.connect(msg.node)
        if target is None:
            raise PeerUnavailable(f"no link to {msg.node[:12]} here")
        try:
            await target.request(m.Ping(), timeout=PROBE_TIMEOUT)
        except (P2PError, TimeoutError) as exc:
            raise PeerUnavailable(f"{msg.node[:12]} does not answer here: {exc}") from None
        return m.Ok()

    def leave(self) -> None:
        """Say, to every connected member, that this node leaves (a graceful stop): nobody suspects it."""
        self.closing = True
        record = self.view.claim(self.ctx.node_id, view.State.LEFT, time.time())
        if record is None:
            return
        for session in self._members():
            with contextlib.suppress(P2PError):
                session.notify(m.ViewNews(tuple(_for(session, [record]))))

    # -- anti-entropy, the asking side ----------------------------------------------------------------
    async def sync(self, session: Session) -> None:
        """Reconcile with one member until the views agree or MAX_ROUNDS pages went."""
        if not session.speaks("view"):
            return
        self.syncs += 1
        # A short-lived CLI node listens nowhere: it learns the view and keeps its own record to itself
        # (it is no member), so the views differ by that record and an exchange ends once nothing new
        # comes.
        member = bool(self.ctx.peers.listen_addr)
        try:
            diff = await session.request(m.ViewSync(self.view.root().hex()), timeout=SYNC_TIMEOUT)
            if not diff.buckets:
                return
            theirs = [bytes.fromhex(diff.buckets[i : i + 32]) for i in range(0, len(diff.buckets), 32)]
            # Page through every bucket that differed, in order: a bucket that does not reconcile (a
            # vouch this node refuses, say) must not keep the ones after it waiting. A page that came
            # full is asked again, as the peer sent what fitted.
            todo = self.view.differing(theirs)
            for _ in range(MAX_ROUNDS):
                if not todo:
                    return
                buckets, stamps = self.view.stamps_page(todo, control.MAX_VIEW_STAMPS)
                if not session.speaks("vouch"):
                    stamps = [x.legacy() for x in stamps]
                push = await session.request(m.ViewPull(tuple(buckets), tuple(stamps)), timeout=SYNC_TIMEOUT)
                news = self._merge_all(push.records, session.peer_id)
                if push.want and member:
                    for page in _pages(_for(session, self.view.records(push.want))):
                        session.notify(m.ViewNews(page))
                full = len(push.records) >= FULL_PAGE or len(push.want) >= control.MAX_VIEW_WANT
                if not (full and (news or (push.want and member))):
                    todo = todo[len(buckets) :]
        except (P2PError, TimeoutError) as exc:
            log.debug("event=view_sync_failed peer=%s error=%r", session.peer_id[:12], str(exc))
        finally:
            self.synced.set()

    # -- anti-entropy and news, the answering side ----------------------------------------------------
    async def on_sync(self, session: Session, msg: m.ViewSync) -> m.ViewDiff:
        if msg.root == self.view.root().hex():
            return m.ViewDiff("")
        return m.ViewDiff("".join(b.hex() for b in self.view.buckets()))

    async def on_pull(self, session: Session, msg: m.ViewPull) -> m.ViewPush:
        send, want = self.view.compare(msg.buckets, msg.stamps, control.MAX_VIEW_RECORDS)
        pages = _pages(_for(session, send), room=_ROOM - 70 * len(want))
        return m.ViewPush(pages[0] if pages else (), tuple(want[: control.MAX_VIEW_WANT]))

    async def on_news(self, session: Session, msg: m.ViewNews) -> None:
        self._merge_all(msg.records, session.peer_id)

    # -- merging and spreading ----------------------------------------------------------------------
    def _merge_all(self, records: Sequence[view.Record], source: str) -> int:
        """Merge records a member sent; returns how many were news."""
        now = time.time()
        news = 0
        # vouched records last: a voucher whose own record comes in the same message is known by then
        for r in sorted(records, key=lambda r: bool(r.voucher)):
            old = self.view.get(r.node_id)
            if r.voucher and (old is None or r.key > old.key):
                r = self._checked(r, source)
            changed = self.view.merge(r, now)
            if changed is not None and changed.gone and (old is None or not old.gone):
                self._gone(changed.node_id)
            if changed is not None:
                news += 1
                # our own refutation goes everywhere, the source included: it made the claim
                self._spread(changed, None if changed.node_id == self.ctx.node_id else source)
                if not changed.voucher:
                    self._vouch_for(changed.node_id)
                else:
                    self._release(changed.node_id, source)
        return news

    def _release(self, voucher: str, source: str) -> None:
        """A member's address is vouched for now: the vouches it signed that waited for that count."""
        waiting = self._awaiting.pop(voucher, None)
        if waiting:
            self._merge_all(list(waiting.values()), source)

    def _checked(self, r: view.Record, source: str) -> view.Record:
        """`r` with its vouch if that checks out: signed by the key of the voucher's record, by a member
        that is not the record's own, not revoked, and whose own address was vouched for or verified
        here (so every vouch taken goes back, vouch by vouch, to a member some node reached: a member
        cannot make one up under an identity it made up); else without it (the address is not dialled
        on its word, and the member that sent it is named in the log). A vouch whose voucher is not
        known or not vouched for yet waits for it (_release); past MAX_AWAITING vouchers, it comes
        again in an anti-entropy exchange (the digests differ)."""
        signer = self.view.get(r.voucher)
        if signer is None or not signer.sk:
            why = "unknown_voucher"
        elif r.voucher in self.ctx.peers.refused or not view.vouch_valid(r, signer.sk):
            why = "bad_vouch"
        elif not (signer.voucher or r.voucher == self.ctx.node_id or self._reached(signer)):
            why = "voucher_unvouched"
        else:
            return r
        if why != "bad_vouch" and (len(self._awaiting) < MAX_AWAITING or r.voucher in self._awaiting):
            # kept until the voucher's record is here and its own address vouched for (_release), so
            # that vouches spread as fast as news, not an anti-entropy interval per link of the chain
            # (a vouch by a member that joined moments ago often arrives before that member's record)
            self._awaiting.setdefault(r.voucher, {})[r.node_id] = r
        self.vouches_refused += 1
        level = logging.INFO if why == "bad_vouch" else logging.DEBUG
        log.log(
            level,
            "event=vouch_refused node=%s voucher=%s from=%s why=%s",
            r.node_id[:12],
            r.voucher[:12],
            source[:12],
            why,
        )
        return r.unvouched()

    def _reached(self, r: view.Record) -> bool:
        """This node verified `r`'s address itself: it dialled it and met that member there."""
        s = self.ctx.peers.sessions.get(r.node_id)
        return s is not None and bool(s.dialed) and s.dialed == r.addr

    def _vouch_for(self, node_id: str) -> None:
        """Vouch for a member's advertised address when this node dialled exactly that address and met
        the member there (net/peers.py: `dialed` is set only on the initiator's side). When the member
        dialled this node instead, verify the address with a dial of its own first (_verify), a moment
        later: by then another of its links may have vouched, and this node need not dial."""
        if not self.ctx.peers.listen_addr or self.closing:
            return  # a CLI node is no member: nobody takes its word
        r = self.view.get(node_id)
        s = self.ctx.peers.sessions.get(node_id)
        if r is None or r.voucher or r.gone or not links.names_host(r.addr) or s is None or not s.usable:
            return
        if s.dialed == r.addr:
            self._vouch(r)
        elif not s.dialed and r.sk and (node_id, r.inc) not in self._verifying:
            # (a record without a signing key is of a build before vouches: it would not know the tag
            # of a verification dial, and would take the dial for a second session)
            self._verifying.add((node_id, r.inc))
            self.ctx.spawn(self._verify(node_id, r.inc))

    def _vouch(self, r: view.Record) -> None:
        changed = self.view.merge(view.vouch(r, self.ctx.node_id, self.sign_key), time.time())
        if changed is not None:
            self.vouches += 1
            self._spread(changed, None)
            self._release(changed.node_id, self.ctx.node_id)

    async def _verify(self, node_id: str, inc: int) -> None:
        await asyncio.sleep(VERIFY_DELAY * (0.5 + self.rnd.random()))  # jitter: one of its links goes first
        r = self.view.get(node_id)
        if self.closing or r is None or r.inc != inc or r.voucher or r.state != view.State.ALIVE:
            return
        if await self.ctx.peers.verify(r.addr, node_id):
            now = self.view.get(node_id)
            if now is not None and (now.inc, now.addr) == (r.inc, r.addr) and not now.voucher:
                self._vouch(now)
        else:
            log.info("event=address_unverified node=%s addr=%s", node_id[:12], r.addr)

    def _spread(self, record: view.Record, source: str | None) -> None:
        self._news[record.node_id] = (record, source)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send_news)

    def _send_news(self) -> None:
        self._flush = None
        news, self._news = self._news, {}
        members = self._members()
        if not self.ctx.peers.listen_addr:
            return  # a short-lived CLI node passes no news on: it is no member
        n = fanout(len(self.view))
        if len(members) > n:
            members = self.rnd.sample(members, n)
        # most members get the same records (all but those that came from them), so each distinct page
        # is encoded once: encoding checks every field (12% of a 1000-node simulated boot)
        encoded: dict[tuple[int, ...], bytes] = {}
        for session in members:
            records = _for(session, [r for r, source in news.values() if source != session.peer_id])
            for page in _pages(records):
                with contextlib.suppress(P2PError):  # it is closing: anti-entropy covers it
                    same = tuple(map(id, page))  # the records live until the loop ends: ids stay theirs
                    raw = encoded.get(same)
                    if raw is None:
                        raw = encoded[same] = control.encode(m.to_wire(m.ViewNews(page)))
                    session.notify_encoded(raw)

    def _gone(self, node_id: str) -> None:
        if self.on_gone is not None and node_id != self.ctx.node_id:
            self.on_gone(node_id)

    def gone(self, node_id: str) -> bool:
        """Whether the view says the member died or left (membership.py then dials it no more)."""
        r = self.view.get(node_id)
        return r is not None and r.gone

    def counts(self) -> dict[str, int]:
        """Members by state, this node included (status)."""
        out = {s.name.lower(): 0 for s in view.State}
        for r in self.view:
            out[r.state.name.lower()] += 1
        return out


def fanout(members: int) -> int:
    """Members each piece of news is pushed to: ln N + 3 (0.95 that one push round alone reaches all)."""
    return max(1, math.ceil(math.log(max(members, 1))) + 3)


def _for(session: Session, records: Sequence[view.Record]) -> Sequence[view.Record]:
    """The records in the form `session`'s build reads: without signing keys and vouches for a build
    before them (proto/features.py)."""
    return records if session.speaks("vouch") else [r.legacy() for r in records]


def _record_size(r: view.Record) -> int:
    """An upper bound of a record's JSON in a message (it and its comma), without encoding it: the news
    of every loop turn is paged for each of ln N + 3 members. Ids and keys are hex, an address ASCII, an
    incarnation at most 16 digits and a time at most 25 characters."""
    return (_FULL_RECORD if r.sk or r.voucher else _SHORT_RECORD) + len(r.addr)


# [id, "addr", inc, state, at] with quotes, commas and brackets; the long form adds sk, voucher, vsig
_SHORT_RECORD = 66 + 2 + 16 + 1 + 25 + 8
_FULL_RECORD = _SHORT_RECORD + 66 + 66 + 130 + 3


def _pages(records: Sequence[view.Record], room: int = _ROOM) -> list[tuple[view.Record, ...]]:
    """`records` cut into messages that stay under the control cap (and the schema's count)."""
    return [tuple(p) for p in by_size(records, _record_size, room, control.MAX_VIEW_RECORDS)]
