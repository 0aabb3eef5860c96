"""bench/simulate.py, the many-nodes-in-one-process harness, runs and reports what its docstring promises
(a small run: the figures at scale are the bench's business, not a test's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "simulate.py"


def test_simulate_reports_its_figures_as_one_json_line() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-P",
            str(SCRIPT),
            "--nodes",
            "6",
            "--idle",
            "0.5",
            "--gossip-interval",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for field in (
        "nodes",
        "converged_s",
        "view_converged_s",
        "links_max",
        "links_median",
        "gossip_bytes_per_node_s",
        "lookup_contacts_max",
        "join_s",
    ):
        assert field in out, out
    assert out["nodes"] == 6 and out["links_max"] == 5  # a network this small is a full mesh (node/links.py)
    assert out["gossip_bytes_per_node_s"] > 0  # an idle network still pings
    # a get by content id asks replicas + 2 = 5 members (the simulator runs replicas = 3); by key too
    # (the key's metadata is on the 4 ranked first for it), or none from a getter that keeps it itself
    by_key, by_cid = out["lookup_contacts"][0::2], out["lookup_contacts"][1::2]
    assert set(by_cid) == {5} and set(by_key) <= {0, 5}, out
