"""The README is a test: its recipes run as written, each "machine" a fresh HOME, on loopback.

The sh blocks are read from README.md itself, so a recipe that changes is tested as it now reads. Each
line runs in bash with the installed `p2pfast` first on PATH. What two machines on one host cannot share
is the only thing changed: every node gets `listen = 127.0.0.1:PORT` (a free port) added to the config
its `init` wrote, and `host-a:3000` in a line names that port on 127.0.0.1. A line ending in `&` starts a
daemon, which the test waits for (its control socket answers `status`, bounded) and kills by PID. A line
`export NAME=VALUE ...` sets those variables for the lines after it, as in one shell. A "machine" has
none of this one's AWS_* settings: it is fresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nodetools import cli_env

from p2pfast import config

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = str(Path(sys.executable).parent)


def sh_blocks(section: str) -> list[list[str]]:
    """The ```sh blocks between the heading `section` and the next heading, each as its command lines
    (comments after the command dropped)."""
    text = README.read_text()
    m = re.search(rf"^#+ {re.escape(section)}\n", text, re.M)
    assert m, f"README.md has no section {section!r}"
    rest = text[m.end() :]
    end = re.search(r"^#+ ", rest, re.M)
    body = rest[: end.start()] if end else rest
    blocks = re.findall(r"^```sh\n(.*?)^```$", body, re.M | re.S)
    return [[_command(ln) for ln in b.splitlines() if ln.strip() and not ln.startswith("#")] for b in blocks]


def _command(line: str) -> str:
    # A comment starts at "  # " (two spaces): no recipe line has a '#' of its own before that.
    return re.split(r"\s{2,}# ", line, maxsplit=1)[0].strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Machine:
    """One "machine": a HOME of its own, a working directory, its daemons."""

    home: Path
    port: int = field(default_factory=free_port)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_config: list[str] = field(default_factory=list)
    exported: dict[str, str] = field(default_factory=dict)

    @property
    def cwd(self) -> Path:
        return self.home / "work"

    @property
    def env(self) -> dict[str, str]:
        env = cli_env(HOME=str(self.home), PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "RCLONE_", "RESTIC_"))}
        return {**env, **self.exported}

    def run(self, line: str, subst: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        for old, new in subst.items():
            line = line.replace(old, new)
        if line.startswith("export "):
            for assignment in shlex.split(line.removeprefix("export ")):
                name, _, value = assignment.partition("=")
                self.exported[name] = value
            return subprocess.CompletedProcess(line, 0, b"", b"")
        if line.endswith("&"):
            log = open(self.home / f"daemon{len(self.daemons)}.log", "wb")  # noqa: SIM115 (kept open)
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {line[:-1].strip()}"],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            self.daemons.append(proc)
            self.wait_ready(proc)
            return subprocess.CompletedProcess(line, 0, b"", b"")
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, f"{line!r} exited {r.returncode}: {r.stderr.decode(errors='replace')}"
        if re.match(r"p2pfast (init|serve --join)", line):
            self.localise()
        return r

    def localise(self) -> None:
        """The one change two machines on one host need: each listens on its own loopback port."""
        path = self.home / ".p2p" / "config"
        assert path.is_file(), "init wrote no config file"
        with path.open("a") as f:
            f.write(f"listen = 127.0.0.1:{self.port}\n")
            f.writelines(line + "\n" for line in self.extra_config)

    def status(self) -> dict[str, object] | None:
        r = subprocess.run(
            ["p2pfast", "status", "--json"], cwd=self.cwd, env=self.env, capture_output=True, timeout=30
        )
        if r.returncode != 0:
            return None
        s: dict[str, object] = json.loads(r.stdout)
        return s if s.get("running") else None

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"daemon exited {proc.returncode}: {self.daemon_log()}"
            if self.status() is not None:
                return
            time.sleep(0.05)  # polling our own daemon's start-up, bounded by the deadline
        raise AssertionError(f"daemon not ready within {timeout} s: {self.daemon_log()}")

    def daemon_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.home.glob("daemon*.log")))

    def kill(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[list[Machine]]:
    made: list[Machine] = []
    for name in ("host-a", "host-b", "host-c"):
        m = Machine(tmp_path / name)
        m.cwd.mkdir(parents=True)
        made.append(m)
    try:
        yield made
    finally:
        for m in made:
            m.kill()


def _node_id(m: Machine) -> str:
    r = subprocess.run(["p2pfast", "id"], cwd=m.cwd, env=m.env, capture_output=True, timeout=30, check=True)
    return r.stdout.decode().strip()


def _wait_connected(m: Machine, peer_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["p2pfast", "peers", "--json"], cwd=m.cwd, env=m.env, capture_output=True, timeout=30
        )
        if r.returncode == 0 and any(
            peer_id in json.dumps(p) and p.get("status") == "connected" for p in json.loads(r.stdout)
        ):
            return
        time.sleep(0.1)  # bounded by the deadline: the peer is dialed as soon as the daemon starts
    raise AssertionError(f"{m.home.name} never connected to {peer_id[:16]}: {m.daemon_log()}")


def test_use_recipe_runs_as_written(machines: list[Machine]) -> None:
    (block,) = sh_blocks("Use")
    m = machines[0]
    cat = os.urandom(3000)
    (m.cwd / "cat.jpg").write_bytes(cat)  # `store photos/cat.jpg cat.jpg`: KEY, then FILE
    (m.cwd / "docs").mkdir()
    (m.cwd / "docs" / "a.txt").write_text("hello\n")
    outputs = [m.run(line, {}) for line in block]
    assert (m.cwd / "cat.jpg").read_bytes() == cat
    listing = outputs[block.index("p2pfast get backup/docs.tar | tar t")].stdout.decode()
    assert "docs/a.txt" in listing


def test_network_recipes_run_as_written(machines: list[Machine]) -> None:
    first, second, one_step, more = sh_blocks("A network")
    a, b, c = machines
    subst = {"host-a:3000": f"127.0.0.1:{a.port}"}
    for line in first:
        a.run(line, subst)
    invite = (a.cwd / "invite.txt").read_text().strip()
    assert invite.startswith("p2p1:") and f"@127.0.0.1:{a.port}/" in invite
    a_id = _node_id(a)

    # The second machine, init --join-file then serve: it finds host-a with no flag, from its config.
    (b.cwd / "invite.txt").write_text(invite + "\n")
    for line in second:
        b.run(line, subst)
    assert re.search(rf"^bootstrap = 127\.0\.0\.1:{a.port}$", (b.home / ".p2p" / "config").read_text(), re.M)
    _wait_connected(b, a_id)
    _wait_connected(a, _node_id(b))

    # The one-step flow on a machine with no node yet.
    (c.cwd / "invite.txt").write_text(invite + "\n")
    for line in one_step:
        c.run(line, subst)
    _wait_connected(c, a_id)
    for line in more:
        if line.startswith("p2pfast serve"):
            continue  # an alternative to the flows above, run in the bootstrap test below
        b.run(line, subst)

    # A store on the network, as "Storing on a network" shows it, from the second machine.
    (block,) = sh_blocks("Storing on a network")
    cat = os.urandom(200_000)
    (b.cwd / "cat.jpg").write_bytes(cat)
    outs = {}
    for line in block:
        if line == "p2pfast serve &":
            continue  # b's daemon already runs
        outs[line] = b.run(line, subst)
        if line.startswith("p2pfast store"):  # on both peers: a and c acknowledged their copies
            assert b"on 2/2 peers" in outs[line].stdout, outs[line].stdout
    assert (b.cwd / "cat.jpg").read_bytes() == cat


def test_bootstrap_alternative_runs_as_written(machines: list[Machine]) -> None:
    first, _second, _one_step, more = sh_blocks("A network")
    a, b, _c = machines
    # host-b is a bootstrap node that is down: the node must still join through host-a.
    subst = {"host-a:3000": f"127.0.0.1:{a.port}", "host-b:3000": f"127.0.0.1:{_c.port}"}
    for line in first:
        a.run(line, subst)
    # A node that holds the network key already (here: from the invite) names its bootstrap nodes.
    (b.cwd / "invite.txt").write_text((a.cwd / "invite.txt").read_text())
    b.run("p2pfast init --join-file invite.txt", {})
    (line,) = [ln for ln in more if ln.startswith("p2pfast serve")]
    b.run(line + " &", subst)
    _wait_connected(b, _node_id(a))


def test_operate_recipe_runs_as_written(machines: list[Machine]) -> None:
    (block,) = sh_blocks("Operate")
    m = machines[0]
    mport = free_port()
    m.extra_config.append(f"metrics_listen = :{mport}")
    m.run("p2pfast init", {})
    m.run("p2pfast serve &", {})
    outs = [m.run(line, {":9464": f":{mport}"}) for line in block]
    assert b"p2pfast_" in outs[-1].stdout  # the metrics exposition


def test_s3_recipe_runs_as_written(machines: list[Machine]) -> None:
    """The aws CLI, curl, rclone and restic, as the README shows them, against a fresh node."""
    (block,) = sh_blocks("S3 clients and browsers")
    m = machines[0]
    for tool in ("aws", "curl", "rclone", "restic"):
        if shutil.which(tool, path=m.env["PATH"]) is None:
            if os.environ.get("CI"):  # .ci/run installs them: missing there is a broken setup
                pytest.fail(f"{tool} is not installed; CI is set, so this test may not skip")
            pytest.skip(f"{tool} is not installed")
    cat = os.urandom(300_000)
    (m.cwd / "cat.jpg").write_bytes(cat)
    (m.cwd / "docs").mkdir()
    (m.cwd / "docs" / "a.txt").write_text("hello\n")
    (m.cwd / "docs" / "b.bin").write_bytes(os.urandom(70_000))
    m.run("p2pfast init", {})
    subst = {":3900": f":{free_port()}", ":8080": f":{free_port()}"}
    outs: dict[str, str] = {}
    for line in block:
        if line.startswith("export AWS_"):
            key = outs["p2pfast s3 key create"].split()
            akid, secret = key[key.index("access_key_id") + 1], key[key.index("secret_access_key") + 1]
            line = line.replace("P2P…", akid).replace(
                "AWS_SECRET_ACCESS_KEY=…", f"AWS_SECRET_ACCESS_KEY={secret}"
            )
        line = line.replace("RESTIC_PASSWORD=…", "RESTIC_PASSWORD=correct-horse-battery-staple")
        outs[line] = m.run(line, subst).stdout.decode()
    assert (m.cwd / "cat-copy.jpg").read_bytes() == cat and (m.cwd / "cat-web.jpg").read_bytes() == cat
    (listed,) = [v for k, v in outs.items() if " s3 ls " in k]
    assert "2026/cat.jpg" in listed
    files = m.run("p2pfast files --json", {}).stdout.decode()
    assert '"photos/docs/b.bin"' in files and '"backups/config"' in files  # rclone's and restic's objects


def test_config_example_parses(tmp_path: Path) -> None:
    text = README.read_text()
    (example,) = re.findall(r"^```ini\n(.*?)^```$", text, re.M | re.S)
    path = tmp_path / "config"
    path.write_text(example)
    parsed = config.parse_file(path)
    assert {"listen", "bootstrap", "replicas"} <= set(parsed)


def test_systemd_recipe_starts_the_units_exec_start(tmp_path: Path) -> None:
    """The README's systemd recipe, as far as one host without systemd as PID 1 can run it: `init` as
    the instance's user (HOME=/home/%i), then the unit's exact ExecStart= line with %i expanded; the node
    must report READY=1 on NOTIFY_SOCKET, as systemd would wait for."""
    (block,) = sh_blocks("Running under systemd")
    init_line = next(ln for ln in block if "p2pfast init" in ln)
    assert init_line == "sudo -u storage p2pfast init"
    unit = (README.parent / "systemd" / "p2pfast@.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    home = tmp_path / "home" / "storage"
    (home / "work").mkdir(parents=True)
    user = Machine(home)
    user.run(init_line.removeprefix("sudo -u storage "), {})  # sudo -u storage: the same, as that user
    argv = exec_start.replace("%i", "storage").replace("/home/storage", str(home))
    argv = argv.replace("/usr/local/bin/p2pfast", f"{BIN}/p2pfast")
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    proc = subprocess.Popen(
        argv.split(),
        env={**user.env, "NOTIFY_SOCKET": str(notify)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        got = b""
        while b"READY=1" not in got:
            got = sock.recv(4096)
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        sock.close()
    assert proc.stderr is not None
    assert b"p2pfast: serving node" in proc.stderr.read()
