"""The p2pfast command line. Heavy modules are imported inside the commands that use them, so that
`p2pfast --help` and `p2pfast --version` start fast.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 integrity failure, 5 bad input, 6 storage/I-O error,
7 disk full, 8 config error, 9 protocol error, 10 peer unavailable, 70 internal error.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfast import __version__
from p2pfast.units import iec as human

if TYPE_CHECKING:
    from p2pfast.datadir import LocalNode
    from p2pfast.layout import Layout
    from p2pfast.node import Node

PROGRESS_MIN_BYTES = 64 << 20  # below this a bar would only flicker
BOOTSTRAP_HELP = "HOST:PORT[,HOST:PORT...] to reach the network through when no daemon runs"


def _version() -> str:
    from p2pfast import _accel

    kernels = "accelerated (Cython kernels)" if _accel.ACCELERATED else "pure Python kernels"
    return f"p2pfast {__version__} ({kernels})"


class _VersionAction(argparse.Action):
    """--version, with the kernels looked up only when it is given: argparse's own action takes the text
    when the parser is built, and importing _accel loads the kernels and logging for every command."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        kw.setdefault("help", "show program's version number and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        sys.stdout.write(_version() + "\n")
        parser.exit()


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


class _Bars:
    """A command's progress events (commands.py) drawn on stderr: one bar per phase, for an object of at
    least PROGRESS_MIN_BYTES, in the binary units of every other figure (tqdm's own scaling would print
    1024-based numbers as "MB"), with percentage and ETA once the total is known."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase: object = None
        self.shown = 0
        self.big: bool | None = None

    def __call__(self, p: dict[str, Any]) -> None:
        done, total, peers = p.get("done"), p.get("total"), p.get("peers")
        if type(done) is not int or (total is not None and type(total) is not int):
            return
        peers = peers if type(peers) is int and peers > 0 else 1
        if p.get("phase") != self.phase:
            self.close()
            self.phase, self.shown = p.get("phase"), 0
            self.big = None if total is None else total // peers >= PROGRESS_MIN_BYTES
        if self.bar is None:
            if not (self.big or (self.big is None and done >= PROGRESS_MIN_BYTES)):
                return
            self.bar = _bar(str(self.phase) + (f" to {peers} peers" if peers > 1 else ""), total)
        if done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _bar(desc: str, total: int | None) -> Any:
    from tqdm import tqdm

    class IECBar(tqdm):  # type: ignore[misc]
        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            rate = d["rate"] or (d["n"] / d["elapsed"] if d["elapsed"] else None)
            d["n_iec"] = human(d["n"])
            d["total_iec"] = human(d["total"]) if d["total"] is not None else "?"
            d["rate_iec"] = f"{human(rate)}/s" if rate else "?/s"
            return d

    if total is None:
        fmt = "{desc}: {n_iec} [{elapsed}, {rate_iec}]"
    else:
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_iec}/{total_iec} [{elapsed}<{remaining}, {rate_iec}]"
    try:  # a terminal that reports no width (0 columns, as a fresh pty does) gets 80, not an empty bar
        ncols = None if os.get_terminal_size(sys.stderr.fileno()).columns else 80
    except OSError:
        ncols = 80
    return IECBar(total=total, desc=desc, file=sys.stderr, bar_format=fmt, mininterval=0.2, ncols=ncols)


def _fail(args: argparse.Namespace, code: str, exit_code: int, message: str) -> int:
    """An error's one line on stderr: with --json, one JSON object (docs/cli.md), else text."""
    if getattr(args, "json", False):
        from p2pfast.front import jsontext

        line = jsontext.line({"code": code, "exit": exit_code, "message": message})
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    else:
        print(f"p2pfast: {message}", file=sys.stderr)
    return exit_code


def _print_json(obj: Any) -> None:
    from p2pfast.front import jsontext

    sys.stdout.buffer.write(jsontext.pretty(obj) + b"\n")
    sys.stdout.flush()


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
            if adopt_network(layout, key):
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
        await daemon.serve(node, cfg.shutdown_timeout, cfg.metrics_listen)

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
        max_pre_handshake=cfg.max_pre_handshake,
        gossip_interval=cfg.gossip_interval,
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


