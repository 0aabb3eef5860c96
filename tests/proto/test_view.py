"""The membership view (proto/view.py): records merge the same in any order, a member refutes what is
said of it, digests find every difference, and anti-entropy between many views converges in few rounds
with messages that stay small (a pure simulation: the network part is tested where it is built)."""

from __future__ import annotations

import random
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2pfast.proto.revocation import public_hex
from p2pfast.proto.view import (
    BUCKETS,
    FORGET_AFTER,
    Record,
    Stamp,
    State,
    View,
    bucket_of,
    vouch,
    vouch_valid,
)

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

IDS = [f"{i:02x}" + "ab" * 31 for i in (0x00, 0x01, 0x7F, 0xFE)]  # three buckets, one shared by two
ME = "ff" + "00" * 31
NOW = time.time()


def view_of(records: list[Record]) -> View:
    v = View(Record(ME, "127.0.0.1:1", 1, State.ALIVE))
    for r in records:
        v.merge(r, NOW)
    return v


def summary(v: View) -> dict[str, tuple[int, int, str]]:
    return {r.node_id: (r.inc, int(r.state), r.addr) for r in v}


records = st.builds(
    Record,
    node_id=st.sampled_from(IDS),
    addr=st.sampled_from(["127.0.0.1:7001", "127.0.0.1:7002"]),
    inc=st.integers(1, 4),
    state=st.sampled_from(list(State)),
    at=st.just(time.time()),
)


def _vouched_or_not(r: Record, voucher: str) -> Record:
    # a member's incarnation names one address (it changes address only by restarting), and a vouch is
    # opaque to the view (node/viewsync.py checks signatures before it merges)
    r = Record(r.node_id, f"127.0.0.1:{7000 + r.inc}", r.inc, r.state, r.at)
    return Record(r.node_id, r.addr, r.inc, r.state, r.at, voucher=voucher, vsig="ab" * 64) if voucher else r


# few members and incarnations, so that records of one member at one incarnation meet often
vouched_records = st.builds(
    _vouched_or_not,
    st.builds(
        Record,
        node_id=st.sampled_from(IDS[:2]),
        addr=st.just(""),
        inc=st.integers(1, 2),
        state=st.sampled_from(list(State)),
        at=st.just(time.time()),
    ),
    st.sampled_from(["", IDS[2], IDS[3]]),
)


def summary_v(v: View) -> dict[str, tuple[int, int, str, bool]]:
    return {r.node_id: (r.inc, int(r.state), r.addr, r.vouched) for r in v}


@given(st.lists(vouched_records, max_size=12), st.randoms())
def test_vouches_merge_the_same_in_any_order(rs: list[Record], rnd: random.Random) -> None:
    shuffled = list(rs)
    rnd.shuffle(shuffled)
    a, b, c = view_of(rs), view_of(shuffled), view_of(shuffled + rs)
    assert summary_v(a) == summary_v(b) == summary_v(c)
    assert a.root() == b.root() == c.root() and a.buckets() == b.buckets()


@given(st.lists(records, max_size=30), st.randoms())
def test_any_order_of_delivery_ends_in_the_same_view(rs: list[Record], rnd: random.Random) -> None:
    shuffled = list(rs)
    rnd.shuffle(shuffled)
    a, b = view_of(rs), view_of(shuffled + rs)  # and delivering twice changes nothing
    assert summary(a) == summary(b)
    assert a.root() == b.root() and a.buckets() == b.buckets()


@given(st.lists(records, max_size=30))
def test_the_digest_kept_up_to_date_equals_one_made_from_scratch(rs: list[Record]) -> None:
    v = view_of(rs)
    fresh = View(v.mine)
    for r in v:
        fresh.merge(r, NOW)
    assert fresh.root() == v.root() and fresh.buckets() == v.buckets()


def test_a_member_refutes_a_claim_about_itself_one_incarnation_up() -> None:
    v = view_of([])
    assert v.merge(Record(ME, "127.0.0.1:1", 1, State.ALIVE), NOW) is None  # what it already says
    back = v.merge(Record(ME, "127.0.0.1:1", 1, State.SUSPECT), NOW)
    assert back == Record(ME, "127.0.0.1:1", 2, State.ALIVE) and v.mine == back
    again = v.merge(Record(ME, "127.0.0.1:1", 5, State.DEAD, NOW), NOW)
    assert again is not None and again.inc == 6 and again.state == State.ALIVE
    assert v.claim(ME, State.SUSPECT, NOW) is None  # it never suspects itself
    left = v.claim(ME, State.LEFT, NOW)
    assert left is not None and left.state == State.LEFT and v.mine.gone


