"""Real node processes on 127.0.0.1: `p2pfast revoke` expels a node from every member (also one that was
offline when it was revoked), and `p2pfast network rotate-key` leaves the revoked node's copy of the old
key opening nothing once the window ends, while the members go on together with their files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import pattern, run_cli

from p2pfast.datadir import Layout, init
from p2pfast.front import ctl
from p2pfast.repo.repo import Repo

TIMEOUT = 30  # every wait below is bounded by this
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def doc_fields(section: str) -> list[str]:
    """The first column of the first table of docs/cli.md's `## section` (as tests/cli/test_json.py)."""
    body = re.split(r"^## `?" + re.escape(section) + r"`?$", DOC.read_text(), flags=re.M)[1]
    table = body[body.index("| --- |") :].split("\n\n")[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)


def live(n: NodeProc) -> set[str]:
    """The peers the running daemon has a session with now (not the table's last word)."""
    rows = ctl.call(n.root / ctl.SOCKET_NAME, {"cmd": "peers"}, timeout=10)["rows"]
    return {r["peer_id"] for r in rows if r["status"] == "connected"}


def mesh(nodes: list[NodeProc]) -> bool:
    ids = {n.node_id for n in nodes}
    return all(live(n) >= ids - {n.node_id} for n in nodes)


def revoked_in_repo(n: NodeProc) -> set[str]:
    with Repo.open(n.layout.db, readonly=True) as repo:
        return {r[0] for r in repo.list_revocations()}