def _when(t: str) -> str:
    """An RFC 3339 time of a listing (listings.rfc3339) in local time, for the table."""
    import datetime

    return datetime.datetime.fromisoformat(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _shown(key: str) -> str:
    """store.userkey.show_key, imported when a result is shown (cli.py imports p2pfast.store lazily)."""
    from p2pfast.store.userkey import show_key

    return show_key(key)


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


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 30m, 1h, 7d)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("duration must not be negative")
    return value


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
    for f in r["still_under"]:
        print(f"  still under: {_shown(f['key'])}  {f['copies']}/{f['target']} copies")
    more = r["still_under_count"] - len(r["still_under"])
    if more > 0:
        print(f"  … and {more} more")
    return 0  # the pass ran; what it could not copy is in its report (and in status)


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


def _scrub_lines(s: dict[str, Any]) -> list[str]:
    """The scrub's state for people (`scrub`, `status`)."""
    if s["last_pass_started_at"] is None:
        last = "no pass yet"
    else:
        ended = "-" if s["last_pass_ended_at"] is None else _when(s["last_pass_ended_at"])
        last = (
            f"{_when(s['last_pass_started_at'])} to {ended}: {s['checked']} object"
            f"{'s' if s['checked'] != 1 else ''} "
            f"({human(s['bytes_checked'])}) checked, {s['bad']} bad, {s['repaired']} repaired"
        )
    lines = [f"last pass: {last}" + ("  (a pass is running)" if s["running"] else "")]
    lines.append(f"unrepaired: {s['unrepaired']}")
    lines += [f"  {cid}" for cid in s["unrepaired_cids"]]
    lines.append(f"next pass due: {'-' if s['next_due_at'] is None else _when(s['next_due_at'])}")
    return lines


def _print_table(table: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = (
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())


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
            in_flight=0,
            draining=False,
            repair=None,  # passes run in the daemon
        )
    if args.json:
        _print_json(s)
        return 0
    state = "draining" if s.get("draining") else "running" if s["running"] else "not running"
    uptime = "-" if s["uptime_s"] is None else _duration(s["uptime_s"])
    print("==== NODE ====")
    _print_table(
        [
            ("ID", "LISTEN", "STATE", "PID", "UPTIME", "DATA DIR"),
            (s["node_id"][:16], s["listen"] or "-", state, str(s["pid"] or "-"), uptime, s["data_dir"]),
        ]
    )
    print("==== PEERS ====")
    _print_table(
        [
            ("CONNECTED", "KNOWN", "IN FLIGHT"),
            (str(s["peers_connected"]), str(s["peers_known"]), str(s["in_flight"])),
        ]
    )
    print("==== STORAGE ====")
    under = f"{s['under_replicated']} (target {s['replica_target']})"
    _print_table(
        [
            ("FILES", "OBJECTS", "STORED", "FREE", "UNDER-REPLICATED", "WAL"),
            (
                str(s["files"]),
                str(s["objects"]),
                human(s["bytes_stored"]),
                human(s["bytes_free"]),
                under,
                human(s["wal_bytes"]),
            ),
        ]
    )
    print("==== SCRUB ====")
    for line in _scrub_lines(s["scrub"]):
        print(line)
    if s.get("repair") is not None:
        print("==== REPAIR ====")
        for line in _repair_lines(s["repair"]):
            print(line)
    if s["quarantined"]:
        print(
            f"quarantine: {s['quarantined']} object file{'s' if s['quarantined'] != 1 else ''} "
            f"({human(s['quarantined_bytes'])}) no repo row accounts for, kept in {s['quarantine_dir']}: "
            "move them back under objects/ once the right p2p.db is restored, or delete them yourself"
        )
    return 0


def _repair_lines(r: dict[str, Any]) -> list[str]:
    """The repair service for people (`status`): the last pass, and the files still short of copies."""
    last = r["last_pass"]
    if last is None:
        return [f"last pass: none yet (every {_duration(r['interval_s'])}; after a member joins or goes)"]
    lines = [
        f"last pass: {_when_unix(last['started_at'])} ({last['reason']}): {last['files']} files checked, "
        f"{last['copies']} copies made ({human(last['bytes'])}), {last['failed']} failed"
        + ("  (a pass is running)" if r["running"] else "")
    ]
    for f in last["still_under"]:
        lines.append(f"  short: {_shown(f['key'])}  {f['copies']}/{f['target']} copies")
    more = last["still_under_count"] - len(last["still_under"])
    if more > 0:
        lines.append(f"  … and {more} more")
    return lines


