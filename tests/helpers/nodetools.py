"""Helpers for store and CLI tests: data-dir layout checks, bounded waits, CLI subprocesses.

Real files and real processes only. Every wait has a deadline; every process a test starts is killed by
its PID in a `finally` (see `killing`).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import blake3

T = TypeVar("T")

PROJECT = str(Path(__file__).resolve().parents[2])

# Every file a data dir may hold, relative to its root.
OBJECT_RE = re.compile(r"objects/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}")
TOP_FILE_RE = re.compile(
    r"master\.key|node\.key|network\.key|node\.json|p2p\.db|p2p\.db-wal|p2p\.db-shm|p2p\.db-journal|lock|dirty"
    r"|config|scrub\.json|network\.key\.old"
)
TMP_FILE_RE = re.compile(r"objects/tmp/[^/]+\.p2ptmp")
DIR_RE = re.compile(r"objects|objects/tmp|objects/[0-9a-f]{2}|objects/[0-9a-f]{2}/[0-9a-f]{2}")

# Log lines that may precede an error on stderr: the kernel chooser's one WARNING per missing compiled
# kernel (only while the Cython build is absent). They are log records, not the error message.
_LOG_LINE_RE = re.compile(r"event=accel_fallback ")


def walk_data_dir(root: Path) -> tuple[list[str], list[str]]:
    """(files, dirs) under `root`, as sorted POSIX paths relative to it."""
    files: list[str] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            dirs.append((rel / d).as_posix())
        for f in filenames:
            files.append((rel / f).as_posix())
    return sorted(files), sorted(dirs)


def assert_layout(root: Path, allow_tmp: bool = False) -> list[str]:
    """Every entry under the data dir matches the documented layout; returns the object files."""
    files, dirs = walk_data_dir(root)
    for d in dirs:
        assert DIR_RE.fullmatch(d), f"unexpected directory in data dir: {d!r}"
    objects = []
    for f in files:
        if OBJECT_RE.fullmatch(f):
            objects.append(f)
        elif TOP_FILE_RE.fullmatch(f) or (allow_tmp and TMP_FILE_RE.fullmatch(f)):
            continue
        else:
            raise AssertionError(f"unexpected file in data dir: {f!r}")
    for f in objects:
        parts = f.split("/")
        assert parts[3].startswith(parts[1] + parts[2]), f"object {f} is not in its shard directory"
    return objects


def object_files(root: Path) -> list[str]:
    return [f for f in walk_data_dir(root)[0] if OBJECT_RE.fullmatch(f)]


def temp_files(root: Path) -> list[str]:
    tmp = root / "objects" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # poll interval, bounded by the deadline above


def file_hash(path: Path, chunk: int = 4 << 20) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pattern(n: int, seed: int = 0) -> bytes:
    """n incompressible, reproducible bytes (BLAKE3 XOF)."""
    return blake3.blake3(seed.to_bytes(8, "big")).digest(length=n) if n else b""


# -- subprocesses ------------------------------------------------------------------------------------------
def cli_env(**extra: str) -> dict[str, str]:
    # The package under test is the installed one (or whatever PYTHONPATH the developer set): never the
    # checkout by accident, hence no PYTHONPATH here and `-P` (no cwd on sys.path) in every argv.
    env = dict(os.environ)
    env.pop("P2PFAST_DATA_DIR", None)
    env.update(extra)
    return env


def cli_argv(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-P", "-m", "p2pfast", *map(os.fspath, args)]


def run_cli(
    *args: str | os.PathLike[str],
    input: bytes | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to completion (bounded by `timeout`); stdout/stderr captured as bytes."""
    return subprocess.run(
        cli_argv(*args), input=input, capture_output=True, timeout=timeout, env=env or cli_env(), check=False
    )


def start_cli(*args: str | os.PathLike[str], stdin: int | None = None) -> subprocess.Popen[bytes]:
    """Start the CLI in the background (wrap it in `killing`); stdout/stderr piped, stdin as given
    (subprocess.PIPE for a test that feeds it, unbuffered: see `feed`)."""
    return subprocess.Popen(
        cli_argv(*args), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), bufsize=0
    )


def feed(proc: subprocess.Popen[bytes], data: bytes, timeout: float) -> bool:
    """Write `data` to `proc`'s stdin pipe within `timeout` seconds; False when its reader went away.
    Non-blocking writes behind select: a blocking write to a reader that stalled would wait forever."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(view)} of {len(data)} bytes unread by the CLI after {timeout} s")
        if not select.select([], [fd], [], left)[1]:
            continue
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
        except BrokenPipeError:
            return False
    return True


def error_lines(stderr: bytes) -> list[str]:
    """The stderr lines that are not kernel-fallback log records."""
    return [ln for ln in stderr.decode("utf-8", "replace").splitlines() if not _LOG_LINE_RE.search(ln)]


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """Assert stderr carries exactly one error line (no traceback) and return it."""
    lines = error_lines(result.stderr)
    assert len(lines) == 1, f"expected one error line on stderr, got {lines!r}"
    assert "Traceback" not in result.stderr.decode("utf-8", "replace")
    assert lines[0].startswith("p2pfast: "), lines[0]
    return lines[0]


@contextlib.contextmanager
def killing(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """Kill `proc` by its PID (if still running) and reap it when the block ends."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def sigkill(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=timeout)


def python_script(
    code: str, args: Sequence[str] = (), env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-P", "-c", code, *args], env=env or cli_env(), **kw)