def log_from(n: NodeProc, offset: int) -> str:
    """What n logged after `offset` bytes of its log file (NodeProc.log() is only the tail)."""
    with open(n.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(n: NodeProc) -> int:
    return n.log_path.stat().st_size if n.log_path.exists() else 0


def cli(n: NodeProc, *args: str) -> tuple[int, Any]:
    r = run_cli(*args, "--data-dir", str(n.root))
    if r.returncode == 0 and "--json" in args:
        return 0, orjson.loads(r.stdout)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def start_all(nodes: list[NodeProc], *opts: str) -> None:
    boot = nodes[0].start(*opts)
    for n in nodes[1:]:
        n.start("--bootstrap", boot.listen, *opts)
    wait_until(lambda: mesh(nodes), TIMEOUT, "full mesh", nodes)


def assert_expelled(r: NodeProc, members: list[NodeProc], src: Path) -> None:
    """r has no session with any member, and nothing it asks of the network is done."""
    wait_until(
        lambda: all(r.node_id not in live(m) for m in members) and not live(r),
        TIMEOUT,
        "every member to drop the revoked node",
        [*members, r],
    )
    code, out = cli(r, "get", "after", "-o", str(src.parent / "r.out"))
    assert code != 0, out  # stored after the revoke: only members hold it, and none serves r
    code, out = cli(r, "store", "from-r", str(src), "--json")
    assert code == 0 and out["replicated_to"] == [], out
    for m in members:
        code, got = cli(m, "get", "from-r", "-o", str(src.parent / f"{m.root.name}.from-r"))
        assert code != 0, got
    assert not live(r)


def test_a_revoked_node_is_refused_by_every_member(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 4)
    a, b, away, r = nodes
    src = tmp_path / "src"
    src.write_bytes(pattern(200_000))
    with running(nodes):
        start_all(nodes)
        away.stop()  # offline while r is revoked
        code, out = cli(b, "revoke", r.node_id, "--json")
        assert code == 0, out
        assert isinstance(out, dict)
        assert list(out) == doc_fields("revoke --json")
        assert out["peer_id"] == r.node_id and out["revoked_by"] == b.node_id and not out["already"]
        assert set(out["sent_to"]) == {a.node_id}
        # a file stored after the revoke: r must not get it from anyone
        code, stored = cli(a, "store", "after", str(src), "--json")
        assert code == 0, stored
        assert_expelled(r, [a, b], src)
        assert r.node_id in revoked_in_repo(a) and r.node_id in revoked_in_repo(b)
        assert "refused" in r.log() or "revoked" in r.log()

        # the member that was away learns it from the first member it meets, and refuses r too (r is
        # still running and dials it: it knows its address)
        away.start("--bootstrap", a.listen)
        learnt = lambda: r.node_id in revoked_in_repo(away)  # noqa: E731
        wait_until(learnt, TIMEOUT, "the returning member to learn", nodes)
        assert_expelled(r, [a, b, away], src)
        wait_until(lambda: mesh([a, b, away]), TIMEOUT, "the members to stay together", nodes)
        code, got = cli(away, "get", "after", "-o", str(tmp_path / "away.out"))
        assert code == 0, got
        assert (tmp_path / "away.out").read_bytes() == src.read_bytes()

        # revoking again is no error, and a revoked node restarting is still refused by all
        code, again = cli(a, "revoke", r.node_id, "--json")
        assert code == 0 and again["already"] and again["revoked_by"] == b.node_id
        r.stop()
        mark = log_size(r)
        r.start("--bootstrap", a.listen)
        wait_until(lambda: "event=dial_failed" in log_from(r, mark), TIMEOUT, "its dial to fail", nodes)
        assert not live(r)
        for n in (a, b, away):
            assert n.stop() == 0
    for n in (a, b, away):
        assert "Traceback" not in n.log(), n.log()


def test_revoke_without_a_daemon_and_bad_node_ids(tmp_path: Path) -> None:
    (n,) = make_nodes(tmp_path, 1)
    other = "5e" * 32
    # no daemon: a node started for the command records it (and tells the members it reaches: none)
    code, out = cli(n, "revoke", other, "--json")
    assert code == 0 and out["sent_to"] == [] and not out["already"], out
    assert revoked_in_repo(n) == {other}
    with running([n]):
        n.start()
        code, out = cli(n, "revoke", other.upper(), "--json")  # the daemon loaded it at start
        assert code == 0 and out["already"] and out["peer_id"] == other, out
        code, out = cli(n, "revoke", "not-a-node")
        assert code == 5 and "not a node id" in str(out), out
        code, out = cli(n, "revoke", n.node_id)
        assert code == 5 and "cannot revoke itself" in str(out), out


def test_after_a_rotation_and_its_window_the_old_key_opens_nothing(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 4)
    a, b, c, r = nodes
    old_key = a.layout.network_key.read_bytes()
    # a stranger holding the old key under a fresh node identity (what a thief can do with it)
    thief = NodeProc(tmp_path / "thief")
    init(Layout.of(thief.root), old_key)
    src = tmp_path / "src"
    src.write_bytes(pattern(300_000, seed=2))
    with running([*nodes, thief]):
        start_all(nodes)
        code, stored = cli(a, "store", "before", str(src), "--json")
        assert code == 0, stored
        code, out = cli(a, "revoke", r.node_id, "--json")
        assert code == 0, out
        wait_until(lambda: all(r.node_id in revoked_in_repo(m) for m in (a, b, c)), TIMEOUT, "revoked", nodes)
        code, rot = cli(b, "network", "rotate-key", "--window", "4s", "--json")
        assert code == 0, rot
        assert isinstance(rot, dict) and list(rot) == doc_fields("network rotate-key --json")
        assert rot["generation"] == 1 and rot["window_s"] == 4 and rot["not_sent_to"] == []
        assert r.node_id not in rot["sent_to"]
        new_key = b.layout.network_key.read_bytes()
        assert new_key != old_key and b.layout.network_key_old.read_bytes() == old_key

        def keys_taken() -> bool:
            return all(m.layout.network_key.read_bytes() == new_key for m in (a, c))

        wait_until(keys_taken, TIMEOUT, "the members to take the new key", nodes)
        assert r.layout.network_key.read_bytes() == old_key  # the revoked node never got it
        for m in (a, b, c):
            assert (m.layout.network_key.stat().st_mode & 0o777) == 0o600

        # the window ends: the old key file goes, and whoever holds only the old key gets nowhere
        wait_until(
            lambda: not any(m.layout.network_key_old.exists() for m in (a, b, c)),
            TIMEOUT,
            "the window to end",
            nodes,
        )
        thief.start("--bootstrap", a.listen)
        wait_until(lambda: "event=dial_failed" in thief.log(), TIMEOUT, "the thief's dial to fail", nodes)
        assert not live(thief)
        assert all(thief.node_id not in live(m) for m in (a, b, c))
        r.stop()
        mark = log_size(r)
        r.start("--bootstrap", c.listen)
        wait_until(lambda: "event=dial_failed" in log_from(r, mark), TIMEOUT, "its dial to fail", nodes)
        assert not live(r)

        # the members go on with the new key: links made with the old one were closed and redialled
        wait_until(lambda: mesh([a, b, c]), TIMEOUT, "the members to reconnect with the new key", nodes)
        c.stop()
        c.start("--bootstrap", a.listen)  # a restart reads the new key from its file
        wait_until(lambda: mesh([a, b, c]), TIMEOUT, "a restarted member to rejoin", nodes)
        code, got = cli(c, "get", "before", "-o", str(tmp_path / "c.out"))
        assert code == 0, got
        assert (tmp_path / "c.out").read_bytes() == src.read_bytes()
        for n in (a, b, c):
            assert n.stop() == 0
    for n in (a, b, c):
        assert "Traceback" not in n.log(), n.log()


def test_a_member_away_for_the_whole_window_rejoins_with_a_fresh_invite(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    a, b, away = nodes
    src = tmp_path / "src"
    src.write_bytes(pattern(100_000, seed=3))
    with running(nodes):
        start_all(nodes)
        code, stored = cli(away, "store", "mine", str(src), "--json")
        assert code == 0, stored
        away.stop()
        code, rot = cli(a, "network", "rotate-key", "--window", "2s", "--json")
        assert code == 0, rot
        wait_until(lambda: not a.layout.network_key_old.exists(), TIMEOUT, "the window to end", nodes)
        wait_until(
            lambda: b.layout.network_key.read_bytes() == a.layout.network_key.read_bytes(),
            TIMEOUT,
            "b to hold the new key",
            nodes,
        )
        mark = log_size(away)
        away.start("--bootstrap", a.listen)
        wait_until(lambda: "event=dial_failed" in log_from(away, mark), TIMEOUT, "its old key to fail", nodes)
        assert not live(away)
        away.stop()

        invite = tmp_path / "invite.txt"
        r = run_cli("invite", "--data-dir", str(a.root))
        assert r.returncode == 0, r.stderr
        invite.write_bytes(r.stdout)
        # without the flag, a node holding data does not take another key
        serve = ("serve", "--data-dir", str(away.root), "--listen", "127.0.0.1:0")
        r = run_cli(*serve, "--join-file", str(invite))
        assert r.returncode == 8 and b"--rotated-key" in r.stderr, r.stderr
        away.start("--join-file", str(invite), "--rotated-key")
        wait_until(lambda: mesh(nodes), TIMEOUT, "the member to be back", nodes)
        assert away.layout.network_key.read_bytes() == a.layout.network_key.read_bytes()
        code, files = cli(away, "files", "--json")
        assert code == 0 and [f["key"] for f in files] == ["mine"], files
        for n in nodes:
            code, got = cli(n, "get", "mine", "-o", str(tmp_path / f"{n.root.name}.out"))
            assert code == 0, got
            assert (tmp_path / f"{n.root.name}.out").read_bytes() == src.read_bytes()
        for n in nodes:
            assert n.stop() == 0
