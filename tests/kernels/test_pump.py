"""pump: source -> transforms -> sinks in fixed-size chunks. Runs over both twins (`impl`), crosses them
(`both`). Decisions pinned here: an empty stream (empty file, EOF at once, a length-0 range, an offset past
EOF, finish() without data) yields exactly one empty chunk with last=True; a Pump moves one stream, so
run_fd and finish() end it; any exception while moving data poisons the Pump (RuntimeError afterwards)."""

from __future__ import annotations

import io
import itertools
import os
import random
import signal
import tempfile
import threading
import time
import tracemalloc

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast import _accel

MIB = 1024 * 1024
CHUNKS = [1, 7, 4096, MIB]
# impl/both only return a loader, so sharing them across examples is safe.
fixtures_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


class Recorder:
    """A transform that records (index, last, bytes) of every chunk and passes the view on."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, bytes]] = []

    def __call__(self, view: memoryview, index: int, last: bool) -> None:
        assert type(view) is memoryview
        self.seen.append((index, last, bytes(view)))

    @property
    def data(self) -> bytes:
        return b"".join(d for _, _, d in self.seen)


def sizes_for(chunk: int) -> list[int]:
    rnd = random.Random(chunk).randrange(1, 5 * chunk if chunk > 1 else 300)
    return sorted({0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, rnd})


def check_chunks(rec: Recorder, chunk: int, data: bytes) -> None:
    expected_n = max(1, -(-len(data) // chunk))
    assert [i for i, _, _ in rec.seen] == list(range(expected_n))
    assert [last for _, last, _ in rec.seen] == [False] * (expected_n - 1) + [True]
    assert all(len(d) == chunk for _, _, d in rec.seen[:-1])
    assert len(rec.seen[-1][2]) == len(data) - (expected_n - 1) * chunk
    assert rec.data == data


def temp_file(data: bytes):
    f = tempfile.TemporaryFile()  # noqa: SIM115 (returned to a with block)
    f.write(data)
    f.flush()
    f.seek(0)
    return f


def feed_pipe(data: bytes, seed: int = 0):
    """A pipe whose write end is fed by a thread in small, odd-sized writes, then closed."""
    r, w = os.pipe()
    rnd = random.Random(seed)

    def writer() -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(w, view[: rnd.choice((1, 3, 7, 13, 100, 4097, 65537))])
                view = view[n:]
        finally:
            os.close(w)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return r, t


# ---------------------------------------------------------------- run_fd over files and pipes


@pytest.mark.parametrize("chunk", CHUNKS)
def test_run_fd_regular_file(impl, chunk):
    m = impl("pump")
    for size in sizes_for(chunk):
        data = os.urandom(size)
        with temp_file(data) as src, tempfile.TemporaryFile() as out:
            rec, obj = Recorder(), io.BytesIO()
            p = m.Pump(chunk, [rec], [out.fileno(), obj])
            assert p.run_fd(src.fileno()) == size
            assert (p.moved, p.chunks, p.chunk_size) == (size, len(rec.seen), chunk)
            check_chunks(rec, chunk, data)
            assert obj.getvalue() == data
            out.seek(0)
            assert out.read() == data


@pytest.mark.parametrize("chunk", CHUNKS)
def test_run_fd_pipe(impl, chunk):
    m = impl("pump")
    for seed, size in enumerate(sizes_for(chunk)):
        data = os.urandom(size)
        r, t = feed_pipe(data, seed)
        try:
            rec, obj = Recorder(), io.BytesIO()
            assert m.Pump(chunk, [rec], [obj]).run_fd(r) == size
        finally:
            t.join()
            os.close(r)
        check_chunks(rec, chunk, data)
        assert obj.getvalue() == data


def test_fd_sink_is_a_pipe(impl):
    """Writes to a pipe sink larger than the pipe buffer arrive whole and in order."""
    m = impl("pump")
    data = os.urandom(3 * MIB + 5)
    r, w = os.pipe()
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(b) for b in iter(lambda: os.read(r, 65536), b"")])
    reader.start()
    try:
        with temp_file(data) as src:
            m.Pump(MIB, (), [w]).run_fd(src.fileno())
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert bytes(got) == data


def test_empty_source_yields_one_empty_last_chunk(impl):
    m = impl("pump")
    r, w = os.pipe()
    os.close(w)
    rec, obj = Recorder(), io.BytesIO()
    try:
        assert m.Pump(16, [rec], [obj]).run_fd(r) == 0
    finally:
        os.close(r)
    assert rec.seen == [(0, True, b"")]
    assert obj.getvalue() == b""


# ---------------------------------------------------------------- ranges


DATA_10K = bytes(random.Random(7).randbytes(10_000))


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, -1),
        (100, -1),
        (100, 5000),
        (0, 0),  # a length-0 range: one empty last chunk, like an empty file
        (5000, 0),
        (20_000, -1),  # offset past EOF: one empty last chunk
        (20_000, 10),
        (9_990, 100),  # range running past EOF: stops at EOF
        (4096, 4096),  # exactly one chunk
        (0, 8192),  # exactly two chunks: last is known without another read
        (1, 8191),
        (10_000, -1),
    ],
)
def test_ranges(impl, offset, length):
    m = impl("pump")
    end = len(DATA_10K) if length < 0 else offset + length
    expected = DATA_10K[offset:end]
    with temp_file(DATA_10K) as src:
        os.lseek(src.fileno(), 1234, os.SEEK_SET)
        rec = Recorder()
        p = m.Pump(4096, [rec])
        assert p.run_fd(src.fileno(), offset, length) == len(expected)
        assert os.lseek(src.fileno(), 0, os.SEEK_CUR) == 1234  # pread leaves the position alone
    check_chunks(rec, 4096, expected)


@pytest.mark.parametrize("length", [-1, 0, 1, 4095, 4096, 5000])
def test_current_position_with_length(impl, length):
    m = impl("pump")
    with temp_file(DATA_10K) as src:
        os.lseek(src.fileno(), 1000, os.SEEK_SET)
        rec = Recorder()
        n = m.Pump(4096, [rec]).run_fd(src.fileno(), length=length)
        assert os.lseek(src.fileno(), 0, os.SEEK_CUR) == 1000 + n  # read() advances it
    end = len(DATA_10K) if length < 0 else 1000 + length
    check_chunks(rec, 4096, DATA_10K[1000:end])


def test_length_limits_reads_on_a_pipe(impl):
    """With a length, a pipe is not read past the range: the rest stays in the pipe."""
    m = impl("pump")
    r, w = os.pipe()
    try:
        os.write(w, b"a" * 100)
        rec = Recorder()
        assert m.Pump(30, [rec]).run_fd(r, length=60) == 60
        check_chunks(rec, 30, b"a" * 60)
        assert os.read(r, 1000) == b"a" * 40
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------- transforms


class Xor:
    """A transform writing into its own buffer and returning a view of it (like a cipher's *_into)."""

    def __init__(self, size: int, key: int) -> None:
        self.buf = memoryview(bytearray(size))
        self.key = key

    def __call__(self, view: memoryview, index: int, last: bool) -> memoryview:
        out = self.buf[: len(view)]
        out[:] = bytes(b ^ self.key for b in view)
        return out


def test_transform_chain_hash_then_xor(impl):
    m = impl("pump")
    data = os.urandom(1000)
    h = blake3.blake3()
    rec_in, rec_out, obj = Recorder(), Recorder(), io.BytesIO()

    def hash_update(view, index, last):
        h.update(view)

    with temp_file(data) as src:
        m.Pump(64, [rec_in, hash_update, Xor(64, 0x5A), rec_out], [obj]).run_fd(src.fileno())
    check_chunks(rec_in, 64, data)
    assert h.digest() == blake3.blake3(data).digest()
    assert obj.getvalue() == bytes(b ^ 0x5A for b in data) == rec_out.data
    assert [(i, last) for i, last, _ in rec_out.seen] == [(i, last) for i, last, _ in rec_in.seen]


def test_trimming_transform(impl):
    m = impl("pump")
    obj = io.BytesIO()
    p = m.Pump(10, [lambda v, i, last: v[1:-1]], [obj])
    p.push(bytes(range(25)))
    p.finish()
    assert obj.getvalue() == bytes(range(1, 9)) + bytes(range(11, 19)) + bytes(range(21, 24))


def nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def test_aes_gcm_round_trip(impl):
    """Encrypt segments with encrypt_into into a reused buffer, then decrypt them in a second pump."""
    m = impl("pump")
    chunk, tag = 4096, 16
    aes = AESGCM(os.urandom(32))
    data = os.urandom(5 * chunk + 123)
    enc_buf = memoryview(bytearray(chunk + tag))
    dec_buf = memoryview(bytearray(chunk))

    def encrypt(view, index, last):
        out = enc_buf[: len(view) + tag]
        aes.encrypt_into(nonce(index, last), view, b"aad", out)
        return out

    def decrypt(view, index, last):
        out = dec_buf[: len(view) - tag]
        aes.decrypt_into(nonce(index, last), view, b"aad", out)
        return out

    h = blake3.blake3()

    def hash_update(view, index, last):
        h.update(view)  # blake3's update returns the hasher: a lambda would hand that on (a TypeError)

    with temp_file(data) as src, tempfile.TemporaryFile() as sealed:
        p = m.Pump(chunk, [hash_update, encrypt], [sealed.fileno()])
        p.run_fd(src.fileno())
        assert p.chunks == 6
        assert os.fstat(sealed.fileno()).st_size == len(data) + 6 * tag
        obj = io.BytesIO()
        m.Pump(chunk + tag, [decrypt], [obj]).run_fd(sealed.fileno(), 0)
    assert obj.getvalue() == data
    assert h.digest() == blake3.blake3(data).digest()


def test_aes_gcm_empty_stream_seals_one_segment(impl):
    m = impl("pump")
    aes = AESGCM(bytes(32))
    buf = memoryview(bytearray(64 + 16))
    obj = io.BytesIO()

    def encrypt(view, index, last):
        out = buf[: len(view) + 16]
        aes.encrypt_into(nonce(index, last), view, None, out)
        return out

    m.Pump(64, [encrypt], [obj]).finish()
    assert aes.decrypt(nonce(0, True), obj.getvalue(), None) == b""


# ---------------------------------------------------------------- push mode


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_push_boundaries(impl, chunk):
    m = impl("pump")
    for size in sizes_for(chunk):
        data = os.urandom(size)
        rec, obj = Recorder(), io.BytesIO()
        p = m.Pump(chunk, [rec], [obj])
        assert p.push(data) == size
        # A full chunk is held until more data or finish(), so `last` is exact.
        assert p.chunks == max(0, -(-size // chunk) - 1)
        assert p.finish() == size == p.moved
        check_chunks(rec, chunk, data)
        assert obj.getvalue() == data


def test_push_accepts_buffers(impl):
    m = impl("pump")
    rec = Recorder()
    p = m.Pump(4, [rec])
    assert p.push(bytearray(b"ab")) == 2
    assert p.push(memoryview(b"xcdx")[1:3]) == 2
    assert p.push(b"") == 0
    assert p.push(memoryview(bytearray(b"ef")).cast("c")) == 2
    p.finish()
    assert rec.seen == [(0, False, b"abcd"), (1, True, b"ef")]
    with pytest.raises(TypeError):
        m.Pump(4).push("text")
    with pytest.raises(BufferError):
        m.Pump(4).push(memoryview(b"abcdef")[::2])


@fixtures_ok
@given(
    data=st.binary(max_size=3000),
    chunk=st.sampled_from([1, 2, 7, 64, 1000, 4096]),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
)
def test_push_equals_run_fd(impl, data, chunk, cuts):
    m = impl("pump")
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pushed = Recorder()
    p = m.Pump(chunk, [pushed])
    for a, b in itertools.pairwise(bounds):
        assert p.push(data[a:b]) == b - a
    assert p.finish() == len(data)
    pulled = Recorder()
    with temp_file(data) as src:
        assert m.Pump(chunk, [pulled]).run_fd(src.fileno()) == len(data)
    assert pushed.seen == pulled.seen
    check_chunks(pushed, chunk, data)


@fixtures_ok
@given(
    data=st.binary(max_size=2000),
    chunk=st.integers(1, 300),
    offset=st.integers(-1, 2100),
    length=st.integers(-1, 2100),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_twins_give_identical_chunks(both, data, chunk, offset, length, cuts):
    c, py = both("pump")
    runs = []
    for m in (c, py):
        rec, out = Recorder(), io.BytesIO()
        with temp_file(data) as src:
            n = m.Pump(chunk, [rec], [out]).run_fd(src.fileno(), offset, length)
        pushed = Recorder()
        p = m.Pump(chunk, [pushed])
        for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=False):
            p.push(data[a:b])
        p.finish()
        runs.append((n, rec.seen, out.getvalue(), pushed.seen))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- errors, poisoning, modes


class Boom(Exception):
    pass


def failing_at(n: int, exc: BaseException):
    def t(view, index, last):
        if index == n:
            raise exc

    return t


def assert_poisoned(p) -> None:
    for call in (lambda: p.push(b"x"), p.finish, lambda: p.run_fd(0)):
        with pytest.raises(RuntimeError, match="poisoned"):
            call()


def test_transform_exception_propagates_and_poisons(impl):
    m = impl("pump")
    err = Boom("no")
    with temp_file(bytes(100)) as src:
        p = m.Pump(10, [failing_at(3, err)])
        with pytest.raises(Boom) as info:
            p.run_fd(src.fileno())
    assert info.value is err
    assert p.chunks == 4
    assert_poisoned(p)
    with pytest.raises(RuntimeError, match="Boom: no"):
        p.finish()

    p = m.Pump(10, [failing_at(1, Boom())])
    p.push(bytes(20))
    with pytest.raises(Boom):
        p.push(b"x")
    assert_poisoned(p)

    p = m.Pump(10, [failing_at(0, Boom())])
    with pytest.raises(Boom):
        p.finish()
    assert_poisoned(p)


def test_sink_exception_propagates_and_poisons(impl):
    m = impl("pump")

    class BadSink:
        def write(self, view):
            raise Boom("full")

    p = m.Pump(10, (), [BadSink()])
    with temp_file(bytes(5)) as src, pytest.raises(Boom):
        p.run_fd(src.fileno())
    assert_poisoned(p)


def test_os_errors_propagate_and_poison(impl):
    m = impl("pump")
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    p = m.Pump(10)
    with pytest.raises(OSError) as info:
        p.run_fd(r)  # closed fd: EBADF, raised as os.read would
    assert info.type is OSError and info.value.errno == 9
    assert_poisoned(p)

    r, w = os.pipe()
    os.close(r)
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        p = m.Pump(10, (), [w])
        p.push(b"x" * 10)
        with pytest.raises(BrokenPipeError):
            p.finish()
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(w)
    assert_poisoned(p)


def test_transform_must_return_memoryview_or_none(impl):
    m = impl("pump")
    p = m.Pump(4, [lambda v, i, last: bytes(v)])
    with pytest.raises(TypeError, match="memoryview or None"):
        p.finish()
    assert_poisoned(p)


def test_not_reentrant(impl):
    m = impl("pump")
    holder = []
    p = m.Pump(4, [lambda v, i, last: holder[0].push(b"x")])
    holder.append(p)
    with pytest.raises(RuntimeError, match="re-entrant"):
        p.finish()
    assert_poisoned(p)


def test_modes_do_not_mix(impl):
    m = impl("pump")
    p = m.Pump(4)
    p.push(b"abc")
    with pytest.raises(RuntimeError, match="mix"):
        p.run_fd(0)
    assert p.finish() == 3  # a refused call does not poison

    with temp_file(b"abc") as src:
        p = m.Pump(4)
        p.run_fd(src.fileno())
    with pytest.raises(RuntimeError, match="finished"):
        p.push(b"x")
    with pytest.raises(RuntimeError, match="finished"):
        p.run_fd(0)
    with pytest.raises(RuntimeError, match="finished"):
        p.finish()

    p = m.Pump(4)
    p.finish()
    with pytest.raises(RuntimeError, match="finished"):
        p.finish()


def test_constructor_validation(impl):
    m = impl("pump")
    for bad in (0, -1, m.MAX_CHUNK_SIZE + 1, 2**70):
        with pytest.raises(ValueError, match="chunk_size"):
            m.Pump(bad)
    with pytest.raises(TypeError):
        m.Pump(1.5)
    assert m.Pump(m.MAX_CHUNK_SIZE).chunk_size == m.MAX_CHUNK_SIZE
    with pytest.raises(TypeError, match="callable"):
        m.Pump(4, [42])
    with pytest.raises(TypeError, match="sink"):
        m.Pump(4, (), [object()])
    with pytest.raises(ValueError, match="file descriptor"):
        m.Pump(4, (), [-1])
    with pytest.raises(ValueError, match="file descriptor"):
        m.Pump(4, (), [2**40])


def test_run_fd_argument_validation_does_not_poison(impl):
    m = impl("pump")
    p = m.Pump(4)
    for args in [(-1,), (2**40,), (0, -2), (0, 0, -2), (0, 2**63), (0, 0, 2**63)]:
        with pytest.raises(ValueError):
            p.run_fd(*args)
    with pytest.raises(TypeError):
        p.run_fd(0, 1.0)
    with temp_file(b"ok") as src:
        assert p.run_fd(src.fileno()) == 2


def test_counters_are_read_only(impl):
    p = impl("pump").Pump(4)
    for name in ("chunk_size", "moved", "chunks"):
        with pytest.raises(AttributeError):
            setattr(p, name, 1)


# ---------------------------------------------------------------- signals and memory


def test_eintr_is_retried_and_handler_errors_propagate(impl):
    """A signal during a blocking read: handlers run, the read resumes; a raising handler poisons."""
    m = impl("pump")
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    try:
        r, w = os.pipe()

        def slow_writer() -> None:
            for _ in range(5):
                time.sleep(0.02)
                os.write(w, b"z" * 10)
            os.close(w)

        t = threading.Thread(target=slow_writer)
        t.start()
        signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
        try:
            rec = Recorder()
            assert m.Pump(8, [rec]).run_fd(r) == 50
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            t.join()
            os.close(r)
        check_chunks(rec, 8, b"z" * 50)
        assert hits

        def raising(*a):
            raise Boom("alarm")

        signal.signal(signal.SIGALRM, raising)
        r, w = os.pipe()
        p = m.Pump(8)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        try:
            with pytest.raises(Boom):
                p.run_fd(r)  # blocks: nobody writes
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.close(r)
            os.close(w)
        assert_poisoned(p)
    finally:
        signal.signal(signal.SIGALRM, old)


def test_steady_state_does_not_allocate_payloads(impl, tmp_path):
    """64 chunks of 1 MiB through a no-op transform into /dev/null: peak stays near the two buffers."""
    m = impl("pump")
    path = tmp_path / "src"
    with open(path, "wb") as f:
        block = os.urandom(MIB)
        for _ in range(64):
            f.write(block)
    devnull = os.open(os.devnull, os.O_WRONLY)
    src = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        try:
            p = m.Pump(MIB, [lambda v, i, last: None], [devnull])
            assert p.run_fd(src) == 64 * MIB
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        os.close(src)
        os.close(devnull)
    assert p.chunks == 64
    # Measured: the two buffers plus ~1.3 KiB in both twins; a payload-sized allocation
    # per chunk would add 1 MiB.
    assert peak < 2 * MIB + 256 * 1024


def test_compiled_loaded_unless_pure():
    mod = _accel.module("pump")
    assert mod.__name__ == ("p2pfast._pump_py" if _accel.PURE else "p2pfast._pump_c")
