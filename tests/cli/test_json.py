"""What scripts read, with real processes: every `--json` output against docs/cli.md's tables (through a
daemon and without one), keys that round-trip exactly, JSON error lines, and the global flags before the
command."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from netnodes import make_nodes, running, wait_until
from nodetools import error_lines, one_error_line, pattern, run_cli

from p2pfast import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEX64 = re.compile(r"[0-9a-f]{64}")


def doc_sections() -> dict[str, str]:
    """docs/cli.md's `## ` sections by heading (backticks dropped)."""
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    return {head.strip().strip("`"): body for head, body in zip(parts[1::2], parts[2::2], strict=True)}


def doc_fields(section: str) -> list[str]:
    """The first column of the first table of a section, in order."""
    body = doc_sections()[section]
    table = body[body.index("| --- |") :].split("\n\n")[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)


def rows_of_table(section: str, skip: int) -> list[list[str]]:
    """Every row of the section's tables after the first `skip` tables, as cells."""
    body = doc_sections()[section]
    tables = [t for t in re.split(r"\n\n", body) if t.startswith("| ")][skip:]
    return [
        [c.strip().strip("`") for c in line.strip("|").split("|")]
        for t in tables
        for line in t.splitlines()[2:]
    ]


def is_rfc3339(text: object) -> bool:
    return (
        isinstance(text, str)
        and text.endswith("Z")
        and datetime.datetime.fromisoformat(text).tzinfo is not None
    )


