"""Starting the event loop, once: uvloop when it is installed (asyncio otherwise, or when
P2PFAST_LOOP=asyncio, which the tests use to run the network on both loops), with SIGTERM/SIGINT asking
for a graceful stop and a second signal exiting at once. An exception that reaches the loop's handler is
a bug: it is logged as one `event=loop_exception` line, which the tests look for."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("p2pfast.runtime")
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if os.environ.get("P2PFAST_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            log.warning("event=no_uvloop action=using_asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_exception_handler(_on_loop_exception)
        return runner.run(main)


def _on_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.error(
        "event=loop_exception message=%r error=%r",
        context.get("message"),
        exc,
        exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
    )


def install_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    seen = {"n": 0}

    def on_signal(signum: int) -> None:
        seen["n"] += 1
        if seen["n"] > 1:
            log.warning("event=second_signal action=exit_now")
            os._exit(128 + signum)
        log.info("event=signal name=%s action=graceful_stop", signal.Signals(signum).name)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
