"""The p2pfast command line's handlers and main(): parser.py defines the command line, render.py prints the
results, and HANDLERS maps each command name to the function that runs it. Heavy modules are imported
inside the commands that use them, so that `p2pfast --help` and `p2pfast --version` start fast.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 integrity failure, 5 bad input, 6 storage/I-O error,
7 disk full, 8 config error, 9 protocol error, 10 peer unavailable, 70 internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfast import __version__
from p2pfast.front.parser import build_parser, parse_args
from p2pfast.front.render import (
    PROGRESS_MIN_BYTES,
    _Bars,
    _fail,
    _print_json,
    _print_status,
    _print_table,
    _scrub_lines,
    _shown,
    _when,
)
from p2pfast.units import iec as human

if TYPE_CHECKING:
    from p2pfast.datadir import LocalNode
    from p2pfast.layout import Layout
    from p2pfast.node import Node


def _layout(args: argparse.Namespace) -> Layout:
    from p2pfast.layout import Layout  # not datadir: a command that asks the daemon opens nothing

    cfg = args.config_obj
    return Layout.of(cfg.data_dir, cfg.master_key_file, cfg.db, cfg.network_key_file)


@contextmanager
def _node(args: argparse.Namespace) -> Iterator[LocalNode]:
    from p2pfast import selftest
    from p2pfast.datadir import LocalNode

    selftest.run()
    node = LocalNode(_layout(args))
    try:
        yield node
    finally:
        node.close()


# -- commands ---------------------------------------------------------------------------------------
def _read_invite(args: argparse.Namespace) -> tuple[bytes, str, str] | None:
    """The invite of --join INVITE, --join - (one line on stdin) or --join-file PATH, parsed; None if
    none was given. A file or stdin keeps the network key out of the process's argv."""
    from p2pfast import identity
    from p2pfast.errors import BadInput

    text = args.join
    if args.join_file is not None:
        try:
            text = Path(args.join_file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise BadInput(f"cannot read the invite file {args.join_file}: {exc.strerror}") from exc
    elif text == "-":
        text = sys.stdin.readline()
    return None if text is None else identity.parse_invite(text)


def _note_bootstrap(layout: Layout, addr: str, node_id: str) -> None:
    """The invite's member goes into the peers table, so `serve` dials it and `peers` lists it."""
    import time

    from p2pfast.repo.repo import Repo

    with Repo.open(layout.db, create=False) as repo:
        repo.upsert_peer(addr, node_id, time.time(), "known")


def _write_config(args: argparse.Namespace, layout: Layout, bootstrap: str | None) -> str:
    """init's config file: at --config PATH or DATA_DIR/config, unless one is there already (kept).
    Returns one line saying which."""
    from p2pfast import config
    from p2pfast.store.durable import write_file_durably

    path = Path(args.config).expanduser() if args.config else layout.config
    cfg = args.config_obj
    if path.exists():
        extra = f"; add 'bootstrap = {bootstrap}' to it to keep that node as a bootstrap" if bootstrap else ""
        return f"config {path} (already there, left as it is{extra})"
    settings = {"bootstrap": bootstrap} if bootstrap else {}
    if path != layout.config:  # a config elsewhere must name its data dir, or it would point at ~/.p2p
        settings["data_dir"] = str(layout.root)
    write_file_durably(path.parent, path, config.template(cfg, settings).encode(), mode=0o600)
    return f"config {path} (every key at its default, commented out{', bootstrap set' if bootstrap else ''})"


def cmd_init(args: argparse.Namespace) -> int:
    from p2pfast.datadir import init, load_identity

    layout = _layout(args)
    invite = _read_invite(args)
    init(layout, invite[0] if invite else None)
    ident = load_identity(layout)
    if invite is not None:
        _note_bootstrap(layout, invite[1], invite[2])
    print(f"initialised {layout.root}")
    print(f"node id {ident.node_id}")
    print(_write_config(args, layout, invite[1] if invite else None))
    if invite is not None:
        print(f"joined the network of {invite[2][:16]} at {invite[1]}: 'p2pfast serve' connects to it")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    from p2pfast.datadir import load_identity

    print(load_identity(_layout(args)).node_id)
    return 0


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def cmd_invite(args: argparse.Namespace) -> int:
    from p2pfast import identity
    from p2pfast.datadir import load_identity
    from p2pfast.errors import PeerUnavailable
    from p2pfast.front import ctl

    layout = _layout(args)
    ident = load_identity(layout)
    addr = args.address
    if addr is None:
        sock = layout.root / ctl.SOCKET_NAME
        try:  # the running daemon knows the address it really listens on
            listen = ctl.call(sock, {"cmd": "status"}, timeout=STATUS_TIMEOUT)["listen"]
        except ctl.DaemonNotRunning:
            raise PeerUnavailable(
                f"no daemon answers for {layout.root} to tell its listen address (is 'p2pfast serve' "
                "running, or still starting?): start it, or name the address others reach this node at "
                "with --address HOST:PORT"
            ) from None
        host, _, port = str(listen).rpartition(":")
        if _wildcard(host):
            import socket

            # The host name, not a resolved address: resolving it could ask a DNS server, and the
            # joining node resolves it where it runs anyway.
            host = socket.gethostname()
            print(
                f"p2pfast: the node listens on every interface ({listen}); the invite names {host}:{port}. "
                "Choose another with --address HOST:PORT",
                file=sys.stderr,
            )
        addr = f"{host}:{port}"
    print(identity.make_invite(ident.network_key, addr, ident.node_id))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from p2pfast import runtime
    from p2pfast.datadir import AlreadyInitialised, adopt_network, init
    from p2pfast.front import daemon

    cfg = args.config_obj
    layout = _layout(args)
    bootstrap = list(cfg.bootstrap)
    invite = _read_invite(args)
    if args.rotated_key and invite is None:
        from p2pfast.errors import BadInput

        raise BadInput("--rotated-key goes with --join or --join-file (the invite holds the new key)")
    if invite is not None:
        key, addr, member = invite
        if args.join not in (None, "-"):
            print(
                "p2pfast: the invite (with the network key) stays in this process's command line; "
                "'--join -' or '--join-file PATH' keep it out",
                file=sys.stderr,
            )
        try:
            init(layout, key)
        except AlreadyInitialised:
            if args.rotated_key and adopt_network(layout, key, rotated=True):
                print(
                    f"p2pfast: {layout.root} takes its network's rotated key from the invite of "
                    f"{member[:16]} at {addr} (its data and peers are kept)",
                    file=sys.stderr,
                )
            elif adopt_network(layout, key):
                print(
                    f"p2pfast: {layout.root} held no data and now belongs to the network of {member[:16]} "
                    f"at {addr} (the old network key and its peers are forgotten)",
                    file=sys.stderr,
                )
        else:
            joined = f"in the network of {member[:16]} at {addr}"
            print(f"p2pfast: initialised {layout.root} {joined}", file=sys.stderr)
            print(f"p2pfast: {_write_config(args, layout, addr)}", file=sys.stderr)
        _note_bootstrap(layout, addr, member)
        bootstrap.append(addr)

    async def main() -> None:
        node = _make_node(args, cfg.listen, tuple(bootstrap))
        await daemon.serve(node, cfg.shutdown_timeout, cfg.metrics_listen, cfg.s3_listen, cfg.gateway_listen)

    runtime.run(main())
    return 0


def _make_node(args: argparse.Namespace, listen: str | None, bootstrap: Sequence[str]) -> Node:
    """The node a data dir's config describes (`serve` listens; a command with no daemon only dials)."""
    from p2pfast.datadir import load_identity
    from p2pfast.node import Node

    cfg = args.config_obj
    layout = _layout(args)
    return Node(
        layout,
        load_identity(layout),
        listen=listen,
        bootstrap=tuple(bootstrap),
        limits=net_limits(cfg),
        replicas=cfg.replicas,
        tombstone_grace=cfg.tombstone_grace,
        max_object=cfg.max_object,
        max_storage=cfg.max_storage,
        repair=_repair_settings(cfg),
        scrub_bandwidth=cfg.scrub_bandwidth,
        scrub_period=cfg.scrub_period,
    )


def _repair_settings(cfg: Any) -> Any:
    from p2pfast.node.repair import Settings

    bandwidth = cfg.repair_bandwidth if cfg.repair_bandwidth is not None else 1 << 62  # none: unlimited
    return Settings(cfg.repair_interval, cfg.repair_grace, bandwidth, cfg.repair_concurrency)


def net_limits(cfg: Any) -> Any:
    from p2pfast.net.limits import NetLimits
    from p2pfast.proto.connection import Limits

    proto = Limits(
        max_frame=cfg.max_frame,
        max_streams=cfg.max_streams,
        handshake_timeout=cfg.handshake_timeout,
        idle_timeout=cfg.idle_timeout,
        # Ping well before the idle timeout, so a quiet but live peer is never dropped.
        ping_interval=min(15.0, cfg.idle_timeout / 4),
    )
    return NetLimits(
        max_connections=cfg.max_connections,
        max_links=cfg.max_links,
        max_pre_handshake=cfg.max_pre_handshake,
        gossip_interval=cfg.gossip_interval,
        suspect_after=cfg.suspect_after,
        dead_after=cfg.dead_after,
        proto=proto,
    )


def _open_repo(args: argparse.Namespace, readonly: bool = True):  # type: ignore[no-untyped-def]
    """The repo alone, without the data dir lock: peer rows may be read and pruned beside a running node
    (SQLite WAL serialises the writes)."""
    from p2pfast.datadir import key_hint
    from p2pfast.errors import ConfigError
    from p2pfast.repo.repo import Repo
    from p2pfast.store.keys import load_master_key

    layout = _layout(args)
    if not layout.db.exists():
        raise ConfigError(f"{layout.root} is not an initialised data dir (run 'p2pfast init')")
    # a leaked key stops every command, not only those using it
    load_master_key(layout.master_key_file, key_hint(layout))
    # create=False: a repo emptied by mistake is reported, never filled with a fresh schema
    return Repo.open(layout.db, readonly=readonly, create=False)


def _listing(
    args: argparse.Namespace,
    cmd: str,
    header: tuple[str, ...],
    cells: Callable[[dict[str, Any]], tuple[str, ...]],
    right: frozenset[int] = frozenset(),
) -> int:
    """`files`, `shares`, `peers`: the rows from the running daemon (it knows what is live), else from
    the repo read beside it (listings.py makes both); JSON, or a table with one line per row."""
    from p2pfast.front import ctl

    try:
        rows = ctl.call(_layout(args).root / ctl.SOCKET_NAME, {"cmd": cmd}, timeout=STATUS_TIMEOUT)["rows"]
    except ctl.DaemonNotRunning:
        _setup_logging(args)
        from p2pfast.front import listings  # the repo's rows: only when no daemon answers

        with _open_repo(args) as repo:
            rows = getattr(listings, cmd)(repo)
    if args.json:
        _print_json(rows)
        return 0
    _print_table([header, *(cells(r) for r in rows)], right=right)
    if not rows:
        print(f"(no {cmd})")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    return _listing(
        args,
        "peers",
        ("ID", "ADDRESS", "LAST SEEN", "STATUS"),
        lambda r: ((r["peer_id"] or "?")[:16], r["address"], _when(r["last_seen_at"]), r["status"]),
    )


def cmd_shares(args: argparse.Namespace) -> int:
    return _listing(
        args,
        "shares",
        ("CONTENT ID", "PEER", "ACKNOWLEDGED"),
        lambda r: (r["cid"][:15] + "…", r["peer_id"][:16], _when(r["acked_at"])),
    )


def cmd_files(args: argparse.Namespace) -> int:
    if getattr(args, "network", False):
        return _files_network(args)
    return _listing(
        args,
        "files",
        ("KEY", "SIZE", "CONTENT ID", "CREATED"),
        lambda r: (_shown(r["key"]), human(r["size"]), r["cid"][:15] + "…", _when(r["created_at"])),
        right=frozenset({1}),
    )


def _files_network(args: argparse.Namespace) -> int:
    """`files --network`: the merged listing of this node and its connected members (node/listing.py),
    through the daemon or a node started for it; a member that did not answer is a warning, not a
    failure (with --json, it is in `unanswered`)."""
    r = _network(args, {"cmd": "network_files"}, [])
    if args.json:
        _print_json(r)
        return 0
    rows = r["files"]
    _print_table(
        [
            ("KEY", "SIZE", "CONTENT ID", "HOLDERS"),
            *(
                (_shown(f["key"]), human(f["size"]), f["cid"][:15] + "…", str(f["holder_count"]))
                for f in rows
            ),
        ],
        right=frozenset({1, 3}),
    )
    n, members = len(rows), r["member_count"]
    print(f"({n or 'no'} file{'s' if n != 1 else ''} on {members} member{'s' if members != 1 else ''})")
    for peer, why in sorted(r["unanswered"].items()):
        print(
            f"p2pfast: warning: {peer[:16]} did not answer ({why}): its files are not counted",
            file=sys.stderr,
        )
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    import time

    from p2pfast.front import ctl

    # A peer the running daemon is connected to stays, however old its row (the daemon refreshes it
    # every gossip round, but a round may be longer than --older-than).
    try:
        sock = _layout(args).root / ctl.SOCKET_NAME
        rows = ctl.call(sock, {"cmd": "peers"}, timeout=STATUS_TIMEOUT)["rows"]
        connected = {r["peer_id"] for r in rows if r["status"] == "connected" and r["peer_id"]}
    except ctl.DaemonNotRunning:
        connected = set()
    with _open_repo(args, readonly=False) as repo:
        n = repo.remove_peers_older_than(time.time() - args.older_than, keep=connected)
    kept = f" (kept {len(connected)} connected)" if connected else ""
    print(f"removed {n} peer{'s' if n != 1 else ''} unseen for more than {args.older_than:g} s{kept}")
    return 0


def _network(
    args: argparse.Namespace, request: dict[str, Any], fds: Sequence[int], total: int | None = None
) -> dict[str, Any]:
    """Run a network command: through the daemon serving this data dir if one runs, else in a node
    started for this command alone (it dials out, waits until its peer table settles, does the work).
    `total`: a store's input size, when known."""
    from p2pfast.front import ctl

    if "key" in request:
        _check_key(request["key"])
    sock = _layout(args).root / ctl.SOCKET_NAME
    # Events only for a terminal, and not for a store known to be small (a get learns its size later).
    bars = None
    if request["cmd"] in ("store", "get", "scrub") and sys.stderr.isatty():
        bars = _Bars() if total is None or total >= PROGRESS_MIN_BYTES else None
    request = {**request, "progress": bars is not None}
    try:
        try:
            return ctl.call(sock, request, fds, on_progress=bars)
        except ctl.DaemonNotRunning:
            _setup_logging(args)
            return _embedded(args, request, list(fds), bars or (lambda p: None))
    finally:
        if bars is not None:
            bars.close()


def _check_key(key: str) -> None:
    """A key is UTF-8 text. Python decodes argv bytes that are not UTF-8 as lone surrogates, which no
    request can carry: that is the user's input, said here before any request is made."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        from p2pfast.errors import BadInput

        raise BadInput(f"key {os.fsencode(key)!r} is not valid UTF-8 (keys are UTF-8 text)") from None


def _embedded(
    args: argparse.Namespace, request: dict[str, Any], fds: list[int], on_progress: Callable[[Any], None]
) -> dict[str, Any]:
    from p2pfast import runtime, selftest
    from p2pfast.front import commands

    selftest.run()
    cfg = args.config_obj
    node: Node | None = None

    async def main() -> dict[str, Any]:
        nonlocal node
        node = _make_node(args, None, cfg.bootstrap)
        try:
            await node.start()
            await node.wait_settled(cfg.connect_timeout)
            return await commands.execute(node, request, fds, on_progress)
        finally:
            await node.close()

    try:
        return runtime.run(main())
    except KeyboardInterrupt:
        stored = None if node is None else node.interrupted_store
        if stored is None:
            raise
        from p2pfast.errors import Interrupted

        # Ctrl-C while sending to peers: the local copy is durable, and the user must know that.
        n = len(stored.replicated_to)
        on = f" ({', '.join(p[:16] for p in stored.replicated_to)})" if n else ""
        raise Interrupted(
            f"{stored.key} is stored here (durable) and on {n} of {stored.replica_target} peers{on}; "
            "store it again to copy it to the rest"
        ) from None


def cmd_store(args: argparse.Namespace) -> int:
    from p2pfast.errors import BadInput

    if args.file == "-":
        fd, size, close = sys.stdin.fileno(), None, False
    else:
        path = Path(args.file)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
        close = True
        st = os.fstat(fd)
        if os.path.isdir(path):
            os.close(fd)
            raise BadInput(f"cannot store {path}: it is a directory")
        size = st.st_size
    try:
        r = _network(args, {"cmd": "store", "key": args.key, "size": size}, [fd], size)
    finally:
        if close:
            os.close(fd)
    if args.json:
        _print_json(r)
        return 0
    dedup = "  (deduplicated)" if r["deduplicated"] else ""
    n, target = len(r["replicated_to"]), r["replica_target"]
    where = f"on {n}/{target} peers" if target else "on no peer (none connected)"
    print(f"stored {_shown(r['key'])}  {human(r['size'])}  {r['cid'][:15]}…  {where}{dedup}")
    for peer, why in sorted(r["failed"].items()):
        print(f"  not on {peer[:16]}: {why}", file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from p2pfast.errors import OutputClosed
    from p2pfast.store.durable import DurableFile

    request = {"cmd": "get", "key": args.key, "keep": args.keep}
    if args.output is None or args.output == "-":
        sys.stdout.flush()
        try:
            r = _network(args, request, [sys.stdout.fileno()])
        except OutputClosed:  # written by the node (this process's, or the daemon): quiet, as main() is
            raise BrokenPipeError from None
    elif _special(Path(args.output)):
        # -o /dev/null, a FIFO: written in place, like stdout. A temp file renamed over it would replace
        # the device or FIFO itself (as root, /dev/null for the whole machine).
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:  # a socket, a device that refuses writes
            from p2pfast.store.durable import os_error

            raise os_error(exc, f"cannot open {args.output}") from exc
        try:
            r = _network(args, request, [fd])
        finally:
            os.close(fd)
    else:
        out = Path(args.output)
        # The output appears only once it is complete and verified; a failure leaves nothing.
        with DurableFile(out.parent, mode=0o644, prefix=f".{out.name}.") as f:
            r = _network(args, request, [f.fd])
            f.commit(out)
    if args.output in (None, "-"):
        return 0  # stdout carries the data: nothing else goes there
    if args.json:
        _print_json(r)
    else:
        source = "local" if r["source"] == "local" else f"from {r['peer_id'][:16]}"
        if r.get("kept"):
            source += ", kept a local replica"
        print(f"got {_shown(r['key'])}  {human(r['size'])}  {r['cid'][:15]}…  {source}", file=sys.stderr)
    return 0


def _special(path: Path) -> bool:
    """An existing file that is not a regular file or a directory (a device, a FIFO, a socket)."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def cmd_delete(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "delete", "key": args.key}, [])
    if args.json:
        _print_json(r)
    else:
        here = "here and " if r["local"] else ""
        kept = "  (object kept: other keys refer to it)" if r["local"] and not r["object_removed"] else ""
        n = len(r["confirmed_by"])
        print(f"deleted {_shown(r['key'])}  {here}on {n} peer{'s' if n != 1 else ''}{kept}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "repair"}, [])
    if args.json:
        _print_json(r)
        return 0
    print(
        f"repair: {r['objects']} objects checked, {r['under_replicated']} below their copies, "
        f"{r['copies']} copies made ({human(r['bytes'])}), {r['failed']} failed, in {r['seconds']:.1f} s"
    )
    if r["left_to"]:
        print(f"  {r['left_to']} left to the holder ranked first for them (it copies them on its pass)")
    if r["rebalanced"]:
        print(
            f"  {r['rebalanced']} of the copies moved files onto members that rank for them (a member joined)"
        )
    if r["dropped"]:
        print(
            f"  {r['dropped']} surplus copies dropped here (the file's other holders have it at its target)"
        )
    for f in r["still_under"]:
        print(f"  still under: {_shown(f['key'])}  {f['copies']}/{f['target']} copies")
    more = r["still_under_count"] - len(r["still_under"])
    if more > 0:
        print(f"  … and {more} more")
    return 0  # the pass ran; what it could not copy is in its report (and in status)


def cmd_revoke(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "revoke", "node_id": args.node_id}, [])
    if args.json:
        _print_json(r)
        return 0
    n = len(r["sent_to"])
    was = "was already revoked; " if r["already"] else "revoked; "
    print(f"{r['peer_id']} {was}the revocation went to {n} connected member{'s' if n != 1 else ''}")
    print("  members not connected now hear of it when they connect; then: p2pfast network rotate-key")
    return 0


def cmd_s3_key_create(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "s3_key_create"}, [])
    if args.json:
        _print_json(r)
        return 0
    n = len(r["replicated_to"])
    print(f"access_key_id     {r['access_key_id']}")
    print(f"secret_access_key {r['secret_access_key']}")
    print(f"  works on every member of the network (stored here and on {n} peer{'s' if n != 1 else ''});")
    print("  the secret is not shown again: keep it where your S3 client reads its credentials")
    return 0


