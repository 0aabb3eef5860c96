"""`get b3:…` and `files --network` end to end: real `p2pfast serve` processes on 127.0.0.1 with
`replicas = 1`, the real CLI as subprocesses, through each node's daemon and with none (an embedded node
that dials --bootstrap). Every process started here is killed by its PID when the test ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import cli_argv, cli_env, error_lines, killing, one_error_line, pattern, run_cli

MESH_WAIT = 30.0
CLI_TIMEOUT = 60.0
SMALL = 3 * 1024 * 1024 + 17  # several segments: ranged, verified fetches


def cli(node: NodeProc, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args, "--data-dir", node.root, timeout=CLI_TIMEOUT)


def logs(nodes: Sequence[NodeProc]) -> str:
    return "\n".join(f"--- {n.root.name} ({n.node_id[:12]})\n{n.log()[-2500:]}" for n in nodes)


def ok(r: subprocess.CompletedProcess[bytes], nodes: Sequence[NodeProc] = ()) -> Any:
    assert r.returncode == 0, (
        f"{r.args[3:]} exited {r.returncode}\n{r.stderr.decode(errors='replace')}\n{logs(nodes)}"
    )
    out = r.stdout.decode()
    return json.loads(out) if out.strip().startswith(("{", "[")) else out


def failed(r: subprocess.CompletedProcess[bytes], exit_code: int, code: str) -> str:
    """The one JSON error line of a --json command that failed with `exit_code`; returns its message."""
    assert r.returncode == exit_code, (r.returncode, r.stderr.decode(errors="replace"))
    (line,) = error_lines(r.stderr)
    err = json.loads(line)
    assert (err["code"], err["exit"]) == (code, exit_code), err
    return str(err["message"])


def network(nodes: Sequence[NodeProc], replicas: int = 1) -> None:
    """Start the nodes with `replicas` in each data dir's config, nodes[0] the bootstrap; full mesh."""
    for n in nodes:
        (n.root / "config").write_text(f"replicas = {replicas}\n")
    boot = nodes[0].start()
    for n in nodes[1:]:
        n.start("--bootstrap", boot.listen)
    ids = {n.node_id for n in nodes}
    wait_until(lambda: all(n.connected() >= ids - {n.node_id} for n in nodes), MESH_WAIT, "full mesh", nodes)


def local_keys(node: NodeProc) -> dict[str, str]:
    """key -> cid of the files this node holds (its own `files --json`)."""
    return {row["key"]: row["cid"] for row in ok(cli(node, "files", "--json"))}


