"""What the CLI asks a node to do, in one place: the daemon's control socket (ctl/) and the short-lived
embedded node of a CLI command run with no daemon both call `execute()`, so both paths behave alike.

A request is a JSON object with "cmd"; file descriptors travel beside it (SCM_RIGHTS on the control
socket, plain ints in the embedded case) and stay owned by the caller: execute() never closes them.

    store   {"key", "size": int|null}   fds[0]: the source, read to EOF
            (store and get: "progress": true asks for progress lines)
    get     {"key", "keep": bool}       fds[0]: where the plaintext goes (a temp file or stdout);
                                        keep: store a local replica of a fetched file too
    delete  {"key"}
    status  {}                          the node's Node.status()
    files, shares, peers  {}            {"rows": [...]} as listings.py makes them
    repair  {}                          one repair pass now: its report (node/repair.py Report)
    network_files  {}                   every file of this node and its connected members, merged
                                        (node/listing.py's NetworkListing: files, member_count, unanswered)
    scrub   {"now": bool}               now: one scrub pass (progress phase `scrub`), its ScrubReport;
                                        else the scrub's state, status's `scrub` object
    revoke  {"node_id"}                 revoke a member, everywhere (node/revocation.py)
    rotate_key  {"window": float}       a new network key for the members (node/revocation.py)
    s3_key_create, s3_key_list  {}      an S3 access key made, or the network's key ids (front/s3/keys.py)
    s3_key_delete  {"access_key_id"}    an S3 access key deleted, on every member

Results are JSON objects too; progress goes to `progress({"phase", "done", "total", "peers"})` (docs/cli.md,
"Progress"): at each phase's start and end, and in between at most every PROGRESS_STEP bytes. A store has
two phases, `store` (the input read and sealed here) and `replicate` (bytes sent to its replicas, all
together); a get has one, `get`, whose total is sent as soon as the object's size is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from p2pfast.counters import COUNTERS
from p2pfast.errors import BadInput, IntegrityError, P2PError, PeerUnavailable
from p2pfast.front import listings
from p2pfast.front.clientio import FdSink, FdSource
from p2pfast.front.ctl.codec import ClientGone
from p2pfast.node import Node
from p2pfast.node.fetch import NoGoodCopy

Progress = Callable[[dict[str, Any]], None]

PROGRESS_STEP = 8 * 1024 * 1024


class _Meter:
    """Counts a phase's bytes (from the loop or a worker thread) and reports to `progress` on the loop
    thread; `begin` starts a phase (node.Progress).

    It is also how a cancelled request stops work already running on the DB thread (cancelling the
    coroutine does not stop a thread): once `gone` is set, the next count raises, and the store or read
    in that thread aborts and cleans up. A client that hits Ctrl-C in the middle of `store -` must not
    leave a truncated file stored as a success."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.phase = ""
        self.total: int | None = None
        self.peers = 1
        self.done = 0
        self.reported = 0
        self.gone = False
        self.lock = threading.Lock()
        self.loop = asyncio.get_running_loop()

    def begin(self, phase: str, total: int | None, peers: int = 1) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.phase, self.total, self.peers = phase, total, peers
            self.done = self.reported = 0
        self.loop.call_soon_threadsafe(self._report, phase, 0, total, peers)

    def __call__(self, n: int) -> None:
        if self.gone:
            raise ClientGone("the request was cancelled")
        if self.progress is None:
            return
        with self.lock:
            self.done += n
            if self.done - self.reported < PROGRESS_STEP and self.done != self.total:
                return
            self.reported = done = self.done
            phase, total, peers = self.phase, self.total, self.peers
        self.loop.call_soon_threadsafe(self._report, phase, done, total, peers)

    def _report(self, phase: str, done: int, total: int | None, peers: int) -> None:
        assert self.progress is not None
        # ClientGone: the client went away; the control socket cancels the request itself
        with contextlib.suppress(P2PError):
            self.progress({"phase": phase, "done": done, "total": total, "peers": peers})


def _fd(fds: list[int], what: str) -> int:
    if not fds:
        raise BadInput(f"{what} needs a file descriptor passed with the request")
    return fds[0]


def _key(request: dict[str, Any]) -> str:
    key = request.get("key")
    if type(key) is not str:
        raise BadInput("the request needs a string 'key'")
    return key