def _when_unix(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


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


def parse_size(text: str) -> int:
    units = {
        "": 1,
        "b": 1,
        "k": 1 << 10,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mib": 1 << 20,
        "g": 1 << 30,
        "gib": 1 << 30,
    }
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        value = int(float(num) * units[t[len(num) :]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M or 1GiB)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("size must not be negative")
    return value


def _join_args(s: argparse.ArgumentParser, help_text: str) -> None:
    g = s.add_mutually_exclusive_group()
    g.add_argument("--join", metavar="INVITE", help=help_text)
    g.add_argument("--join-file", metavar="PATH", help="read the invite from this file")


@functools.cache
def _terminal_columns() -> int:
    """The width shutil.get_terminal_size gives ($COLUMNS, else stdout's terminal, else 80), found once."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own formatter, but its width from _terminal_columns: argparse makes one for every
    add_argument, on every CLI call, and asks shutil each time (importing it, and with it zlib, bz2 and
    lzma, costs more than building the whole parser)."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # the margin argparse leaves
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """With --json on the command line, a usage error is one JSON line too (docs/cli.md)."""

    json_errors = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> Any:
        if _Parser.json_errors:
            from p2pfast.front import jsontext

            line = jsontext.line({"code": "usage", "exit": 2, "message": f"{self.prog}: {message}"})
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            sys.exit(2)
        super().error(message)


# The flags every command that reads the data dir takes, after the command or before it; given in both
# places, the one after the command wins.
GLOBAL_FLAGS = ("config", "data_dir", "master_key_file", "log_level")


def _global_flags(p: argparse.ArgumentParser, dest: str = "") -> None:
    config_help = "config file (default: ~/.p2p/config, if it exists)"
    p.add_argument("--config", dest=f"{dest}config", help=config_help)
    data_help = "node data directory (default: $P2PFAST_DATA_DIR or ~/.p2p)"
    p.add_argument("--data-dir", dest=f"{dest}data_dir", help=data_help)
    key_help = "master key file (default: DATA_DIR/master.key)"
    p.add_argument("--master-key-file", dest=f"{dest}master_key_file", help=key_help)
    p.add_argument("--log-level", dest=f"{dest}log_level", choices=["debug", "info", "warning", "error"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with the global flags (and --json) that came before the command moved to it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    for name in GLOBAL_FLAGS:
        value = getattr(args, f"global_{name}")
        delattr(args, f"global_{name}")
        if value is None:
            continue
        if not hasattr(args, name):
            parser.error(f"{args.command} takes no --{name.replace('_', '-')}")
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.global_json:
        args.json = True
    del args.global_json
    return args


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only`, the top level and that one command: building all 17
    subcommands' parsers was a quarter of the CPU of a command that asks the daemon, which runs one."""
    p = _Parser(prog="p2pfast", description="A fast, encrypted peer-to-peer storage node.")
    p.add_argument("--version", action=_VersionAction)
    _global_flags(p, dest="global_")
    p.add_argument("--json", dest="global_json", action="store_true", help="print results and errors as JSON")
    common = _Parser(add_help=False)
    _global_flags(common)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in COMMANDS.items():
        if only is None or name == only:
            add(sub, common)
    return p


def _command_in(argv: Sequence[str]) -> str | None:
    """The command `argv` names (its first word that is not a global flag or a flag's value), if it is
    one of COMMANDS."""
    takes_value = {f"--{name.replace('_', '-')}" for name in GLOBAL_FLAGS}
    words = iter(argv)
    for word in words:
        if word in takes_value:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _cmd_init(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("init", parents=[common], help="create the data dir, keys, repo and config file")
    _join_args(s, "join the network of this invite (from 'p2pfast invite'); - reads it from stdin")
    s.set_defaults(func=cmd_init)


def _cmd_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common], help="run the node: listen, join the network, serve peers")
    s.add_argument("--listen", help="address to listen on (default :3000)")
    s.add_argument("--bootstrap", help="HOST:PORT[,HOST:PORT...] of nodes to join through")
    _join_args(s, "an invite line (network key, a member's address and id); - reads it from stdin")
    s.add_argument("--metrics-listen", help="[HOST]:PORT for Prometheus metrics (default host 127.0.0.1)")
    s.set_defaults(func=cmd_serve)


def _cmd_id(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("id", parents=[common], help="print this node's id")
    s.set_defaults(func=cmd_id)


def _cmd_invite(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("invite", parents=[common], help="print an invite line for another node to join with")
    s.add_argument("--address", help="HOST:PORT others reach this node at (default: the listen address)")
    s.set_defaults(func=cmd_invite)


def _cmd_peers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("peers", parents=[common], help="list connected and known peers")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_peers)


def _cmd_cleanup(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("cleanup", parents=[common], help="remove peers unseen for longer than --older-than")
    s.add_argument("--older-than", type=parse_duration, default=3600.0, help="duration (default 1h)")
    s.set_defaults(func=cmd_cleanup)


def _cmd_store(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("store", parents=[common], help="store FILE (- for stdin) under KEY")
    s.add_argument("key")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.set_defaults(func=cmd_store)


def _cmd_get(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("get", parents=[common], help="write the file stored under KEY (stdout by default)")
    s.add_argument("key", help="the file's key, or its content id (b3: and 64 hex digits)")
    s.add_argument("-o", "--output", help="output file (written whole and verified, or not at all)")
    s.add_argument("--json", action="store_true", help="print the result as JSON (with -o)")
    s.add_argument("--keep", action="store_true", help="also store a local replica of a fetched file")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.set_defaults(func=cmd_get)


def _cmd_delete(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("delete", parents=[common], help="delete KEY here and on every peer")
    s.add_argument("key")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.set_defaults(func=cmd_delete)


def _cmd_repair(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "repair", parents=[common], help="run a repair pass now: copy files below their copies"
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.set_defaults(func=cmd_repair)


def _cmd_scrub(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("scrub", parents=[common], help="the background scrub's state; --now runs a pass")
    s.add_argument("--now", action="store_true", help="read back and verify every object now, repairing")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.set_defaults(func=cmd_scrub)


def _cmd_shares(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("shares", parents=[common], help="list which peers acknowledged a copy of what")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_shares)


def _cmd_files(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("files", parents=[common], help="list stored files")
    s.add_argument("--json", action="store_true")
    s.add_argument("--network", action="store_true", help="every file the connected members hold, merged")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP + " (with --network)")
    s.set_defaults(func=cmd_files)


def _cmd_status(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("status", parents=[common], help="the node's health: peers, storage, replication")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)


def _cmd_config(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("config", help="inspect the configuration")
    config_sub = s.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    s = config_sub.add_parser(
        "show", parents=[common], help="print the effective config and where each value came from"
    )
    s.add_argument("--listen", help="as for serve: shows what serve would run with")
    s.add_argument("--bootstrap", help="as for serve")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_config_show)


def _cmd_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("demo", help="three nodes on loopback: store, replicate, get, delete a generated file")
    s.add_argument("--size", type=parse_size, default=64 << 20, help="file size (default 64M)")
    s.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    s.set_defaults(func=cmd_demo)


def _cmd_completion(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("completion", help="print the completion script for bash or zsh (see README)")
    s.add_argument("shell", choices=["bash", "zsh"])
    s.set_defaults(func=cmd_completion)


def _cmd_man(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("man", help="print the manual page, in roff: p2pfast man | man -l -")
    s.set_defaults(func=cmd_man)


COMMANDS: dict[str, Callable[[Any, argparse.ArgumentParser], None]] = {
    "init": _cmd_init,
    "serve": _cmd_serve,
    "id": _cmd_id,
    "invite": _cmd_invite,
    "peers": _cmd_peers,
    "cleanup": _cmd_cleanup,
    "store": _cmd_store,
    "get": _cmd_get,
    "delete": _cmd_delete,
    "repair": _cmd_repair,
    "scrub": _cmd_scrub,
    "shares": _cmd_shares,
    "files": _cmd_files,
    "status": _cmd_status,
    "config": _cmd_config,
    "demo": _cmd_demo,
    "completion": _cmd_completion,
    "man": _cmd_man,
}


def _setup_logging(args: argparse.Namespace) -> None:
    from p2pfast import log

    cfg = getattr(args, "config_obj", None)
    log.setup(cfg.log_level if cfg is not None else "warning")


# Commands that ask a running daemon first. Through the daemon nothing in this process logs, so they set
# up logging (importing `logging`, a sizeable part of such a call's CPU) only where they go on without
# one; every other command gets it at once, in main().
ASKS_DAEMON_FIRST = frozenset(
    {"status", "files", "peers", "shares", "store", "get", "delete", "repair", "scrub"}
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
                },
                args.config,
                missing_ok=args.func is cmd_init,  # init writes the file it names
            )
        if args.command not in ASKS_DAEMON_FIRST:
            _setup_logging(args)
        return int(args.func(args))
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
