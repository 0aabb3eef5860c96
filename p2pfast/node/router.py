"""The one dispatch table of the messages peers send: message kind -> the service's handler. A kind
with no route is refused (REFUSED), so a newer peer's request gets a clear answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from p2pfast import wire
from p2pfast.errors import RemoteProtocolError
from p2pfast.net.session import Session

Handler = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any] | None]]


class Router:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self._routes = dict(routes)

    async def __call__(self, session: Session, msg: dict[str, Any]) -> dict[str, Any] | None:
        handler = self._routes.get(msg["t"])
        if handler is None:
            raise RemoteProtocolError(
                f"request {msg['t']!r} is not served by this node", code=wire.ErrorCode.REFUSED
            )
        return await handler(session, msg)