def cmd_s3_key_list(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "s3_key_list"}, [])
    if args.json:
        _print_json(r)
        return 0
    for akid in r["access_key_ids"]:
        print(akid)
    for peer, why in r["unanswered"].items():
        print(f"  not counted: {peer[:16]} ({why})", file=sys.stderr)
    return 0


def cmd_s3_key_delete(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "s3_key_delete", "access_key_id": args.access_key_id}, [])
    if args.json:
        _print_json(r)
        return 0
    n = len(r["confirmed_by"])
    print(f"deleted access key {r['access_key_id']}: confirmed by {n} peer{'s' if n != 1 else ''}")
    return 0


def cmd_network_rotate_key(args: argparse.Namespace) -> int:
    r = _network(args, {"cmd": "rotate_key", "window": args.window}, [])
    if args.json:
        _print_json(r)
        return 0
    n = len(r["sent_to"])
    print(
        f"network key rotated (generation {r['generation']}): "
        f"sent to {n} connected member{'s' if n != 1 else ''}; "
        f"the old key is refused from {_when(r['old_key_refused_at'])} ({r['window_s']:g} s from now)"
    )
    for peer in r["not_sent_to"]:
        print(f"  not sent to {peer[:16]} (its link was closing): it gets the key when it connects again")
    print("  a member away for the whole window rejoins with a fresh invite: p2pfast serve --join INVITE")
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    if not args.now:
        return _scrub_state(args)
    r = _network(args, {"cmd": "scrub", "now": True}, [])
    if args.json:
        _print_json(r)
    else:
        print(
            f"scrubbed {r['checked']} object{'s' if r['checked'] != 1 else ''} "
            f"({human(r['bytes_checked'])}) in {r['duration_s']:.1f} s: {r['bad']} bad, "
            f"{r['repaired']} repaired, {r['unrepaired']} unrepaired"
        )
    if r["unrepaired"]:
        from p2pfast.errors import IntegrityError

        n = r["unrepaired"]
        cids = ", ".join(c[:15] + "…" for c in r["unrepaired_cids"][:5]) + (", …" if n > 5 else "")
        raise IntegrityError(
            f"{n} bad cop{'ies' if n != 1 else 'y'} kept: no connected peer has a good copy to repair "
            f"{'them' if n != 1 else 'it'} from ({cids}); tried again when a peer connects and on the "
            "next pass"
        )
    return 0


