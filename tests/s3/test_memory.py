"""The S3 endpoint's memory stays bounded whatever the object's size (docs/gateway.md, "Memory and flow
control"), measured on a real node process: a PUT of an object several times the bound, streamed from a
generator, and its GET read back in chunks, leave the node's peak RSS (VmHWM) within a bound that does
not depend on the size; a client reading a GET slowly holds the node back (back-pressure): the node reads
from disk about what the client has taken, and its RSS does not grow with the object."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import netnodes
import orjson
import pytest
from botocore.config import Config
from netnodes import NodeProc, make_nodes
from nodetools import cli_argv, cli_env

MiB = 1 << 20
# The node's peak RSS may grow by this much over its RSS before the transfer, for any object size: the
# store's and the get's buffers (segments, aiohttp's stream buffer, a few chunks in flight) are a few MiB
# each. The sizes below are 4 and more times this, so an object held whole could not pass. Measured on a
# fresh node (2 cores): a PUT grows it by 17-25 MiB and a GET by 7-10 MiB, alike at 256 MiB, 1 and 2 GiB.
BOUND = 128 * MiB
# The slow reader: READS reads of CHUNK bytes, PAUSE seconds apart (19 MiB over 3 s and more), while the
# node could read the whole object from disk in a second or two.
CHUNK = 64 * 1024
PAUSE = 0.01
READS = 300
# What the node may have read from disk beyond what the slow client took: the socket buffers of both
# ends (a few MiB on loopback, tcp_wmem/tcp_rmem), aiohttp's write buffer and a segment or two being
# verified. Far below the object's size (measured: 12-19 MiB).
AHEAD = 64 * MiB


class Generated:
    """`size` bytes made on the fly and never held whole: a 1,000,003-byte random block repeated (a
    length prime to every power of two, so no two aligned segments of the object are equal). A seekable
    read-only file for boto3, which reads it once (payload unsigned, no checksum asked)."""

    def __init__(self, size: int, block: bytes) -> None:
        self.size = size
        self._block = block
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else min(self.size, self._pos + n)
        out = bytearray()
        while self._pos < end:
            at = self._pos % len(self._block)
            take = min(end - self._pos, len(self._block) - at)
            out += self._block[at : at + take]
            self._pos += take
        return bytes(out)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def md5(self) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        self.seek(0)
        while piece := self.read(4 * MiB):
            digest.update(piece)
        self.seek(0)
        return digest.hexdigest()


@dataclass
class Endpoint:
    node: NodeProc
    pid: int
    s3: Any  # a boto3 S3 client


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process `pid`, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def _rchar(pid: int) -> int:
    """Bytes process `pid` has read through read(2) and its kin (files and sockets)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _reset_peak(pid: int) -> int:
    """Reset the peak RSS of `pid` to its current RSS, where the kernel lets us (clear_refs, Linux 4.0);
    returns the RSS the growth is counted from: the current RSS, or the peak so far if no reset."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return _status(pid)["VmHWM"]
    return _status(pid)["VmRSS"]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    (node,) = make_nodes(tmp_path_factory.mktemp("s3mem"), 1)
    try:
        node.start("--s3-listen", "127.0.0.1:0")
        netnodes.STARTED.remove(node)  # outlives each test (the module shares it): ended here, by PID
        assert node.proc is not None
        out = subprocess.run(
            cli_argv("s3", "key", "create", "--json", "--data-dir", str(node.root)),
            env=cli_env(),
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr.decode()
        key = orjson.loads(out.stdout)
        addr = orjson.loads((node.root / "node.json").read_bytes())["s3"]
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://{addr}",
            aws_access_key_id=key["access_key_id"],
            aws_secret_access_key=key["secret_access_key"],
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                # the body is read once, as it is sent: no SHA-256 of it first, no CRC32 header
                s3={"addressing_style": "path", "payload_signing_enabled": False},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 1},
                connect_timeout=10,
                read_timeout=120,
            ),
        )
        s3.create_bucket(Bucket="big")
        yield Endpoint(node, node.proc.pid, s3)
    finally:
        node.kill()
        shutil.rmtree(node.root / "objects", ignore_errors=True)  # 1.5 GiB of sealed objects; the log stays


@pytest.fixture(scope="module")
def block() -> bytes:
    return os.urandom(1_000_003)


@pytest.mark.slow
@pytest.mark.parametrize("size", [1 << 30])
def test_put_and_get_of_a_large_object_stay_in_bounded_memory(
    endpoint: Endpoint, block: bytes, size: int
) -> None:
    body = Generated(size, block)
    want = body.md5()
    start = _reset_peak(endpoint.pid)
    put = endpoint.s3.put_object(Bucket="big", Key=f"o{size}", Body=body, ContentLength=size)
    assert put["ETag"] == f'"{want}"'
    put_peak = _status(endpoint.pid)["VmHWM"]

    start_get = _reset_peak(endpoint.pid)
    read_before = _rchar(endpoint.pid)
    got = endpoint.s3.get_object(Bucket="big", Key=f"o{size}")
    assert got["ContentLength"] == size
    digest = hashlib.md5(usedforsecurity=False)
    n = 0
    for piece in got["Body"].iter_chunks(MiB):
        digest.update(piece)
        n += len(piece)
    assert n == size and digest.hexdigest() == want
    get_peak = _status(endpoint.pid)["VmHWM"]
    # the node's reads of the object are counted in rchar (what the slow reader's test relies on)
    assert _rchar(endpoint.pid) - read_before >= size
    print(
        f"size {size / MiB:.0f} MiB: PUT RSS {start / MiB:.1f} -> peak {put_peak / MiB:.1f} MiB "
        f"(+{(put_peak - start) / MiB:.1f}); GET RSS {start_get / MiB:.1f} -> peak {get_peak / MiB:.1f} "
        f"MiB (+{(get_peak - start_get) / MiB:.1f})"
    )
    assert put_peak - start < BOUND, f"a PUT of {size} bytes grew the node by {put_peak - start}"
    assert get_peak - start_get < BOUND, f"a GET of {size} bytes grew the node by {get_peak - start_get}"


def test_a_slow_reader_holds_the_get_back(endpoint: Endpoint, block: bytes) -> None:
    size = 512 * MiB
    endpoint.s3.put_object(Bucket="big", Key="slow", Body=Generated(size, block), ContentLength=size)
    start = _reset_peak(endpoint.pid)
    read_before = _rchar(endpoint.pid)
    got = endpoint.s3.get_object(Bucket="big", Key="slow")
    stream = got["Body"]
    taken = 0
    ahead = 0
    t0 = time.monotonic()
    for _ in range(READS):
        piece = stream.read(CHUNK)
        assert piece
        taken += len(piece)
        ahead = max(ahead, _rchar(endpoint.pid) - read_before - taken)
        time.sleep(PAUSE)  # the slow client: the node must wait for it
    peak = _status(endpoint.pid)["VmHWM"]
    spent = time.monotonic() - t0
    stream.close()  # (the node's get ends there, short of Content-Length)
    print(
        f"slow reader: took {taken / MiB:.1f} MiB of {size / MiB:.0f} in {spent:.1f} s; node read at most "
        f"{ahead / MiB:.1f} MiB ahead; RSS {start / MiB:.1f} -> peak {peak / MiB:.1f} MiB "
        f"(+{(peak - start) / MiB:.1f})"
    )
    assert ahead < AHEAD, f"the node read {ahead} bytes more than the client took"
    assert peak - start < BOUND, f"the node grew by {peak - start} for a client that took {taken}"
    assert endpoint.s3.head_object(Bucket="big", Key="slow")["ContentLength"] == size  # and it serves on
