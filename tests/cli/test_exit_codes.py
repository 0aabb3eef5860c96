"""Every row of README.md's exit-code table, each with a real command that gets it (real processes, real
sockets, real file systems: a tmpfs of 1 MiB and /dev/full for a full disk, a read-only tmpfs for a storage
error, a socket speaking garbage where a daemon should be), and user mistakes that must never exit 70.

An error is one line on stderr (argparse's usage errors excepted: they print the usage too); a closed
output (141) is quiet. The README table and this one must list the same codes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounts import tmpfs
from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import (
    PROJECT,
    cli_argv,
    cli_env,
    error_lines,
    killing,
    object_files,
    one_error_line,
    pattern,
    run_cli,
    temp_files,
)

from p2pfast.datadir import Layout, init

Run = subprocess.CompletedProcess[bytes]


def cli(root: Path, *args: str | bytes | os.PathLike[str], **kw: object) -> Run:
    return run_cli(*args, "--data-dir", root, **kw)  # type: ignore[arg-type]


def lone(tmp_path: Path, name: str = "node") -> Path:
    root = tmp_path / name
    init(Layout.of(root))
    return root


def a_file(tmp_path: Path, size: int = 10_000, name: str = "src") -> Path:
    p = tmp_path / name
    p.write_bytes(pattern(size, seed=size))
    return p


def full_mesh(nodes: list[NodeProc]) -> bool:
    ids = {n.node_id for n in nodes}
    return all(n.connected() >= ids - {n.node_id} for n in nodes)


@contextlib.contextmanager
def two_daemons(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = make_nodes(tmp_path, 2)
    with running([a, b]):
        a.start()
        b.start("--bootstrap", a.listen)
        wait_until(lambda: full_mesh([a, b]), 30, "two nodes to connect", [a, b])
        yield a, b


@contextlib.contextmanager
def garbage_daemon(root: Path) -> Iterator[None]:
    """Something that listens on DATA_DIR/ctl.sock where a daemon should, and answers garbage."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "ctl.sock"))
    sock.listen()
    sock.settimeout(30)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(30)
                conn.recv(1 << 16)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        sock.close()
        t.join(timeout=30)


# -- one real command per row ----------------------------------------------------------------------------
def code_0(tmp_path: Path) -> Run:
    root = lone(tmp_path)
    return cli(root, "store", "k", a_file(tmp_path))


def code_1(tmp_path: Path) -> Run:
    """Other error: serve cannot listen (its address is taken)."""
    root = lone(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        return cli(root, "serve", "--listen", f"127.0.0.1:{taken.getsockname()[1]}", timeout=30)


def code_2(tmp_path: Path) -> Run:
    return cli(lone(tmp_path), "store", "only-a-key")


def code_3(tmp_path: Path) -> Run:
    """Not found: a peer was asked, and nobody holds the key."""
    with two_daemons(tmp_path) as (a, _):
        return cli(a.root, "get", "nobody-has-this", "-o", tmp_path / "out")


def code_4(tmp_path: Path) -> Run:
    """Integrity failure: the only copy (local) fails its check."""
    root = lone(tmp_path)
    assert cli(root, "store", "k", a_file(tmp_path, 100_000)).returncode == 0
    (obj,) = object_files(root)
    with open(root / obj, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)[0]
        f.seek(4096)
        f.write(bytes([byte ^ 1]))
    return cli(root, "get", "k", "-o", tmp_path / "out")


def code_5(tmp_path: Path) -> Run:
    return cli(lone(tmp_path), "store", "k", tmp_path / "no-such-file")


def code_6(tmp_path: Path) -> Run:
    """Storage error: the output's file system is read-only."""
    root = lone(tmp_path)
    assert cli(root, "store", "k", a_file(tmp_path)).returncode == 0
    with tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=30)
        return cli(root, "get", "k", "-o", ro / "out")


def code_7(tmp_path: Path) -> Run:
    """Disk full: the data dir is on a 1 MiB tmpfs and the file is larger."""
    with tmpfs(tmp_path / "small", "1m") as small:
        root = lone(small)
        return cli(root, "store", "k", a_file(tmp_path, 2 << 20))


def code_7_dev_full(tmp_path: Path) -> Run:
    """Disk full: the output is /dev/full (a real device that is always full)."""
    root = lone(tmp_path)
    assert cli(root, "store", "k", a_file(tmp_path, 100_000)).returncode == 0
    with open("/dev/full", "wb") as full:
        return subprocess.run(
            cli_argv("get", "k", "--data-dir", root),
            stdout=full,
            stderr=subprocess.PIPE,
            env=cli_env(),
            timeout=60,
            check=False,
        )


def code_8(tmp_path: Path) -> Run:
    return cli(tmp_path / "never-initialised", "files")


def code_9(tmp_path: Path) -> Run:
    """Protocol error: what answers on the control socket does not speak its protocol."""
    root = lone(tmp_path)
    with garbage_daemon(root):
        return cli(root, "files")