def ok_json(r: subprocess.CompletedProcess[bytes]) -> Any:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def json_error(r: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The one JSON error line on stderr (and nothing else there)."""
    lines = error_lines(r.stderr)
    assert len(lines) == 1, lines
    obj: dict[str, Any] = json.loads(lines[0])
    assert set(obj) == {"code", "exit", "message"} and obj["exit"] == r.returncode, obj
    return obj


# -- 1. the vocabulary ---------------------------------------------------------------------------------
def test_every_json_output_is_the_documented_one(tmp_path: Path) -> None:
    """Each command's JSON has exactly docs/cli.md's fields, named by the conventions: ids as peer_id,
    times RFC 3339, lists and counts apart; listings are the same through the daemon and without one."""
    a, b = make_nodes(tmp_path, 2)
    src = tmp_path / "src"
    src.write_bytes(pattern(300_000, seed=21))
    with running([a, b]):
        b.start()
        a.start("--bootstrap", b.listen)
        wait_until(lambda: b.node_id in a.connected(), 20, "a to connect to b", [a, b])
        stored = ok_json(run_cli("store", "doc", src, "--json", "--data-dir", a.root))
        assert list(stored) == doc_fields("store --json")
        assert stored["replicated_to"] == [b.node_id] and stored["replica_target"] == 1
        got = ok_json(run_cli("get", "doc", "-o", tmp_path / "out", "--json", "--data-dir", b.root))
        assert list(got) == doc_fields("get --json")
        assert (got["source"], got["peer_id"]) == ("local", None)  # b holds a replica
        live = {}
        for cmd in ("files", "shares", "peers"):
            live[cmd] = ok_json(run_cli(cmd, "--json", "--data-dir", a.root))
            assert live[cmd] and all(list(row) == doc_fields(f"{cmd} --json") for row in live[cmd]), live
        assert [r["created_at"] for r in live["files"]] and all(
            is_rfc3339(r["created_at"]) for r in live["files"]
        )
        assert [(s["peer_id"], is_rfc3339(s["acked_at"])) for s in live["shares"]] == [(b.node_id, True)]
        assert [(p["peer_id"], p["status"]) for p in live["peers"]] == [(b.node_id, "connected")]
        assert is_rfc3339(live["peers"][0]["last_seen_at"])
        network = ok_json(run_cli("files", "--network", "--json", "--data-dir", a.root))
        fields = doc_fields("files --network --json")
        assert list(network) == [f for f in fields if "[]." not in f]
        assert [list(r) for r in network["files"]] == [[f[len("files[].") :] for f in fields if "[]." in f]]
        assert (network["files"][0]["holder_count"], network["member_count"], network["unanswered"]) == (
            2,
            2,
            {},
        )
        status = ok_json(run_cli("status", "--json", "--data-dir", a.root))
        assert sorted(status) == sorted(doc_fields("status --json"))
        assert HEX64.fullmatch(status["node_id"]) and isinstance(status["uptime_s"], float)
        deleted = ok_json(run_cli("delete", "doc", "--json", "--data-dir", a.root))
        assert list(deleted) == doc_fields("delete --json")
        assert deleted["confirmed_by"] == [b.node_id] and deleted["local"] is True
        assert a.stop() == 0
    # no daemon: the same fields (and rows: test_operations compares them)
    assert all(
        list(r) == doc_fields("peers --json")
        for r in ok_json(run_cli("peers", "--json", "--data-dir", a.root))
    )
    offline = ok_json(run_cli("status", "--json", "--data-dir", a.root))
    assert sorted(offline) == sorted(doc_fields("status --json"))
    shown = ok_json(run_cli("config", "show", "--json", "--data-dir", a.root))
    assert all(list(v) == doc_fields("config show --json") for v in shown.values())
    types = {"string": str, "integer": int, "number": float, "array of strings": list}
    documented = {row[0]: row[1] for row in rows_of_table("config show --json", skip=1)}
    assert list(documented) == list(shown)
    for key, kind in documented.items():
        value = shown[key]["value"]
        if value is None:
            assert kind.endswith(" or null"), key
        else:
            assert type(value) is types[kind.removesuffix(" or null")], (key, value)


ODD_KEYS = [
    "plain",
    "a\nb",  # a newline
    "'a\\nb'",  # what show_key printed for the key above: the two used to list the same
    "tab\there",
    "back\\slash",
    "\x01ctl\x7f",
    '"quoted" = sign',
    "é ü ☃",
]


def test_keys_round_trip_exactly(tmp_path: Path) -> None:
    """`files --json` prints each key itself (JSON escapes it), with or without a daemon; results carry
    it too. The table escapes unprintable keys, so it stays one line per file."""
    (a,) = make_nodes(tmp_path, 1)
    src = tmp_path / "src"
    for i, key in enumerate(ODD_KEYS):
        src.write_bytes(pattern(1000 + i, seed=i))
        assert ok_json(run_cli("store", key, src, "--json", "--data-dir", a.root))["key"] == key
    listed = ok_json(run_cli("files", "--json", "--data-dir", a.root))
    assert sorted(r["key"] for r in listed) == sorted(ODD_KEYS)
    table = run_cli("files", "--data-dir", a.root)
    assert table.returncode == 0 and len(table.stdout.decode().splitlines()) == len(ODD_KEYS) + 1
    got = ok_json(run_cli("get", "a\nb", "-o", tmp_path / "out", "--json", "--data-dir", a.root))
    assert got["key"] == "a\nb" and got["size"] == 1001
    with running([a]):
        a.start()
        assert ok_json(run_cli("files", "--json", "--data-dir", a.root)) == listed
        deleted = ok_json(run_cli("delete", "'a\\nb'", "--json", "--data-dir", a.root))
        assert deleted["key"] == "'a\\nb'"
        assert sorted(r["key"] for r in ok_json(run_cli("files", "--json", "--data-dir", a.root))) == sorted(
            k for k in ODD_KEYS if k != "'a\\nb'"
        )


# -- 2. JSON errors ------------------------------------------------------------------------------------
def test_the_error_codes_are_the_documented_ones() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.P2PError)]
    codes = {c.name: c.exit_code for c in classes}
    assert len(codes) == len(classes)  # one code per class
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in codes)
    documented = {row[0]: int(row[1]) for row in rows_of_table("Errors", skip=1)}
    assert documented == {**codes, "usage": 2, "interrupted": 130}


def test_errors_are_one_json_line_with_json(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    out = tmp_path / "out"

    def missing(*where: str) -> dict[str, Any]:
        return json_error(run_cli("get", "nope", "-o", out, *where, "--data-dir", a.root))

    codes = {
        c.name: c.exit_code
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.P2PError)
    }
    err = missing("--json")
    # no such key here and no peer to ask: the errors.py class decides code and exit, which must agree
    assert codes[err["code"]] == err["exit"] and "nope" in err["message"]
    text = run_cli("get", "nope", "-o", out, "--data-dir", a.root)  # without --json: the text line
    assert text.returncode == 10 and one_error_line(text) == f"p2pfast: {err['message']}"
    bad = json_error(run_cli("store", "k", tmp_path / "absent", "--json", "--data-dir", a.root))
    assert (bad["code"], bad["exit"]) == ("bad_input", 5)
    nodir = json_error(run_cli("files", "--json", "--data-dir", tmp_path / "nothing"))
    assert (nodir["code"], nodir["exit"]) == ("config_error", 8)
    usage = json_error(run_cli("store", "--json", "--data-dir", a.root))  # no KEY, no FILE
    assert (usage["code"], usage["exit"]) == ("usage", 2) and "required" in usage["message"]
    with running([a]):
        a.start()
        assert missing("--json") == err  # raised in the daemon: the same code, exit and message
        refused = json_error(run_cli("store", "", tmp_path / "out", "--json", "--data-dir", a.root))
        assert (refused["code"], refused["exit"]) == ("bad_input", 5)


# -- 6. flags before the command -----------------------------------------------------------------------
def test_global_flags_before_or_after_the_command(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    src = tmp_path / "src"
    src.write_bytes(pattern(5000, seed=2))
    assert run_cli("--data-dir", a.root, "store", "k", src).returncode == 0
    before = ok_json(run_cli("--data-dir", a.root, "--json", "files"))
    after = ok_json(run_cli("files", "--data-dir", a.root, "--json"))
    assert before == after and [r["key"] for r in before] == ["k"]
    # in both places, the one after the command wins
    both = ok_json(run_cli("--data-dir", tmp_path / "elsewhere", "files", "--data-dir", a.root, "--json"))
    assert both == after
    conf = tmp_path / "p2p.conf"
    conf.write_text("replicas = 2\n")
    for argv in (
        ("--config", conf, "--log-level", "error", "config", "show", "--json"),
        ("config", "show", "--config", conf, "--log-level", "error", "--json"),
    ):
        shown = ok_json(run_cli(*argv, "--data-dir", a.root))
        assert shown["replicas"] == {"value": 2, "source": f"{conf}:1"}, argv
        assert shown["log_level"] == {"value": "error", "source": "flag"}, argv
    # --master-key-file before the command is the one read: a missing file stops it
    nokey = run_cli("--master-key-file", tmp_path / "no.key", "files", "--data-dir", a.root)
    assert nokey.returncode == 8 and "no.key" in one_error_line(nokey)
    # --json before the command: its error is JSON too
    err = json_error(run_cli("--json", "get", "nope", "-o", tmp_path / "o", "--data-dir", a.root))
    assert err["code"] in ("not_found", "peer_unavailable")
    # a command that takes no data dir says so
    demo = run_cli("--data-dir", a.root, "demo")
    assert demo.returncode == 2 and "demo takes no --data-dir" in demo.stderr.decode()


@pytest.mark.parametrize("flag", ["--data-dir", "--config", "--master-key-file", "--log-level"])
def test_global_flags_are_in_the_main_help(flag: str) -> None:
    r = run_cli("--help")
    assert r.returncode == 0 and flag in r.stdout.decode()
