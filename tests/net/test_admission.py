"""net/admission.py alone: which connection in its handshake is evicted for a newcomer (per address, per
prefix, in all; IPv6 by /64; an IPv4-mapped address as IPv4), and the log throttle. No loop, no socket:
time is a parameter."""

from __future__ import annotations

import pytest

from p2pfast.net.admission import GLOBAL, PER_ADDRESS, PER_PREFIX, Admission, LogThrottle, source_of


def test_source_of_groups_ipv4_by_24_ipv6_by_64_and_mapped_as_ipv4() -> None:
    assert source_of("10.1.2.3") == ("10.1.2.3", "10.1.2.0/24")
    assert source_of("10.1.2.250")[1] == source_of("10.1.2.3")[1]
    assert source_of("10.1.3.3")[1] != source_of("10.1.2.3")[1]
    assert source_of("::ffff:10.1.2.3") == ("10.1.2.3", "10.1.2.0/24")
    assert source_of("2001:db8:1:2:aaaa::1") == ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64")
    assert source_of("2001:db8:1:2:ffff:ffff:ffff:ffff")[1] == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1")[1] == "2001:db8:1:3::/64"
    assert source_of("fe80::1%eth0") == ("fe80::1%eth0", "fe80::/64")
    assert source_of("not-an-ip") == ("not-an-ip", "not-an-ip")


def test_room_needs_no_eviction() -> None:
    a: Admission[str] = Admission(per_address=2, per_prefix=3, total=4)
    assert a.admit("c1", "10.0.0.1", 0.0).evicted is None
    assert a.admit("c2", "10.0.0.1", 1.0).evicted is None
    assert a.admit("c3", "10.0.0.2", 2.0).evicted is None
    assert a.admit("c4", "10.0.1.1", 3.0).evicted is None
    assert len(a) == 4 and a.count("10.0.0.9") == (0, 3)


def test_per_address_evicts_the_oldest_of_that_address_only() -> None:
    a: Admission[str] = Admission(per_address=2, per_prefix=10, total=10)
    a.admit("other", "10.0.0.9", 0.0)  # the oldest of all, same /24: never touched by .1's flood
    a.admit("f1", "10.0.0.1", 1.0)
    a.admit("f2", "10.0.0.1", 2.0)
    made = a.admit("f3", "10.0.0.1", 5.5)
    assert (made.evicted, made.limit, made.evicted_host) == ("f1", PER_ADDRESS, "10.0.0.1")
    assert made.evicted_age == 4.5
    assert a.admit("f4", "10.0.0.1", 6.0).evicted == "f2"
    assert "other" in a and "f1" not in a and a.count("10.0.0.1") == (2, 3)


def test_per_prefix_evicts_the_same_address_first_else_the_prefix_oldest() -> None:
    a: Admission[str] = Admission(per_address=5, per_prefix=3, total=10)
    a.admit("p1", "10.0.0.1", 0.0)
    a.admit("p2", "10.0.0.2", 1.0)
    a.admit("p3", "10.0.0.3", 2.0)
    a.admit("far", "10.9.0.1", 0.5)
    # .2 has a connection here: its own goes, though p1 is older
    made = a.admit("p2b", "10.0.0.2", 3.0)
    assert (made.evicted, made.limit) == ("p2", PER_PREFIX)
    # .4 has none: the prefix's oldest goes, never the other prefix's
    made = a.admit("p4", "10.0.0.4", 4.0)
    assert (made.evicted, made.limit) == ("p1", PER_PREFIX)
    assert "far" in a


def test_global_evicts_same_address_else_prefix_else_the_oldest_of_all() -> None:
    a: Admission[str] = Admission(per_address=5, per_prefix=5, total=3)
    a.admit("x", "10.0.0.1", 0.0)
    a.admit("y", "10.1.0.1", 1.0)
    a.admit("z", "10.2.0.1", 2.0)
    made = a.admit("z2", "10.2.0.1", 3.0)
    assert (made.evicted, made.limit) == ("z", GLOBAL)
    assert a.admit("y2", "10.1.0.7", 4.0).evicted == "y"  # same /24, another address
    made = a.admit("w", "10.3.0.1", 5.0)  # nothing near: the oldest of all
    assert (made.evicted, made.limit) == ("x", GLOBAL)
    assert len(a) == 3


