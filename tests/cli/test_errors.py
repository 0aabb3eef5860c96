"""Errors a user meets, with real processes: each is one line on stderr with the README's exit code, and
nothing a user or the environment causes exits 70 ("a bug"). A port in use, a character device as input, a
key that is not UTF-8, no peer to ask, a reader that closes the output (`get | head`), Ctrl-C of a get or of
a store's replication, a sole holder whose copy is corrupt. tests/cli/test_exit_codes.py walks the whole
exit-code table.

Every wait is bounded; every process started here is killed by its PID at the end (`running`, `killing`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from mounts import tmpfs
from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import (
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
from prometheus_client.parser import text_string_to_metric_families

from p2pfast.datadir import Layout, init
from p2pfast.repo.repo import Repo
from p2pfast.store import segments

MESH_WAIT = 30.0
SEG = segments.SEGMENT_SIZE
LOOPS = ["asyncio", "uvloop"]


def cli(root: Path, *args: str | bytes | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args, "--data-dir", root, **kw)  # type: ignore[arg-type]


def ok(r: subprocess.CompletedProcess[bytes]) -> Any:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    out = r.stdout.decode()
    return json.loads(out) if out.strip().startswith(("{", "[")) else out


def full_mesh(nodes: Sequence[NodeProc]) -> bool:
    ids = {n.node_id for n in nodes}
    return all(n.connected() >= ids - {n.node_id} for n in nodes)


def start_network(nodes: Sequence[NodeProc]) -> None:
    boot = nodes[0].start()
    for n in nodes[1:]:
        n.start("--bootstrap", boot.listen)
    wait_until(lambda: full_mesh(nodes), MESH_WAIT, f"{len(nodes)}-node full membership", nodes)


def write_source(path: Path, size: int, seed: int) -> Path:
    step = 4 << 20
    with open(path, "wb") as f:
        for i, off in enumerate(range(0, size, step)):
            f.write(pattern(min(step, size - off), seed=seed * 1_000_003 + i))
    return path


def embedded_config(tmp_path: Path, boot: NodeProc) -> Path:
    """A config for a data dir with no daemon: its command's short-lived node dials `boot`."""
    cfg = tmp_path / "embedded.conf"
    cfg.write_text(f"bootstrap={boot.listen}\n")
    return cfg