# -- get by content id ----------------------------------------------------------------------------------
def test_get_by_content_id_from_a_holder_a_non_holder_and_nobody(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    a, b, c = nodes
    src = tmp_path / "src"
    src.write_bytes(pattern(SMALL, seed=11))
    with running(nodes):
        network(nodes)
        r = ok(cli(a, "store", "photos/cat.jpg", src, "--json"), nodes)
        cid = r["cid"]
        (replica,) = r["replicated_to"]
        other = b if replica == c.node_id else c
        assert "photos/cat.jpg" not in local_keys(other)

        got = ok(cli(a, "get", cid, "-o", tmp_path / "here", "--json"), nodes)  # the holder: its own copy
        assert (got["key"], got["cid"], got["size"], got["source"]) == (cid, cid, SMALL, "local")
        assert (tmp_path / "here").read_bytes() == src.read_bytes()

        got = ok(cli(other, "get", cid, "-o", tmp_path / "there", "--json"), nodes)  # fetched, verified
        assert (got["key"], got["source"], got["kept"]) == (cid, "peer", False)
        assert got["peer_id"] in (a.node_id, replica)
        assert (tmp_path / "there").read_bytes() == src.read_bytes()
        assert ok(cli(other, "files", "--json")) == []  # nothing kept

        piped = cli(other, "get", cid)  # to stdout (a pipe): the data and nothing else
        assert piped.returncode == 0 and piped.stdout == src.read_bytes(), piped.stderr

        nobody = "b3:" + "0" * 64
        assert "held neither by this node nor by its 2 peers" in failed(
            cli(other, "get", nobody, "-o", tmp_path / "none", "--json"), 3, "not_found"
        )
        assert not (tmp_path / "none").exists()
        r_text = cli(other, "get", nobody, "-o", tmp_path / "none")
        assert r_text.returncode == 3 and "not found" in one_error_line(r_text)

        for bad in ("b3:" + cid[3:-1], "b3:" + cid[3:].upper(), "b3:cat.jpg"):
            msg = failed(cli(other, "get", bad, "-o", tmp_path / "bad", "--json"), 5, "bad_input")
            assert "is not a content id" in msg
        assert "--keep" in failed(
            cli(other, "get", cid, "-o", tmp_path / "k", "--keep", "--json"), 5, "bad_input"
        )
        assert "reserved for content ids" in failed(cli(a, "store", cid, src, "--json"), 5, "bad_input")
        assert set(local_keys(a)) == {"photos/cat.jpg"}

        assert other.stop() == 0  # with no daemon: a node started for the command fetches it
        got = ok(
            cli(other, "get", cid, "-o", tmp_path / "embedded", "--json", "--bootstrap", a.listen), nodes
        )
        assert got["source"] == "peer" and (tmp_path / "embedded").read_bytes() == src.read_bytes()


# -- files --network ------------------------------------------------------------------------------------
def test_files_network_lists_every_key_with_its_holders_and_skips_a_silent_member(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    a, b, c = nodes
    stored = {"a/one": a, "a/two": a, "b/one": b, "c/one": c}
    with running(nodes):
        network(nodes)
        for i, (key, node) in enumerate(stored.items()):
            src = tmp_path / f"src{i}"
            src.write_bytes(pattern(1000 + i, seed=i))
            r = ok(cli(node, "store", key, src, "--json"), nodes)
            assert r["replica_target"] == 1 and len(r["replicated_to"]) == 1
        held = {n.node_id: local_keys(n) for n in nodes}  # the truth, from each node's own repo

        def expected(members: Sequence[NodeProc]) -> dict[tuple[str, str], int]:
            counts: dict[tuple[str, str], int] = {}
            for n in members:
                for key, cid in held[n.node_id].items():
                    counts[(key, cid)] = counts.get((key, cid), 0) + 1
            return counts

        everyone = expected(nodes)
        assert {k for k, _ in everyone} == set(stored) and set(everyone.values()) == {2}  # origin + 1
        for n in nodes:
            listing = ok(cli(n, "files", "--network", "--json"), nodes)
            assert (listing["member_count"], listing["unanswered"]) == (3, {})
            assert {(f["key"], f["cid"]): f["holder_count"] for f in listing["files"]} == everyone
            assert [f["key"] for f in listing["files"]] == sorted(stored)
            assert all(f["size"] >= 1000 for f in listing["files"])
        table = ok(cli(b, "files", "--network"), nodes)
        assert table.splitlines()[0].split() == ["KEY", "SIZE", "CONTENT", "ID", "HOLDERS"]
        assert table.splitlines()[-1] == "(4 files on 3 members)"

        # With no daemon on B: a node started for the command, its own files read from B's repo.
        assert b.stop() == 0
        listing = ok(cli(b, "files", "--network", "--json", "--bootstrap", a.listen), [a, c])
        assert listing["unanswered"] == {}
        members = [b, a, c] if listing["member_count"] == 3 else [b, a]
        assert {(f["key"], f["cid"]): f["holder_count"] for f in listing["files"]} == expected(members)
        b.start("--bootstrap", a.listen)
        ids = {n.node_id for n in nodes}
        wait_until(
            lambda: all(n.connected() >= ids - {n.node_id} for n in nodes), MESH_WAIT, "mesh again", nodes
        )

        # A member that does not answer (stopped, its connection still up) is left out with a warning.
        os.kill(c.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            argv = [cli_argv("files", "--network", "--json", "--data-dir", a.root)]
            argv.append(cli_argv("files", "--network", "--data-dir", a.root))
            procs = [
                subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
                for v in argv
            ]
            outs = []
            for p in procs:
                with killing(p):
                    outs.append((p.communicate(timeout=CLI_TIMEOUT), p.returncode))
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        ((js, js_err), js_rc), ((text, text_err), text_rc) = outs
        assert js_rc == 0 and text_rc == 0, (js_err, text_err)
        listing = json.loads(js)
        assert set(listing["unanswered"]) == {c.node_id} and listing["member_count"] == 2
        assert "no answer within" in listing["unanswered"][c.node_id]
        assert {(f["key"], f["cid"]): f["holder_count"] for f in listing["files"]} == expected([a, b])
        (warning,) = error_lines(text_err)
        assert warning.startswith(f"p2pfast: warning: {c.node_id[:16]} did not answer"), warning
        assert "its files are not counted" in warning
        assert text.decode().splitlines()[-1] == "(4 files on 2 members)"
        assert f"event=list_member_skipped peer={c.node_id[:12]}" in a.log()
