"""Noise XX / XXpsk3: cacophony vectors, failure modes, rekey, the *_into paths and a fuzz of read_message."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfast import wire
from p2pfast.errors import LocalProtocolError, RemoteProtocolError
from p2pfast.proto import noise
from p2pfast.proto.noise import (
    MAX_MESSAGE,
    PROTOCOL_XX,
    PROTOCOL_XXPSK3,
    REKEY_INTERVAL,
    TAG,
    CipherState,
    HandshakeState,
    generate_keypair,
    private_from_bytes,
    public_bytes,
)

VECTORS = Path(__file__).resolve().parents[3] / "shared/vectors/noise/cacophony.txt"
PROTOCOLS = [PROTOCOL_XX, PROTOCOL_XXPSK3]
PSK = bytes(range(32))


def load_vector(name: str) -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.skip(f"Noise test vectors not found at {VECTORS} (cacophony.txt from the cacophony project)")
    for vector in json.loads(VECTORS.read_text())["vectors"]:
        if vector["protocol_name"] == name:
            return dict(vector)
    pytest.fail(f"{name} not in {VECTORS}")


def psks_for(protocol: str, psk: bytes = PSK) -> tuple[bytes, ...]:
    return (psk,) if protocol == PROTOCOL_XXPSK3 else ()


def pair(
    protocol: str, *, init_psk: bytes = PSK, resp_psk: bytes = PSK, prologue: bytes = b"p2pfast"
) -> tuple[HandshakeState, HandshakeState]:
    init = HandshakeState(
        protocol, True, generate_keypair(), prologue=prologue, psks=psks_for(protocol, init_psk)
    )
    resp = HandshakeState(
        protocol, False, generate_keypair(), prologue=prologue, psks=psks_for(protocol, resp_psk)
    )
    return init, resp


def handshake(init: HandshakeState, resp: HandshakeState) -> None:
    assert resp.read_message(init.write_message(b"one")) == b"one"
    assert init.read_message(resp.write_message(b"two")) == b"two"
    assert resp.read_message(init.write_message(b"three")) == b"three"


def transports(protocol: str) -> tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]]:
    init, resp = pair(protocol)
    handshake(init, resp)
    return init.split(), resp.split()


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# -- published vectors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cacophony_vector(protocol: str) -> None:
    v = load_vector(protocol)
    init = HandshakeState(
        protocol,
        True,
        private_from_bytes(bytes.fromhex(v["init_static"])),
        prologue=bytes.fromhex(v["init_prologue"]),
        psks=[bytes.fromhex(p) for p in v.get("init_psks", [])],
        e=private_from_bytes(bytes.fromhex(v["init_ephemeral"])),
    )
    resp = HandshakeState(
        protocol,
        False,
        private_from_bytes(bytes.fromhex(v["resp_static"])),
        prologue=bytes.fromhex(v["resp_prologue"]),
        psks=[bytes.fromhex(p) for p in v.get("resp_psks", [])],
        e=private_from_bytes(bytes.fromhex(v["resp_ephemeral"])),
    )
    send: tuple[CipherState, CipherState] | None = None
    recv: tuple[CipherState, CipherState] | None = None
    for i, message in enumerate(v["messages"]):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        initiator_sends = i % 2 == 0
        if not init.complete:
            writer, reader = (init, resp) if initiator_sends else (resp, init)
            assert writer.write_message(payload) == expected, f"message {i}"
            assert reader.read_message(expected) == payload, f"message {i}"
            if init.complete:
                assert resp.complete
                assert init.handshake_hash == resp.handshake_hash == bytes.fromhex(v["handshake_hash"])
                send, recv = init.split(), resp.split()
        else:
            assert send is not None and recv is not None
            if initiator_sends:
                ct = send[0].encrypt_with_ad(b"", payload)
                pt = recv[0].decrypt_with_ad(b"", ct)
            else:
                ct = recv[1].encrypt_with_ad(b"", payload)
                pt = send[1].decrypt_with_ad(b"", ct)
            assert ct == expected, f"message {i}"
            assert pt == payload, f"message {i}"
    assert send is not None, "the vector never completed its handshake"
    assert init.remote_static == public_bytes(private_from_bytes(bytes.fromhex(v["resp_static"])))
    assert resp.remote_static == public_bytes(private_from_bytes(bytes.fromhex(v["init_static"])))


# -- handshakes between fresh keys -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_full_handshake_and_transport(protocol: str) -> None:
    s_init, s_resp = generate_keypair(), generate_keypair()
    init = HandshakeState(protocol, True, s_init, prologue=b"x", psks=psks_for(protocol))
    resp = HandshakeState(protocol, False, s_resp, prologue=b"x", psks=psks_for(protocol))
    assert init.remote_static is None and resp.remote_static is None
    handshake(init, resp)
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    assert init.remote_static == public_bytes(s_resp)
    assert resp.remote_static == public_bytes(s_init)
    (i_send, i_recv), (r_recv, r_send) = init.split(), resp.split()
    for n in range(5):
        msg = bytes([n]) * (n * 1000)
        assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", msg)) == msg
        assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", msg)) == msg
    assert i_send.n == r_recv.n == 5


def test_split_gives_rekeying_transports_once() -> None:
    (i_send, _), _ = transports(PROTOCOL_XX)
    assert i_send._interval == REKEY_INTERVAL
    init, resp = pair(PROTOCOL_XX)
    with pytest.raises(LocalProtocolError):
        init.split()
    handshake(init, resp)
    init.split()
    with pytest.raises(LocalProtocolError):
        init.split()


def test_prologue_mismatch_fails_at_message_two() -> None:
    init = HandshakeState(PROTOCOL_XX, True, generate_keypair(), prologue=b"a")
    resp = HandshakeState(PROTOCOL_XX, False, generate_keypair(), prologue=b"b")
    resp.read_message(init.write_message())
    with pytest.raises(RemoteProtocolError) as info:
        init.read_message(resp.write_message())
    assert info.value.code == wire.ErrorCode.INTEGRITY


def test_wrong_psk_detected_by_responder_on_message_three() -> None:
    # Only message 3 carries the psk token, so the initiator reads message 2 fine; the responder is the
    # side that detects the mismatch, as a bad tag on message 3.
    init, resp = pair(PROTOCOL_XXPSK3, init_psk=PSK, resp_psk=bytes(32))
    resp.read_message(init.write_message(b"hello"))
    init.read_message(resp.write_message(b"hi"))
    third = init.write_message(b"me")
    assert init.complete
    with pytest.raises(RemoteProtocolError) as info:
        resp.read_message(third)
    assert info.value.code == wire.ErrorCode.INTEGRITY
    assert resp.remote_static is None
    assert not resp.complete
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        resp.write_message()


# -- corruption, truncation, turns -------------------------------------------------------------------------


def run_to(protocol: str, which: int, payload: bytes = b"payload") -> tuple[HandshakeState, bytes]:
    """Run a fresh handshake up to message `which`; return its reader and the message it is about to read."""
    init, resp = pair(protocol)
    order = [(init, resp), (resp, init), (init, resp)]
    for writer, reader in order[:which]:
        reader.read_message(writer.write_message(payload))
    writer, reader = order[which]
    return reader, writer.write_message(payload)


def test_flipped_bit_in_xx_first_message_fails_at_message_two() -> None:
    # XX message 1 is an ephemeral key and a cleartext payload: nothing authenticates it yet. A corrupted
    # key changes the responder's ee/es, so the initiator's read of message 2 fails on its tag.
    init, resp = pair(PROTOCOL_XX)
    resp.read_message(flip(init.write_message(b"payload"), 0))
    with pytest.raises(RemoteProtocolError) as info:
        init.read_message(resp.write_message(b"payload"))
    assert info.value.code == wire.ErrorCode.INTEGRITY


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_bit_anywhere(protocol: str, which: int, where: str) -> None:
    if protocol == PROTOCOL_XX and which == 0:
        pytest.skip("XX message 1 is an ephemeral key and a cleartext payload: nothing to authenticate yet")
    init, resp = pair(protocol)
    order = [(init, resp), (resp, init), (init, resp)]
    for i, (writer, reader) in enumerate(order):
        message = writer.write_message(b"payload")
        if i == which:
            index = {"start": 0, "middle": len(message) // 2, "end": len(message) - 1}[where]
            # "start" hits the ephemeral key: the DH changes, so the tags no longer verify
            with pytest.raises(RemoteProtocolError):
                reader.read_message(flip(message, index))
            with pytest.raises(LocalProtocolError, match="failed earlier"):
                reader.read_message(message)
            return
        reader.read_message(message)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("cut", [1, 16, 17, 33, 49])
def test_truncated_handshake_message(protocol: str, which: int, cut: int) -> None:
    reader, message = run_to(protocol, which, payload=b"")
    if protocol == PROTOCOL_XX and which == 0:
        cut = 1  # 32 bytes of e and no tag: only a short key is detectable
    cut = min(cut, len(message))
    with pytest.raises(RemoteProtocolError):
        reader.read_message(message[:-cut])
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        reader.read_message(message)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("length", [0, 1, 31, 32, 47, 48])
def test_short_first_message(protocol: str, length: int) -> None:
    _, resp = pair(protocol)
    message = bytes(length)
    if protocol == PROTOCOL_XX and length >= 32:
        # XX message 1 is e plus a cleartext payload; only all-zero e is refused later, by the DH.
        assert resp.read_message(message) == bytes(length - 32)
        return
    with pytest.raises(RemoteProtocolError):
        resp.read_message(message)


def test_short_second_message_every_cut() -> None:
    init, resp = pair(PROTOCOL_XX)
    resp.read_message(init.write_message())
    second = resp.write_message(b"")
    assert len(second) == 32 + 48 + 16
    for cut in range(len(second)):
        a, b = pair(PROTOCOL_XX)
        b.read_message(a.write_message())
        b.write_message(b"")  # advance b's turn; a reads a truncated copy of the real second message
        with pytest.raises(RemoteProtocolError):
            a.read_message(second[:cut])


def test_low_order_ephemeral_is_remote_error() -> None:
    init, resp = pair(PROTOCOL_XX)
    resp.read_message(init.write_message())
    second = bytearray(resp.write_message())
    second[:32] = bytes(32)  # the all-zero point: X25519 yields an all-zero secret
    with pytest.raises(RemoteProtocolError, match="low-order"):
        init.read_message(bytes(second))


def test_oversized_handshake_message() -> None:
    _, resp = pair(PROTOCOL_XX)
    with pytest.raises(RemoteProtocolError) as info:
        resp.read_message(bytes(MAX_MESSAGE + 1))
    assert info.value.code == wire.ErrorCode.FRAME_TOO_LARGE
    init, _ = pair(PROTOCOL_XX)
    assert len(init.write_message(bytes(MAX_MESSAGE - 32))) == MAX_MESSAGE
    init, _ = pair(PROTOCOL_XX)
    with pytest.raises(ValueError):
        init.write_message(bytes(MAX_MESSAGE - 31))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_out_of_turn(protocol: str) -> None:
    init, resp = pair(protocol)
    with pytest.raises(LocalProtocolError, match="not our turn"):
        resp.write_message()
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        resp.read_message(b"")

    init, resp = pair(protocol)
    first = init.write_message()
    with pytest.raises(LocalProtocolError, match="not our turn"):
        init.write_message()

    init, resp = pair(protocol)
    # A handshake message arriving when we should be writing is the peer's fault.
    with pytest.raises(RemoteProtocolError, match="out of turn"):
        init.read_message(first)

    init, resp = pair(protocol)
    handshake(init, resp)
    with pytest.raises(LocalProtocolError, match="complete"):
        init.write_message()
    init, resp = pair(protocol)
    handshake(init, resp)
    with pytest.raises(LocalProtocolError, match="complete"):
        resp.write_message()
    init, resp = pair(protocol)
    handshake(init, resp)
    with pytest.raises(RemoteProtocolError, match="completed"):
        resp.read_message(first)


def test_bad_construction() -> None:
    s = generate_keypair()
    with pytest.raises(ValueError):
        HandshakeState("Noise_NN_25519_AESGCM_SHA256", True, s)
    with pytest.raises(ValueError):
        HandshakeState(PROTOCOL_XXPSK3, True, s)
    with pytest.raises(ValueError):
        HandshakeState(PROTOCOL_XXPSK3, True, s, psks=[bytes(31)])
    with pytest.raises(ValueError):
        HandshakeState(PROTOCOL_XXPSK3, True, s, psks=[PSK, PSK])
    with pytest.raises(ValueError):
        HandshakeState(PROTOCOL_XX, True, s, psks=[PSK])
    with pytest.raises(ValueError):
        CipherState(bytes(31))
    with pytest.raises(ValueError):
        CipherState(bytes(32), rekey_interval=0)


# -- transport ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flipped_bit_in_transport_poisons(protocol: str) -> None:
    (i_send, _), (r_recv, _) = transports(protocol)
    ct = i_send.encrypt_with_ad(b"hdr", b"data" * 10)
    for index in (0, len(ct) - 1):
        (a_send, _), (b_recv, _) = transports(protocol)
        bad = flip(a_send.encrypt_with_ad(b"hdr", b"data" * 10), index)
        with pytest.raises(RemoteProtocolError) as info:
            b_recv.decrypt_with_ad(b"hdr", bad)
        assert info.value.code == wire.ErrorCode.INTEGRITY
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_with_ad(b"other ad", ct)
    # poisoned: even the genuine message and the _into path now fail
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_with_ad(b"hdr", ct)
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_into(b"hdr", ct, bytearray(len(ct) - TAG))
    with pytest.raises(RemoteProtocolError):
        r_recv.encrypt_with_ad(b"", b"")


def test_decrypt_into_bad_tag_poisons() -> None:
    (i_send, _), (r_recv, _) = transports(PROTOCOL_XX)
    ct = i_send.encrypt_with_ad(b"", b"x" * 100)
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_into(b"", flip(ct, 50), bytearray(100))
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_into(b"", ct, bytearray(100))


@pytest.mark.parametrize("size", [0, 1, TAG - 1, MAX_MESSAGE + 1])
def test_transport_bad_length(size: int) -> None:
    (_, _), (r_recv, _) = transports(PROTOCOL_XX)
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_with_ad(b"", bytes(size))
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        r_recv.decrypt_with_ad(b"", bytes(32))


def test_truncated_transport_message() -> None:
    (i_send, _), (r_recv, _) = transports(PROTOCOL_XX)
    ct = i_send.encrypt_with_ad(b"", b"hello world")
    with pytest.raises(RemoteProtocolError):
        r_recv.decrypt_with_ad(b"", ct[:-1])


@pytest.mark.parametrize("size", [0, 1, 100, noise.MAX_PLAINTEXT])
def test_into_equals_with_ad(size: int) -> None:
    b_send, b_recv = CipherState(bytes(range(32))), CipherState(bytes(range(32)))
    a_send, a_recv = CipherState(bytes(range(32))), CipherState(bytes(range(32)))
    plaintext = bytes(i % 251 for i in range(size))
    for _ in range(3):
        expected = a_send.encrypt_with_ad(b"hdr", plaintext)
        out = bytearray(size + TAG)
        assert b_send.encrypt_into(b"hdr", memoryview(plaintext), out) == size + TAG
        assert bytes(out) == expected
        back = bytearray(size)
        assert b_recv.decrypt_into(b"hdr", memoryview(out), memoryview(back)) == size
        assert bytes(back) == plaintext == a_recv.decrypt_with_ad(b"hdr", expected)
    assert a_send.n == b_send.n == b_recv.n == 3


def test_into_wrong_sizes() -> None:
    cs = CipherState(bytes(32))
    with pytest.raises(ValueError):
        cs.encrypt_into(b"", b"abc", bytearray(3 + TAG - 1))
    with pytest.raises(ValueError):
        cs.encrypt_into(b"", b"abc", bytearray(3 + TAG + 1))
    with pytest.raises(ValueError):
        cs.encrypt_into(b"", bytes(noise.MAX_PLAINTEXT + 1), bytearray(MAX_MESSAGE + 1))
    assert cs.n == 0  # refused calls consume no nonce
    good = CipherState(bytes(32)).encrypt_with_ad(b"", b"abc")
    with pytest.raises(ValueError):
        cs.decrypt_into(b"", good, bytearray(4))
    assert cs.decrypt_into(b"", good, bytearray(3)) == 3  # a local ValueError does not poison
    with pytest.raises(LocalProtocolError):
        CipherState().encrypt_into(b"", b"", bytearray(TAG))


def test_no_key_passes_through() -> None:
    cs = CipherState()
    assert not cs.has_key()
    assert cs.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.decrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.n == 0
    with pytest.raises(LocalProtocolError):
        cs.rekey()


def test_nonce_exhaustion() -> None:
    cs = CipherState(bytes(32))
    cs.n = 2**64 - 2
    ct = cs.encrypt_with_ad(b"", b"last")
    assert cs.n == 2**64 - 1
    with pytest.raises(LocalProtocolError, match="exhausted"):
        cs.encrypt_with_ad(b"", b"one more")
    with pytest.raises(LocalProtocolError, match="exhausted"):
        cs.encrypt_into(b"", b"", bytearray(TAG))
    rx = CipherState(bytes(32))
    rx.n = 2**64 - 2
    assert rx.decrypt_with_ad(b"", ct) == b"last"
    with pytest.raises(LocalProtocolError, match="exhausted"):
        rx.decrypt_with_ad(b"", ct)
    # with automatic rekeying too
    tx = CipherState(bytes(32), rekey_interval=3)
    tx.n = 2**64 - 1
    with pytest.raises(LocalProtocolError, match="exhausted"):
        tx.encrypt_with_ad(b"", b"")


def test_rekey_matches_spec() -> None:
    key = bytes(range(32))
    cs = CipherState(key)
    cs.rekey()
    expected = AESGCM(key).encrypt(bytes(4) + b"\xff" * 8, bytes(32), b"")[:32]
    assert cs._k == expected
    assert cs.n == 0


def test_automatic_rekey_in_step() -> None:
    key = bytes(range(32))
    tx, rx = CipherState(key, rekey_interval=3), CipherState(key, rekey_interval=3)
    plain_tx = CipherState(key)
    manual = CipherState(key)
    for i in range(20):
        msg = f"message {i}".encode()
        if i and i % 3 == 0:
            manual.rekey()
        ct = tx.encrypt_with_ad(b"", msg) if i % 2 else _into(tx, msg)
        assert ct == manual.encrypt_with_ad(b"", msg)
        reference = plain_tx.encrypt_with_ad(b"", msg)
        if i < 3:
            assert ct == reference
        else:
            assert ct != reference
        if i % 2:
            assert rx.decrypt_with_ad(b"", ct) == msg
        else:
            out = bytearray(len(msg))
            rx.decrypt_into(b"", ct, out)
            assert out == msg
    assert tx.n == rx.n == 20


def _into(cs: CipherState, msg: bytes) -> bytes:
    out = bytearray(len(msg) + TAG)
    cs.encrypt_into(b"", msg, out)
    return bytes(out)


def test_split_transports_rekey_at_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise, "REKEY_INTERVAL", 4)
    (i_send, i_recv), (r_recv, r_send) = transports(PROTOCOL_XXPSK3)
    for i in range(13):
        msg = bytes([i]) * 10
        assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", msg)) == msg
        assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", msg)) == msg
    assert i_send._interval == 4


# -- keys --------------------------------------------------------------------------------------------------


def test_key_helpers() -> None:
    key = generate_keypair()
    raw = key.private_bytes_raw()
    again = private_from_bytes(raw)
    assert public_bytes(again) == public_bytes(key)
    assert len(public_bytes(key)) == 32
    with pytest.raises(ValueError):
        private_from_bytes(bytes(31))


# -- fuzz --------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    protocol=st.sampled_from(PROTOCOLS),
    initiator=st.booleans(),
    step=st.integers(0, 2),
    data=st.binary(max_size=200),
    pad=st.sampled_from([0, 0, 0, MAX_MESSAGE - 100, MAX_MESSAGE + 1]),
)
def test_fuzz_read_message(protocol: str, initiator: bool, step: int, data: bytes, pad: int) -> None:
    data += bytes(pad)  # large inputs cheaply: hypothesis is slow to draw 64 KiB of bytes
    init, resp = pair(protocol)
    # advance a real handshake to `step`, then feed garbage to one side
    order = [(init, resp), (resp, init), (init, resp)]
    for writer, reader in order[:step]:
        reader.read_message(writer.write_message(b"ok"))
    target = init if initiator else resp
    for _ in range(2):  # the second call exercises the poisoned path
        with contextlib.suppress(RemoteProtocolError, LocalProtocolError):
            target.read_message(data)