def code_10(tmp_path: Path) -> Run:
    """Peer unavailable: not held here, and no peer connected to ask."""
    return cli(lone(tmp_path), "get", "k", "-o", tmp_path / "out")


def code_130(tmp_path: Path) -> Run:
    """Interrupted: Ctrl-C of a `store -` whose input is still coming (no daemon)."""
    root = lone(tmp_path)
    proc = subprocess.Popen(
        cli_argv("store", "k", "-", "--data-dir", root),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    with killing(proc):
        assert proc.stdin is not None
        proc.stdin.write(pattern(100_000))
        proc.stdin.flush()
        wait_until(lambda: bool(temp_files(root)) or proc.poll() is not None, 30, "the store to be in flight")
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert object_files(root) == [], "an interrupted store left an object"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def code_141(tmp_path: Path) -> Run:
    """The output's reader went away: `get k | head -c 10`."""
    root = lone(tmp_path)
    assert cli(root, "store", "k", a_file(tmp_path, 8 << 20)).returncode == 0
    proc = subprocess.Popen(
        cli_argv("get", "k", "--data-dir", root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(10)) == 10
        proc.stdout.close()
        err = proc.stderr.read()
        return subprocess.CompletedProcess(proc.args, proc.wait(timeout=60), b"", err)


ROWS: dict[str, tuple[int, Callable[[Path], Run], str]] = {
    # id: (exit code, the command, what its one line says)
    "0": (0, code_0, ""),
    "1": (1, code_1, "cannot listen on 127.0.0.1:"),
    "2": (2, code_2, "the following arguments are required"),
    "3": (3, code_3, "not found: no file under key nobody-has-this"),
    "4": (4, code_4, "integrity check failed:"),
    "5": (5, code_5, "bad input: cannot read"),
    "6": (6, code_6, "storage error:"),
    "7": (7, code_7, "disk full:"),
    "7-dev-full": (7, code_7_dev_full, "disk full: cannot write the output"),
    "8": (8, code_8, "config error:"),
    "9": (9, code_9, "remote protocol error: the daemon sent a line that is not JSON"),
    "10": (10, code_10, "peer unavailable: no file under key k here, and no peer is connected to ask"),
    "130": (130, code_130, "interrupted"),
    "141": (141, code_141, ""),
}


def readme_exit_codes() -> set[int]:
    text = (Path(PROJECT) / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.M)}


def test_the_table_covers_every_row_of_the_readme() -> None:
    # 70 (a bug) is the one row with no command: nothing a user can do should reach it
    assert readme_exit_codes() - {70} == {code for code, _, _ in ROWS.values()}


@pytest.mark.parametrize("row", list(ROWS))
def test_exit_code(tmp_path: Path, row: str) -> None:
    code, command, says = ROWS[row]
    r = command(tmp_path)
    assert r.returncode == code, f"exit {r.returncode}, expected {code}: {r.stderr.decode(errors='replace')}"
    if code == 0 or code == 141:
        assert error_lines(r.stderr) == []
    elif code == 2:  # argparse: the usage, then its error line
        assert says in error_lines(r.stderr)[-1]
    else:
        line = one_error_line(r)
        assert line.startswith(f"p2pfast: {says}"), line


# -- mistakes a user makes: a code from the table, never 70 ------------------------------------------
MISTAKES: dict[str, Callable[[Path], Run]] = {
    "store a directory": lambda t: cli(lone(t), "store", "k", t),
    "store an empty key": lambda t: cli(lone(t), "store", "", a_file(t)),
    "store a key over the limit": lambda t: cli(lone(t), "store", "k" * 2000, a_file(t)),
    "store a key that is not UTF-8": lambda t: cli(lone(t), "store", b"\xff", a_file(t)),
    "store /dev/null": lambda t: cli(lone(t), "store", "k", "/dev/null"),
    "get into a missing directory": lambda t: cli(lone(t), "get", "k", "-o", t / "missing" / "out"),
    "a missing config file": lambda t: cli(lone(t), "files", "--config", t / "missing.conf"),
    "a typo in the config": lambda t: cli(lone(t), "files", "--config", _conf(t, "replica = 2\n")),
    "a bad number in the config": lambda t: cli(lone(t), "files", "--config", _conf(t, "max_streams = x\n")),
    "serve on a name that does not resolve": lambda t: cli(
        lone(t), "serve", "--listen", "no-such-host.invalid:0", timeout=30
    ),
    "serve on a port out of range": lambda t: cli(lone(t), "serve", "--listen", "127.0.0.1:99999"),
    "init where a file is": lambda t: cli(a_file(t), "init"),
    "a bad duration": lambda t: cli(lone(t), "cleanup", "--older-than", "soon"),
}


def _conf(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p2p.conf"
    p.write_text(text)
    return p


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_users_mistake_never_exits_70(tmp_path: Path, mistake: str) -> None:
    r = MISTAKES[mistake](tmp_path)
    assert r.returncode != 70 and r.returncode in readme_exit_codes(), r.stderr
    if r.returncode not in (0, 2):
        one_error_line(r)
