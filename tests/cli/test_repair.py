"""Self-healing with real node processes: files whose holders die get their copies back with no command
typed, the copies a member that returns makes surplus go again, a deleted file stays deleted,
`p2pfast repair` runs a pass and says what it moved (node/repair.py), and nodes SIGKILLed at random,
between stores or while one is in flight, lose no acknowledged file."""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from netnodes import NodeProc, make_nodes, running, wait_until
from nodetools import (
    error_lines,
    feed,
    killing,
    object_files,
    pattern,
    run_cli,
    start_cli,
    temp_files,
    wait_for,
)

from p2pfast.repo.repo import Repo
from p2pfast.store import segments

# A test's settings: a pass every 2 s, a crashed member declared dead within 1 + 4 + 3 s (its session
# gone 1 s, up to 4 s of probes, a suspicion unrefuted 3 s) and counted out 3 s after, copies unthrottled.
FAST = (
    "replicas = 2\nrepair_interval = 2\nrepair_grace = 3\nrepair_bandwidth = none\ngossip_interval = 1\n"
    "suspect_after = 1\ndead_after = 3\n"
)
TARGET = 3  # replicas = 2: the storing node and two more


def configure(nodes: list[NodeProc], text: str = FAST) -> None:
    for n in nodes:
        (n.root / "config").write_text(text)


def holders(nodes: list[NodeProc], key: str) -> set[str]:
    """The nodes whose repo has `key` (read-only: the node process owns the data dir)."""
    out = set()
    for n in nodes:
        with Repo.open(n.layout.db, readonly=True) as repo:
            if repo.get_file(key.encode()) is not None:
                out.add(n.node_id)
    return out


def start_all(nodes: list[NodeProc]) -> None:
    first = nodes[0]
    first.start()
    for n in nodes[1:]:
        n.start("--bootstrap", first.listen)
    ids = {n.node_id for n in nodes}
    for n in nodes:
        wait_until(
            lambda n=n: ids - {n.node_id} <= n.connected(), 30, f"{n.root.name} to see everyone", nodes
        )


def store(node: NodeProc, key: str, data: bytes, tmp: Path) -> dict[str, object]:
    src = tmp / f"src-{key.replace('/', '_')}"
    src.write_bytes(data)
    r = run_cli("store", key, src, "--data-dir", node.root, "--json")
    assert r.returncode == 0, r.stderr
    report: dict[str, object] = orjson.loads(r.stdout)
    return report


def test_lost_holders_are_replaced_and_the_copies_a_returning_one_makes_surplus_go(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 6)
    configure(nodes)
    rnd = random.Random(13)
    files = {f"f/{i:02d}": pattern(rnd.choice([0, 1, 4096, 70_000, 1_500_000]), seed=i) for i in range(30)}
    with running(nodes):
        start_all(nodes)
        cids: dict[str, str] = {}
        for i, (key, data) in enumerate(files.items()):
            report = store(nodes[i % 6], key, data, tmp_path)
            assert len(report["replicated_to"]) == 2, report  # type: ignore[arg-type]
            cids[key] = str(report["cid"])
        copies = {key: holders(nodes, key) for key in files}
        assert all(len(h) == TARGET for h in copies.values()), copies
        # the two nodes that hold the most copies die at once
        by_load = sorted(nodes[1:], key=lambda n: -sum(n.node_id in h for h in copies.values()))
        dead = by_load[:2]
        lost = sum(any(d.node_id in h for d in dead) for h in copies.values())
        assert lost >= 15, lost  # most files lose at least one holder
        for d in dead:
            d.kill()
        live = [n for n in nodes if n not in dead]

        def healed() -> bool:
            return all(len(holders(live, key)) >= TARGET for key in files)

        # bound: declared dead (8 s, above) + grace 3 s + a pass (2 s interval, 2 s debounce) + the copies
        # (≈ 20 MiB here)
        wait_until(healed, 90, "every file back to 3 copies on live nodes", live)
        # every copy is verified where it is: a scrub on each holder reads back and checks every object
        # it holds against its content id (those the stores reported), none bad
        for n in live:
            held = {cids[key] for key in files if n.node_id in holders([n], key)}
            r = run_cli("scrub", "--now", "--json", "--data-dir", n.root)
            assert r.returncode == 0, r.stderr
            scrub = orjson.loads(r.stdout)
            assert (scrub["checked"], scrub["bad"]) == (len(held), 0), (n.root.name, scrub, held)

        # and the node says so once a pass has counted the copies: the pass that saw the last copy
        # land may have begun before it did (2 s interval, 2 s debounce)
        def says_healed() -> bool:
            status = orjson.loads(run_cli("status", "--data-dir", live[0].root, "--json").stdout)
            return status["repair"]["last_pass"] is not None and status["under_replicated"] == 0

        wait_until(says_healed, 15, "status to report no file under-replicated", live)
        # one of the dead comes back: its copies are one too many now, and one holder of each such file
        # drops its copy (the one ranked last of the holders that did not store it themselves)
        dead[0].start("--bootstrap", live[0].listen)
        back = [*live, dead[0]]
        wait_until(lambda: {n.node_id for n in live} <= dead[0].connected(), 30, "the returning node", back)
        wait_until(
            lambda: all(len(holders(back, key)) == TARGET for key in files),
            60,
            "every file back at exactly 3 copies",
            back,
        )
        for key, data in files.items():  # and readable from any node
            out = tmp_path / "check"
            r = run_cli("get", key, "-o", out, "--data-dir", rnd.choice(back).root)
            assert r.returncode == 0 and out.read_bytes() == data, (key, r.stderr)


