"""Running a test coroutine on each event loop the node may use: uvloop, asyncio's own, and asyncio in
debug mode (uvloop's Test_UV_*/Test_AIO_* split). A test fails if anything reached the loop's exception
handler, since that is where a task's lost exception or a misused transport would show."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

LOOPS = ["uvloop", "asyncio", "asyncio-debug"]


def run_on(loop_kind: str, main: Callable[[], Awaitable[None]]) -> None:
    errors: list[dict[str, Any]] = []
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory, debug=loop_kind == "asyncio-debug") as runner:
        runner.get_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        runner.run(asyncio.wait_for(main(), 60))
    assert not errors, errors
