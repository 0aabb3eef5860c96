"""Bit rot, with real node processes (tests/helpers/netnodes.py) and the real CLI: a byte flipped in a
holder's object file on disk is found by `scrub --now` and repaired from a peer's verified copy; a
corrupt sole holder is reported (exit 4, one log line), its copy kept, and repaired once another node
holds a good copy (by the next `scrub --now`, or by itself when that peer connects); the background pass
runs on its own at `scrub_period`; the state survives a restart."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import cli_argv, cli_env, error_lines, file_hash, killing, object_files, pattern, run_cli

from p2pfast.front import ctl
from p2pfast.store import segments

SEG = segments.SEGMENT_SIZE
MESH_WAIT = 30.0
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def cli(node: NodeProc, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args, "--data-dir", node.root, timeout=120)


def logs(nodes: Sequence[NodeProc]) -> str:
    return "\n".join(f"--- {n.root.name} ({n.node_id[:12]})\n{n.log()[-3000:]}" for n in nodes)


def ok(r: subprocess.CompletedProcess[bytes], nodes: Sequence[NodeProc] = ()) -> Any:
    assert r.returncode == 0, f"{r.args[3:]} exited {r.returncode}\n{r.stderr.decode()}\n{logs(nodes)}"
    return json.loads(r.stdout)


def source(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(pattern(size, seed=seed))
    return path


def flip_byte(node: NodeProc, offset: int) -> tuple[Path, bytes]:
    """Flip one bit of the node's one object file at `offset`; returns its path and its bytes now."""
    (rel,) = object_files(node.root)
    path = node.root / rel
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))
    return path, path.read_bytes()


def start_pair(a: NodeProc, b: NodeProc, *opts: str) -> None:
    b.start(*opts)
    a.start("--bootstrap", b.listen, *opts)
    wait_until(lambda: b.node_id in a.connected() and a.node_id in b.connected(), MESH_WAIT, "a-b", [a, b])


def doc_fields(section: str) -> list[str]:
    """The first column of the first table of a `## ` section of docs/cli.md (test_json.py's rule)."""
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    body = {h.strip().strip("`"): t for h, t in zip(parts[1::2], parts[2::2], strict=True)}[section]
    table = body[body.index("| --- |") :].split("\n\n")[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)


def scrub_status(node: NodeProc) -> dict[str, Any]:
    status = ok(cli(node, "status", "--json"))
    return dict(status["scrub"])


