"""Joining a network: invites from a file or stdin, `init --join` recording its bootstrap, `serve --join`
on an initialised node (adopt when it holds no data, refuse when it does), and the address `invite` names.
Real CLI processes and real daemons on 127.0.0.1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from netnodes import NodeProc, wait_until
from nodetools import cli_env, one_error_line, run_cli

from p2pfast import config


def _invite(node: NodeProc) -> str:
    r = run_cli("invite", "--data-dir", node.root)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


@pytest.fixture
def member(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "a"
    assert run_cli("init", "--data-dir", root).returncode == 0
    node = NodeProc(root)
    try:
        yield node.start()
    finally:
        node.kill()


def test_invite_asks_the_daemon_for_its_real_address(member: NodeProc) -> None:
    invite = _invite(member)
    # the daemon listens on port 0's choice: the invite names that port, not a default or a host name
    assert f"@{member.listen}/{member.node_id}" in invite


def test_invite_without_a_daemon_or_address_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "a"
    assert run_cli("init", "--data-dir", root).returncode == 0
    r = run_cli("invite", "--data-dir", root)
    assert r.returncode == 10
    line = one_error_line(r)
    assert "no daemon answers" in line and "--address HOST:PORT" in line
    r = run_cli("invite", "--data-dir", root, "--address", "127.0.0.1:4000")
    assert r.returncode == 0 and "@127.0.0.1:4000/" in r.stdout.decode()


def test_invite_on_a_wildcard_listen_says_which_address_it_chose(tmp_path: Path) -> None:
    root = tmp_path / "a"
    assert run_cli("init", "--data-dir", root).returncode == 0
    # 0.0.0.0 binds every interface, but the node is only ever dialled on 127.0.0.1 below
    node = NodeProc(root)
    try:
        node.start("--listen", "0.0.0.0:0")
        r = run_cli("invite", "--data-dir", root)
        assert r.returncode == 0, r.stderr
        port = node.listen.rpartition(":")[2]
        chosen = re.search(r"@([^/]+)/", r.stdout.decode())
        assert chosen is not None and chosen.group(1).endswith(f":{port}")
        note = r.stderr.decode()
        assert "listens on every interface" in note and chosen.group(1) in note and "--address" in note
    finally:
        node.kill()


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_init_join_records_the_bootstrap(tmp_path: Path, member: NodeProc, how: str) -> None:
    invite = _invite(member)
    root = tmp_path / "b"
    if how == "file":
        (tmp_path / "invite.txt").write_text(invite + "\n")
        r = run_cli("init", "--data-dir", root, "--join-file", tmp_path / "invite.txt")
    else:
        r = run_cli("init", "--data-dir", root, "--join", "-", input=(invite + "\n").encode())
    assert r.returncode == 0, r.stderr
    assert f"joined the network of {member.node_id[:16]} at {member.listen}" in r.stdout.decode()
    assert (root / "network.key").read_bytes() == (member.root / "network.key").read_bytes()
    conf = config.parse_file(root / "config")
    assert conf["bootstrap"][0] == (member.listen,)
    peers = json.loads(run_cli("peers", "--json", "--data-dir", root).stdout)
    assert member.node_id in json.dumps(peers) and member.listen in json.dumps(peers)
    # and a plain serve finds the network from that alone
    b = NodeProc(root)
    try:
        b.start()
        _connected_within(b, member.node_id)
    finally:
        b.kill()


def _connected_within(node: NodeProc, peer: str, timeout: float = 20) -> None:
    wait_until(
        lambda: peer in node.connected(), timeout, f"{node.root.name} connected to {peer[:12]}", [node]
    )


def test_serve_join_adopts_the_network_on_a_node_without_data(tmp_path: Path, member: NodeProc) -> None:
    root = tmp_path / "b"
    assert run_cli("init", "--data-dir", root).returncode == 0  # a network of its own, empty
    old_key = (root / "network.key").read_bytes()
    (tmp_path / "invite.txt").write_text(_invite(member))
    b = NodeProc(root)
    try:
        b.start("--join-file", str(tmp_path / "invite.txt"))
        _connected_within(b, member.node_id)
    finally:
        b.kill()
    assert (root / "network.key").read_bytes() == (member.root / "network.key").read_bytes() != old_key
    adopted = [ln for ln in b.log().splitlines() if "held no data and now belongs to the network" in ln]
    assert len(adopted) == 1


def test_serve_join_refuses_a_node_that_holds_data(tmp_path: Path, member: NodeProc) -> None:
    root = tmp_path / "b"
    assert run_cli("init", "--data-dir", root).returncode == 0
    (tmp_path / "f").write_bytes(b"mine")
    assert run_cli("store", "--data-dir", root, "k", tmp_path / "f").returncode == 0
    old_key = (root / "network.key").read_bytes()
    (tmp_path / "invite.txt").write_text(_invite(member))
    r = run_cli(
        "serve", "--data-dir", root, "--listen", "127.0.0.1:0", "--join-file", tmp_path / "invite.txt"
    )
    assert r.returncode == 8
    line = one_error_line(r)
    assert "belongs to another network and holds 1 file" in line and "another --data-dir" in line
    assert (root / "network.key").read_bytes() == old_key


def test_serve_join_on_the_command_line_warns_about_argv(tmp_path: Path, member: NodeProc) -> None:
    b = NodeProc(tmp_path / "b")
    try:
        b.start("--join", _invite(member))
        _connected_within(b, member.node_id)
    finally:
        b.kill()
    assert "stays in this process's command line" in b.log()
    assert (tmp_path / "b" / "config").is_file()  # serve --join on a new dir initialises it fully


def test_init_writes_a_config_whose_every_line_parses(tmp_path: Path) -> None:
    root = tmp_path / "a"
    r = run_cli("init", "--data-dir", root, env=cli_env(HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    text = (root / "config").read_text()
    commented = [ln for ln in text.splitlines() if re.match(r"# \w+ = ", ln)]
    assert {ln.split()[1] for ln in commented} == set(config.PARSERS)
    # every default, uncommented, parses to exactly the defaults
    (tmp_path / "all").write_text("\n".join(ln[2:] for ln in commented) + "\n")
    cfg = config.load({"data_dir": str(root)}, str(tmp_path / "all"))
    defaults = config.load({"data_dir": str(root)})
    # (compared as the file spells them: an unset db and DATA_DIR/p2p.db are the same path)
    assert {k: v for k, v, _src in config.show(cfg)} == {k: v for k, v, _src in config.show(defaults)}
    # the data dir's own config is the one its commands read
    (root / "config").write_text("replicas = 2\n")
    shown = json.loads(run_cli("config", "show", "--json", "--data-dir", root).stdout)
    assert shown["replicas"]["source"] == f"{root / 'config'}:1"


def test_init_with_a_config_elsewhere_names_its_data_dir(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "p2p.conf"
    conf.parent.mkdir()
    root = tmp_path / "node"
    r = run_cli("init", "--data-dir", root, "--config", conf)
    assert r.returncode == 0, r.stderr
    assert config.parse_file(conf)["data_dir"][0] == str(root)
    shown = json.loads(run_cli("config", "show", "--json", "--config", conf).stdout)
    assert shown["data_dir"]["value"] == str(root)