def test_repair_command_reports_what_it_copied_and_a_deleted_file_stays_deleted(tmp_path: Path) -> None:
    a, b, c = make_nodes(tmp_path, 3)
    # replicas = 2 with three nodes: every node holds everything; passes only when asked (1 h interval)
    configure([a, b, c], FAST.replace("repair_interval = 2", "repair_interval = 3600"))
    with running([a, b, c]):
        start_all([a, b])
        store(a, "kept", pattern(300_000, seed=1), tmp_path)
        store(a, "doomed", pattern(5_000, seed=2), tmp_path)
        assert holders([a, b], "kept") == {a.node_id, b.node_id}
        # c joins later: the files are one copy short of their target until c has them
        c.start("--bootstrap", a.listen)
        wait_until(lambda: {a.node_id, b.node_id} <= c.connected(), 30, "c to join", [a, b, c])
        r = run_cli("repair", "--data-dir", a.root, "--json")
        assert r.returncode == 0, r.stderr
        report = orjson.loads(r.stdout)
        assert report["objects"] == 2 and report["copies"] + report["left_to"] >= 1, report
        shown = run_cli("status", "--data-dir", a.root).stdout.decode()
        assert "==== REPAIR ====" in shown and "(command): 2 files checked" in shown, shown
        text = run_cli("repair", "--data-dir", b.root)
        assert text.returncode == 0 and text.stdout.startswith(b"repair: 2 objects checked"), text
        wait_until(
            lambda: holders([c], "kept") == {c.node_id} and holders([c], "doomed") == {c.node_id},
            30,
            "c to receive its copies (from whichever holder ranks first)",
            [a, b, c],
        )
        # c goes away; the delete happens while it is gone; c comes back with its old copy
        c.kill()
        r = run_cli("delete", "doomed", "--data-dir", a.root, "--json")
        assert r.returncode == 0, r.stderr
        assert holders([a, b], "doomed") == set()
        c.start("--bootstrap", a.listen)
        wait_until(lambda: {a.node_id, b.node_id} <= c.connected(), 30, "c to come back", [a, b, c])
        for n in (a, b, c):
            r = run_cli("repair", "--data-dir", n.root, "--json")
            assert r.returncode == 0, r.stderr
        wait_until(lambda: holders([a, b, c], "doomed") == set(), 30, "the delete to reach c", [a, b, c])
        for n in (a, b, c):  # and no repair brought it back anywhere
            run_cli("repair", "--data-dir", n.root, "--json")
        assert holders([a, b, c], "doomed") == set()
        assert holders([a, b, c], "kept") == {a.node_id, b.node_id, c.node_id}


def test_random_kills_and_restarts_during_stores_lose_nothing_and_end_at_target(tmp_path: Path) -> None:
    # Stores through random live nodes while nodes are SIGKILLed and restarted at random (at most two down
    # at a time); at the end, with every node back, each acknowledged file has its 3 copies and reads
    # back byte for byte. A fixed seed: a failure can be replayed.
    rnd = random.Random(2026)
    nodes = make_nodes(tmp_path, 5)
    configure(nodes, FAST.replace("repair_grace = 3", "repair_grace = 1"))
    acked: dict[str, bytes] = {}
    with running(nodes):
        start_all(nodes)
        down: list[NodeProc] = []
        for step in range(24):
            up = [n for n in nodes if n not in down]
            if down and (len(down) == 2 or rnd.random() < 0.4):
                back = down.pop(rnd.randrange(len(down)))
                back.start("--bootstrap", up[0].listen)
            elif rnd.random() < 0.35:
                victim = rnd.choice(up)
                victim.kill()
                down.append(victim)
            up = [n for n in nodes if n not in down]
            key, data = f"r/{step:02d}", pattern(rnd.choice([1, 5000, 300_000]), seed=100 + step)
            src = tmp_path / "src"
            src.write_bytes(data)
            r = run_cli("store", key, src, "--data-dir", rnd.choice(up).root, "--json")
            if r.returncode == 0:  # acknowledged: it must survive whatever comes next
                acked[key] = data
        for n in down:
            n.start("--bootstrap", nodes[0].listen if nodes[0] not in down else nodes[-1].listen)
        ids = {n.node_id for n in nodes}
        wait_until(lambda: all(ids - {n.node_id} <= n.connected() for n in nodes), 60, "everyone back", nodes)
        assert len(acked) >= 20, len(acked)
        wait_until(
            lambda: all(len(holders(nodes, key)) >= TARGET for key in acked),
            90,
            "every acknowledged file at 3 copies",
            nodes,
        )
        for key, data in acked.items():
            out = tmp_path / "out"
            r = run_cli("get", key, "-o", out, "--data-dir", rnd.choice(nodes).root)
            assert r.returncode == 0 and out.read_bytes() == data, (key, r.stderr)