# -- 1. a flipped byte on a holder, a good copy on its peer ------------------------------------------
def test_scrub_now_finds_a_flipped_byte_and_repairs_it_from_a_peer(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    src = source(tmp_path / "src", 3 * SEG + 777, seed=31)
    with running([a, b]):
        start_pair(a, b)
        stored = ok(cli(a, "store", "rot", src, "--json"), [a, b])
        assert stored["replicated_to"] == [b.node_id]
        path, bad_bytes = flip_byte(a, 32 + 2 * (SEG + 16) + 999)  # inside segment 2

        r = ok(cli(a, "scrub", "--now", "--json"), [a, b])
        assert list(r) == doc_fields("scrub --now --json")
        assert (r["checked"], r["bytes_checked"], r["bad"], r["repaired"], r["unrepaired"]) == (
            1,
            src.stat().st_size,
            1,
            1,
            0,
        ), r
        assert a.log().count("event=scrub_bad_copy") == 1
        assert f"event=scrub_bad_copy cid={stored['cid']}" in a.log()
        assert f"event=scrub_repaired cid={stored['cid']} source={b.node_id[:12]}" in a.log()
        assert path.read_bytes() != bad_bytes  # a new file in its place
        s = scrub_status(a)
        assert list(s) == doc_fields("scrub --json")
        assert (s["checked"], s["bad"], s["repaired"], s["unrepaired"], s["running"]) == (1, 1, 1, 0, False)
        assert s["last_pass_started_at"] <= s["last_pass_ended_at"] < s["next_due_at"]
        # a second pass finds nothing wrong: the new copy verifies
        again = ok(cli(a, "scrub", "--now", "--json"), [a, b])
        assert (again["bad"], again["repaired"]) == (0, 0)
        assert a.log().count("event=scrub_bad_copy") == 1

        assert b.stop() == 0
        got = ok(cli(a, "get", "rot", "-o", tmp_path / "out", "--json"), [a])
        assert (got["source"], got["repaired"]) == ("local", False)  # this node's own copy, unaided
        assert file_hash(tmp_path / "out") == file_hash(src)
        assert a.stop() == 0
    # kept across the restart (read from DATA_DIR/scrub.json with no daemon), and in the table
    assert (scrub_status(a)["checked"], scrub_status(a)["bad"]) == (1, 0)  # the second pass's counts
    table = cli(a, "status")
    assert table.returncode == 0 and "==== SCRUB ====" in table.stdout.decode()
    shown = cli(a, "scrub")
    assert shown.returncode == 0 and "next pass due:" in shown.stdout.decode()


# -- 2. a corrupt sole holder ------------------------------------------------------------------------
def test_a_corrupt_sole_holder_is_kept_and_reported_then_repaired_once_a_peer_has_a_copy(
    tmp_path: Path,
) -> None:
    a, b = make_nodes(tmp_path, 2)
    src = source(tmp_path / "src", 2 * SEG + 5, seed=32)
    stored = ok(cli(a, "store", "only", src, "--json"))  # no daemon, no peer: A alone holds it
    cid = stored["cid"]
    path, bad_bytes = flip_byte(a, 32 + SEG // 2)  # inside segment 0

    # no daemon: the command's own node runs the pass, and logs on the command's stderr
    r = cli(a, "scrub", "--now", "--json")
    assert r.returncode == 4, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["bad"], summary["repaired"], summary["unrepaired"]) == (1, 0, 1)
    assert summary["unrepaired_cids"] == [cid]
    lines = error_lines(r.stderr)
    assert [ln for ln in lines if "event=scrub_bad_copy" in ln] == [lines[0]] and len(lines) == 2, lines
    assert f"cid={cid}" in lines[0] and "level=WARNING" in lines[0]
    err = json.loads(lines[1])
    assert (err["code"], err["exit"]) == ("integrity_error", 4) and "kept" in err["message"]
    assert path.read_bytes() == bad_bytes  # the bad copy stays: there is nothing to replace it with
    s = scrub_status(a)
    assert (s["bad"], s["unrepaired"], s["unrepaired_cids"]) == (1, 1, [cid])

    with running([a, b]):
        # through the daemon: the same, and its one log line is the daemon's
        a.start()
        text = cli(a, "scrub", "--now")
        assert text.returncode == 4 and "1 bad, 0 repaired, 1 unrepaired" in text.stdout.decode()
        assert text.stderr.decode().startswith("p2pfast: integrity check failed: 1 bad copy kept")
        assert a.log().count("event=scrub_bad_copy") == 1
        assert path.read_bytes() == bad_bytes
        bad_get = cli(a, "get", "only", "-o", tmp_path / "bad-out")  # no peer to repair it from either
        assert bad_get.returncode == 4 and not (tmp_path / "bad-out").exists(), bad_get.stderr

        # B comes (A's retry on its connect finds no copy on it), then stores the same content itself:
        # now a good copy exists elsewhere
        assert a.log().count("event=scrub_unrepaired") == 1
        b.start("--bootstrap", a.listen)
        wait_until(lambda: a.log().count("event=scrub_unrepaired") == 2, 30, "a's retry", [a, b])
        ok(cli(b, "store", "same", src, "--json"), [a, b])
        fixed = ok(cli(a, "scrub", "--now", "--json"), [a, b])
        assert (fixed["bad"], fixed["repaired"], fixed["unrepaired"], fixed["unrepaired_cids"]) == (
            1,
            1,
            0,
            [],
        )
        assert f"event=scrub_repaired cid={cid} source={b.node_id[:12]}" in a.log()
        assert scrub_status(a)["unrepaired"] == 0
        assert b.stop() == 0
        got = ok(cli(a, "get", "only", "-o", tmp_path / "out", "--json"), [a])
        assert got["source"] == "local" and file_hash(tmp_path / "out") == file_hash(src)


def test_an_unrepaired_copy_is_repaired_when_a_peer_with_a_good_one_connects(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    src = source(tmp_path / "src", SEG + 3, seed=33)
    cid = ok(cli(a, "store", "k", src, "--json"))["cid"]
    ok(cli(b, "store", "k", src, "--json"))  # B holds its own copy, not yet connected to A
    path, bad_bytes = flip_byte(a, 40)
    assert cli(a, "scrub", "--now").returncode == 4
    with running([a, b]):
        a.start()
        assert path.read_bytes() == bad_bytes
        b.start("--bootstrap", a.listen)  # no command: A retries what it could not repair
        wait_until(lambda: "event=scrub_repaired" in a.log(), 30, "a to repair from b", [a, b])
        wait_until(lambda: scrub_status(a)["unrepaired"] == 0, 30, "the repair recorded", [a, b])
        assert path.read_bytes() != bad_bytes
        assert f"event=scrub_repaired cid={cid} source={b.node_id[:12]}" in a.log()
        assert b.stop() == 0
        out = tmp_path / "out"
        assert ok(cli(a, "get", "k", "-o", out, "--json"), [a])["source"] == "local"
        assert out.read_bytes() == src.read_bytes()


# -- 3. the background pass ------------------------------------------------------------------------------
def test_the_background_pass_runs_every_scrub_period_and_repairs(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    src = source(tmp_path / "src", 2 * SEG, seed=34)
    (a.root / "config").write_text("scrub_period = 1\nscrub_bandwidth = 64M\n")
    with running([a, b]):
        start_pair(a, b)
        stored = ok(cli(a, "store", "bg", src, "--json"), [a, b])
        assert stored["replicated_to"] == [b.node_id]
        wait_until(lambda: scrub_status(a)["checked"] == 1, 30, "a background pass", [a, b])
        flip_byte(a, 32 + SEG + 100)
        wait_until(lambda: f"event=scrub_repaired cid={stored['cid']}" in a.log(), 30, "the repair", [a, b])
        assert ok(cli(a, "scrub", "--now", "--json"), [a, b])["bad"] == 0  # the repaired copy verifies


# -- 4. progress, a graceful stop, and the pass resumed ----------------------------------------------------
def test_scrub_now_reports_progress_in_phase_scrub(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    sizes = [3 * SEG + 1, SEG, 0]  # an empty object is read (and its one segment checked) too
    for i, size in enumerate(sizes):
        ok(cli(a, "store", f"k{i}", source(tmp_path / f"s{i}", size, seed=40 + i), "--json"))
    with running([a]):
        a.start()
        events: list[dict[str, Any]] = []
        r = ctl.call(
            a.root / ctl.SOCKET_NAME,
            {"cmd": "scrub", "now": True, "progress": True},
            on_progress=events.append,
        )
        assert r["checked"] == 3 and r["bytes_checked"] == sum(sizes)
        assert {e["phase"] for e in events} == {"scrub"}
        assert events[0] == {"phase": "scrub", "done": 0, "total": sum(sizes), "peers": 1}
        assert events[-1]["done"] == sum(sizes)


def test_a_graceful_stop_ends_the_pass_between_objects_and_the_next_start_resumes_it(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    n = 4
    for i in range(n):
        ok(cli(a, "store", f"k{i}", source(tmp_path / f"s{i}", 2 * SEG, seed=50 + i), "--json"))
    # 1 MiB/s: each object takes about 2 s to read, the pass about 8 s
    (a.root / "config").write_text("scrub_bandwidth = 1M\n")
    with running([a]):
        a.start()
        argv = cli_argv("scrub", "--now", "--data-dir", a.root)
        scrubbing = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with killing(scrubbing):
            wait_until(lambda: "event=scrub_start" in a.log(), 30, "the pass to start", [a])
            assert a.stop() == 0  # SIGTERM: the object being read finishes, the pass stops after it
            _out, err = scrubbing.communicate(timeout=60)
        assert scrubbing.returncode == 10, err
        assert err.decode().startswith(
            "p2pfast: peer unavailable: the node is shutting down: the scrub stopped"
        )
        state = json.loads((a.root / "scrub.json").read_bytes())
        assert state["last"] is None and 0 < state["current"]["checked"] < n, state  # its place is kept
        (a.root / "config").write_text("scrub_bandwidth = none\n")
        a.start()  # an unfinished pass is due at once: resumed in the background from its place
        wait_until(lambda: "event=scrub_resume" in a.log(), 30, "the pass to resume", [a])
        wait_until(lambda: scrub_status(a)["last_pass_ended_at"] is not None, 30, "the resumed pass", [a])
        assert scrub_status(a)["checked"] == n  # the objects before the stop and those after it, once each


def test_scrub_now_stands_in_for_a_background_pass_under_way(tmp_path: Path) -> None:
    """An unreadable scrub.json makes a pass due at once, so the daemon starts one as it starts; `scrub
    --now` stops it at its next object and runs the whole pass itself, which then counts as the period's
    pass: no other starts after it."""
    (a,) = make_nodes(tmp_path, 1)
    n = 3
    for i in range(n):
        ok(cli(a, "store", f"k{i}", source(tmp_path / f"s{i}", SEG, seed=60 + i), "--json"))
    (a.root / "config").write_text("scrub_bandwidth = 1M\n")  # about 1 s an object
    (a.root / "scrub.json").write_bytes(b"\x00 not json")
    with running([a]):
        a.start()
        wait_until(lambda: "event=scrub_start" in a.log(), 30, "the background pass", [a])
        assert "event=scrub_state_unreadable" in a.log()
        r = ok(cli(a, "scrub", "--now", "--json"), [a])
        assert (r["checked"], r["bytes_checked"], r["bad"]) == (n, n * SEG, 0)  # every object, from the first
        s = scrub_status(a)
        assert s["running"] is False and s["checked"] == n, s
        assert a.log().count("event=scrub_start") == 2 and a.log().count("event=scrub_done") == 1
        due = datetime.datetime.fromisoformat(s["next_due_at"]) - datetime.datetime.fromisoformat(
            s["last_pass_started_at"]
        )
        assert due == datetime.timedelta(days=30)
