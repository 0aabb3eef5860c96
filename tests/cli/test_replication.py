"""Replication end to end: real `p2pfast serve` processes on 127.0.0.1 (tests/helpers/netnodes.py) and the
real CLI as subprocesses, talking to each node's daemon through DATA_DIR/ctl.sock, or with no daemon
through a short-lived embedded node. tests/net/test_transfer.py runs the same scenarios in one process.

Every wait polls real state (files on disk, `files --json`, the peers table, node logs) with a deadline;
every process started here is killed by its PID when the test ends (`running`, `killing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import (
    cli_argv,
    cli_env,
    file_hash,
    killing,
    object_files,
    pattern,
    run_cli,
    temp_files,
)

from p2pfast.repo.repo import Repo
from p2pfast.shard import shard_path
from p2pfast.store import contentid, segments
from p2pfast.store.keys import KeyRing, load_master_key
from p2pfast.store.objects import SHARD_DEPTH, SHARD_WIDTH

MESH_WAIT = 30.0  # full membership of a few nodes on loopback takes well under a second
CLI_TIMEOUT = 60.0
SEG = segments.SEGMENT_SIZE
# Small but several segments, so ranged fetches and per-segment verification are exercised.
SMALL = 3 * SEG + 17


# -- helpers ---------------------------------------------------------------------------------------------
def source(path: Path, size: int, seed: int = 0) -> Path:
    """A file of `size` incompressible, reproducible bytes, written 4 MiB at a time."""
    step = 4 << 20
    with open(path, "wb") as f:
        for i, off in enumerate(range(0, size, step)):
            f.write(pattern(min(step, size - off), seed=seed * 1_000_003 + i))
    return path


def expected_cid(path: Path) -> str:
    """The content id of a small file, computed here from contentid's definition."""
    data = path.read_bytes()
    leaves = b"".join(contentid.leaf(data[i : i + SEG]) for i in range(0, len(data), SEG))
    return contentid.root(len(data), leaves or contentid.leaf(b""))


def logs(nodes: Sequence[NodeProc]) -> str:
    return "\n".join(f"--- {n.root.name} ({n.node_id[:12]})\n{n.log()[-2500:]}" for n in nodes)