def test_a_claim_outranks_the_record_it_is_about_and_a_higher_incarnation_outranks_the_claim() -> None:
    other = IDS[0]
    v = view_of([Record(other, "127.0.0.1:7001", 3, State.ALIVE)])
    suspect = v.claim(other, State.SUSPECT, NOW)
    assert suspect is not None and suspect.inc == 3
    assert v.merge(Record(other, "127.0.0.1:7001", 3, State.ALIVE), NOW) is None  # old news
    assert v.merge(Record(other, "127.0.0.1:7001", 4, State.ALIVE), NOW) is not None  # its refutation
    assert v.get(other) is not None and v.get(other).state == State.ALIVE  # type: ignore[union-attr]
    assert [r.node_id for r in v.alive()] == [other]


def test_a_dead_member_is_forgotten_after_its_time_and_not_brought_back() -> None:
    other = IDS[1]
    v = view_of([Record(other, "127.0.0.1:7001", 3, State.ALIVE)])
    t0 = time.time()
    dead = v.claim(other, State.DEAD, now=t0)
    assert dead is not None and dead.at == t0 and v.alive() == []
    assert v.forget(now=t0 + FORGET_AFTER - 1) == [] and v.get(other) is not None
    assert v.forget(now=t0 + FORGET_AFTER + 1) == [other] and v.get(other) is None
    stale = Record(other, "127.0.0.1:7001", 3, State.DEAD, t0)
    later = t0 + FORGET_AFTER + 5
    assert v.merge(stale, later) is None and v.get(other) is None  # a peer that has not forgotten yet


def test_compare_finds_what_each_side_lacks() -> None:
    a = view_of([Record(IDS[0], "x:1", 2, State.ALIVE), Record(IDS[1], "x:2", 1, State.ALIVE)])
    b = view_of([Record(IDS[0], "x:1", 1, State.ALIVE), Record(IDS[2], "x:3", 1, State.ALIVE)])
    diff = a.differing(b.buckets())
    assert diff == sorted({bucket_of(IDS[0]), bucket_of(IDS[1]), bucket_of(IDS[2])})
    send, want = a.compare(diff, b.stamps(diff))
    # what b lacks first, then what it holds older (then vouches it lacks: a page cut to fit brings the
    # most needed first)
    assert [r.node_id for r in send] == [IDS[1], IDS[0]] and want == [IDS[2]]
    for r in send:
        b.merge(r, NOW)
    for r in b.records(want):
        a.merge(r, NOW)
    assert a.root() == b.root() and summary(a) == summary(b)


# -- many views ------------------------------------------------------------------------------------------
PAGE = 64  # records per message: 64 of ~150 bytes fit a 16 KiB control message


def sync(a: View, b: View, sizes: list[int]) -> None:
    """One push-pull exchange as the wire does it, with the size of each message (bytes of its content)."""
    sizes.append(16)  # a's root
    if a.root() == b.root():
        return
    sizes.append(BUCKETS * 16)  # b's bucket hashes
    diff, stamps = a.stamps_page(a.differing(b.buckets()), PAGE * 2)  # stamps are ~80 bytes each
    sizes.append(sum(64 + 16 for _ in stamps))
    send, want = b.compare(diff, stamps, PAGE)  # b sends what a lacks; asks for what a knows better
    sizes.append(sum(64 + 40 for _ in send) + 64 * len(want))
    for r in send:
        a.merge(r, NOW)
    back = a.records(want)
    sizes.append(sum(64 + 40 for _ in back))
    for r in back:
        b.merge(r, NOW)


@pytest.mark.parametrize("n", [100, 1000])
def test_anti_entropy_between_many_views_converges_in_rounds_that_grow_slowly(n: int) -> None:
    rnd = random.Random(14)
    ids = [f"{rnd.getrandbits(256):064x}" for _ in range(n)]
    views = [View(Record(i, f"127.0.0.1:{10000 + k}", 1, State.ALIVE)) for k, i in enumerate(ids)]
    for v in views[1:]:  # everyone knows only the bootstrap node
        v.merge(views[0].mine, NOW)
    index = {i: k for k, i in enumerate(ids)}
    known: list[list[str]] = [[] for _ in views]
    rounds, biggest = 0, 0
    while len({v.root() for v in views}) > 1:
        rounds += 1
        assert rounds < 40, rounds
        sizes: list[int] = []
        for k, v in enumerate(views):
            if len(known[k]) != len(v) - 1:  # the simulation's cache of whom v knows (nobody dies here)
                known[k] = [r.node_id for r in v.alive()]
            if known[k]:  # the bootstrap node knows nobody until someone syncs with it
                sync(v, views[index[rnd.choice(known[k])]], sizes)
        biggest = max(biggest, *sizes)
    assert biggest <= 16 * 1024, biggest  # every message fits a control message
    assert all(len(v) == n for v in views)
    # settled: a round of exchanges is one root each
    idle: list[int] = []
    for v in views:
        sync(v, views[index[rnd.choice(v.alive()).node_id]], idle)
    assert idle == [16] * n
    print(f"{n} views converged in {rounds} rounds, largest message {biggest} bytes")


