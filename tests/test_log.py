"""log.py: key=value lines on stderr, sd-daemon priority prefixes under journald.

Each case runs log.setup() in a fresh interpreter: the handlers and levels it sets are process-wide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

# argv[1]: the level for setup(); argv[2]: which records to log
SCRIPT = """
import logging, sys
from p2pfast import log
log.setup(sys.argv[1])
x = logging.getLogger("p2pfast.x")
what = sys.argv[2]
if what == "levels":
    x.debug("event=d n=1")
    x.info("event=i n=2")
    x.warning("event=w n=3")
    x.error("event=e n=4")
    x.critical("event=c n=5")
elif what == "fixed":
    # a record from a known instant: 1971-01-01T00:00:00.005Z
    r = x.makeRecord("p2pfast.x", logging.WARNING, "f.py", 1, "event=fixed", (), None)
    r.created, r.msecs = 31536000.005, 5.0
    x.handle(r)
elif what == "twice":
    log.setup(sys.argv[1])
    x.warning("event=once")
elif what == "newline":
    x.warning("event=peer_error text=%s", "first\\nsecond")
elif what == "exception":
    try:
        1 / 0
    except ZeroDivisionError:
        x.exception("event=crash")
elif what == "odd":
    # one value of each kind that needs quoting, by %s and by %r, beside numbers and a bare token
    for key, value in ODD.items():
        x.warning("event=odd name=%s as_s=%s as_r=%r n=%d f=%.1f", key, value, value, 7, 2.5)
