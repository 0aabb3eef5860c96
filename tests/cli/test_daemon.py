"""The daemon side of the control socket with real processes: a CLI command that goes away mid-request
(Ctrl-C, a killed pipeline) leaves nothing stored and nothing half-written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from netnodes import make_nodes, running, wait_until
from nodetools import cli_argv, cli_env


def tmp_files(root: Path) -> list[Path]:
    tmp = root / "objects" / "tmp"
    return [p for p in tmp.iterdir()] if tmp.is_dir() else []


def test_a_store_whose_client_dies_stores_nothing(tmp_path: Path) -> None:
    (a,) = make_nodes(tmp_path, 1)
    with running([a]):
        a.start()
        client = subprocess.Popen(
            cli_argv("store", "half", "-", "--data-dir", a.root),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cli_env(),
        )
        try:
            assert client.stdin is not None
            client.stdin.write(b"x" * (3 << 20))  # a pipeline still producing: the daemon is reading it
            client.stdin.flush()
            wait_until(lambda: bool(tmp_files(a.root)), 20, "the daemon to start the store")
            client.kill()  # the CLI dies (kill -9 of the pipeline); its stdin then ends
            client.wait(timeout=20)
            client.stdin.close()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=20)
        # The daemon saw the client go: the store is abandoned, not completed with what it had read.
        wait_until(lambda: not tmp_files(a.root), 20, "the temp file to be removed")
        out = subprocess.run(
            cli_argv("files", "--json", "--data-dir", a.root), capture_output=True, env=cli_env(), timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == []
        assert "event=ctl_client_gone cmd=store" in a.log()
