"""Output for people and scripts: progress bars, tables, JSON, the one error line, times, durations and
sizes, and the lines of the scrub and repair reports. Heavy modules (tqdm, the store's key display, the
JSON encoder) are imported inside the functions that use them, as in cli.py."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from p2pfast.units import iec as human

PROGRESS_MIN_BYTES = 64 << 20  # below this a bar would only flicker


class _Bars:
    """A command's progress events (commands.py) drawn on stderr: one bar per phase, for an object of at
    least PROGRESS_MIN_BYTES, in the binary units of every other figure (tqdm's own scaling would print
    1024-based numbers as "MB"), with percentage and ETA once the total is known."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase: object = None
        self.shown = 0
        self.big: bool | None = None

    def __call__(self, p: dict[str, Any]) -> None:
        done, total, peers = p.get("done"), p.get("total"), p.get("peers")
        if type(done) is not int or (total is not None and type(total) is not int):
            return
        peers = peers if type(peers) is int and peers > 0 else 1
        if p.get("phase") != self.phase:
            self.close()
            self.phase, self.shown = p.get("phase"), 0
            self.big = None if total is None else total // peers >= PROGRESS_MIN_BYTES
        if self.bar is None:
            if not (self.big or (self.big is None and done >= PROGRESS_MIN_BYTES)):
                return
            self.bar = _bar(str(self.phase) + (f" to {peers} peers" if peers > 1 else ""), total)
        if done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _bar(desc: str, total: int | None) -> Any:
    from tqdm import tqdm

    class IECBar(tqdm):  # type: ignore[misc]
        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            rate = d["rate"] or (d["n"] / d["elapsed"] if d["elapsed"] else None)
            d["n_iec"] = human(d["n"])
            d["total_iec"] = human(d["total"]) if d["total"] is not None else "?"
            d["rate_iec"] = f"{human(rate)}/s" if rate else "?/s"
            return d

    if total is None:
        fmt = "{desc}: {n_iec} [{elapsed}, {rate_iec}]"
    else:
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_iec}/{total_iec} [{elapsed}<{remaining}, {rate_iec}]"
    try:  # a terminal that reports no width (0 columns, as a fresh pty does) gets 80, not an empty bar
        ncols = None if os.get_terminal_size(sys.stderr.fileno()).columns else 80
    except OSError:
        ncols = 80
    return IECBar(total=total, desc=desc, file=sys.stderr, bar_format=fmt, mininterval=0.2, ncols=ncols)


def _fail(args: argparse.Namespace, code: str, exit_code: int, message: str) -> int:
    """An error's one line on stderr: with --json, one JSON object (docs/cli.md), else text."""
    if getattr(args, "json", False):
        from p2pfast.front import jsontext

        line = jsontext.line({"code": code, "exit": exit_code, "message": message})
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    else:
        print(f"p2pfast: {message}", file=sys.stderr)
    return exit_code


def _print_json(obj: Any) -> None:
    from p2pfast.front import jsontext

    sys.stdout.buffer.write(jsontext.pretty(obj) + b"\n")
    sys.stdout.flush()


def _when(t: str) -> str:
    """An RFC 3339 time of a listing (units.rfc3339) in local time, for the table."""
    import datetime

    return datetime.datetime.fromisoformat(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _shown(key: str) -> str:
    """store.userkey.show_key, imported when a result is shown (the CLI imports p2pfast.store lazily)."""
    from p2pfast.store.userkey import show_key

    return show_key(key)


def _scrub_lines(s: dict[str, Any]) -> list[str]:
    """The scrub's state for people (`scrub`, `status`)."""
    if s["last_pass_started_at"] is None:
        last = "no pass yet"
    else:
        ended = "-" if s["last_pass_ended_at"] is None else _when(s["last_pass_ended_at"])
        last = (
            f"{_when(s['last_pass_started_at'])} to {ended}: {s['checked']} object"
            f"{'s' if s['checked'] != 1 else ''} "
            f"({human(s['bytes_checked'])}) checked, {s['bad']} bad, {s['repaired']} repaired"
        )
    lines = [f"last pass: {last}" + ("  (a pass is running)" if s["running"] else "")]
    lines.append(f"unrepaired: {s['unrepaired']}")
    lines += [f"  {cid}" for cid in s["unrepaired_cids"]]
    lines.append(f"next pass due: {'-' if s['next_due_at'] is None else _when(s['next_due_at'])}")
    return lines


def _print_table(table: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = (
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())


def _print_status(s: dict[str, Any]) -> None:
    """`status` for people: the node, its peers, storage, scrub and repair, and any quarantine."""
    state = "draining" if s.get("draining") else "running" if s["running"] else "not running"
    uptime = "-" if s["uptime_s"] is None else _duration(s["uptime_s"])
    print("==== NODE ====")
    _print_table(
        [
            ("ID", "LISTEN", "STATE", "PID", "UPTIME", "DATA DIR"),
            (s["node_id"][:16], s["listen"] or "-", state, str(s["pid"] or "-"), uptime, s["data_dir"]),
        ]
    )
    print("==== PEERS ====")
    _print_table(
        [
            ("CONNECTED", "KNOWN", "IN FLIGHT"),
            (str(s["peers_connected"]), str(s["peers_known"]), str(s["in_flight"])),
        ]
    )
    print("==== STORAGE ====")
    under = f"{s['under_replicated']} (target {s['replica_target']})"
    _print_table(
        [
            ("FILES", "OBJECTS", "STORED", "FREE", "UNDER-REPLICATED", "WAL"),
            (
                str(s["files"]),
                str(s["objects"]),
                human(s["bytes_stored"]),
                human(s["bytes_free"]),
                under,
                human(s["wal_bytes"]),
            ),
        ]
    )
    print("==== SCRUB ====")
    for line in _scrub_lines(s["scrub"]):
        print(line)
    if s.get("repair") is not None:
        print("==== REPAIR ====")
        for line in _repair_lines(s["repair"]):
            print(line)
    if s["quarantined"]:
        print(
            f"quarantine: {s['quarantined']} object file{'s' if s['quarantined'] != 1 else ''} "
            f"({human(s['quarantined_bytes'])}) no repo row accounts for, kept in {s['quarantine_dir']}: "
            "move them back under objects/ once the right p2p.db is restored, or delete them yourself"
        )


def _repair_lines(r: dict[str, Any]) -> list[str]:
    """The repair service for people (`status`): the last pass, and the files still short of copies."""
    last = r["last_pass"]
    if last is None:
        return [f"last pass: none yet (every {_duration(r['interval_s'])}; after a member joins or goes)"]
    lines = [
        f"last pass: {_when_unix(last['started_at'])} ({last['reason']}): {last['files']} files checked, "
        f"{last['copies']} copies made ({human(last['bytes'])}), {last['failed']} failed"
        + (f", {last['dropped']} surplus dropped" if last.get("dropped") else "")
        + ("  (a pass is running)" if r["running"] else "")
    ]
    for f in last["still_under"]:
        lines.append(f"  short: {_shown(f['key'])}  {f['copies']}/{f['target']} copies")
    more = last["still_under_count"] - len(last["still_under"])
    if more > 0:
        lines.append(f"  … and {more} more")
    return lines


def _when_unix(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