@dataclass(frozen=True, slots=True)
class InFlight:
    victim: NodeProc | None  # the node killed, if any
    running: bool  # the store had not ended when the kill came
    receiving: bool  # the victim, a peer, held a temp file of this store then
    reading: bool  # the kill came while the origin still waited for the rest of the input
    returncode: int
    out: bytes
    err: bytes


def store_in_flight_and_kill(
    rnd: random.Random, origin: NodeProc, others: list[NodeProc], key: str, data: bytes, tmp: Path, kill: bool
) -> InFlight:
    """`store KEY` on `origin` in the background; while it is in flight, maybe SIGKILL one node: the
    origin itself, a peer seen receiving the file, or another. The moment is one seen from outside, never
    a sleep for a peer: part of the input written to `store -` and the origin's temp file there (it reads
    the rest), or a peer's new temp file (the origin sends), then a short random delay."""
    before = {n.root: set(temp_files(n.root)) for n in [origin, *others]}

    def receiving(n: NodeProc) -> bool:
        return bool(set(temp_files(n.root)) - before[n.root])

    from_pipe = rnd.random() < 0.5
    if from_pipe:
        proc = start_cli("store", key, "-", "--json", "--data-dir", origin.root, stdin=subprocess.PIPE)
    else:
        src = tmp / "src"
        src.write_bytes(data)
        proc = start_cli("store", key, src, "--json", "--data-dir", origin.root)
    victim, running_then, received = None, False, False
    with killing(proc):
        rest = data
        if from_pipe:
            cut = rnd.randrange(1, len(data))
            feed(proc, data[:cut], 30)
            rest = data[cut:]
            wait_for(lambda: receiving(origin) or proc.poll() is not None, 30, "the store to begin")
            candidates = others
        else:  # the input is the origin's already: wait until a peer receives (or the store is over)
            wait_for(
                lambda: any(receiving(n) for n in others) or proc.poll() is not None,
                30,
                "a replica to begin receiving",
                interval=0.002,
            )
            candidates = [n for n in others if receiving(n)] or others
        if kill:
            time.sleep(rnd.uniform(0, 0.025))  # a random moment within the transfer, not a wait for a peer
            victim = origin if rnd.random() < 0.4 else rnd.choice(candidates)
            received = victim is not origin and receiving(victim)
            running_then = proc.poll() is None
            victim.kill()
        out, err = proc.communicate(rest if from_pipe else None, timeout=120)
    reading = from_pipe and running_then
    return InFlight(victim, running_then, received, reading, proc.returncode, out, err)


RECOVERY = ("removed_temp_file", "quarantined_object", "missing_object")


