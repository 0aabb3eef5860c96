"""shard: 32-byte digest -> nest path. Runs over both twins (`impl`) and crosses them (`both`)."""

from __future__ import annotations

import array
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast import _accel

DIGEST = bytes.fromhex("abcdef0123456789" * 4)
NAME = DIGEST.hex()
VALID = [(w, d) for w in range(1, 9) for d in range(0, 9)]
digests = st.binary(min_size=32, max_size=32)
params = st.sampled_from(VALID)
# impl/both only return a loader, so sharing them across examples is safe.
fixtures_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def reference(digest: bytes, width: int, depth: int) -> str:
    h = digest.hex()
    return "".join(h[i * width : (i + 1) * width] + "/" for i in range(depth)) + h


@pytest.mark.parametrize(
    ("width", "depth", "expected"),
    [
        (2, 2, "ab/cd/" + NAME),
        (1, 3, "a/b/c/" + NAME),
        (3, 1, "abc/" + NAME),
        (4, 0, NAME),
        (8, 2, "abcdef01/23456789/" + NAME),
        (8, 8, "abcdef01/23456789/" * 4 + NAME),
    ],
)
def test_known_vectors(impl, width, depth, expected):
    m = impl("shard")
    assert m.shard_path(DIGEST, width, depth) == expected
    assert m.shard_path(DIGEST, width=width, depth=depth) == expected


def test_defaults_and_zero_digest(impl):
    m = impl("shard")
    assert m.shard_path(DIGEST) == "ab/cd/" + NAME
    assert m.shard_path(bytes(32)) == "00/00/" + "0" * 64
    assert m.shard_path(b"\xff" * 32, 1, 1) == "f/" + "f" * 64


@pytest.mark.parametrize(("width", "depth"), VALID)
def test_all_params_match_reference(impl, width, depth):
    m = impl("shard")
    for digest in (DIGEST, bytes(range(32)), bytes(range(255, 223, -1))):
        assert m.shard_path(digest, width, depth) == reference(digest, width, depth)
    assert m.shard_paths(DIGEST + bytes(range(32)), width, depth) == [
        reference(DIGEST, width, depth),
        reference(bytes(range(32)), width, depth),
    ]


def test_buffer_types(impl):
    m = impl("shard")
    expected = m.shard_path(DIGEST)
    assert m.shard_path(bytearray(DIGEST)) == expected
    assert m.shard_path(memoryview(DIGEST)) == expected
    assert m.shard_path(memoryview(b"x" + DIGEST + b"y")[1:33]) == expected
    # Any C-contiguous buffer counts by bytes, whatever its item format.
    assert m.shard_path(array.array("I", DIGEST)) == expected
    assert m.shard_paths(memoryview(bytearray(DIGEST * 3))) == [expected] * 3
    assert m.shard_paths(b"") == []


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_bad_digest_length(impl, size):
    with pytest.raises(ValueError, match="32 bytes"):
        impl("shard").shard_path(bytes(size))


@pytest.mark.parametrize(
    ("width", "depth"), [(0, 2), (9, 1), (-1, 0), (2, -1), (2, 9), (1, 100), (2**70, 1), (1, -(2**70))]
)
def test_bad_params(impl, width, depth):
    m = impl("shard")
    with pytest.raises(ValueError, match="width"):
        m.shard_path(DIGEST, width, depth)
    with pytest.raises(ValueError, match="width"):
        m.shard_paths(DIGEST, width, depth)


@pytest.mark.parametrize("size", [1, 31, 33, 65, 95])
def test_bad_batch_length(impl, size):
    with pytest.raises(ValueError, match="multiple of 32"):
        impl("shard").shard_paths(bytes(size))


def test_bad_types(impl):
    m = impl("shard")
    with pytest.raises(TypeError):
        m.shard_path("ab" * 16)
    with pytest.raises(TypeError):
        m.shard_path(32)
    with pytest.raises(TypeError):
        m.shard_path(DIGEST, 2.0)
    with pytest.raises(BufferError):
        m.shard_path(memoryview(DIGEST * 2)[::2])


@fixtures_ok
@given(digest=digests, wd=params)
def test_shape(impl, digest, wd):
    width, depth = wd
    m = impl("shard")
    path = m.shard_path(digest, width, depth)
    assert re.fullmatch(rf"([0-9a-f]{{{width}}}/){{{depth}}}[0-9a-f]{{64}}", path)
    assert not path.startswith("/")
    assert ".." not in path
    assert path == reference(digest, width, depth)


@fixtures_ok
@given(data=st.lists(digests, max_size=20), wd=params)
def test_batch_is_map_of_single(impl, data, wd):
    width, depth = wd
    m = impl("shard")
    assert m.shard_paths(b"".join(data), width, depth) == [m.shard_path(d, width, depth) for d in data]


@fixtures_ok
@given(digest=digests, wd=params)
def test_twins_agree(both, digest, wd):
    c, py = both("shard")
    assert c.shard_path(digest, *wd) == py.shard_path(digest, *wd)
    assert c.shard_paths(digest * 3, *wd) == py.shard_paths(digest * 3, *wd)


@fixtures_ok
@given(digest=st.binary(max_size=40), width=st.integers(-2, 10), depth=st.integers(-2, 10))
def test_twins_agree_on_errors(both, digest, width, depth):
    c, py = both("shard")
    for fn in ("shard_path", "shard_paths"):
        outcomes = []
        for m in (c, py):
            try:
                outcomes.append(getattr(m, fn)(digest, width, depth))
            except ValueError as exc:
                outcomes.append(("ValueError", str(exc)))
        assert outcomes[0] == outcomes[1]


def test_compiled_loaded_unless_pure():
    mod = _accel.module("shard")
    if _accel.PURE:
        assert mod.__name__ == "p2pfast._shard_py"
    else:
        assert mod.__name__ == "p2pfast._shard_c"
