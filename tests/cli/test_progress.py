"""Progress with real processes: the events a daemon sends over the control socket (store: the input,
then the replication; get: its total as soon as the size is known), and the bars the CLI draws on a real
pseudo-terminal (python's pty): only for objects of at least 64 MiB, only on a terminal, in binary units
with percentage and ETA."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import cli_argv, cli_env, file_hash, pattern, run_cli

from p2pfast.front import ctl

BIG = 64 << 20  # the documented threshold (docs/cli.md, "Progress")


def ctl_answers(node: NodeProc) -> bool:
    try:
        ctl.call(node.root / ctl.SOCKET_NAME, {"cmd": "status"}, timeout=5)
    except ctl.DaemonNotRunning:  # node.json is written before the control socket listens
        return False
    return True


def events(node: NodeProc, request: dict[str, Any], fd: int) -> list[dict[str, Any]]:
    wait_until(lambda: ctl_answers(node), 20, f"{node.root.name}'s control socket")
    seen: list[dict[str, Any]] = []
    ctl.call(node.root / ctl.SOCKET_NAME, {**request, "progress": True}, [fd], on_progress=seen.append)
    return seen


def phases(seen: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for p in seen:
        if not out or out[-1] != p["phase"]:
            out.append(p["phase"])
    return out


def test_progress_events_cover_replication_and_give_the_get_its_total(tmp_path: Path) -> None:
    a, b, c = make_nodes(tmp_path, 3)
    size = 20 << 20
    src = tmp_path / "src"
    src.write_bytes(pattern(size, seed=31))
    with running([a, b, c]):
        b.start()
        c.start("--bootstrap", b.listen)
        a.start("--bootstrap", b.listen)
        wait_until(lambda: {b.node_id, c.node_id} <= a.connected(), 20, "a to reach b and c", [a, b, c])
        fd = os.open(src, os.O_RDONLY)
        try:
            seen = events(a, {"cmd": "store", "key": "k", "size": size}, fd)
        finally:
            os.close(fd)
        assert phases(seen) == ["store", "replicate"], seen
        store = [p for p in seen if p["phase"] == "store"]
        replicate = [p for p in seen if p["phase"] == "replicate"]
        assert store[0]["done"] == 0 and store[-1]["done"] == size and {p["total"] for p in store} == {size}
        # the second phase: the bytes that go to both replicas, counted as they are sent
        assert {(p["total"], p["peers"]) for p in replicate} == {(2 * size, 2)}
        dones = [p["done"] for p in replicate]
        assert dones[0] == 0 and dones[-1] == 2 * size and dones == sorted(dones) and len(dones) > 2

        # a get from the network (d holds no copy): its first event already has the total
        (d,) = make_nodes(tmp_path / "more", 1, network_key=a.layout.network_key.read_bytes())
        with running([d]):
            d.start("--bootstrap", a.listen)
            wait_until(lambda: a.node_id in d.connected(), 20, "d to reach a", [a, d])
            out = tmp_path / "out"
            with open(out, "wb") as f:
                seen = events(d, {"cmd": "get", "key": "k"}, f.fileno())
            assert file_hash(out) == file_hash(src)
        assert phases(seen) == ["get"] and seen[0] == {"phase": "get", "done": 0, "total": size, "peers": 1}
        assert seen[-1]["done"] == size
        # a local get, too
        with open(out, "wb") as f:
            seen = events(b, {"cmd": "get", "key": "k"}, f.fileno())
        assert seen[0]["total"] == size and seen[-1]["done"] == size


def on_a_terminal(*args: str | os.PathLike[str], columns: int = 120, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout to /dev/null) of 24 rows and `columns`;
    returns its exit code and all it drew there, read while it runs (so a full terminal buffer never
    blocks it)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        with open(os.devnull, "wb") as devnull:
            proc = subprocess.Popen(
                cli_argv(*args), stdin=subprocess.DEVNULL, stdout=devnull, stderr=slave, env=cli_env()
            )
        os.close(slave)
        slave = -1
        drawn = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: every writer of the terminal has closed it
                        chunk = b""
                    if not chunk:
                        break
                    drawn += chunk
                elif proc.poll() is not None:
                    break
            else:
                raise AssertionError(f"{args} did not finish within {timeout} s")
            return proc.wait(timeout=30), drawn.decode("utf-8", "replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


PERCENT = re.compile(r"(\d+)%\|")


def test_bars_on_a_terminal_only_for_big_objects_in_binary_units(tmp_path: Path) -> None:
    a, b, c = make_nodes(tmp_path, 3)
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(pattern(BIG, seed=41))
    small.write_bytes(pattern(BIG - 1, seed=42))  # one byte under: no bar
    with running([a, b, c]):  # c starts half way
        b.start()
        a.start("--bootstrap", b.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        wait_until(lambda: ctl_answers(a), 20, "a's control socket")
        code, drawn = on_a_terminal("store", "big", big, "--data-dir", a.root)
        assert code == 0, drawn
        # two bars: the input, then the replication, each to 100 %, in MiB, with an ETA
        assert "store: " in drawn and "replicate: " in drawn, drawn
        for phase in ("store", "replicate"):
            line = drawn.rsplit(f"{phase}: ", 1)[1].split("\r")[0].split("\n")[0]
            assert "100%|" in line and "64.0 MiB/64.0 MiB" in line and "<" in line, line
        assert re.search(r"\d+\.\d (KiB|MiB|GiB)/s", drawn), drawn
        assert not re.search(r"\d(k|M|G)B\b", drawn), drawn  # no decimal-looking units
        # a terminal that reports no width (a fresh pty: 0 columns) still gets a bar
        code, drawn = on_a_terminal("store", "big-again", big, "--data-dir", a.root, columns=0)
        assert code == 0 and "store: 100%|" in drawn and "64.0 MiB/64.0 MiB" in drawn, drawn
        code, drawn = on_a_terminal("store", "small", small, "--data-dir", a.root)
        assert code == 0 and "%|" not in drawn and "store: " not in drawn, drawn

        # the get's bar: total, percentage and ETA from the start, through the network (c has no copy)
        c.start("--bootstrap", a.listen)
        wait_until(lambda: a.node_id in c.connected(), 20, "c to reach a", [a, b, c])
        wait_until(lambda: ctl_answers(c), 20, "c's control socket")
        out = tmp_path / "out"
        code, drawn = on_a_terminal("get", "big", "-o", out, "--data-dir", c.root)
        assert code == 0, drawn
        assert file_hash(out) == file_hash(big)
        bar = drawn.split("get: ", 1)[1]
        assert "/64.0 MiB [" in bar and "<" in bar, drawn  # the total is known from the first frame
        assert [int(p) for p in PERCENT.findall(drawn)][-1] == 100, drawn
        code, drawn = on_a_terminal("get", "small", "-o", tmp_path / "o2", "--data-dir", c.root)
        assert code == 0 and "%|" not in drawn and "get: " not in drawn, drawn
        # not a terminal: nothing drawn, whatever the size
        piped = run_cli("get", "big", "-o", tmp_path / "o3", "--data-dir", c.root)
        assert piped.returncode == 0 and b"%|" not in piped.stderr and b"get: " not in piped.stderr