def _scrub_state(args: argparse.Namespace) -> int:
    """`scrub` without --now: the scrub's state, from the daemon, else from DATA_DIR/scrub.json."""
    from p2pfast.front import ctl

    layout = _layout(args)
    try:
        s = ctl.call(layout.root / ctl.SOCKET_NAME, {"cmd": "scrub", "now": False}, timeout=STATUS_TIMEOUT)
    except ctl.DaemonNotRunning:
        _setup_logging(args)
        from p2pfast.node import scrub

        with _open_repo(args):  # an initialised data dir of this master key, or the one error line
            s = scrub.report_of_file(layout)
    if args.json:
        _print_json(s)
        return 0
    for line in _scrub_lines(s):
        print(line)
    return 0


STATUS_TIMEOUT = 10.0  # a daemon that does not answer `status` within this is reported as such


def cmd_status(args: argparse.Namespace) -> int:
    from p2pfast.front import ctl

    layout = _layout(args)
    try:
        s = ctl.call(layout.root / ctl.SOCKET_NAME, {"cmd": "status"}, timeout=STATUS_TIMEOUT)
    except ctl.DaemonNotRunning:
        _setup_logging(args)
        from p2pfast.datadir import load_identity
        from p2pfast.node import status  # the repo and the keys: only when no daemon answers

        node_id = load_identity(layout).node_id
        with _open_repo(args) as repo:
            s = status.of_repo(repo, layout, node_id, args.config_obj.replicas)
        s.update(
            running=False,
            pid=None,
            version=__version__,
            listen=None,
            uptime_s=None,
            peers_connected=0,
            link_target=None,
            members=None,  # the membership view lives in the running node
            in_flight=0,
            draining=False,
            repair=None,  # passes run in the daemon
        )
    if args.json:
        _print_json(s)
        return 0
    _print_status(s)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from p2pfast import config

    if args.json:
        _print_json(config.show_typed(args.config_obj))
        return 0
    rows = config.show(args.config_obj)
    _print_table([("KEY", "VALUE", "SOURCE"), *rows])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from p2pfast.front.demo import run_demo

    return run_demo(args.size, keep=args.keep)


