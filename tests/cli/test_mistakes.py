"""Operator mistakes cost no data: an emptied or foreign repo, a lost or replaced master key, a second
`init`, an old backup of the repo. Real node processes on real files; after each mistake the node is
started (and SIGKILLed where it runs) and restarted, and every object file is still on disk, in place or
in quarantine/, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnodes import NodeProc
from nodetools import one_error_line, pattern, run_cli


def _objects(root: Path) -> dict[str, bytes]:
    """Every object file under objects/ and quarantine/, by file name (the name is the object's), with
    its bytes: a moved object keeps its name, so this map survives quarantining but not deleting."""
    out: dict[str, bytes] = {}
    for sub in ("objects", "quarantine"):
        for dirpath, dirnames, files in os.walk(root / sub):
            if Path(dirpath) == root / "objects":
                dirnames[:] = [d for d in dirnames if d != "tmp"]
            for fn in files:
                out[fn.split(".")[0]] = (Path(dirpath) / fn).read_bytes()
    return out


def _init(root: Path) -> None:
    r = run_cli("init", "--data-dir", root)
    assert r.returncode == 0, r.stderr


def _serve_refused(root: Path) -> str:
    """`serve` must refuse at once (exit 8, one line); returns that line."""
    r = run_cli("serve", "--data-dir", root, "--listen", "127.0.0.1:0", timeout=30)
    assert r.returncode == 8, r.stderr
    return one_error_line(r)


def _filled(root: Path, tmp: Path, n: int = 4, seed: int = 0) -> dict[str, bytes]:
    """A node at `root` that stored n files through its daemon, then was SIGKILLed (dirty marker left)."""
    _init(root)
    node = NodeProc(root)
    try:
        node.start()
        for i in range(n):
            src = tmp / f"{root.name}-{i}.bin"
            src.write_bytes(pattern(3000 + 70_000 * i, seed=seed + i))
            r = run_cli("store", "--data-dir", root, f"file/{i}", src)
            assert r.returncode == 0, r.stderr
        node.stop(signal.SIGKILL)
    finally:
        node.kill()
    assert (root / "dirty").exists()
    objs = _objects(root)
    assert len(objs) == n
    return objs


@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes]]]:
    root = tmp_path / "a"
    yield root, _filled(root, tmp_path)


def _restart_twice(root: Path) -> None:
    """Start the node, SIGKILL it, start it again, stop it: reconcile runs on the restart."""
    node = NodeProc(root)
    try:
        node.start()
        node.stop(signal.SIGKILL)
        node.start()
        assert node.stop() == 0
    finally:
        node.kill()


def test_a_repo_truncated_to_zero_bytes_is_refused(node_dir: tuple[Path, dict[str, bytes]]) -> None:
    root, objs = node_dir
    for suffix in ("-wal", "-shm"):
        (root / f"p2p.db{suffix}").unlink(missing_ok=True)
    (root / "p2p.db").write_bytes(b"")
    line = _serve_refused(root)
    assert "p2p.db is empty (no p2pfast schema) while" in line and "restore this node's p2p.db" in line
    assert _serve_refused(root) == line  # and again: refusing changed nothing
    r = run_cli("init", "--data-dir", root)
    assert r.returncode == 8 and "is already initialised" in one_error_line(r)
    for cmd in (("files",), ("status",), ("cleanup", "--older-than", "0s")):
        r = run_cli(*cmd, "--data-dir", root)
        assert r.returncode == 8, (cmd, r.stderr)
        assert "empty" in one_error_line(r)
    assert _objects(root) == objs


def test_a_missing_repo_is_refused_while_objects_exist(node_dir: tuple[Path, dict[str, bytes]]) -> None:
    root, objs = node_dir
    for suffix in ("", "-wal", "-shm"):
        (root / f"p2p.db{suffix}").unlink(missing_ok=True)
    line = _serve_refused(root)
    assert "p2p.db is missing while" in line and "restore the repo" in line
    r = run_cli("init", "--data-dir", root)
    assert r.returncode == 8 and "object files" in one_error_line(r)
    assert not (root / "p2p.db").exists()  # init made no new, empty repo over the objects
    assert _objects(root) == objs


def test_another_nodes_repo_is_refused(tmp_path: Path, node_dir: tuple[Path, dict[str, bytes]]) -> None:
    root, objs = node_dir
    other = tmp_path / "b"
    other_objs = _filled(other, tmp_path, n=2, seed=50)
    for suffix in ("", "-wal", "-shm"):
        (root / f"p2p.db{suffix}").unlink(missing_ok=True)
        if (other / f"p2p.db{suffix}").exists():
            shutil.copy(other / f"p2p.db{suffix}", root / f"p2p.db{suffix}")
    line = _serve_refused(root)
    assert "is the repo of node" in line and "not of this data dir's node" in line
    assert _objects(root) == objs and _objects(other) == other_objs


def test_a_new_master_key_is_refused(node_dir: tuple[Path, dict[str, bytes]]) -> None:
    root, objs = node_dir
    key = root / "master.key"
    key.unlink()
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    line = _serve_refused(root)
    assert "is not the key of this repo" in line and "restore the original key file" in line
    assert _objects(root) == objs


def test_lost_master_key_then_init(tmp_path: Path, node_dir: tuple[Path, dict[str, bytes]]) -> None:
    root, objs = node_dir
    saved = tmp_path / "master.key.backup"
    shutil.copy(root / "master.key", saved)
    (root / "master.key").unlink()
    line = _serve_refused(root)
    assert "master key file" in line and "does not exist" in line
    assert "restore it from a backup" in line and "p2pfast init" not in line
    r = run_cli("init", "--data-dir", root)
    assert r.returncode == 8
    line = one_error_line(r)
    assert "is already initialised" in line and "master.key is missing: restore from a backup" in line
    assert not (root / "master.key").exists()  # no new key minted over the stored objects
    assert _objects(root) == objs
    # the key comes back from the backup: the node starts, survives a SIGKILL, and serves every file
    shutil.copy(saved, root / "master.key")
    _restart_twice(root)
    assert _objects(root) == objs
    r = run_cli("get", "--data-dir", root, "file/1")
    assert r.returncode == 0 and r.stdout == pattern(3000 + 70_000, seed=1)


def test_init_twice_changes_nothing(node_dir: tuple[Path, dict[str, bytes]]) -> None:
    root, objs = node_dir
    keys = {n: (root / n).read_bytes() for n in ("master.key", "node.key", "network.key", "config")}
    r = run_cli("init", "--data-dir", root)
    assert r.returncode == 8
    assert "4 object files" in one_error_line(r)
    assert {n: (root / n).read_bytes() for n in keys} == keys
    _restart_twice(root)
    assert _objects(root) == objs
    files = json.loads(run_cli("files", "--json", "--data-dir", root).stdout)
    assert sorted(f["key"] for f in files) == [f"file/{i}" for i in range(4)]


def test_an_old_backup_of_the_repo_quarantines_newer_objects(tmp_path: Path) -> None:
    """A repo restored from a backup older than some objects: the node starts (it is this node's repo),
    and after an unclean stop reconcile moves the objects it has no row for to quarantine/, one log line
    each, and status reports them. Nothing is unlinked."""
    root = tmp_path / "a"
    _init(root)
    node = NodeProc(root)
    try:
        node.start()
        src = tmp_path / "first.bin"
        src.write_bytes(pattern(5000, seed=1))
        assert run_cli("store", "--data-dir", root, "first", src).returncode == 0
        assert node.stop() == 0
        backup = tmp_path / "backup.db"
        shutil.copy(root / "p2p.db", backup)  # a clean stop leaves the WAL checkpointed and empty
        node.start()
        for i in range(2):
            src = tmp_path / f"later{i}.bin"
            src.write_bytes(pattern(9000 + i, seed=10 + i))
            assert run_cli("store", "--data-dir", root, f"later/{i}", src).returncode == 0
        node.stop(signal.SIGKILL)
        objs = _objects(root)
        assert len(objs) == 3
        for suffix in ("-wal", "-shm"):
            (root / f"p2p.db{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, root / "p2p.db")
        node.start()
        status = json.loads(run_cli("status", "--json", "--data-dir", root).stdout)
        assert status["quarantined"] == 2 and status["quarantined_bytes"] > 18000
        assert status["quarantine_dir"] == str(root / "quarantine")
        human = run_cli("status", "--data-dir", root).stdout.decode()
        assert "quarantine: 2 object files" in human
        assert node.stop() == 0
    finally:
        node.kill()
    log = node.log()
    assert log.count("action=quarantined_object") == 2
    assert _objects(root) == objs
    assert len(list((root / "quarantine").rglob("*"))) >= 2
    r = run_cli("get", "--data-dir", root, "first")
    assert r.returncode == 0 and r.stdout == pattern(5000, seed=1)


def test_repo_and_runtime_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "a"
    old = os.umask(0o022)  # the common default: files 0644 unless made otherwise
    try:
        _init(root)
        node = NodeProc(root)
        try:
            node.start()
            src = tmp_path / "x.bin"
            src.write_bytes(b"x" * 100)
            assert run_cli("store", "--data-dir", root, "k", src).returncode == 0
            for name in ("p2p.db", "p2p.db-wal", "p2p.db-shm", "node.json", "config"):
                assert (root / name).stat().st_mode & 0o777 == 0o600, name
        finally:
            node.kill()
    finally:
        os.umask(old)
    # A repo made by an older p2pfast (0644) is made private at the next open.
    (root / "p2p.db").chmod(0o644)
    assert run_cli("files", "--data-dir", root).returncode == 0
    node = NodeProc(root)
    try:
        node.start()
        assert (root / "p2p.db").stat().st_mode & 0o777 == 0o600
    finally:
        node.kill()


def test_a_data_dir_open_to_others_gets_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "a"
    _init(root)
    root.chmod(0o755)
    node = NodeProc(root)
    try:
        node.start()
        assert node.stop() == 0
    finally:
        node.kill()
    (line,) = [ln for ln in node.log().splitlines() if "event=data_dir_mode" in ln]
    assert "mode=0755" in line and f"chmod 700 {root}" in line
