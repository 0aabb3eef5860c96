"""The routing table: every request and notice a peer may send has exactly one handler, and a request
of a kind the table lacks is refused with REFUSED (not dropped, not a crash), over a real session."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import pytest
from inproc import cluster, run

from p2pfast import wire
from p2pfast.net.session import RequestFailed, Session
from p2pfast.node.router import Router
from p2pfast.proto import messages as m


def test_every_request_and_notice_kind_is_routed(tmp_path: Path) -> None:
    async def main() -> set[type[typing.Any]]:
        async with cluster(tmp_path, 1) as (a,):
            assert a.router is not None
            return a.router.kinds()

    served = run(main())
    assert served == {*typing.get_args(m.Request), *typing.get_args(m.Notice)}


def test_a_kind_with_no_route_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 2) as (a, b):
            assert b.router is not None
            b.router._routes.pop(m.Ping)  # b serves no ping now, as an older node would not
            session = a.peers.sessions[b.node_id]
            with pytest.raises(RequestFailed, match="'ping' is not served") as info:
                await session.request(m.Ping(), timeout=10)
            assert info.value.code == wire.ErrorCode.REFUSED
            assert isinstance(await session.request(m.WhoHas(cid="b3:" + "0" * 64)), m.Have)  # still up

    run(main())


def test_a_class_is_routed_once() -> None:
    async def pong(session: Session, msg: m.Ping) -> m.Pong:
        return m.Pong()

    router = Router()
    router.route(m.Ping, pong)
    with pytest.raises(AssertionError, match="routed twice"):
        router.route(m.Ping, pong)
    assert asyncio.iscoroutinefunction(router.__call__)
