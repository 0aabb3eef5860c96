"""`p2pfast demo`: the main job end to end in a temporary data dir, each step timed.

init a node, store a generated file, list it, read it back and verify it byte for byte (by BLAKE3 of
both files), delete it and check that nothing is left. The temporary directory is removed at the end,
also on Ctrl-C, unless --keep.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import blake3

from p2pfast import __version__, _accel, selftest
from p2pfast.datadir import Layout, LocalNode, init
from p2pfast.errors import IntegrityError
from p2pfast.store.durable import DurableFile
from p2pfast.store.objects import show_key

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


def _step(name: str, size: int | None, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    rate = f"  {size / dt / 1e6:9.1f} MB/s" if size and dt > 0 else ""
    print(f"  {name:<28} {dt * 1000:9.1f} ms{rate}", flush=True)
    return result


def run_demo(size: int, keep: bool = False) -> int:
    selftest.run()
    kernels = "Cython kernels" if _accel.ACCELERATED else "pure-Python kernels"
    tmp = Path(tempfile.mkdtemp(prefix="p2pfast-demo-"))
    print(f"p2pfast {__version__} demo ({kernels}), {size:,} bytes, in {tmp}")
    try:
        layout = Layout.of(tmp / "node")
        src = tmp / "input.bin"
        dst = tmp / "output.bin"
        expected = _step("generate input file", size, lambda: _generate(src, size))
        _step("init node", None, lambda: init(layout))
        with LocalNode(layout) as node:
            res = _step("store (hash+encrypt+fsync)", size, lambda: node.store.put_path("demo/file.bin", src))
            print(f"    stored {show_key(res.key)} as {res.cid}")
            rows = _step("list files", None, node.repo.list_files)
            for r in rows:
                print(f"    {show_key(r.key)}  {r.size:,} bytes  {r.cid[:15]}…")

            def get() -> None:
                with DurableFile(tmp) as f:
                    node.store.read("demo/file.bin", f.fd)
                    f.commit(dst)

            _step("get (decrypt+verify)", size, get)
            got = _step("compare with input", size, lambda: _hash_file(dst))
            if got != expected:
                raise IntegrityError(f"demo read back different bytes: {got} != {expected}")
            print("    read back identical bytes (verified)")
            _step("delete", None, lambda: node.store.delete("demo/file.bin"))
            left = [p for p in layout.objects.rglob("*") if p.is_file()]
            if node.repo.list_files() or left:
                raise IntegrityError(f"delete left {len(left)} object files behind")
            print("    gone: no files listed, no object files on disk")
        print("demo ok")
        return 0
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["run_demo"]
