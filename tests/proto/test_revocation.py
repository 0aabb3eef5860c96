"""Revocation records (signed, tamper-evident), the responder's second psk during a key rotation's window,
and the handshake's refusal of a revoked peer id on both sides, with real Noise and no socket."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable

import pytest
from connection_pair import CLIENT_HELLO, SERVER_HELLO
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pfast import identity
from p2pfast.errors import RemoteProtocolError
from p2pfast.proto import noise
from p2pfast.proto import revocation as rv
from p2pfast.proto.connection import Connection, ConnState, Role
from p2pfast.proto.events import NEED_DATA, HandshakeComplete

OLD, NEW, OTHER = bytes(32), bytes(range(32)), bytes(range(1, 33))


def node_id(key: X25519PrivateKey) -> str:
    return hashlib.sha256(noise.public_bytes(key)).hexdigest()


def handshake(client: Connection, server: Connection) -> tuple[list[object], list[object]]:
    """Pump until quiet; a side that fails stops (its error is what the test looks at)."""
    events: tuple[list[object], list[object]] = ([], [])
    client.initiate()
    for _ in range(10):
        moved = False
        for i, (src, dst) in enumerate(((client, server), (server, client))):
            data = b"".join(bytes(b) for b in src.data_to_send())
            if not data or dst.state is ConnState.ERROR:
                continue
            moved = True
            dst.receive_data(data)
            try:
                while (ev := dst.next_event(0.0)) is not NEED_DATA:
                    events[1 - i].append(ev)
            except RemoteProtocolError as exc:
                events[1 - i].append(exc)
        if not moved:
            break
    return events


Refuse = Callable[[str], bool] | None


def pair(
    client_key: bytes,
    server_key: bytes,
    accept: tuple[bytes, ...] = (),
    refuse_c: Refuse = None,
    refuse_s: Refuse = None,
) -> tuple[Connection, Connection, str, str]:
    ck, sk = noise.generate_keypair(), noise.generate_keypair()
    c = Connection(Role.INITIATOR, ck, client_key, CLIENT_HELLO, now=0.0, refuse=refuse_c)
    s = Connection(Role.RESPONDER, sk, server_key, SERVER_HELLO, now=0.0, accept_keys=accept, refuse=refuse_s)
    return c, s, node_id(ck), node_id(sk)


def completed(events: list[object]) -> bool:
    return any(isinstance(e, HandshakeComplete) for e in events)


def test_a_record_verifies_and_any_change_breaks_it() -> None:
    key = identity.revocation_key(noise.generate_keypair())
    r = rv.sign(key, "ab" * 32, "cd" * 32, 1.7e9)
    assert rv.valid(r)
    for change in ({"node": "ef" * 32}, {"by": "ef" * 32}, {"at": 1.7e9 + 1}, {"sig": "00" * 64}):
        assert not rv.valid(dataclasses.replace(r, **change))  # type: ignore[arg-type,unused-ignore]
    other = rv.public_hex(identity.revocation_key(noise.generate_keypair()))
    assert not rv.valid(dataclasses.replace(r, signer=other))


def test_the_revocation_key_is_derived_from_the_static_key() -> None:
    raw = os.urandom(32)
    static, same = noise.private_from_bytes(raw), noise.private_from_bytes(raw)
    assert rv.public_hex(identity.revocation_key(static)) == rv.public_hex(identity.revocation_key(same))
    assert rv.public_hex(identity.revocation_key(static)) != rv.public_hex(
        identity.revocation_key(noise.generate_keypair())
    )


@pytest.mark.parametrize("client_key", [OLD, NEW])
def test_in_the_window_the_responder_accepts_either_key(client_key: bytes) -> None:
    c, s, _, _ = pair(client_key, NEW, accept=(OLD,))
    ce, se = handshake(c, s)
    assert completed(ce) and completed(se)
    assert c.network_key_used == s.network_key_used == client_key
    # the link works after the retry: a control message crosses
    c.send_control({"t": "ping", "id": 1})
    s.receive_data(b"".join(bytes(b) for b in c.data_to_send()))
    assert any(getattr(e, "message", None) == {"t": "ping", "id": 1} for e in iter_events(s))


def iter_events(conn: Connection) -> list[object]:
    out: list[object] = []
    while (ev := conn.next_event(0.0)) is not NEED_DATA:
        out.append(ev)
    return out


def test_a_key_not_accepted_is_refused_by_the_responder() -> None:
    c, s, _, _ = pair(OTHER, NEW, accept=(OLD,))
    ce, se = handshake(c, s)
    assert not completed(se) and not completed(ce)
    assert s.state is ConnState.ERROR


def test_after_the_window_the_old_key_is_refused() -> None:
    c, s, _, _ = pair(OLD, NEW)
    ce, se = handshake(c, s)
    assert not completed(se) and not completed(ce)


def test_the_initiator_refuses_a_revoked_responder_before_message_3() -> None:
    revoked: set[str] = set()
    c, s, _, sid = pair(NEW, NEW, refuse_c=revoked.__contains__)
    revoked.add(sid)
    ce, se = handshake(c, s)
    assert c.state is ConnState.ERROR and not completed(ce)
    assert any(isinstance(e, RemoteProtocolError) and "revoked" in str(e) for e in ce)
    assert not completed(se)  # it never got message 3


def test_the_responder_refuses_a_revoked_initiator() -> None:
    revoked: set[str] = set()
    c, s, cid, _ = pair(NEW, NEW, refuse_s=revoked.__contains__)
    revoked.add(cid)
    ce, se = handshake(c, s)
    assert s.state is ConnState.ERROR and not completed(se)
    assert any(isinstance(e, RemoteProtocolError) and "revoked" in str(e) for e in se)
    assert not completed(ce)  # the initiator waits for key confirmation, which never comes


def test_unrevoked_peers_complete() -> None:
    revoked = {"ab" * 32}
    c, s, _, _ = pair(NEW, NEW, refuse_c=revoked.__contains__, refuse_s=revoked.__contains__)
    ce, se = handshake(c, s)
    assert completed(ce) and completed(se)


def test_which_rotation_a_member_takes() -> None:
    a, b, thief = "aa" * 32, "bb" * 32, "cc" * 32
    first = rv.Rotation(1, OLD, 100.0, a, 10.0)
    assert rv.supersedes(first, None, set())
    assert rv.supersedes(rv.Rotation(2, NEW, 200.0, b, 5.0), first, set())
    assert not rv.supersedes(first, first, set())  # heard again
    # two members rotating at once: every member ends on the same one, whichever it heard first
    x, y = rv.Rotation(2, NEW, 200.0, a, 20.0), rv.Rotation(2, OTHER, 200.0, b, 20.0)
    assert rv.supersedes(y, x, set()) and not rv.supersedes(x, y, set())
    # a revoked node's rotation is never taken, and one taken before its revocation yields to any other
    huge = rv.Rotation(2**53, OTHER, 300.0, thief, 30.0)
    assert not rv.supersedes(huge, first, {thief})
    assert rv.supersedes(huge, first, set())
    assert rv.supersedes(rv.Rotation(2, NEW, 200.0, b, 40.0), huge, {thief})
