"""Starting the event loop, once: uvloop when it is installed (asyncio otherwise), with SIGTERM/SIGINT
asking for a graceful stop and a second signal exiting at once."""

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
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


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
