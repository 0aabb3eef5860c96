"""The command line, run as a real subprocess (`python -m p2pfast`) against a data dir in tmp_path.

Checked: output, exit codes (README.md), and that every error is exactly one line on stderr with no
traceback (the kernel chooser's accel_fallback WARNING lines, present only while the compiled kernels are
not built, are log records and are not counted; see nodetools.error_lines).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from nodetools import (
    assert_layout,
    cli_argv,
    cli_env,
    object_files,
    one_error_line,
    pattern,
    run_cli,
    temp_files,
)

from p2pfast import __version__, _accel

SEG = 1 << 20


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "node"
    r = run_cli("init", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    return d


def cli(
    data_dir: Path, *args: str | os.PathLike[str], input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args, "--data-dir", data_dir, input=input)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_version_names_the_kernels() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    out = r.stdout.decode().strip().lower()
    assert out.startswith(f"p2pfast {__version__} ")
    assert len(out.splitlines()) == 1
    if os.environ.get("P2PFAST_PURE") == "1":
        assert "pure" in out and "accelerated" not in out
    elif _accel.ACCELERATED:
        assert "accelerated" in out and "pure" not in out
    else:  # compiled kernels not built: the fallback is reported, not hidden
        assert "pure" in out and "accelerated" not in out


def test_version_pure_when_forced() -> None:
    r = run_cli("--version", env=cli_env(P2PFAST_PURE="1"))
    assert r.returncode == 0
    assert "pure" in r.stdout.decode().lower() and "accelerated" not in r.stdout.decode().lower()
    assert r.stderr == b""  # choosing the twins on purpose is not a fallback: no warning


def test_help() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    for command in ("init", "store", "get", "delete", "files", "demo"):
        assert command in out
    r = run_cli("store", "--help")
    assert r.returncode == 0 and "--data-dir" in r.stdout.decode()


def test_usage_error_exit_2(tmp_path: Path) -> None:
    r = run_cli("store", "--data-dir", tmp_path)  # missing KEY and FILE
    assert r.returncode == 2
    assert b"Traceback" not in r.stderr


def test_init(tmp_path: Path) -> None:
    d = tmp_path / "node"
    r = run_cli("init", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    first, second, third = r.stdout.decode().strip().splitlines()
    assert first == f"initialised {d}"
    assert third.startswith(f"config {d / 'config'} (every key at its default, commented out")
    node_id = second.removeprefix("node id ")
    assert len(node_id) == 64 and run_cli("id", "--data-dir", d).stdout.decode().strip() == node_id
    key = d / "master.key"
    for name in ("master.key", "node.key", "network.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
        assert len((d / name).read_bytes()) == 32, name
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert len(key.read_bytes()) == 32
    assert (d / "p2p.db").is_file() and (d / "objects" / "tmp").is_dir()
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    r = run_cli("init", "--data-dir", d)
    assert r.returncode == 8, r.stderr  # a second init changes nothing and says so
    assert r.stdout == b""
    assert one_error_line(r) == (
        f"p2pfast: config error: {d} is already initialised: it holds p2p.db "
        f"({(d / 'p2p.db').stat().st_size} bytes). Nothing was changed; 'p2pfast serve' uses it as it is, "
        "and a new node needs another --data-dir"
    )
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert_layout(d)


def test_store_list_get_delete(data_dir: Path, tmp_path: Path) -> None:
    data = pattern(2 * SEG + 333, seed=1)
    src = tmp_path / "in.bin"
    src.write_bytes(data)

    r = cli(data_dir, "store", "photos/cat.jpg", src)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("stored photos/cat.jpg ")
    assert r.stdout.decode().count("\n") == 1

    piped = pattern(SEG + 5, seed=2)
    r = cli(data_dir, "store", "from/stdin", "-", "--json", input=piped)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["key"] == "from/stdin" and info["size"] == len(piped) and info["deduplicated"] is False
    assert re.fullmatch(r"b3:[0-9a-f]{64}", info["cid"])

    r = cli(data_dir, "store", "same/again", src, "--json")
    assert json.loads(r.stdout)["deduplicated"] is True

    r = cli(data_dir, "files")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["KEY", "SIZE", "CONTENT", "ID", "CREATED"]
    assert [ln.split()[0] for ln in lines[1:]] == ["from/stdin", "photos/cat.jpg", "same/again"]
    assert "2.0 MiB" in lines[2]

    r = cli(data_dir, "files", "--json")
    rows = json.loads(r.stdout)
    assert {row["key"]: row["size"] for row in rows} == {
        "from/stdin": len(piped),
        "photos/cat.jpg": len(data),
        "same/again": len(data),
    }
    assert rows[1]["cid"] == rows[2]["cid"] != rows[0]["cid"]
    assert len(object_files(data_dir)) == 2

    r = cli(data_dir, "get", "photos/cat.jpg")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    r = cli(data_dir, "get", "from/stdin", "-o", "-")
    assert r.stdout == piped

    out = tmp_path / "outdir" / "cat.jpg"
    out.parent.mkdir()
    r = cli(data_dir, "get", "photos/cat.jpg", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 & ~_umask()
    assert os.listdir(out.parent) == ["cat.jpg"]

    r = cli(data_dir, "delete", "photos/cat.jpg")
    assert r.returncode == 0, r.stderr
    assert "object kept" in r.stdout.decode()
    r = cli(data_dir, "delete", "same/again", "--json")
    assert json.loads(r.stdout) == {
        "key": "same/again",
        "cid": rows[1]["cid"],
        "local": True,
        "object_removed": True,
        "confirmed_by": [],
    }
    assert len(object_files(data_dir)) == 1

    # Gone here, and no peer to ask (a lone node): "peer unavailable" (10), not "not found" (3).
    r = cli(data_dir, "get", "photos/cat.jpg")
    assert r.returncode == 10
    assert "photos/cat.jpg" in one_error_line(r) and "no peer is connected" in one_error_line(r)
    assert r.stdout == b""
    r = cli(data_dir, "delete", "photos/cat.jpg")
    assert r.returncode == 10
    one_error_line(r)

    r = cli(data_dir, "files", "--json")
    assert [row["key"] for row in json.loads(r.stdout)] == ["from/stdin"]
    assert_layout(data_dir)
    assert temp_files(data_dir) == []
    assert not (data_dir / "dirty").exists()


def test_empty_store_and_files(data_dir: Path) -> None:
    r = cli(data_dir, "files")
    assert r.returncode == 0 and "(no files)" in r.stdout.decode()
    r = cli(data_dir, "store", "empty", "-", input=b"")
    assert r.returncode == 0, r.stderr
    r = cli(data_dir, "get", "empty")
    assert r.returncode == 0 and r.stdout == b""


def _tamper(data_dir: Path) -> None:
    (rel,) = object_files(data_dir)
    path = data_dir / rel
    fd = os.open(path, os.O_RDWR)
    try:
        off = 32 + SEG + 16 + 100  # inside segment 1
        (b,) = os.pread(fd, 1, off)
        os.pwrite(fd, bytes([b ^ 0x04]), off)
    finally:
        os.close(fd)


def test_get_tampered_object_leaves_no_output(data_dir: Path, tmp_path: Path) -> None:
    data = pattern(3 * SEG, seed=3)
    r = cli(data_dir, "store", "tampered/key", "-", input=data)
    assert r.returncode == 0, r.stderr
    _tamper(data_dir)

    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "result.bin"
    r = cli(data_dir, "get", "tampered/key", "-o", out)
    assert r.returncode == 4
    line = one_error_line(r)
    assert "tampered/key" in line and "integrity" in line
    assert not out.exists()
    assert os.listdir(outdir) == []  # no temp file left beside OUT

    # To stdout: only verified segments (segment 0) are written before the failure stops the output.
    r = cli(data_dir, "get", "tampered/key")
    assert r.returncode == 4
    assert "tampered/key" in one_error_line(r)
    assert r.stdout == data[: len(r.stdout)] and len(r.stdout) <= SEG


def test_store_nonexistent_input_is_bad_input(data_dir: Path, tmp_path: Path) -> None:
    r = cli(data_dir, "store", "k", tmp_path / "does-not-exist")
    assert r.returncode == 5
    assert "does-not-exist" in one_error_line(r)
    r = cli(data_dir, "files", "--json")
    assert json.loads(r.stdout) == []
    assert temp_files(data_dir) == [] and object_files(data_dir) == []


def test_store_directory_input_is_bad_input(data_dir: Path, tmp_path: Path) -> None:
    r = cli(data_dir, "store", "k", tmp_path)
    assert r.returncode == 5, r.stderr
    one_error_line(r)
    assert temp_files(data_dir) == [] and object_files(data_dir) == []


def test_group_readable_master_key_refused(data_dir: Path) -> None:
    key = data_dir / "master.key"
    key.chmod(0o640)
    for args in (("files",), ("get", "k"), ("store", "k", "-")):
        r = cli(data_dir, *args, input=b"x")
        assert r.returncode == 8, (args, r.stderr)
        line = one_error_line(r)
        assert "readable by group or others" in line and "0640" in line and "chmod 600" in line
    key.chmod(0o600)
    assert cli(data_dir, "files").returncode == 0


@pytest.mark.parametrize("args", [("files",), ("get", "k"), ("delete", "k"), ("store", "k", "-")])
def test_uninitialised_data_dir_is_config_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    d = tmp_path / "never-initialised"
    r = run_cli(*args, "--data-dir", d, input=b"x")
    assert r.returncode == 8
    assert "p2pfast init" in one_error_line(r)
    assert not d.exists()  # nothing was created


def test_invalid_key_is_bad_input(data_dir: Path) -> None:
    long_key = "k" * 1025
    for args in (("store", long_key, "-"), ("get", long_key), ("delete", long_key)):
        r = cli(data_dir, *args, input=b"x")
        assert r.returncode == 5, (args[0], r.stderr)
        assert "1025" in one_error_line(r)
    r = cli(data_dir, "store", "k" * 1024, "-", input=b"x")  # the limit itself is fine
    assert r.returncode == 0, r.stderr
    assert temp_files(data_dir) == []


def test_get_to_full_device_is_disk_full(data_dir: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    r = cli(data_dir, "store", "k", "-", input=pattern(100_000, seed=5))
    assert r.returncode == 0
    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            cli_argv("get", "k", "--data-dir", data_dir),
            stdout=full,
            stderr=subprocess.PIPE,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    assert p.returncode == 7
    line = one_error_line(p)
    assert "disk full" in line


def test_demo(tmp_path: Path) -> None:
    r = run_cli("demo", "--size", "3M", timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "demo ok" in out.splitlines()[-1]
    m = re.search(r" in (/\S+)$", out.splitlines()[0])
    assert m, out
    assert f"3.0 MiB ({3 << 20:,} bytes)" in out.splitlines()[0]
    # throughput in the binary units of every other figure (it was decimal MB/s)
    rates = re.findall(r" ([0-9.]+ [KMGT]?i?B)/s$", out, flags=re.M)
    assert rates and all(r.endswith("iB") for r in rates), out
    assert "MB/s" not in out
    # the S3 API and the gateway: in through B, out through C, checked by BLAKE3
    for step in ("S3 PUT on B", "S3 GET on C", "HTTP gateway GET on C"):
        assert re.search(rf"^  {step}.* ms +[0-9.]+ [KMG]?iB/s$", out, flags=re.M), out
    assert "read back identical bytes through S3 and the gateway (verified)" in out
    assert not Path(m.group(1)).exists()


def test_demo_interrupted_cleans_up(tmp_path: Path) -> None:
    """Ctrl-C in the middle of the demo: exit 130, one line, the nodes closed and the temp dir gone."""
    p = subprocess.Popen(
        cli_argv("demo", "--size", "1G"),
        bufsize=0,  # unbuffered: select() then sees every line the demo printed
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C
    )
    deadline = time.monotonic() + 60

    def line() -> str:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "the demo printed nothing for too long"
        return p.stdout.readline().decode()

    try:
        first = line()
        m = re.search(r" in (/\S+)$", first.strip())
        assert m, first
        while "node C" not in (text := line()):  # until the three nodes run
            assert text, "the demo ended before its nodes started"
        root = Path(m.group(1))
        # interrupt while a replica is receiving (a temp file in B's or C's objects/tmp): the store is in
        # flight between processes' worth of nodes, the hardest moment to stop cleanly
        while not [f for n in "bc" for f in (root / n / "objects" / "tmp").glob("*")]:
            assert time.monotonic() < deadline, "no replica started receiving"
            assert p.poll() is None, "the demo ended early"
            time.sleep(0.01)  # polls the demo's own progress, bounded by the deadline
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    assert p.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "p2pfast: interrupted"
    assert "loop_exception" not in err.decode()
    assert not Path(m.group(1)).exists()
