"""Time dilation for the simulator: a scale model of a network bigger than the machine.

N simulated nodes share one process, one event loop and about one core, so each gets 1/N of a core
where a real member has a machine; past a few hundred nodes the harness measures its own CPU queue,
not the protocol (handshakes time out, sessions drop, and convergence is as slow as the core). Time
dilation, as DieCast does (D. Gupta et al., "DieCast: Testing Distributed Systems with an Accurate
Scale Model", NSDI 2008; after "To Infinity and Beyond: Time-Warped Network Emulation", NSDI 2006),
makes the process's clocks run `factor` times slower than real time: every timer, timeout, gossip
interval and timestamp the nodes see is in simulated seconds, so each simulated second gives the
process `factor` real seconds of CPU, as if the network ran on `factor` times the CPU. The figures are
then in simulated seconds; the report says the factor and how busy the CPU was, since the model holds
only while the CPU is not the bottleneck (a run whose figures stay the same at two factors is
protocol-bound, not CPU-bound).

What is dilated: `time.monotonic` (asyncio's loop clock reads it at every call) and `time.time` (the
nodes' timestamps, windows and deadlines), both continuous at the moment of `install`, and the event
loop's waits for I/O (`DilatedSelector`: a timer due in t simulated seconds is a wait of factor * t real
ones). What is not: the kernel's loopback latency (microseconds, now even smaller), and CPU time.
uvloop's timers run on libuv's own clock, which cannot be slowed: a dilated run uses asyncio's loop.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable
from typing import Any


class Clock:
    """`time.monotonic` and `time.time`, `factor` times slower from `install` on."""

    def __init__(self, factor: float) -> None:
        if factor < 1:
            raise ValueError(f"a dilation factor is at least 1, not {factor:g}")
        self.factor = factor
        self._real_monotonic = time.monotonic
        self._real_time = time.time
        self._installed = 0.0
        # the simulated clocks are anchor + (real - real anchor) / factor: both anchors move at every
        # change of factor, so the clocks stay continuous and monotonic across it
        self._m0 = self._t0 = self._sm0 = self._st0 = 0.0

    def install(self, anchor: tuple[float, float] | None = None) -> None:
        """From now on the clocks are dilated, equal to the real ones at `anchor` (a real
        `time.monotonic`, `time.time` pair; default: now). Processes given the same anchor share one
        simulated time (CLOCK_MONOTONIC is the machine's, not the process's): bench/simprocs.py."""
        self._installed = self._real_monotonic()
        m0, t0 = anchor if anchor is not None else (self._real_monotonic(), self._real_time())
        self._m0, self._t0, self._sm0, self._st0 = m0, t0, m0, t0
        time.monotonic = self.monotonic
        time.time = self.time

    def set_factor(self, factor: float, at: float | None = None) -> None:
        """From now on, run `factor` times slower (a network that needed much CPU to converge and little
        once idle can be watched idle at a smaller factor: less wall time for the same simulated one).
        `at`, a real monotonic instant, makes the change as if made then: processes sharing an anchor
        that change at the same `at` stay on one time."""
        if factor < 1:
            raise ValueError(f"a dilation factor is at least 1, not {factor:g}")
        at = self._real_monotonic() if at is None else at
        # both anchors move to `at`, so the clocks stay continuous there
        elapsed = (at - self._m0) / self.factor
        self._sm0, self._st0 = self._sm0 + elapsed, self._st0 + elapsed
        self._t0 += at - self._m0
        self._m0 = at
        self.factor = factor

    def simulated(self, real_monotonic: float) -> float:
        """The simulated monotonic time at a real monotonic instant (at the current factor)."""
        return self._sm0 + (real_monotonic - self._m0) / self.factor

    def uninstall(self) -> None:
        time.monotonic = self._real_monotonic
        time.time = self._real_time

    def monotonic(self) -> float:
        return self._sm0 + (self._real_monotonic() - self._m0) / self.factor

    def time(self) -> float:
        return self._st0 + (self._real_time() - self._t0) / self.factor

    def real_monotonic(self) -> float:
        """The real `time.monotonic`, which the installed clock replaces."""
        return self._real_monotonic()

    def real_seconds(self) -> float:
        """Real seconds since install: what the run costs in wall time."""
        return self._real_monotonic() - self._installed


class DilatedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop's selector, waiting `factor` times longer: the loop computes its wait for the next timer
    in dilated seconds, and the kernel waits in real ones."""

    clock: Clock | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0 and self.clock is not None:
            timeout *= self.clock.factor  # the factor of the moment: Clock.set_factor applies at once
        return super().select(timeout)  # type: ignore[no-any-return]


def loop_factory(clock: Clock) -> Callable[[], asyncio.AbstractEventLoop]:
    """An asyncio loop whose waits follow `clock`."""

    def make() -> asyncio.AbstractEventLoop:
        selector: Any = DilatedSelector()
        selector.clock = clock
        return asyncio.SelectorEventLoop(selector)

    return make
