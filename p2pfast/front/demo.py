"""`p2pfast demo`: the main job end to end, each step timed: a network of three nodes (A, B, C) on
loopback ports in a temporary directory, in this process. A stores a generated file with `replicas = 1`,
so exactly one of B and C gets a copy; the other gets the file back over the network (verified segment
by segment, then compared by BLAKE3 with the input); the holder deletes it and the delete reaches every
node. Then the same file goes in through B's S3 API and comes back through C's and C's HTTP gateway.
The temporary directory is removed at the end, also on Ctrl-C, unless --keep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import blake3

from p2pfast import __version__, _accel, identity, runtime, selftest
from p2pfast.datadir import Layout, init
from p2pfast.errors import IntegrityError, PeerUnavailable
from p2pfast.front.clientio import FdSink, FdSource
from p2pfast.node import Node
from p2pfast.store.durable import DurableFile
from p2pfast.units import iec as human

T = TypeVar("T")
CHUNK = 4 << 20


def _generate(path: Path, size: int) -> str:
    """Write `size` pseudo-random bytes (BLAKE3 XOF, fast and incompressible); return their BLAKE3."""
    h = blake3.blake3()
    xof = blake3.blake3(b"p2pfast demo data")
    with open(path, "wb") as f:
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            block = xof.digest(length=n, seek=done)
            h.update(block)
            f.write(block)
            done += n
    return h.hexdigest()


def _hash_file(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


async def _step(name: str, size: int | None, aw: Awaitable[T]) -> T:
    t0 = time.perf_counter()
    result = await aw
    dt = time.perf_counter() - t0
    rate = f"  {human(size / dt) + '/s':>12}" if size and dt > 0 else ""  # binary units, as everywhere
    print(f"  {name:<34} {dt * 1000:9.1f} ms{rate}", flush=True)
    return result


async def _timed(name: str, size: int | None, fn: Callable[[], T]) -> T:
    async def call() -> T:
        return await asyncio.to_thread(fn)

    return await _step(name, size, call())


async def _start(root: Path, key: bytes, bootstrap: list[str]) -> Node:
    layout = Layout.of(root)
    init(layout, key)
    node = Node(
        layout,
        identity.load(layout.node_key, layout.network_key),
        listen="127.0.0.1:0",
        bootstrap=tuple(bootstrap),
        replicas=1,
    )
    await node.start()
    return node


async def _demo(tmp: Path, size: int) -> None:
    src, dst = tmp / "input.bin", tmp / "output.bin"
    expected = await _timed("generate input file", size, lambda: _generate(src, size))
    key = os.urandom(32)
    nodes: list[Node] = []
    try:

        async def network() -> None:
            for name in "abc":
                nodes.append(await _start(tmp / name, key, [nodes[0].peers.listen_addr] if nodes else []))
            deadline = asyncio.get_running_loop().time() + 30
            while not all(len(n.peers.sessions) == 2 for n in nodes):
                if asyncio.get_running_loop().time() > deadline:
                    raise PeerUnavailable("the three demo nodes did not connect within 30 s")
                await asyncio.sleep(0.02)

        await _step("start 3 nodes, connect (Noise)", None, network())
        a, b, c = nodes
        names = {n.node_id: name for n, name in zip(nodes, "ABC", strict=True)}
        for n, name in zip(nodes, "ABC", strict=True):
            print(f"    node {name}  {n.peers.listen_addr}  id {n.node_id[:16]}")
        fd = os.open(src, os.O_RDONLY)
        try:
            report = await _step(
                "store on A (+1 replica, replicas=1)", size, a.put("demo/file.bin", FdSource(fd))
            )
        finally:
            os.close(fd)
        print(f"    stored {report.key} as {report.cid}")
        print(f"    replicas: {', '.join(names[p] for p in report.replicated_to) or 'none'} (and A itself)")
        holder = b if b.node_id in report.replicated_to else c
        other = c if holder is b else b
        other_name = names[other.node_id]

        async def get() -> None:
            with DurableFile(tmp) as f:
                await other.get("demo/file.bin", FdSink(f.fd))
                f.commit(dst)

        await _step(f"get on {other_name} (network, verified)", size, get())
        got = await _timed("compare with input", size, lambda: _hash_file(dst))
        if got != expected:
            raise IntegrityError(f"demo read back different bytes: {got} != {expected}")
        print("    read back identical bytes (verified)")
        await _step(f"delete on {names[holder.node_id]} (propagated)", None, holder.delete("demo/file.bin"))
        for n, name in zip(nodes, "ABC", strict=True):
            left = [p for p in n.layout.objects.rglob("*") if p.is_file()]
            files = await n.db(n.repo.list_files)
            if files or left:
                raise IntegrityError(f"delete left {len(files)} files, {len(left)} objects on node {name}")
        print("    gone everywhere: no files listed, no object files on A, B or C")
        await _s3(tmp, src, expected, size, nodes)
    finally:
        for n in nodes:
            await n.close()


async def _s3(tmp: Path, src: Path, expected: str, size: int, nodes: list[Node]) -> None:
    """The same file through the S3 API (docs/gateway.md): an access key made on A, a presigned PUT
    through B's S3 listener, a presigned GET through C's, then C's read-only HTTP gateway, each checked
    by BLAKE3 against the input. Presigned URLs, so that the demo needs no S3 client; boto3, the aws CLI,
    rclone and restic are what the tests point at these listeners."""
    import aiohttp

    from p2pfast.front.gateway import Gateway
    from p2pfast.front.s3 import keys, sigv4
    from p2pfast.front.s3.server import S3Server

    a, b, c = nodes
    servers: list[S3Server | Gateway] = []
    try:
        s3b, s3c, gwc = S3Server(b), S3Server(c), Gateway(c)
        for server in (s3b, s3c, gwc):
            await server.start("127.0.0.1:0")
            servers.append(server)
        print(
            f"    S3 API on B http://{s3b.addr} and C http://{s3c.addr}; HTTP gateway on C http://{gwc.addr}"
        )
        key = await _step("S3 access key made on A", None, keys.create(a))
        akid, secret = str(key["access_key_id"]), str(key["secret_access_key"])
        print(f"    access key {akid} (a file of the network: B and C check signatures with it)")

        def url(server: S3Server, method: str, path: str) -> str:
            now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            query = sigv4.presign(method, server.addr, path, akid, secret, now)
            return f"http://{server.addr}{path}?{query}"

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as http:

            async def call(method: str, link: str, **kw: object) -> None:
                async with http.request(method, link, **kw) as r:  # type: ignore[arg-type]
                    if r.status != 200:
                        raise PeerUnavailable(f"demo: {method} answered {r.status}: {(await r.text())[:300]}")

            await call("PUT", url(s3b, "PUT", "/demo"))

            async def put() -> None:
                with open(src, "rb") as f:
                    await call("PUT", url(s3b, "PUT", "/demo/file.bin"), data=f)

            await _step("S3 PUT on B (presigned URL)", size, put())

            async def fetch(link: str) -> str:
                h = blake3.blake3()
                async with http.get(link) as r:
                    if r.status != 200:
                        raise PeerUnavailable(f"demo: GET answered {r.status}: {(await r.text())[:300]}")
                    async for block in r.content.iter_chunked(CHUNK):
                        h.update(block)
                return h.hexdigest()

            for name, link in (
                ("S3 GET on C (presigned URL)", url(s3c, "GET", "/demo/file.bin")),
                ("HTTP gateway GET on C (/b/demo/file.bin)", f"http://{gwc.addr}/b/demo/file.bin"),
            ):
                if await _step(name, size, fetch(link)) != expected:
                    raise IntegrityError(f"demo: {name} read back different bytes")
            print("    read back identical bytes through S3 and the gateway (verified)")
    finally:
        for server in servers:
            await server.close()


def run_demo(size: int, keep: bool = False) -> int:
    selftest.run()
    kernels = "Cython kernels" if _accel.ACCELERATED else "pure-Python kernels"
    tmp = Path(tempfile.mkdtemp(prefix="p2pfast-demo-"))
    what = f"{human(size)} ({size:,} bytes), 3 nodes on loopback"
    print(f"p2pfast {__version__} demo ({kernels}), {what}, in {tmp}")
    try:
        runtime.run(_demo(tmp, size))
        print("demo ok")
        return 0
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["run_demo"]