def cmd_completion(args: argparse.Namespace) -> int:
    from p2pfast.front.cligen import completion

    sys.stdout.write(completion(build_parser(), args.shell))
    return 0


def cmd_man(args: argparse.Namespace) -> int:
    from p2pfast.front.cligen import man_page

    sys.stdout.write(man_page(build_parser(), __version__))
    return 0


# What runs each command of parser.COMMANDS, by its name ("config show" for a command's subcommand).
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": cmd_init,
    "serve": cmd_serve,
    "id": cmd_id,
    "invite": cmd_invite,
    "peers": cmd_peers,
    "cleanup": cmd_cleanup,
    "revoke": cmd_revoke,
    "network rotate-key": cmd_network_rotate_key,
    "s3 key create": cmd_s3_key_create,
    "s3 key list": cmd_s3_key_list,
    "s3 key delete": cmd_s3_key_delete,
    "store": cmd_store,
    "get": cmd_get,
    "delete": cmd_delete,
    "repair": cmd_repair,
    "scrub": cmd_scrub,
    "shares": cmd_shares,
    "files": cmd_files,
    "status": cmd_status,
    "config show": cmd_config_show,
    "demo": cmd_demo,
    "completion": cmd_completion,
    "man": cmd_man,
}


def _command_name(args: argparse.Namespace) -> str:
    """The HANDLERS key of a parsed command line: the command, with its subcommand if it has one."""
    name: str = args.command
    word = name
    while (sub := getattr(args, f"{word}_command", None)) is not None:  # `s3 key create`: two levels
        name, word = f"{name} {sub}", sub
    return name