def test_ipv6_counts_by_64_and_mapped_ipv4_with_ipv4() -> None:
    a: Admission[str] = Admission(per_address=8, per_prefix=2, total=10)
    # one host choosing a fresh address in its /64 for every connect is still one prefix
    a.admit("v1", "2001:db8::1", 0.0)
    a.admit("v2", "2001:db8::2", 1.0)
    made = a.admit("v3", "2001:db8::ffff:3", 2.0)
    assert (made.evicted, made.limit) == ("v1", PER_PREFIX)
    assert a.admit("o", "2001:db8:0:1::1", 3.0).evicted is None  # the next /64 is another place
    # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d: the same address as plain IPv4
    a.admit("m1", "::ffff:192.0.2.1", 4.0)
    assert a.count("192.0.2.1") == (1, 1)
    made = a.admit("m2", "192.0.2.9", 5.0)
    assert made.evicted is None and a.count("192.0.2.200") == (0, 2)
    made = a.admit("m3", "::ffff:192.0.2.5", 6.0)
    assert (made.evicted, made.limit) == ("m1", PER_PREFIX)


def test_done_frees_the_slot_and_is_idempotent() -> None:
    """A connection whose handshake finished leaves the bookkeeping, so no later eviction can pick it."""
    a: Admission[str] = Admission(per_address=1, per_prefix=1, total=1)
    a.admit("member", "10.0.0.1", 0.0)
    a.done("member")
    a.done("member")
    assert len(a) == 0 and a.oldest_near("10.0.0.1") is None
    assert a.admit("next", "10.0.0.1", 1.0).evicted is None
    assert a.admit("again", "10.0.0.1", 2.0).evicted == "next"
    assert a.count("10.0.0.1") == (1, 1)


def test_make_room_when_nothing_is_in_its_handshake() -> None:
    a: Admission[str] = Admission(per_address=1, per_prefix=1, total=1)
    assert a.make_room("10.0.0.1", "max_connections", 0.0).evicted is None
    a.admit("c", "10.5.0.1", 0.0)
    made = a.make_room("10.0.0.1", "max_connections", 2.0)
    assert (made.evicted, made.limit, made.evicted_age) == ("c", "max_connections", 2.0)
    assert len(a) == 0


def test_a_flood_from_one_address_keeps_within_its_limit_and_never_evicts_others() -> None:
    a: Admission[int] = Admission(per_address=8, per_prefix=16, total=32)
    for i in range(20):  # 20 members in their handshake from 20 /24s
        a.admit(i, f"10.{i}.0.1", float(i))
    for n in range(10_000):
        made = a.admit(1000 + n, "192.0.2.7", 100.0 + n)
        assert made.evicted is None or made.evicted >= 1000
    assert a.count("192.0.2.7") == (8, 8) and len(a) == 28
    assert all(i in a for i in range(20))


def test_admitting_twice_and_bad_limits_are_errors() -> None:
    a: Admission[str] = Admission(per_address=1, per_prefix=1, total=1)
    a.admit("c", "10.0.0.1", 0.0)
    with pytest.raises(ValueError, match="twice"):
        a.admit("c", "10.0.0.1", 0.0)
    with pytest.raises(ValueError, match="per_prefix must be at least 1"):
        Admission(per_address=1, per_prefix=0, total=1)


def test_log_throttle_lets_one_line_per_interval_and_counts_the_rest() -> None:
    t = LogThrottle(10.0)
    assert t.allow(100.0) == 0
    assert [t.allow(100.0 + i) for i in range(1, 10)] == [None] * 9
    assert t.allow(110.0) == 9
    assert t.allow(115.0) is None
    assert t.allow(125.0) == 1