def cli(
    node: NodeProc | Path, *args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    root = node.root if isinstance(node, NodeProc) else node
    return run_cli(*args, "--data-dir", root, timeout=timeout)


def ok(r: subprocess.CompletedProcess[bytes], nodes: Sequence[NodeProc] = ()) -> Any:
    """Assert exit 0; returns the parsed stdout when it is JSON."""
    assert r.returncode == 0, (
        f"{r.args[3:]} exited {r.returncode}\nstderr: {r.stderr.decode(errors='replace')}\n{logs(nodes)}"
    )
    out = r.stdout.decode()
    return json.loads(out) if out.strip().startswith(("{", "[")) else out


def files(node: NodeProc | Path) -> dict[str, dict[str, Any]]:
    """key -> row of `files --json` (read beside a running node, or with none)."""
    return {row["key"]: row for row in ok(cli(node, "files", "--json"))}


def get_to(node: NodeProc | Path, key: str, out: Path, nodes: Sequence[NodeProc] = ()) -> dict[str, Any]:
    result: dict[str, Any] = ok(cli(node, "get", key, "-o", out, "--json"), nodes)
    return result


def full_mesh(nodes: Sequence[NodeProc]) -> bool:
    ids = {n.node_id for n in nodes}
    return all(n.connected() >= ids - {n.node_id} for n in nodes)


def start_network(nodes: Sequence[NodeProc], *opts: str, first_opts: Sequence[str] = ()) -> None:
    """Start nodes[0], then the others with it as their bootstrap; wait for full membership."""
    boot = nodes[0].start(*first_opts, *opts)
    for n in nodes[1:]:
        n.start("--bootstrap", boot.listen, *opts)
    wait_until(lambda: full_mesh(nodes), MESH_WAIT, f"{len(nodes)}-node full membership", nodes)


def join(node: NodeProc, boot: NodeProc, members: Sequence[NodeProc]) -> None:
    """Start `node` with `boot` as bootstrap; wait until it and every member see each other."""
    node.start("--bootstrap", boot.listen)
    wait_until(lambda: full_mesh([*members, node]), MESH_WAIT, f"{node.root.name} to join", [*members, node])


def expected_object_files(root: Path) -> set[str]:
    """The object files the repo of the (stopped or running) node at `root` accounts for."""
    keyring = KeyRing(load_master_key(root / "master.key"))
    with Repo.open(root / "p2p.db", readonly=True) as repo:
        cids = [o.cid for o in repo.list_objects()]
    return {f"objects/{shard_path(keyring.object_name(c), SHARD_WIDTH, SHARD_DEPTH)}" for c in cids}


# -- 1. store through a daemon: verified copies on every peer ----------------------------------------------
def test_store_through_daemon_places_verified_copies(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    a, b, c = nodes
    src = source(tmp_path / "src", SMALL, seed=1)
    with running(nodes):
        start_network(nodes)
        assert (a.root / "ctl.sock").exists()
        r = ok(cli(a, "store", "doc", src, "--json"), nodes)
        assert r == {
            "key": "doc",
            "cid": expected_cid(src),
            "size": SMALL,
            "deduplicated": False,
            "replicated_to": r["replicated_to"],
            "replica_target": 2,
            "failed": {},
        }
        assert sorted(r["replicated_to"]) == sorted([b.node_id, c.node_id])
        # The daemon did the work (an embedded node could not have taken A's data dir lock anyway).
        assert f"event=stored key=doc cid={r['cid']} size={SMALL} replicas=2/2" in a.log()

        for peer in (b, c):  # each replica serves the get itself, from its own verified copy
            out = tmp_path / f"out-{peer.root.name}"
            got = get_to(peer, "doc", out, nodes)
            assert got == {
                "key": "doc",
                "cid": r["cid"],
                "size": SMALL,
                "source": "local",
                "peer_id": None,
                "holder_count": 0,
                "kept": False,
                "repaired": False,
            }
            assert out.read_bytes() == src.read_bytes()
            assert files(peer)["doc"]["cid"] == r["cid"]

        shares = ok(cli(a, "shares", "--json"))
        assert {s["peer_id"] for s in shares if s["cid"] == r["cid"]} == {b.node_id, c.node_id}


# -- 2. get on a fresh node ------------------------------------------------------------------------------
def test_get_on_a_fresh_node_fetches_from_a_holder(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 4)
    a, b, c, d = nodes
    src = source(tmp_path / "src", SMALL, seed=2)
    with running(nodes):
        start_network(nodes[:3])
        r = ok(cli(a, "store", "doc", src, "--json"), nodes)
        assert sorted(r["replicated_to"]) == sorted([b.node_id, c.node_id])
        join(d, a, [a, b, c])
        assert files(d) == {}
        out = tmp_path / "out"
        got = get_to(d, "doc", out, nodes)
        assert got["peer_id"] in {a.node_id, b.node_id, c.node_id}
        assert (got["key"], got["cid"], got["size"]) == ("doc", r["cid"], SMALL)
        assert out.read_bytes() == src.read_bytes()
        assert files(d) == {}  # a get keeps no copy
        assert object_files(d.root) == []
        kept = ok(cli(d, "get", "doc", "-o", tmp_path / "kept", "--keep", "--json"), nodes)
        assert kept["kept"] is True and (tmp_path / "kept").read_bytes() == src.read_bytes()
        assert "doc" in files(d)  # now a local replica, under D's keys
        assert ok(cli(d, "get", "doc", "-o", tmp_path / "again", "--json"), nodes)["source"] == "local"


# -- 3. delete everywhere, and on a node that was offline --------------------------------------------------
def test_delete_reaches_every_node_and_an_offline_one_after_restart(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 5)
    for n in nodes:  # every node holds a copy: the delete must reach each (the default places 2)
        (n.root / "config").write_text("replicas = all\n")
    a, b, c, d, e = nodes
    src = source(tmp_path / "src", SMALL, seed=3)
    with running(nodes):
        start_network([a, b, c, e])
        r = ok(cli(a, "store", "gone", src, "--json"), nodes)
        assert sorted(r["replicated_to"]) == sorted([b.node_id, c.node_id, e.node_id])
        assert "gone" in files(e)

        assert e.stop() == 0  # SIGTERM: E goes offline holding a copy
        wait_until(
            lambda: all(e.node_id not in n.connected() for n in (a, b, c)),
            20,
            "the others to see E gone",
            nodes,
        )
        join(d, a, [a, b, c])  # a node that never held it

        dr = ok(cli(b, "delete", "gone", "--json"), nodes)
        assert dr["key"] == "gone" and dr["cid"] == r["cid"] and dr["local"] is True
        assert dr["object_removed"] is True
        assert sorted(dr["confirmed_by"]) == sorted([a.node_id, c.node_id, d.node_id])

        for n in (a, b, c, d):
            g = cli(n, "get", "gone", "-o", tmp_path / f"o-{n.root.name}")
            assert g.returncode == 3, (n.root.name, g.returncode, g.stderr)
            assert not (tmp_path / f"o-{n.root.name}").exists()
            assert files(n) == {}
            assert object_files(n.root) == []

        e.start("--bootstrap", a.listen)  # back, with its stale copy; it hears of the delete on connect
        wait_until(lambda: "gone" not in files(e), 20, "the restarted node to drop the deleted file", nodes)
        assert object_files(e.root) == []
        g = cli(e, "get", "gone", "-o", tmp_path / "o-e")
        assert g.returncode == 3, g.stderr
        with Repo.open(e.layout.db, readonly=True) as repo:
            assert repo.get_tombstone(b"gone") is not None


def test_many_deletes_missed_offline_all_arrive_on_reconnect(tmp_path: Path) -> None:
    """Tombstones go to a reconnecting peer several at a time, and every one of them arrives."""
    from p2pfast.front import ctl

    a, e = make_nodes(tmp_path, 2)
    count = 200
    with running([a, e]):
        start_network([a, e])
        src = tmp_path / "src"
        src.mkdir()
        for i in range(count):
            (src / str(i)).write_bytes(os.urandom(100 + i))
            fd = os.open(src / str(i), os.O_RDONLY)
            try:
                r = ctl.call(
                    a.root / ctl.SOCKET_NAME, {"cmd": "store", "key": f"k{i}", "size": 100 + i}, [fd]
                )
            finally:
                os.close(fd)
            assert r["replicated_to"] == [e.node_id]
        assert len(files(e)) == count
        assert e.stop() == 0
        wait_until(lambda: e.node_id not in a.connected(), 20, "a to see e gone", [a, e])
        for i in range(count):
            ctl.call(a.root / ctl.SOCKET_NAME, {"cmd": "delete", "key": f"k{i}"})
        e.start("--bootstrap", a.listen)
        wait_until(lambda: files(e) == {}, 60, "e to apply every delete it missed", [a, e])
        assert object_files(e.root) == []
        with Repo.open(e.layout.db, readonly=True) as repo:
            assert len(repo.list_tombstones()) == count


def test_get_repairs_a_corrupt_local_copy_from_a_peer(tmp_path: Path) -> None:
    """A local object that fails its check part way: the get takes back what it wrote, fetches the
    object verified from a peer that holds it, and puts that copy in place of the bad one."""
    a, b = make_nodes(tmp_path, 2)
    src = source(tmp_path / "src", 3 * segments.SEGMENT_SIZE + 123, seed=21)
    with running([a, b]):
        start_network([a, b])
        r = ok(cli(a, "store", "r", src, "--json"), [a, b])
        assert r["replicated_to"] == [b.node_id]
        (rel,) = object_files(a.root)
        path = a.root / rel
        fd = os.open(path, os.O_RDWR)
        try:  # a flipped bit inside segment 2: segments 0 and 1 are written before the check fails
            off = 32 + 2 * (segments.SEGMENT_SIZE + 16) + 1000
            (byte,) = os.pread(fd, 1, off)
            os.pwrite(fd, bytes([byte ^ 0x10]), off)
        finally:
            os.close(fd)

        g = get_to(a, "r", tmp_path / "out", [a, b])
        assert g["repaired"] is True and g["peer_id"] == b.node_id
        assert file_hash(tmp_path / "out") == file_hash(src)
        assert "event=local_copy_repaired" in a.log()
        assert b.stop() == 0
        # the repaired copy is this node's own again: served locally, with nobody else to ask
        g = get_to(a, "r", tmp_path / "out2", [a])
        assert g["source"] == "local" and g["repaired"] is False
        assert file_hash(tmp_path / "out2") == file_hash(src)
        # which key names it, and where it came from, did not change
        with Repo.open(a.layout.db, readonly=True) as repo:
            (row,) = repo.list_files()
            assert (row.key, row.cid, row.origin) == (b"r", r["cid"], None)
            assert [s.peer for s in repo.list_shares()] == [b.node_id]


# -- 4. a replica killed during a large store ------------------------------------------------------------
def test_replica_killed_mid_store_leaves_no_partial_object(tmp_path: Path) -> None:
    size = 300 << 20
    nodes = make_nodes(tmp_path, 3)
    a, b, c = nodes
    src = source(tmp_path / "big", size, seed=4)
    with running(nodes):
        start_network(nodes)
        argv = cli_argv("store", "big", src, "--json", "--data-dir", a.root)
        store = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with killing(store):
            # C has begun receiving once its temp file exists; then it dies without a word.
            wait_until(
                lambda: temp_files(c.root) or store.poll() is not None, 120, "C to start receiving", nodes
            )
            assert store.poll() is None, "the store finished before C began receiving: nothing was tested"
            c.kill()
            stdout, stderr = store.communicate(timeout=180)
        assert store.returncode == 0, stderr.decode(errors="replace") + logs(nodes)
        r = json.loads(stdout)
        assert r["size"] == size and r["replica_target"] == 2
        assert r["replicated_to"] == [b.node_id]
        assert list(r["failed"]) == [c.node_id]

        # B's copy is whole and verified.
        out = tmp_path / "out-b"
        assert get_to(b, "big", out, nodes)["source"] == "local"
        assert file_hash(out) == file_hash(src)
        out.unlink()

        assert temp_files(c.root), "C's partial temp file should still be there before its restart"
        c.start("--bootstrap", a.listen)  # the dirty flag makes its start-up reconcile the store
        # The partial object went at start-up, before C took anything new:
        assert "event=reconcile action=removed_temp_file" in c.log()
        # then A or B finds the file one copy short of its 3 and copies it to C (repair): C ends with
        # exactly the object files its repo lists, the whole verified file, and nothing in objects/tmp.
        wait_until(lambda: "big" in files(c) and not temp_files(c.root), 180, "C's repair copy of big", nodes)
        under_objects = [
            p.relative_to(c.root).as_posix() for p in (c.root / "objects").rglob("*") if p.is_file()
        ]
        assert sorted(under_objects) == sorted(expected_object_files(c.root)) and len(under_objects) == 1
        out = tmp_path / "out-c"
        assert get_to(c, "big", out, nodes)["source"] == "local"
        assert file_hash(out) == file_hash(src)


# -- 5. a holder serving corrupt bytes -----------------------------------------------------------------
def test_get_fails_over_from_a_holder_with_a_corrupt_copy(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    b, c, d = nodes
    src = source(tmp_path / "src", SMALL, seed=5)
    with running(nodes):
        start_network([b, c])
        r = ok(cli(b, "store", "x", src, "--json"), nodes)
        assert r["replicated_to"] == [c.node_id]  # only B and C hold it

        (obj,) = object_files(b.root)  # B holds one object: flip a byte inside its segment 1
        with open(b.root / obj, "r+b") as f:
            f.seek(SEG + 4096)
            byte = f.read(1)[0]
            f.seek(SEG + 4096)
            f.write(bytes([byte ^ 1]))
        # B itself refuses to hand it out. (To stdout, a pipe here: into a file, B's get would repair its
        # copy from C, and this test needs B to keep the bad one.)
        bad = cli(b, "get", "x")
        assert bad.returncode == 4, bad.stderr
        assert len(bad.stdout) <= SEG  # at most segment 0, which checked

        # D joins through B, so B is its first session and the first holder it asks (D has no shares to
        # rank by); C is learned from B's peer exchange, later.
        join(d, b, [b, c])
        failed_on_b = f"event=holder_failed peer={b.node_id[:12]}"
        reports: list[dict[str, Any]] = []
        for attempt in range(3):
            out = tmp_path / f"out-{attempt}"
            got = get_to(d, "x", out, nodes)
            assert got["cid"] == r["cid"] and got["size"] == SMALL
            assert out.read_bytes() == src.read_bytes()  # every time, whoever was asked first
            reports.append(got)
            if failed_on_b in d.log():
                break
        assert failed_on_b in d.log(), f"B was never tried\n{logs(nodes)}"
        assert f"event=holder_failed peer={c.node_id[:12]}" not in d.log()
        assert files(d) == {}
        # B reads a whole CHUNK (4 MiB, more than this file) before it sends, so it refused before its
        # first byte: every byte of that get came from C, and the report must name C, not B.
        assert reports[-1]["peer_id"] == c.node_id, (
            f"get reported source {reports[-1]['source'][:12]} (B is {b.node_id[:12]}, C is "
            f"{c.node_id[:12]}) though B failed and C served every byte\n{d.log()}"
        )


# -- 6. no daemon: the embedded node -----------------------------------------------------------------
def test_cli_without_daemon_uses_an_embedded_node(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 4)
    a, b, x, y = nodes  # x and y never run a daemon
    src = source(tmp_path / "src", SMALL, seed=6)
    with running(nodes):
        start_network([a, b])
        cfg = tmp_path / "embedded.conf"
        cfg.write_text(f"# the embedded node dials out to a running node\nbootstrap={a.listen}\n")
        for n in (x, y):
            assert not (n.root / "ctl.sock").exists() and not (n.root / "node.json").exists()

        r = ok(cli(x, "store", "emb", src, "--json", "--config", cfg), nodes)
        assert r["cid"] == expected_cid(src) and r["size"] == SMALL and r["failed"] == {}
        # it waited for the peer exchange of its bootstrap node, so the whole network got a copy
        assert sorted(r["replicated_to"]) == sorted([a.node_id, b.node_id]) and r["replica_target"] == 2
        assert files(x)["emb"]["cid"] == r["cid"]  # stored locally too
        assert not (x.root / "node.json").exists()  # it did not listen
        for n in (a, b):
            out = tmp_path / f"out-{n.root.name}"
            assert get_to(n, "emb", out, nodes)["source"] == "local"
            assert out.read_bytes() == src.read_bytes()

        out = tmp_path / "out-y"
        got = ok(cli(y, "get", "emb", "-o", out, "--json", "--config", cfg), nodes)
        assert got["peer_id"] in {a.node_id, b.node_id} and got["cid"] == r["cid"]
        assert out.read_bytes() == src.read_bytes()
        assert files(y) == {}


# -- 7. many stores at once through one daemon -------------------------------------------------------
def test_fifty_concurrent_stores_through_one_daemon(tmp_path: Path) -> None:
    n_files = 50
    nodes = make_nodes(tmp_path, 3)
    a, b, c = nodes
    srcs = [source(tmp_path / f"src{i}", 10_000 + i * 777, seed=100 + i) for i in range(n_files)]
    with running(nodes):
        start_network(nodes)
        deadline = time.monotonic() + 120
        with contextlib.ExitStack() as stack:
            procs = [
                stack.enter_context(
                    killing(
                        subprocess.Popen(
                            cli_argv("store", f"f{i}", p, "--json", "--data-dir", a.root),
                            env=cli_env(),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                        )
                    )
                )
                for i, p in enumerate(srcs)
            ]
            results = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
        for i, (p, (stdout, stderr)) in enumerate(zip(procs, results, strict=True)):
            assert p.returncode == 0, f"store f{i}: exit {p.returncode}: {stderr.decode()}\n{logs(nodes)}"
            r = json.loads(stdout)
            assert r["key"] == f"f{i}" and r["cid"] == expected_cid(srcs[i]) and r["failed"] == {}
            assert sorted(r["replicated_to"]) == sorted([b.node_id, c.node_id])

        for n in (b, c):
            held = files(n)
            assert {k: v["cid"] for k, v in held.items()} == {
                f"f{i}": expected_cid(p) for i, p in enumerate(srcs)
            }

        # Every file reads back verified from a node other than the one it was stored through.
        with contextlib.ExitStack() as stack:
            gets = []
            for i in range(n_files):
                holder = (b, c)[i % 2]
                argv = cli_argv("get", f"f{i}", "-o", tmp_path / f"out{i}", "--data-dir", holder.root)
                gets.append(
                    stack.enter_context(
                        killing(subprocess.Popen(argv, env=cli_env(), stderr=subprocess.PIPE))
                    )
                )
            errs = [g.communicate(timeout=max(1.0, deadline - time.monotonic()))[1] for g in gets]
        for i, (g, err) in enumerate(zip(gets, errs, strict=True)):
            assert g.returncode == 0, f"get f{i}: exit {g.returncode}: {err.decode()}"
            assert (tmp_path / f"out{i}").read_bytes() == srcs[i].read_bytes()


# -- 8. replicas = N ---------------------------------------------------------------------------------
def test_replicas_setting_places_exactly_that_many_copies(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 5)
    a, others = nodes[0], nodes[1:]
    cfg = tmp_path / "a.conf"
    cfg.write_text("replicas = 2\n")
    src = source(tmp_path / "src", 50_000, seed=8)
    with running(nodes):
        start_network(nodes, first_opts=("--config", str(cfg)))
        r = ok(cli(a, "store", "k", src, "--json"), nodes)
        assert r["replica_target"] == 2 and len(r["replicated_to"]) == 2 and r["failed"] == {}
        holders = sorted(n.node_id for n in others if "k" in files(n))
        assert holders == sorted(r["replicated_to"])
        for n in others:
            assert (len(object_files(n.root)) == 1) == (n.node_id in holders)
        shares = ok(cli(a, "shares", "--json"))
        assert sorted(s["peer_id"] for s in shares if s["cid"] == r["cid"]) == holders
