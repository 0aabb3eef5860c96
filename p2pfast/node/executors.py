"""The node's worker threads, named by the work they may do. The event loop never blocks on a file,
on SQLite or on a large hash.

* `db`: one thread, the repo's owner. Everything that runs SQL, and the store's operations, which mix
  SQL with file I/O and AEAD (sealing an upload, reading an object back) and rely on running in the
  order they were queued: an upload's abort is queued behind its last write, a client's fd is closed
  behind the last job that uses it.
* `cpu`: a small pool for pure work on buffers the caller holds and keeps alive until the job is done:
  no fd, no SQL, no order (a get's segment checks). BLAKE3 and AES-GCM release the GIL, so these run
  beside the DB thread on another core.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Enough to keep a second and third core busy with checks; more only queue behind the GIL-held parts.
CPU_THREADS = max(1, min(4, (os.cpu_count() or 1) - 1))


class Executors:
    def __init__(self) -> None:
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pfast-db")
        self._cpu = ThreadPoolExecutor(max_workers=CPU_THREADS, thread_name_prefix="p2pfast-cpu")

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the DB thread, after every job queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def db_later(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue fn on the DB thread without waiting: it runs after every job queued before it."""
        self._db.submit(fn, *args)

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a pure function of its arguments on the CPU pool."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    def shutdown(self) -> None:
        """Wait for every queued job, then stop the threads."""
        self._cpu.shutdown(wait=True)
        self._db.shutdown(wait=True)