# -- vouches -------------------------------------------------------------------------------------------
KEY = Ed25519PrivateKey.generate()
SK = public_hex(KEY)
VOUCHER = IDS[3]


def test_a_vouch_checks_out_only_under_its_voucher_key_and_for_what_it_signed() -> None:
    r = Record(IDS[0], "127.0.0.1:7001", 3, State.ALIVE, sk="cd" * 32)
    v = vouch(r, VOUCHER, KEY)
    assert v.vouched and v.key > r.key and vouch_valid(v, SK)
    assert not vouch_valid(v, public_hex(Ed25519PrivateKey.generate()))  # another member's key
    assert not vouch_valid(
        Record(r.node_id, "127.0.0.5:7001", 3, State.ALIVE, voucher=v.voucher, vsig=v.vsig), SK
    )
    assert not vouch_valid(Record(r.node_id, r.addr, 4, State.ALIVE, voucher=v.voucher, vsig=v.vsig), SK)
    assert not vouch_valid(vouch(r, r.node_id, KEY), SK)  # a member's word for itself is no vouch
    assert not vouch_valid(r, SK) and not vouch_valid(v, "")
    # the state is not signed: a claim about the member keeps the vouch of its address
    assert vouch_valid(Record(r.node_id, r.addr, 3, State.SUSPECT, voucher=v.voucher, vsig=v.vsig), SK)


def test_a_vouched_record_replaces_the_unvouched_one_and_a_claim_keeps_the_vouch() -> None:
    r = Record(IDS[0], "127.0.0.1:7001", 3, State.ALIVE, sk="cd" * 32)
    v = view_of([r])
    before = v.root()
    vr = vouch(r, VOUCHER, KEY)
    assert v.merge(vr, NOW) == vr and v.root() != before  # news: it spreads, and digests see it
    assert v.merge(r, NOW) is None  # the unvouched one is old news now
    suspect = v.claim(IDS[0], State.SUSPECT, NOW)
    assert suspect is not None and suspect.vouched
    # a claim made where the address was not vouched yet takes the vouch it meets
    w = view_of([vr])
    got = w.merge(Record(IDS[0], r.addr, 3, State.SUSPECT), NOW)
    assert got is not None and got.state == State.SUSPECT and got.vouched and got.sk == r.sk
    # a restart (a higher incarnation) is a new address claim: unvouched until someone dials it
    again = w.merge(Record(IDS[0], r.addr, 4, State.ALIVE, sk=r.sk), NOW)
    assert again is not None and not again.vouched


def test_a_member_takes_a_vouch_for_itself_without_refuting_it() -> None:
    v = View(Record(ME, "127.0.0.1:1", 1, State.ALIVE, sk=SK))
    vr = vouch(v.mine, VOUCHER, KEY)
    got = v.merge(vr, NOW)
    assert got is not None and got.inc == 1 and got.vouched and v.mine.vouched  # not one incarnation up


def test_two_vouches_for_one_address_digest_alike() -> None:
    r = Record(IDS[0], "127.0.0.1:7001", 3, State.ALIVE)
    a, b = view_of([vouch(r, IDS[2], KEY)]), view_of([vouch(r, IDS[3], KEY)])
    assert a.root() == b.root()
    assert b.merge(vouch(r, IDS[2], KEY), NOW) is None  # not news: the address is vouched already


def test_a_stamp_of_a_build_before_vouches_compares_on_its_three_fields() -> None:
    r = vouch(Record(IDS[0], "x:1", 2, State.ALIVE), VOUCHER, KEY)
    a = view_of([r])
    old = Stamp(r.node_id, r.inc, r.state, r.key[2])  # v = -1: what such a build sends
    assert old.key == r.key[:3] and r.stamp.legacy() == old
    assert a.compare([bucket_of(r.node_id)], [old]) == ([], [])  # the same record: nothing either way
    newer = Stamp(r.node_id, 3, State.ALIVE, r.key[2])
    assert a.compare([bucket_of(r.node_id)], [newer]) == ([], [r.node_id])
    unvouched = Stamp(r.node_id, r.inc, r.state, r.key[2], 0)
    assert a.compare([bucket_of(r.node_id)], [unvouched]) == ([r], [])  # a build that has vouches
    assert r.legacy() == Record(r.node_id, r.addr, r.inc, r.state)
