"""The one dispatch table of the messages peers send: message class -> the service's handler. A request
of a known class with no route is refused (REFUSED). A kind this version does not know at all never gets
here: proto/control.py refuses it as a protocol error, which ends the connection (so a message kind added
in a later version must not be sent to a member that does not announce it; issue 14's membership).

To serve a new message: its class in proto/messages.py (and its schema in proto/control.py), a handler
in the service it belongs to, and one `route` line where the composition root builds the table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from p2pfast import wire
from p2pfast.errors import RemoteProtocolError
from p2pfast.net.session import Session
from p2pfast.proto import messages as m

M = TypeVar("M", bound="m.Request | m.Notice")
Handler = Callable[[Session, Any], Awaitable[m.Reply | None]]


class Router:
    def __init__(self) -> None:
        self._routes: dict[type[Any], Handler] = {}

    def route(self, kind: type[M], handler: Callable[[Session, M], Awaitable[m.Reply | None]]) -> None:
        """Send every message of class `kind` to `handler` (one handler per class)."""
        assert kind not in self._routes, f"{kind.__name__} is routed twice"
        self._routes[kind] = cast(Handler, handler)

    def kinds(self) -> set[type[Any]]:
        return set(self._routes)

    async def __call__(self, session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        handler = self._routes.get(type(msg))
        if handler is None:
            raise RemoteProtocolError(
                f"request {m.KIND[type(msg)]!r} is not served by this node", code=wire.ErrorCode.REFUSED
            )
        return await handler(session, msg)
