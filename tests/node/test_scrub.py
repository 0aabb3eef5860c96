"""The scrub's arithmetic and its state file, without a network: the throttle's pace, how long a pass
takes at a bandwidth, when the next pass is due (fresh, after a pass, with one unfinished), and what an
unreadable state file means. tests/cli/test_scrub.py runs the scrub itself with real nodes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from p2pfast import config
from p2pfast.datadir import Layout, init
from p2pfast.node import scrub
from p2pfast.node.flow import Throttle
from p2pfast.node.scrub import PassCounts, ScrubState

MiB = 1 << 20
DAY = 86400.0


def test_the_defaults_are_configs() -> None:
    cfg = config.Config()
    assert (cfg.scrub_bandwidth, cfg.scrub_period) == (scrub.SCRUB_BANDWIDTH, scrub.SCRUB_PERIOD)
    assert (cfg.scrub_bandwidth, cfg.scrub_period) == (32 * MiB, 30 * DAY)


def test_a_pass_takes_its_bytes_over_the_bandwidth() -> None:
    # docs/operations.md's figures: 1 TiB at the default 32 MiB/s is 32768 s (9.1 h)
    assert scrub.pass_seconds(1 << 40, 32 * MiB) == 32768.0
    assert scrub.pass_seconds(0, 32 * MiB) == 0.0
    assert scrub.pass_seconds(1 << 40, None) == 0.0  # unthrottled
    # the largest store whose pass still fits in the default period at the default bandwidth: ~79 TiB
    assert math.floor(scrub.SCRUB_PERIOD * scrub.SCRUB_BANDWIDTH / (1 << 40)) == 79


def test_reads_done_at_once_wait_for_the_bandwidth() -> None:
    """1 GiB read in 4 MiB ranges with no time passing between them: the waits add up to 32 s at 32
    MiB/s, each range waiting one range's time more than the one before."""
    t = Throttle(32 * MiB)
    waits = [t.take(4 * MiB, now=100.0) for _ in range(256)]
    assert waits[0] == pytest.approx(0.125) and waits[-1] == pytest.approx(32.0)
    assert all(b - a == pytest.approx(0.125) for a, b in itertools.pairwise(waits))


def test_a_reader_that_waits_as_told_keeps_the_rate() -> None:
    t = Throttle(10 * MiB)
    now, done = 0.0, 0
    for _ in range(50):
        now += t.take(MiB, now)  # the read itself taken as instant: all the time is the throttle's
        done += MiB
    assert done / now == pytest.approx(10 * MiB)


def test_slow_reads_are_not_held_back_and_idle_time_is_not_saved_up() -> None:
    t = Throttle(MiB)
    assert t.take(MiB // 2, now=0.0) == pytest.approx(0.5)
    assert t.take(MiB // 2, now=10.0) == pytest.approx(0.5)  # 9.5 s idle: no burst allowed for them
    assert t.take(MiB // 2, now=10.5) == pytest.approx(0.5)
    assert Throttle(None).take(1 << 40, now=0.0) == 0.0


def test_the_next_pass_is_due_a_period_after_the_last_start() -> None:
    fresh = ScrubState(created=1000.0, next_due=0.0)
    assert fresh.due(30 * DAY) == 1000.0 + 30 * DAY  # a new data dir's objects were just verified
    done = ScrubState(created=1000.0, next_due=0.0, last=PassCounts(started=5000.0, ended=9000.0))
    assert done.due(30 * DAY) == 5000.0 + 30 * DAY  # from its start: one pass per period, not per gap
    assert done.due(7 * DAY) == 5000.0 + 7 * DAY  # a changed period applies at once
    unfinished = ScrubState(
        created=1000.0, next_due=0.0, last=done.last, current=PassCounts(started=8e5, cursor="b3:" + "1" * 64)
    )
    assert unfinished.due(30 * DAY) == 8e5  # resumed at the next start: due already


def test_the_state_round_trips_through_its_file(tmp_path: Path) -> None:
    layout = Layout.of(tmp_path / "d")
    init(layout)
    fresh = scrub.load_state(layout, 30 * DAY, now=1e9)
    assert fresh == ScrubState(created=1e9, next_due=1e9 + 30 * DAY)
    state = ScrubState(
        created=1.0,
        next_due=2.0,
        last=PassCounts(started=3.0, ended=4.0, checked=5, bytes=6, bad=2, repaired=1),
        current=PassCounts(started=7.0, checked=1, bytes=8, cursor="b3:" + "a" * 64),
        unrepaired=["b3:" + "b" * 64],
    )
    scrub.save_state(layout, state.to_json())
    assert (layout.root / "scrub.json").stat().st_mode & 0o777 == 0o600
    assert scrub.load_state(layout, 30 * DAY, now=1e9) == state
    assert list((layout.objects / "tmp").iterdir()) == []  # the temp file went where writes' go
    shown = scrub.report_of_file(layout)
    assert (shown["checked"], shown["bad"], shown["repaired"], shown["unrepaired"]) == (5, 2, 1, 1)
    assert shown["last_pass_started_at"] == "1970-01-01T00:00:03.000Z"
    assert shown["unrepaired_cids"] == ["b3:" + "b" * 64] and shown["running"] is False


def test_an_unreadable_state_makes_a_pass_due_now(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = Layout.of(tmp_path / "d")
    init(layout)
    (layout.root / "scrub.json").write_bytes(b'{"version": 1, "created": "x"')  # torn by hand
    state = scrub.load_state(layout, 30 * DAY, now=1e9)
    assert state.due(30 * DAY) == 1e9  # not a fresh month's wait: reading the objects is the safe side
    assert "event=scrub_state_unreadable" in caplog.text
    assert scrub.report_of_file(layout)["last_pass_started_at"] is None
