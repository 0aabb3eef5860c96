"""The p2pfast command line's definition: every command, its flags and their parsing, and nothing that runs a
command (cli.py holds the handlers, keyed by command name in its HANDLERS table, so this module needs none of
them). `build_parser(only=...)` builds the one subparser a call needs: the CLI client's CPU budget."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from p2pfast import __version__

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


def _cmd_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common], help="run the node: listen, join the network, serve peers")
    s.add_argument("--listen", help="address to listen on (default :3000)")
    s.add_argument("--bootstrap", help="HOST:PORT[,HOST:PORT...] of nodes to join through")
    _join_args(s, "an invite line (network key, a member's address and id); - reads it from stdin")
    s.add_argument(
        "--rotated-key",
        action="store_true",
        help="with --join: this node's network rotated its key while it was away; take the invite's key "
        "and keep this node's data",
    )
    s.add_argument("--metrics-listen", help="[HOST]:PORT for Prometheus metrics (default host 127.0.0.1)")
    s.add_argument("--s3-listen", help="[HOST]:PORT for the S3 API (default host 127.0.0.1; docs/gateway.md)")
    s.add_argument(
        "--gateway-listen",
        help="[HOST]:PORT for the read-only HTTP gateway: anyone reaching it reads the network's files "
        "(default host 127.0.0.1; docs/gateway.md)",
    )


def _cmd_id(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("id", parents=[common], help="print this node's id")


def _cmd_invite(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("invite", parents=[common], help="print an invite line for another node to join with")
    s.add_argument("--address", help="HOST:PORT others reach this node at (default: the listen address)")


def _cmd_peers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("peers", parents=[common], help="list connected and known peers")
    s.add_argument("--json", action="store_true")


def _cmd_cleanup(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("cleanup", parents=[common], help="remove peers unseen for longer than --older-than")
    s.add_argument("--older-than", type=parse_duration, default=3600.0, help="duration (default 1h)")


def _cmd_store(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("store", parents=[common], help="store FILE (- for stdin) under KEY")
    s.add_argument("key")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_get(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("get", parents=[common], help="write the file stored under KEY (stdout by default)")
    s.add_argument("key", help="the file's key, or its content id (b3: and 64 hex digits)")
    s.add_argument("-o", "--output", help="output file (written whole and verified, or not at all)")
    s.add_argument("--json", action="store_true", help="print the result as JSON (with -o)")
    s.add_argument("--keep", action="store_true", help="also store a local replica of a fetched file")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_delete(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("delete", parents=[common], help="delete KEY here and on every peer")
    s.add_argument("key")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_repair(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "repair", parents=[common], help="run a repair pass now: copy files below their copies"
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_scrub(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("scrub", parents=[common], help="the background scrub's state; --now runs a pass")
    s.add_argument("--now", action="store_true", help="read back and verify every object now, repairing")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_shares(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("shares", parents=[common], help="list which peers acknowledged a copy of what")
    s.add_argument("--json", action="store_true")


def _cmd_files(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("files", parents=[common], help="list stored files")
    s.add_argument("--json", action="store_true")
    s.add_argument("--network", action="store_true", help="every file the connected members hold, merged")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP + " (with --network)")


def _cmd_status(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("status", parents=[common], help="the node's health: peers, storage, replication")
    s.add_argument("--json", action="store_true")


def _cmd_config(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("config", help="inspect the configuration")
    config_sub = s.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    s = config_sub.add_parser(
        "show", parents=[common], help="print the effective config and where each value came from"
    )
    s.add_argument("--listen", help="as for serve: shows what serve would run with")
    s.add_argument("--bootstrap", help="as for serve")
    s.add_argument("--json", action="store_true")


def _cmd_revoke(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "revoke", parents=[common], help="expel NODE_ID: every member refuses it from now on (for good)"
    )
    s.add_argument("node_id", metavar="NODE_ID", help="the node id (64 hex digits, as 'p2pfast peers' shows)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_network(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("network", help="network-wide operations")
    network_sub = s.add_subparsers(dest="network_command", required=True, metavar="SUBCOMMAND")
    s = network_sub.add_parser(
        "rotate-key",
        parents=[common],
        help="make a new network key and push it to the members (the old one is refused after --window)",
    )
    s.add_argument(
        "--window",
        type=parse_duration,
        default=3600.0,
        help="how long the old key is still accepted (default 1h; e.g. 90s, 30m)",
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_s3(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("s3", help="the S3 API's access keys (docs/gateway.md)")
    s3_sub = s.add_subparsers(dest="s3_command", required=True, metavar="SUBCOMMAND")
    s = s3_sub.add_parser("key", help="create, list or delete access keys, for every member of the network")
    key_sub = s.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    s = key_sub.add_parser(
        "create", parents=[common], help="make an access key; prints its id and secret (shown only here)"
    )
    s.add_argument("--json", action="store_true", help="print access_key_id and secret_access_key as JSON")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s = key_sub.add_parser("list", parents=[common], help="list the network's access key ids")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s = key_sub.add_parser("delete", parents=[common], help="delete an access key, on every member")
    s.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)


def _cmd_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("demo", help="three nodes on loopback: store, replicate, get, delete a generated file")
    s.add_argument("--size", type=parse_size, default=64 << 20, help="file size (default 64M)")
    s.add_argument("--keep", action="store_true", help="keep the temporary data dir")


def _cmd_completion(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("completion", help="print the completion script for bash or zsh (see README)")
    s.add_argument("shell", choices=["bash", "zsh"])


def _cmd_man(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("man", help="print the manual page, in roff: p2pfast man | man -l -")


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
    "revoke": _cmd_revoke,
    "network": _cmd_network,
    "s3": _cmd_s3,
    "demo": _cmd_demo,
    "completion": _cmd_completion,
    "man": _cmd_man,
}
