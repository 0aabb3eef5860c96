"""Logging: one line per event, in logfmt, to stderr. When stderr is the journal (JOURNAL_STREAM names
its device and inode, systemd.exec(5)), lines carry sd-daemon priority prefixes and no timestamp, since
the journal adds its own. A record never spans lines: journald would make each line an entry of its own,
the later ones without their priority, so newlines (a traceback, a peer's text) are escaped.

Call sites write `log.info("event=stored key=%s reason=%r", key, why)`: every argument that is not a
number is a value, quoted here as logfmt wants it (`key="my file"`, `reason="say \\"no\\""`), whether
the format says %s or %r; so a key with a space or an error message with quotes cannot break the line
into pairs it never had (docs/cli.md, "Logs")."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_QUOTED = frozenset(' ="\\')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable():
        return c
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # a UTF-16 surrogate pair, as JSON and go-logfmt spell a character beyond the BMP
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def quote(value: str) -> str:
    """A logfmt value: bare when it is a plain token, else quoted with backslash escapes (an empty value
    is `""`)."""
    if value and value.isprintable() and _QUOTED.isdisjoint(value):
        return value
    return '"' + "".join(map(_escape, value)) + '"'


class _Value:
    """An argument of a log call, spelled as a logfmt value for both %s and %r."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return quote(str(self.value))

    def __repr__(self) -> str:
        return quote(self.value if isinstance(self.value, str) else repr(self.value))


def _arg(value: object) -> object:
    # numbers stay numbers, for %d and %.1f (and they are bare tokens anyway); bool is one, printed as is
    return value if isinstance(value, int | float) else _Value(value)


def _message(record: logging.LogRecord) -> str:
    args: Any = record.args
    if not args:
        text = str(record.msg)
    elif isinstance(args, tuple):
        text = str(record.msg) % tuple(map(_arg, args))
    else:  # a mapping, for %(name)s
        text = str(record.msg) % {k: _arg(v) for k, v in args.items()}
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += " exc=" + quote(record.exc_text)
    if record.stack_info:
        text += " stack=" + quote(record.stack_info)
    # a newline in the format string itself (never in a value: those are quoted above)
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # RFC 3339 in UTC, one token: a space inside the value would split the key=value line
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts = f"{stamp}.{int(record.msecs):03d}Z"
        return f"ts={ts} level={record.levelname} logger={quote(record.name)} {_message(record)}"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>level={record.levelname} logger={quote(record.name)} {_message(record)}"


def stderr_is_journal() -> bool:
    """JOURNAL_STREAM is inherited by children and outlives a redirect of stderr: it counts only when
    it names the device and inode stderr is now."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return bool(sep) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):  # no stderr at all, or a bad value
        return False


def setup(level: str = "warning") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter() if stderr_is_journal() else _Formatter())
    root = logging.getLogger("p2pfast")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