async def execute(
    node: Node, request: dict[str, Any], fds: list[int], progress: Progress | None
) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "status":
        return await node.status()
    if cmd in ("files", "shares"):
        return {"rows": await node.db(getattr(listings, str(cmd)), node.repo)}
    if cmd == "peers":
        return {"rows": await node.db(listings.peers, node.repo, set(node.peers.sessions))}
    if cmd == "repair":
        assert node.repair is not None
        with node.working("repair"):
            return dataclasses.asdict(await node.repair.pass_now("command"))
    if cmd == "network_files":
        with node.working("files --network"):
            return dataclasses.asdict(await node.network_files())
    if cmd == "scrub":
        return await _scrub(node, request, progress)
    if cmd in ("revoke", "rotate_key"):
        assert node.revocations is not None
        with node.working(str(cmd)):
            if cmd == "revoke":
                node_id = request.get("node_id")
                if type(node_id) is not str:
                    raise BadInput("the request needs a string 'node_id'")
                return await node.revocations.revoke(node_id)
            window = request.get("window")
            if type(window) not in (int, float):
                raise BadInput("the request needs a number 'window'")
            return await node.revocations.rotate(float(window))  # type: ignore[arg-type]
    if cmd in ("s3_key_create", "s3_key_list", "s3_key_delete"):
        from p2pfast.front.s3 import keys

        with node.working(str(cmd)):
            if cmd == "s3_key_create":
                return await keys.create(node)
            if cmd == "s3_key_list":
                return await keys.list_ids(node)
            akid = request.get("access_key_id")
            if type(akid) is not str:
                raise BadInput("the request needs a string 'access_key_id'")
            return await keys.delete(node, akid)
    if cmd not in ("store", "get", "delete"):
        raise BadInput(f"unknown command {str(cmd)[:40]!r}")
    with node.working(str(cmd)):
        return await _timed(node, str(cmd), request, fds, progress)


async def _scrub(node: Node, request: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
    """A pass is not work in flight as a whole: it marks each object it reads (scrub.py), so a drain
    waits for one object at most, and this command ends with the pass's 'shutting down' line."""
    if request.get("now") is not True:
        return dict((await node.status())["scrub"])
    meter = _Meter(progress if request.get("progress") is True else None)
    try:
        return dataclasses.asdict(await node.scrub_now(meter))
    except asyncio.CancelledError:
        meter.gone = True  # a read already on the DB thread stops at its next count
        raise


async def _timed(
    node: Node, cmd: str, request: dict[str, Any], fds: list[int], progress: Progress | None
) -> dict[str, Any]:
    started = time.monotonic()
    ok = False
    try:
        result = await _with_fd(node, cmd, request, fds, progress)
        ok = True
        return result
    except IntegrityError as exc:
        if not isinstance(exc, NoGoodCopy):  # (those bad copies were counted as they were found)
            COUNTERS.integrity_failures += 1  # our own object on disk failed its check
        raise
    except asyncio.CancelledError:
        if node.draining:  # the drain's deadline passed: say so, rather than "cancelled"
            raise PeerUnavailable(f"the node is shutting down: the {cmd} was aborted") from None
        raise
    finally:
        COUNTERS.transfer(cmd, ok)
        if ok and cmd in COUNTERS.latency:
            COUNTERS.latency[cmd].observe(time.monotonic() - started)


async def _with_fd(
    node: Node, cmd: str, request: dict[str, Any], fds: list[int], progress: Progress | None
) -> dict[str, Any]:
    size = request.get("size")
    # Progress lines only for a client that shows them (a bar, on a terminal): for most requests they
    # would be one more write and wake-up each way.
    wanted = progress if request.get("progress") is True else None
    meter = _Meter(wanted)
    if cmd == "store":
        meter.begin("store", size if type(size) is int else None)
    # The DB thread gets its own copy of the caller's fd: the caller (the control socket) closes its fds
    # when this coroutine ends, which on cancellation is before the thread has finished with them. The
    # copy is closed by a job queued on that same one-thread executor, so after every job that uses it.
    dup = os.dup(_fd(fds, str(cmd))) if cmd in ("store", "get") else -1
    try:
        return await _execute(node, str(cmd), request, dup, meter)
    except asyncio.CancelledError:
        meter.gone = True
        raise
    finally:
        if dup >= 0:
            node.db_later(os.close, dup)


async def _execute(node: Node, cmd: str, request: dict[str, Any], fd: int, meter: _Meter) -> dict[str, Any]:
    # the reports' fields are the results' keys (README, --json)
    if cmd == "store":
        return dataclasses.asdict(await node.put(_key(request), FdSource(fd), meter))
    if cmd == "get":
        return dataclasses.asdict(
            await node.get(_key(request), FdSink(fd), meter, keep=request.get("keep") is True)
        )
    return dataclasses.asdict(await node.delete(_key(request)))
