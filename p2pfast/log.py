"""Logging: one line per event, key=value, to stderr. When stderr is the journal (JOURNAL_STREAM names
its device and inode, systemd.exec(5)), lines carry sd-daemon priority prefixes and no timestamp, since
the journal adds its own. A record never spans lines: journald would make each line an entry of its own,
the later ones without their priority, so newlines (a traceback, a peer's text) are escaped."""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # RFC 3339 in UTC, one token: a space inside the value would split the key=value line
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{_one_line(super().format(record))}"


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
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("level=%(levelname)s logger=%(name)s %(message)s"))
    else:
        handler.setFormatter(_Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger("p2pfast")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