def _setup_logging(args: argparse.Namespace) -> None:
    from p2pfast import log

    cfg = getattr(args, "config_obj", None)
    log.setup(cfg.log_level if cfg is not None else "warning")


# Commands that ask a running daemon first. Through the daemon nothing in this process logs, so they set
# up logging (importing `logging`, a sizeable part of such a call's CPU) only where they go on without
# one; every other command gets it at once, in main().
ASKS_DAEMON_FIRST = frozenset(
    {
        "status",
        "files",
        "peers",
        "shares",
        "store",
        "get",
        "delete",
        "repair",
        "scrub",
        "revoke",
        "network",
        "s3",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from p2pfast import config
    from p2pfast.errors import InternalError, P2PError

    try:
        if hasattr(args, "data_dir"):
            args.config_obj = config.load(
                {
                    "data_dir": args.data_dir,
                    "master_key_file": args.master_key_file,
                    "log_level": args.log_level,
                    "listen": getattr(args, "listen", None),
                    "bootstrap": getattr(args, "bootstrap", None),
                    "metrics_listen": getattr(args, "metrics_listen", None),
                    "s3_listen": getattr(args, "s3_listen", None),
                    "gateway_listen": getattr(args, "gateway_listen", None),
                },
                args.config,
                missing_ok=args.command == "init",  # init writes the file it names
            )
        if args.command not in ASKS_DAEMON_FIRST:
            _setup_logging(args)
        return int(HANDLERS[_command_name(args)](args))
    except P2PError as exc:
        return _fail(args, exc.name, exc.exit_code, str(exc))
    except BrokenPipeError:
        # The reader went away (`p2pfast get k | head`): not our error to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130, "interrupted")
    except Exception as exc:  # a bug: one line, the exit code says so, traceback only in debug
        import logging

        _setup_logging(args)  # again or for the first time: either way the traceback reaches stderr
        logging.getLogger("p2pfast").debug("event=unhandled", exc_info=True)
        err = InternalError(f"{type(exc).__name__}: {exc}")
        return _fail(args, err.name, err.exit_code, str(err))


if __name__ == "__main__":
    sys.exit(main())