# -- 1. serve on an address in use ----------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_serve_on_a_port_in_use_is_one_line_not_a_bug(tmp_path: Path, flag: str) -> None:
    (node,) = make_nodes(tmp_path, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        extra = ["--listen", "127.0.0.1:0"] if flag != "--listen" else []
        r = cli(node.root, "serve", flag, addr, *extra, timeout=30)
    assert r.returncode == 1, r.stderr
    what = addr if flag == "--listen" else f"{addr} (metrics_listen)"
    assert one_error_line(r) == (
        f"p2pfast: cannot listen on {what}: address already in use (another p2pfast serve? choose another"
        f" with {flag})"
    )
    assert not (node.root / "node.json").exists() and not (node.root / "ctl.sock").exists()


# -- 2. a character device as input -------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
def test_store_from_dev_null_stores_an_empty_file(tmp_path: Path, loop: str, daemon: bool) -> None:
    """epoll refuses /dev/null (it cannot wait on it): the store reads it plainly, EOF at once."""
    (node,) = make_nodes(tmp_path, 1)
    env = cli_env(P2PFAST_LOOP=loop)
    with running([node]):
        if daemon:
            node.start(env=env)
        r = cli(node.root, "store", "from-path", "/dev/null", "--json", env=env)
        assert ok(r)["size"] == 0
        with open(os.devnull, "rb") as devnull:
            r = subprocess.run(
                cli_argv("store", "from-stdin", "-", "--json", "--data-dir", node.root),
                stdin=devnull,
                capture_output=True,
                env=env,
                timeout=60,
                check=False,
            )
        assert ok(r)["size"] == 0
        rows = {row["key"]: row for row in ok(cli(node.root, "files", "--json"))}
        assert {k: r["size"] for k, r in rows.items()} == {"from-path": 0, "from-stdin": 0}
        # and back out, also into /dev/null (which the get writes to from the loop, as to a pipe)
        assert cli(node.root, "get", "from-path", env=env).stdout == b""
        with open(os.devnull, "wb") as devnull:
            g = subprocess.run(
                cli_argv("get", "from-stdin", "--data-dir", node.root),
                stdout=devnull,
                stderr=subprocess.PIPE,
                env=env,
                timeout=60,
                check=False,
            )
        assert g.returncode == 0 and g.stderr == b"", g.stderr


# -- 3. a key that is not UTF-8 -------------------------------------------------------------------------
@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
def test_a_key_that_is_not_utf8_is_bad_input(tmp_path: Path, daemon: bool) -> None:
    (node,) = make_nodes(tmp_path, 1)
    src = tmp_path / "src"
    src.write_bytes(b"data")
    with running([node]):
        if daemon:
            node.start()
        for args in (("store", b"bad\xffkey", src), ("get", b"bad\xffkey"), ("delete", b"bad\xffkey")):
            r = cli(node.root, *args)
            assert r.returncode == 5, (args, r.returncode, r.stderr)
            assert one_error_line(r) == (
                r"p2pfast: bad input: key b'bad\xffkey' is not valid UTF-8 (keys are UTF-8 text)"
            )
        assert ok(cli(node.root, "files", "--json")) == []


# -- 5. the output's reader goes away -------------------------------------------------------------------
def _get_into_head(root: Path, key: str, env: dict[str, str] | None = None, *args: str) -> tuple[int, bytes]:
    """`p2pfast get KEY | head -c 10`: read 10 bytes, close the pipe; (exit code, stderr)."""
    proc = subprocess.Popen(
        cli_argv("get", key, "--data-dir", root, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env or cli_env(),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.read(10)
        assert len(first) == 10
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=60), err


@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
def test_get_into_a_closed_pipe_is_quiet(tmp_path: Path, daemon: bool) -> None:
    """The reader had what it wanted: exit 141 (as a shell reports a writer ended by SIGPIPE), nothing on
    stderr. With a daemon, the daemon writes into the passed pipe and gets EPIPE; without, this process.
    Both from a local copy and from a fetch (B has none: A stored it before B was there)."""
    a, b = make_nodes(tmp_path, 2)
    src = write_source(tmp_path / "src", 8 << 20, seed=1)  # more than a pipe holds
    with running([a, b]):
        ok(cli(a.root, "store", "k", src))
        if not daemon:
            code, err = _get_into_head(a.root, "k")  # A's own node reads its copy
            assert (code, error_lines(err)) == (141, [])
        a.start()
        if daemon:
            b.start("--bootstrap", a.listen)
            wait_until(lambda: full_mesh([a, b]), MESH_WAIT, "b to join", [a, b])
            code, err = _get_into_head(a.root, "k")  # A's daemon reads its copy
            assert (code, error_lines(err)) == (141, [])
            code, err = _get_into_head(b.root, "k")  # B's daemon fetches it from A
        else:  # B's own node fetches it from A's daemon
            cfg = embedded_config(tmp_path, a)
            proc_env = cli_env()
            code, err = _get_into_head(b.root, "k", proc_env, "--config", str(cfg))
        assert (code, error_lines(err)) == (141, [])
        assert ok(cli(b.root, "files", "--json")) == []
        for n in (a, b):
            assert "event=loop_exception" not in n.log(), n.log()


# -- 6. every task of a get settled: on success with two holders, and on Ctrl-C --------------------------
def test_a_get_from_two_holders_says_nothing_but_its_result(tmp_path: Path) -> None:
    """Both holders start on the one piece (the second in the endgame); when the first finishes, the
    other is cancelled. That must leave no "exception was never retrieved" line (it came in 2 of 8 gets)."""
    a, b, y = make_nodes(tmp_path, 3)  # y runs no daemon: its get's node is this process's
    src = write_source(tmp_path / "src", 3 * SEG + 17, seed=2)
    with running([a, b]):
        start_network([a, b])
        ok(cli(a.root, "store", "k", src))
        cfg = embedded_config(tmp_path, a)
        for i in range(8):
            out = tmp_path / f"out{i}"
            r = cli(y.root, "get", "k", "-o", out, "--json", "--config", cfg)
            assert r.returncode == 0 and error_lines(r.stderr) == [], r.stderr.decode(errors="replace")
            assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
def test_ctrl_c_of_a_get_is_one_line(tmp_path: Path, daemon: bool) -> None:
    """SIGINT while a get fetches from two holders (into a pipe nobody reads any more): "interrupted",
    exit 130, and nothing else on stderr (nor an event=loop_exception in the daemon's log)."""
    a, b, y = make_nodes(tmp_path, 3)
    src = write_source(tmp_path / "src", 48 << 20, seed=3)
    with running([a, b, y]):
        start_network([a, b])
        ok(cli(a.root, "store", "k", src))
        cfg = embedded_config(tmp_path, a)
        if daemon:
            y.start("--bootstrap", a.listen)
            wait_until(lambda: full_mesh([a, b, y]), MESH_WAIT, "y to join", [a, b, y])
        proc = subprocess.Popen(
            cli_argv("get", "k", "--data-dir", y.root, "--config", cfg),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        with killing(proc):
            assert proc.stdout is not None
            assert len(proc.stdout.read(SEG)) == SEG  # the fetch is under way; now the pipe fills up
            os.kill(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        assert (proc.returncode, error_lines(err)) == (130, ["p2pfast: interrupted"])
        if daemon:
            # logged once the cancelled get has unwound in the daemon
            wait_until(lambda: "event=ctl_client_gone cmd=get" in y.log(), 30, "y to end the get", [y])
        for n in (a, b, y):
            assert "event=loop_exception" not in n.log(), n.log()


# -- 7. Ctrl-C while a store sends to its peers ----------------------------------------------------------
def test_ctrl_c_during_replication_says_where_the_file_is(tmp_path: Path) -> None:
    """No daemon: the store's own node has made its copy durable and is sending to two peers when
    SIGINT comes. One line says the file is stored here and on which peers, exit 130; the file is
    listed here, and the shares table names exactly the peers the line names."""
    a, b, x = make_nodes(tmp_path, 3)
    src = write_source(tmp_path / "big", 256 << 20, seed=4)
    with running([a, b]):
        start_network([a, b])
        cfg = embedded_config(tmp_path, a)
        proc = subprocess.Popen(
            cli_argv("store", "big", src, "--data-dir", x.root, "--config", cfg),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        with killing(proc):
            # b has begun receiving: replication has begun, so the local copy is durable. Frozen there,
            # b cannot acknowledge, so the store is still sending when SIGINT comes, however long this
            # process is kept off the CPU between the poll and the kill. Once in CI it was not: the
            # store exited -2 with no output, the signal's default action, which CPython puts back
            # only while finalising, so the store had already finished.
            wait_until(
                lambda: temp_files(b.root) or proc.poll() is not None, 120, "b to start receiving", [a, b]
            )
            assert proc.poll() is None, "the store finished before b began receiving: nothing was tested"
            assert b.proc is not None
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                os.kill(proc.pid, signal.SIGINT)
                out, err = proc.communicate(timeout=60)
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
        assert proc.returncode == 130 and out == b"", err
        (line,) = error_lines(err)
        m = re.fullmatch(
            r"p2pfast: interrupted: big is stored here \(durable\) and on (\d) of 2 peers(?: \((.*)\))?; "
            r"store it again to copy it to the rest",
            line,
        )
        assert m is not None, line
        named = set(m.group(2).split(", ")) if m.group(2) else set()
        assert len(named) == int(m.group(1))
        rows = {r["key"]: r for r in ok(cli(x.root, "files", "--json"))}
        assert rows["big"]["size"] == 256 << 20
        with Repo.open(x.layout.db, readonly=True) as repo:
            assert {s.peer[:16] for s in repo.list_shares()} == named
        assert ok(cli(x.root, "get", "big", "-o", tmp_path / "back")) == ""
        assert (tmp_path / "back").stat().st_size == src.stat().st_size


# -- 9. a refusal for lack of space names the reserve ----------------------------------------------------
def test_a_replica_short_of_space_names_the_reserve_it_keeps(tmp_path: Path) -> None:
    """B's data dir is on a 32 MiB tmpfs: less than the 64 MiB B keeps free, so it refuses even a small
    object, and the store's report says why in those terms (not a bare 'does not fit')."""
    with tmpfs(tmp_path / "small", "32m") as small:
        a = make_nodes(tmp_path, 1)[0]
        init(Layout.of(small / "b"), (a.root / "network.key").read_bytes())
        b = NodeProc(small / "b")
        b.log_path = tmp_path / "b.log"
        src = tmp_path / "src"
        src.write_bytes(pattern(50_000, seed=9))
        with running([a, b]):
            start_network([a, b])
            r = cli(a.root, "store", "k", src)
            assert r.returncode == 0, r.stderr
            assert "on 0/1 peers" in r.stdout.decode()
            (line,) = error_lines(r.stderr)
            assert re.fullmatch(
                rf"  not on {b.node_id[:16]}: .*disk full: an object of 48\.8 KiB does not fit: "
                r"3\d\.\d MiB free, and this node keeps 64\.0 MiB free in reserve.*",
                line,
            ), line


# -- 10. the only holder's copy is corrupt ---------------------------------------------------------------
@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
def test_a_corrupt_sole_holder_is_an_integrity_failure(tmp_path: Path, daemon: bool) -> None:
    """B alone holds the file, and its copy fails its check: D's get fails with the integrity error
    (exit 4), not 'peer unavailable' (10), leaves no output, and B logs one line saying so."""
    b, d = make_nodes(tmp_path, 2)
    src = write_source(tmp_path / "src", 3 * SEG + 17, seed=5)
    ok(cli(b.root, "store", "x", src))  # before any peer: B holds the only copy
    (obj,) = object_files(b.root)
    with open(b.root / obj, "r+b") as f:  # a flipped byte inside segment 0
        f.seek(4096)
        byte = f.read(1)[0]
        f.seek(4096)
        f.write(bytes([byte ^ 1]))
    with running([b, d]):
        b.start("--metrics-listen", "127.0.0.1:0")
        if daemon:
            d.start("--bootstrap", b.listen, "--metrics-listen", "127.0.0.1:0")
            wait_until(lambda: full_mesh([b, d]), MESH_WAIT, "d to join", [b, d])
            r = cli(d.root, "get", "x", "-o", tmp_path / "out")
        else:
            r = cli(d.root, "get", "x", "-o", tmp_path / "out", "--config", embedded_config(tmp_path, b))
        assert r.returncode == 4, r.stderr
        line = one_error_line(r)
        assert line.startswith("p2pfast: integrity check failed: ") and b.node_id[:12] in line, line
        assert not (tmp_path / "out").exists()
        wait_until(lambda: "event=" in b.log() and "corrupt" in b.log(), 30, "b to log its bad copy", [b])
        said = [ln for ln in b.log().splitlines() if "level=WARNING" in ln or "level=ERROR" in ln]
        assert len(said) == 1, said
        # counted once, where it was found: on B, which read its own bad copy; D found no bad byte itself
        assert integrity_failures(b) == 1
        if daemon:
            assert integrity_failures(d) == 0


def integrity_failures(node: NodeProc) -> float:
    addr = json.loads((node.root / "node.json").read_bytes())["metrics"]
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=20) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "p2pfast_integrity_failures_total"
    )


# -- get -o into a device or a FIFO -----------------------------------------------------------------------
def test_get_into_a_fifo_writes_into_it_and_leaves_it_a_fifo(tmp_path: Path) -> None:
    """`get -o FIFO` (or a device) is written in place, like stdout: a temp file renamed over it would
    replace the FIFO or device node itself (as root, /dev/null for the whole machine)."""
    (node,) = make_nodes(tmp_path, 1)
    src = write_source(tmp_path / "src", 3 * SEG + 17, seed=6)
    ok(cli(node.root, "store", "k", src))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    r = cli(node.root, "get", "k", "-o", fifo)
    t.join(timeout=60)
    assert r.returncode == 0, r.stderr
    assert got == [src.read_bytes()]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".fifo")) == []


def test_get_into_a_character_device_leaves_the_device(tmp_path: Path) -> None:
    (node,) = make_nodes(tmp_path, 1)
    ok(cli(node.root, "store", "k", write_source(tmp_path / "src", 100_000, seed=7)))
    null = tmp_path / "null"
    try:  # a second /dev/null node, so that a failing test cannot replace the machine's own
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    r = cli(node.root, "get", "k", "-o", null)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(null.stat().st_mode) and null.stat().st_rdev == os.makedev(1, 3)
