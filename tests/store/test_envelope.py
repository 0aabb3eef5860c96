"""envelope.py on buffers: the version byte alone picks the class (format_of), v1 seals and opens its
blocks, and a header of another version or with a changed byte is refused."""

from __future__ import annotations

import os

import pytest

from p2pfast.errors import IntegrityError
from p2pfast.store import envelope
from p2pfast.store.envelope import EnvelopeV1

KEY = bytes(range(32))


def test_format_of_picks_the_class_of_the_version_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    header = EnvelopeV1.new(KEY, 4096).start_header()
    assert envelope.format_of(header) is EnvelopeV1

    class EnvelopeV2(EnvelopeV1):
        version = 2

    monkeypatch.setitem(envelope.FORMATS, 2, EnvelopeV2)
    assert envelope.format_of(header[:4] + b"\x02" + header[5:]) is EnvelopeV2
    assert envelope.format_of(header) is EnvelopeV1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"P2PO", "object header is 4 bytes, expected 32"),
        (b"XXXX" + bytes(28), "bad magic"),
        (b"P2PO\x02" + bytes(27), "object format version 2 is not supported"),
        (b"P2PO\x01\x07" + bytes(26), "unknown object algorithm 7"),
        (b"P2PO\x01\x01" + bytes(26), "bad segment size 0"),
    ],
)
def test_headers_that_are_not_v1_are_refused(raw: bytes, message: str) -> None:
    fmt = envelope.format_of(raw)
    assert fmt is envelope.CURRENT
    with pytest.raises(IntegrityError, match=message) as info:
        fmt.open(raw, KEY, "obj")
    assert info.value.args[0].startswith("obj: ")  # the caller names the object


def test_v1_round_trip_and_every_header_byte_authenticated() -> None:
    env = EnvelopeV1.new(KEY, 8)
    plain = [os.urandom(8), os.urandom(3)]
    sealed = [env.seal_segment(0, False, plain[0]), env.seal_segment(1, True, plain[1])]
    out = memoryview(bytearray(8 + env.tag_size))
    env.seal_segment_into(1, True, memoryview(plain[1]), out[: 3 + env.tag_size])
    assert bytes(out[: 3 + env.tag_size]) == sealed[1]
    header, index = env.seal_index(11, b"L" * 64, "b3:cid")
    opened = EnvelopeV1.open(header, KEY, "obj")
    assert (opened.length, opened.segment_size, opened.nonce_prefix) == (11, 8, env.nonce_prefix)
    assert opened.open_index(index, "b3:cid", "obj") == b"L" * 64
    buf = memoryview(bytearray(8))
    for i, (p, s) in enumerate(zip(plain, sealed, strict=True)):
        n = opened.open_segment_into(i, i == 1, memoryview(s), buf[: len(p)], "obj")
        assert bytes(buf[:n]) == p
    with pytest.raises(IntegrityError, match="segment 0 failed authentication"):
        opened.open_segment_into(0, True, memoryview(sealed[0]), buf, "obj")  # the last flag is in the nonce
    with pytest.raises(IntegrityError, match="segment index failed"):
        opened.open_index(index, "b3:other", "obj")
    for at in (6, 7, 19, 28, 31):  # reserved and padding bytes: refused though the fields parse the same
        changed = header[:at] + bytes([header[at] ^ 1]) + header[at + 1 :]
        other = EnvelopeV1.open(changed, KEY, "obj")
        with pytest.raises(IntegrityError, match="segment index failed"):
            other.open_index(index, "b3:cid", "obj")