def test_random_kills_that_land_while_stores_are_in_flight_lose_no_acknowledged_file(tmp_path: Path) -> None:
    # Stores of a few MiB each, and while each is in flight a node is SIGKILLed at random (most steps):
    # the node the store went to, a peer receiving it, or another; killed nodes come back at random (at
    # most two down at a time). A store counts as acknowledged only when it exited 0 with its JSON report.
    # At the end, with every node back and its start-up recovery done: each acknowledged file has its 3
    # copies and reads back byte for byte, no temp file is left, and every object file under a final name
    # is a whole one its repo lists (scrub reads each back and verifies it); one moved to quarantine/ has
    # a whole object's size. A fixed seed: a failure can be replayed (the step and the kill are in each
    # assertion's message).
    rnd = random.Random(1313)
    nodes = make_nodes(tmp_path, 5)
    configure(nodes, FAST.replace("repair_grace = 3", "repair_grace = 1") + "scrub_bandwidth = none\n")
    acked: dict[str, bytes] = {}
    # What the kills hit: how many were made, came while the store ran (in_flight), while the origin
    # still read the input (reading); the origin itself (origin; origin_failed: the store failed), another
    # node (replica; receiving: it held a temp file of this store then; replica_failed: the report says
    # its copy failed).
    counters = "kills in_flight reading origin origin_failed replica receiving replica_failed"
    seen = dict.fromkeys(counters.split(), 0)
    steps = 30
    sizes: set[int] = set()
    with running(nodes):
        start_all(nodes)
        down: list[NodeProc] = []
        for step in range(steps):
            up = [n for n in nodes if n not in down]
            if down and (len(down) == 2 or rnd.random() < 0.4):
                back = down.pop(rnd.randrange(len(down)))
                back.start("--bootstrap", up[0].listen)
                up = [n for n in nodes if n not in down]
            origin = rnd.choice(up)
            key = f"m/{step:02d}"
            data = pattern(rnd.choice([2, 3, 5]) * (1 << 20) + rnd.randrange(1 << 16), seed=500 + step)
            sizes.add(len(data))
            others = [n for n in up if n is not origin]
            flight = store_in_flight_and_kill(rnd, origin, others, key, data, tmp_path, rnd.random() < 0.8)
            victim = flight.victim
            ctx = (
                step,
                key,
                len(data),
                origin.root.name,
                victim and victim.root.name,
                flight.returncode,
                flight.err,
            )
            if victim is not None:
                down.append(victim)
                seen["kills"] += 1
                seen["in_flight"] += flight.running
                seen["reading"] += flight.reading
            if flight.returncode == 0:  # acknowledged: it must survive whatever comes next
                report = orjson.loads(flight.out)
                assert report["key"] == key and report["size"] == len(data), (ctx, report)
                acked[key] = data
            else:  # only the loss of the node the store went to may fail it, and with its one line
                assert victim is origin and flight.returncode == 10, ctx
                assert len(error_lines(flight.err)) == 1 and b"Traceback" not in flight.err, ctx
            if victim is origin:
                seen["origin"] += 1
                seen["origin_failed"] += flight.returncode != 0
            elif victim is not None:
                seen["replica"] += 1
                seen["receiving"] += flight.receiving
                seen["replica_failed"] += victim.node_id in report["failed"]
        for n in down:
            n.start("--bootstrap", nodes[0].listen if nodes[0] not in down else nodes[-1].listen)
        ids = {n.node_id for n in nodes}
        wait_until(lambda: all(ids - {n.node_id} <= n.connected() for n in nodes), 60, "everyone back", nodes)
        recovered = {w: sum(n.log_path.read_text().count(f"action={w}") for n in nodes) for w in RECOVERY}
        print(f"acknowledged {len(acked)} of {steps} stores; kills: {seen}; start-up recovery: {recovered}")
        # The kills did land mid-store: some failed the store, some broke a replica's transfer.
        assert seen["in_flight"] >= seen["kills"] // 2 and seen["origin_failed"] >= 2, seen
        assert seen["replica_failed"] >= 1 and len(acked) >= steps // 2, (seen, len(acked))
        wait_until(
            lambda: all(len(holders(nodes, key)) >= TARGET for key in acked),
            90,
            "every acknowledged file at 3 copies",
            nodes,
        )

        def settled(n: NodeProc) -> bool:
            # No temp file (a repair copy still running ends on its own; a leftover never does), and the
            # object files under final names are as many as the objects its repo lists.
            with Repo.open(n.layout.db, readonly=True) as repo:
                rows = len(repo.list_objects())
            return not temp_files(n.root) and len(object_files(n.root)) == rows

        wait_until(
            lambda: all(settled(n) for n in nodes), 30, "no temp file, no object file without a row", nodes
        )
        # A node killed between an object's rename and its row's commit moved that file to quarantine/ at
        # start-up (store/objects.py): kept, never deleted, and whole: the size one of the payloads seals to.
        whole = {segments.file_size(size, segments.SEGMENT_SIZE) for size in sizes}
        for n in nodes:
            kept = [p for p in n.layout.quarantine.rglob("*") if p.is_file()]
            assert all(p.stat().st_size in whole for p in kept), (n.root.name, kept)
        for n in nodes:
            r = run_cli("scrub", "--now", "--json", "--data-dir", n.root)
            assert r.returncode == 0, (n.root.name, r.stderr)
            scrubbed = orjson.loads(r.stdout)
            assert scrubbed["bad"] == 0 and scrubbed["checked"] >= 1, (n.root.name, scrubbed)
        for key, data in acked.items():
            out_file = tmp_path / "out"
            r = run_cli("get", key, "-o", out_file, "--data-dir", rnd.choice(nodes).root)
            assert r.returncode == 0 and out_file.read_bytes() == data, (key, r.stderr)