"""

# name -> a value that a bare logfmt token cannot carry (and one that it can)
ODD = {
    "space": "my file.bin",
    "quotes": 'it said "no"',
    "equals": "a=b",
    "backslash": "C:\\dir\\x",
    "empty": "",
    "newline": "first\nsecond\r\n",
    "tab": "a\tb",
    "control": "bell\x07 del\x7f nul\x00",
    "unicode": "é ü ☃ 😀 \u2028",
    "plain": "token",
}

TS_LINE = re.compile(
    r"^ts=(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) level=(?P<level>[A-Z]+) logger=p2pfast\.x "
    r"(?P<message>event=\S+.*)$"
)
KEY_VALUE = re.compile(r"^[a-z_]+=[^\s=]\S*$")
ALL_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
PREFIX = {"DEBUG": "<7>", "INFO": "<6>", "WARNING": "<4>", "ERROR": "<3>", "CRITICAL": "<2>"}
MESSAGE = {"DEBUG": "event=d n=1", "INFO": "event=i n=2", "WARNING": "event=w n=3"}
MESSAGE |= {"ERROR": "event=e n=4", "CRITICAL": "event=c n=5"}


def run(tmp_path: Path, level: str, what: str, *, journal: bool | str) -> list[str]:
    """stderr lines of the script; stdout must stay empty."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    # a zone far from UTC: a local-time stamp would show
    env["TZ"] = "Asia/Kolkata"
    # stderr goes to a file standing in for the journal's stream: JOURNAL_STREAM names its device and inode
    # (a value naming anything else means stderr was redirected away from the journal)
    err_path = tmp_path / f"stderr-{level}-{what}-{journal}"
    with open(err_path, "w+") as err:
        st = os.fstat(err.fileno())
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}" if journal is True else journal
        out = subprocess.run(
            [sys.executable, "-P", "-c", f"ODD = {ODD!r}\n{SCRIPT}", level, what],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
        )
    stderr = err_path.read_text()
    assert out.returncode == 0, stderr
    assert out.stdout == ""
    assert stderr.endswith("\n"), stderr
    return stderr.splitlines()


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ALL_LEVELS),
        ("info", ALL_LEVELS[1:]),
        ("warning", ALL_LEVELS[2:]),
        ("WARNING", ALL_LEVELS[2:]),
        ("error", ALL_LEVELS[3:]),
    ],
)
def test_plain_lines(tmp_path: Path, level: str, shown: list[str]) -> None:
    before = time.time()
    lines = run(tmp_path, level, "levels", journal=False)
    after = time.time()
    assert len(lines) == len(shown), lines
    for line, expected in zip(lines, shown, strict=True):
        m = TS_LINE.match(line)
        assert m, line
        assert m["level"] == expected
        assert m["message"] == MESSAGE[expected]
        # every token before the message is key=value, no spaces inside a value
        head = line[: m.start("message")].split(" ")
        assert head[-1] == ""
        assert all(KEY_VALUE.match(token) for token in head[:-1]), line
        # the stamp is UTC, not local time (TZ above is UTC+05:30)
        stamp = datetime.strptime(m["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        assert before - 1 <= stamp <= after + 1, (m["ts"], before, after)


def test_plain_info_line_shape(tmp_path: Path) -> None:
    lines = run(tmp_path, "info", "levels", journal=False)
    assert re.match(
        r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=INFO logger=p2pfast\.x event=i n=2$", lines[0]
    ), lines


def test_plain_stamp_of_a_known_instant(tmp_path: Path) -> None:
    lines = run(tmp_path, "warning", "fixed", journal=False)
    assert lines == ["ts=1971-01-01T00:00:00.005Z level=WARNING logger=p2pfast.x event=fixed"]


@pytest.mark.parametrize(
    ("level", "shown"),
    [("debug", ALL_LEVELS), ("info", ALL_LEVELS[1:]), ("warning", ALL_LEVELS[2:])],
)
def test_journal_lines(tmp_path: Path, level: str, shown: list[str]) -> None:
    lines = run(tmp_path, level, "levels", journal=True)
    assert lines == [f"{PREFIX[lv]}level={lv} logger=p2pfast.x {MESSAGE[lv]}" for lv in shown]
    assert not any("ts=" in line for line in lines)


@pytest.mark.parametrize("journal", [False, True])
def test_setup_twice_does_not_duplicate(tmp_path: Path, journal: bool) -> None:
    lines = run(tmp_path, "warning", "twice", journal=journal)
    assert len(lines) == 1, lines
    assert lines[0].endswith("logger=p2pfast.x event=once")


def check_one_line(lines: list[str], journal: bool, level: str) -> None:
    assert len(lines) == 1, lines
    line = lines[0]
    if journal:
        assert line.startswith(f"{PREFIX[level]}level={level} logger=p2pfast.x event="), line
        assert "ts=" not in line
    else:
        m = TS_LINE.match(line)
        assert m and m["level"] == level, line


# A newline in a message or a traceback must not make one record several lines: journald makes each line
# a separate entry, the later ones with no <N> prefix.
@pytest.mark.parametrize("journal", [False, True])
def test_newline_in_message_stays_one_line(tmp_path: Path, journal: bool) -> None:
    lines = run(tmp_path, "info", "newline", journal=journal)
    check_one_line(lines, journal, "WARNING")
    assert "first" in lines[0] and "second" in lines[0]


@pytest.mark.parametrize("journal", [False, True])
def test_exception_stays_one_line(tmp_path: Path, journal: bool) -> None:
    lines = run(tmp_path, "info", "exception", journal=journal)
    check_one_line(lines, journal, "ERROR")
    assert "event=crash" in lines[0]
    assert "ZeroDivisionError" in lines[0]
    assert "Traceback (most recent call last)" in lines[0]  # the traceback itself, not only the name


@pytest.mark.parametrize("stale", ["8:1234", "garbage", "1:"])
def test_journal_stream_naming_another_file_means_plain_lines(tmp_path: Path, stale: str) -> None:
    # inherited from a parent whose stderr was the journal, but ours was redirected: not the journal
    lines = run(tmp_path, "info", "levels", journal=stale)
    assert lines and all(TS_LINE.match(line) for line in lines), lines


# -- logfmt, read by an independent parser ---------------------------------------------------------------
def parse(line: str) -> dict[str, str | bool]:
    """One line as go-logfmt reads it (logfmtkv in strict mode: a stray quote or a bad escape fails),
    every key once."""
    import logfmtkv

    pairs = logfmtkv.parse_pairs(line, strict=True)
    keys = [p.key for p in pairs]
    assert len(keys) == len(set(keys)), line
    return {p.key: p.value for p in pairs}


@pytest.mark.parametrize("journal", [False, True])
def test_odd_values_are_quoted_logfmt(tmp_path: Path, journal: bool) -> None:
    lines = run(tmp_path, "info", "odd", journal=journal)
    assert len(lines) == len(ODD), lines
    for line, (name, value) in zip(lines, ODD.items(), strict=True):
        pairs = parse(line.removeprefix("<4>") if journal else line)
        assert pairs["event"] == "odd" and pairs["name"] == name, line
        assert pairs["as_s"] == value and pairs["as_r"] == value, line  # exactly the value, both ways
        assert (pairs["n"], pairs["f"]) == ("7", "2.5")
        assert ('"' in line.split("as_s=")[1][:1]) == (name != "plain"), line  # quoted only when needed
        assert pairs["logger"] == "p2pfast.x" and pairs["level"] == "WARNING"


def test_a_traceback_is_one_quoted_value(tmp_path: Path) -> None:
    (line,) = run(tmp_path, "info", "exception", journal=False)
    pairs = parse(line)
    assert pairs["event"] == "crash"
    exc = pairs["exc"]
    assert isinstance(exc, str) and exc.startswith("Traceback (most recent call last):\n")
    assert exc.rstrip().endswith("ZeroDivisionError: division by zero")


def test_a_nodes_real_log_lines_are_logfmt(tmp_path: Path) -> None:
    """A daemon's own lines, from its real code paths, with a key holding a space, quotes, `=` and a
    backslash, and an error message that quotes it: every line parses, and the values are exact."""
    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    from netnodes import make_nodes, running
    from nodetools import run_cli

    (a,) = make_nodes(tmp_path, 1)
    key = 'my "odd" key = C:\\x'
    src = tmp_path / "src"
    src.write_bytes(b"x" * 5000)
    with running([a]):
        a.start("--log-level", "debug")
        assert run_cli("store", key, src, "--data-dir", a.root).returncode == 0
        missing = run_cli("get", 'it\'s "gone"', "-o", tmp_path / "o", "--data-dir", a.root)
        assert missing.returncode != 0
        assert a.stop() == 0
    lines = a.log_path.read_text().splitlines()
    # serve's one plain line for a person (daemon.py) is the only line that is not a log record
    assert sum(line.startswith("p2pfast: serving node ") for line in lines) == 1, lines
    lines = [line for line in lines if not line.startswith("p2pfast: serving node ")]
    parsed = [parse(line) for line in lines]
    assert all(p["ts"] and p["level"] and p["logger"] and p["event"] for p in parsed), lines
    events = {str(p["event"]): p for p in parsed}
    assert events["stored"]["key"] == key, lines
    assert events["ctl_request"]["cmd"] in ("store", "get", "status")
    message = missing.stderr.decode().strip().splitlines()[-1].removeprefix("p2pfast: ")
    assert events["ctl_error"]["error"] == message and '"gone"' in message, lines


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def log_formats() -> list[tuple[str, str]]:
    """(where, format string) of every logging call in the package's source."""
    import ast

    import p2pfast

    found = []
    for path in sorted(Path(p2pfast.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, args = node.func.attr, node.args
            if name == "log" and len(args) >= 2:
                args = args[1:]
            elif name not in LOG_METHODS or not args:
                continue
            target = node.func.value
            is_logger = (isinstance(target, ast.Name) and target.id == "log") or (
                isinstance(target, ast.Call) and getattr(target.func, "attr", "") == "getLogger"
            )
            if is_logger and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                found.append((f"{path.name}:{node.lineno}", args[0].value))
    return found


def test_every_log_call_is_key_value_pairs() -> None:
    """The literal part of each message is logfmt too: event= first, every token a pair, no literal
    quoting (a value with spaces goes in as an argument, which log.py quotes)."""
    formats = log_formats()
    assert len(formats) > 40, formats  # the walk found the package's calls
    for where, fmt in formats:
        assert fmt.startswith("event="), (where, fmt)
        assert "'" not in fmt and '"' not in fmt, (where, fmt)
        pairs = parse(re.sub(r"%[-#0-9.]*[sdrf]", "X", fmt))
        assert all(isinstance(v, str) and v for v in pairs.values()), (where, fmt)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_value_round_trips_through_an_independent_parser(value: str) -> None:
    """Whatever a value holds, go-logfmt's reading of `k=<quoted>` gives it back exactly, and nothing
    but printable text without spaces, quotes or `=` is left bare."""
    from p2pfast import log

    spelled = log.quote(value)
    assert parse(f"k={spelled} after=1") == {"k": value, "after": "1"}
    assert "\n" not in spelled and "\r" not in spelled
