"""The membership view (proto/view.py): records merge the same in any order, a member refutes what is
said of it, digests find every difference, and anti-entropy between many views converges in few rounds
with messages that stay small (a pure simulation: the network part is tested where it is built)."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfast.proto.view import BUCKETS, FORGET_AFTER, Record, State, View, bucket_of

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
    assert [r.node_id for r in send] == [IDS[0], IDS[1]] and want == [IDS[2]]
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
