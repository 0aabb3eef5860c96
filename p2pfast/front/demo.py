"""`p2pfast demo`: the main job end to end, each step timed: a network of three nodes (A, B, C) on
loopback ports in a temporary directory, in this process. A stores a generated file with `replicas = 1`,
so exactly one of B and C gets a copy; the other gets the file back over the network (verified segment
by segment, then compared by BLAKE3 with the input); the holder deletes it and the delete reaches every
node. The temporary directory is removed at the end, also on Ctrl-C, unless --keep.
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
    finally:
        for n in nodes:
            await n.close()


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
