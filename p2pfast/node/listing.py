"""`files --network`: every file the network knows, merged from the connected members' listings.

Each member is asked for its files page by page (`list_files`, a key cursor and a limit), all members at
once and each one's pages in turn; this node's own files come from its repo. A page is filled by size,
not only by count, so no reply exceeds the control message cap whatever the keys (a 1024-byte key of
control characters is 6 KiB of JSON escapes). A member that does not answer, fails or breaks the paging
rules is left out of the listing, with its reason, rather than failing it: its files are not counted,
and the report says so. docs/cli.md, "files --network --json", has the cost.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson

from p2pfast import wire
from p2pfast.errors import LocalProtocolError, P2PError, PeerUnavailable, RemoteProtocolError
from p2pfast.net.session import Session
from p2pfast.node.chunks import Run
from p2pfast.node.context import Context
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.repo.repo import FileRow, Repo
from p2pfast.store.userkey import encode_key

log = logging.getLogger("p2pfast.node")

# How long one page may take to come back from a member before that member is left out.
PAGE_TIMEOUT = 10.0
# Files asked for per page: the schema's most. The byte cap binds first (about 100-180 files of short
# keys fit in 16 KiB), so a larger count would not mean fewer requests.
PAGE_LIMIT = control.MAX_FILES_PAGE


@dataclass(frozen=True, slots=True)
class NetworkFile:
    key: str
    cid: str
    size: int
    holder_count: int  # members (this node included) whose files name this key with this cid


@dataclass(frozen=True, slots=True)
class NetworkListing:
    files: list[NetworkFile]  # by key bytes, then cid
    member_count: int  # members whose whole listing is in, this node included
    unanswered: dict[str, str]  # peer id -> why its files are not counted


# -- the member's side --------------------------------------------------------------------------------
def page(rows: list[FileRow], limit: int, max_size: int) -> m.FileList:
    """The reply to a `list_files` from `rows` (at most limit + 1 of them, in key order: one more than
    the page says whether the list goes on): as many as fit in a control message of `max_size` bytes."""
    room = max_size - len(orjson.dumps(m.to_wire(m.FileList((), True), re=control.MAX_ID)))
    files: list[m.FileEntry] = []
    for row in rows[:limit]:
        entry = m.FileEntry(row.key.decode("utf-8"), row.cid, row.size)
        room -= len(orjson.dumps({"key": entry.key, "cid": entry.cid, "size": entry.size})) + 1  # a comma
        if room < 0:
            break
        files.append(entry)
    if rows and not files:  # not even one fits: a cap set far below the 16 KiB default
        raise LocalProtocolError(
            f"a file's entry does not fit in a control message of {max_size} bytes", wire.ErrorCode.PROTOCOL
        )
    return m.FileList(tuple(files), more=len(files) < len(rows))


async def serve_list(msg: m.ListFiles, repo: Repo, run: Run, max_size: int) -> m.FileList:
    """A peer's `list_files`: the page of this node's files after `msg.after`."""
    after = None if msg.after is None else encode_key(msg.after)
    rows = await run(repo.list_files_after, after, msg.limit + 1)
    return page(rows, msg.limit, max_size)


# -- the asker's side ---------------------------------------------------------------------------------
async def member_files(session: Session) -> list[m.FileEntry]:
    """Every file of one member, page by page; PeerUnavailable (with the reason) if it fails or stalls,
    RemoteProtocolError if its pages break the rules (a key not after the cursor, an empty page that
    says more): either way the caller leaves the member out."""
    files: list[m.FileEntry] = []
    after: str | None = None
    while True:
        try:
            reply = await session.request(m.ListFiles(PAGE_LIMIT, after), timeout=PAGE_TIMEOUT)
        except TimeoutError:
            raise PeerUnavailable(f"no answer within {PAGE_TIMEOUT:g} s") from None
        last = None if after is None else after.encode()
        for entry in reply.files:
            raw = entry.key.encode()
            if last is not None and raw <= last:  # a cursor that does not move could loop for ever
                raise RemoteProtocolError(
                    f"its file list is out of key order at {entry.key[:40]!r}", wire.ErrorCode.PROTOCOL
                )
            last = raw
        files.extend(reply.files)
        if not reply.more:
            return files
        if not reply.files:
            raise RemoteProtocolError(
                "it sent an empty page of its file list that says more follow", wire.ErrorCode.PROTOCOL
            )
        after = reply.files[-1].key


async def network_files(ctx: Context) -> NetworkListing:
    """Every file this node and its connected members hold, one entry per key and content id (a key
    shows twice only while members disagree on its content, after a re-store), with how many hold it."""
    sessions = list(ctx.peers.sessions.values())

    async def ask(s: Session) -> list[m.FileEntry] | str:
        try:
            return await member_files(s)
        except (P2PError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            log.warning("event=list_member_skipped peer=%s error=%r", s.peer_id[:12], why)
            return why

    own = await ctx.ex.db(ctx.repo.list_files)
    answers = await asyncio.gather(*(ask(s) for s in sessions))
    merged: dict[tuple[bytes, str], tuple[str, int, int]] = {}  # (key bytes, cid) -> (key, size, holders)

    def count(key: str, raw: bytes, cid: str, size: int) -> None:
        _, _, holders = merged.get((raw, cid), (key, size, 0))
        merged[(raw, cid)] = (key, size, holders + 1)

    for row in own:
        count(row.key.decode("utf-8"), row.key, row.cid, row.size)
    unanswered: dict[str, str] = {}
    for s, answer in zip(sessions, answers, strict=True):
        if isinstance(answer, str):
            unanswered[s.peer_id] = answer
            continue
        for entry in answer:
            count(entry.key, entry.key.encode(), entry.cid, entry.size)
    files = [NetworkFile(key, cid, size, n) for (_, cid), (key, size, n) in sorted(merged.items())]
    return NetworkListing(files, 1 + len(sessions) - len(unanswered), unanswered)
