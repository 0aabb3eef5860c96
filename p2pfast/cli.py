"""The p2pfast command line. Heavy modules are imported inside the commands that use them, so that
`p2pfast --help` and `p2pfast --version` start fast.

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

if TYPE_CHECKING:
    from p2pfast.datadir import Layout, LocalNode

PROGRESS_MIN_BYTES = 64 << 20  # below this a bar would only flicker


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _version() -> str:
    from p2pfast import _accel

    kernels = "accelerated (Cython kernels)" if _accel.ACCELERATED else "pure Python kernels"
    return f"p2pfast {__version__} ({kernels})"


def _layout(args: argparse.Namespace) -> Layout:
    from p2pfast.datadir import Layout

    cfg = args.config_obj
    return Layout.of(cfg.data_dir, cfg.master_key_file, cfg.db)


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


@contextmanager
def _progress(total: int | None, desc: str) -> Iterator[Callable[[int], object] | None]:
    if not sys.stderr.isatty() or (total is not None and total < PROGRESS_MIN_BYTES):
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
        yield bar.update


def _print_json(obj: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


# -- commands ---------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from p2pfast.datadir import init

    layout = _layout(args)
    created = init(layout)
    print(f"{'initialised' if created else 'already initialised'} {layout.root}")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from p2pfast.errors import BadInput
    from p2pfast.store.objects import show_key

    with _node(args) as node:
        if args.file == "-":
            with _progress(None, "store") as progress:
                result = node.store.put_fd(args.key, sys.stdin.fileno(), progress)
        else:
            path = Path(args.file)
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
            with _progress(size, "store") as progress:
                result = node.store.put_path(args.key, path, progress)
    if args.json:
        _print_json(
            {
                "key": show_key(result.key),
                "cid": result.cid,
                "size": result.size,
                "deduplicated": result.deduplicated,
            }
        )
    else:
        dedup = "  (deduplicated)" if result.deduplicated else ""
        print(f"stored {show_key(result.key)}  {human(result.size)}  {result.cid[:15]}…{dedup}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from p2pfast.store.durable import DurableFile

    with _node(args) as node:
        _, _, size = node.store.stat(args.key)
        with _progress(size, "get") as progress:
            if args.output is None or args.output == "-":
                sys.stdout.flush()
                node.store.read(args.key, sys.stdout.fileno(), progress=progress)
                return 0
            out = Path(args.output)
            # The output appears only once it is complete and verified; a failure leaves nothing.
            with DurableFile(out.parent, mode=0o644, prefix=f".{out.name}.") as f:
                node.store.read(args.key, f.fd, progress=progress)
                f.commit(out)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from p2pfast.store.objects import encode_key, show_key

    key = show_key(encode_key(args.key))
    with _node(args) as node:
        cid, orphaned = node.store.delete(args.key)
    if args.json:
        _print_json({"key": key, "cid": cid, "object_removed": orphaned})
    else:
        print(f"deleted {key}" + ("" if orphaned else "  (object kept: other keys refer to it)"))
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    import datetime

    from p2pfast.store.objects import show_key

    with _node(args) as node:
        rows = node.repo.list_files()
    if args.json:
        _print_json(
            [{"key": show_key(r.key), "cid": r.cid, "size": r.size, "created": r.created} for r in rows]
        )
        return 0
    table = [("KEY", "SIZE", "CONTENT ID", "CREATED")]
    for r in rows:
        created = datetime.datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M:%S")
        table.append((show_key(r.key), human(r.size), r.cid[:15] + "…", created))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print(
            "  ".join(
                cell.ljust(w) if i != 1 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    if not rows:
        print("(no files)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from p2pfast.demo import run_demo

    return run_demo(args.size, keep=args.keep)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2pfast", description="A fast, encrypted peer-to-peer storage node.")
    p.add_argument("--version", action="version", version=_version())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: ~/.p2p/config, if it exists)")
    common.add_argument("--data-dir", help="node data directory (default: $P2PFAST_DATA_DIR or ~/.p2p)")
    common.add_argument("--master-key-file", help="master key file (default: DATA_DIR/master.key)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", parents=[common], help="create the data dir, master key and repo")
    s.set_defaults(func=cmd_init)
    s = sub.add_parser("store", parents=[common], help="store FILE (- for stdin) under KEY")
    s.add_argument("key")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_store)
    s = sub.add_parser("get", parents=[common], help="write the file stored under KEY (stdout by default)")
    s.add_argument("key")
    s.add_argument("-o", "--output", help="output file (written whole and verified, or not at all)")
    s.set_defaults(func=cmd_get)
    s = sub.add_parser("delete", parents=[common], help="delete KEY")
    s.add_argument("key")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_delete)
    s = sub.add_parser("files", parents=[common], help="list stored files")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_files)
    s = sub.add_parser("demo", help="store, list, read back and delete a generated file in a temporary node")
    s.add_argument("--size", type=parse_size, default=64 << 20, help="file size (default 64M)")
    s.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from p2pfast import config, log
    from p2pfast.errors import InternalError, P2PError

    try:
        if hasattr(args, "data_dir"):
            args.config_obj = config.load(
                {
                    "data_dir": args.data_dir,
                    "master_key_file": args.master_key_file,
                    "log_level": args.log_level,
                },
                args.config,
            )
            log.setup(args.config_obj.log_level)
        else:
            log.setup("warning")
        return int(args.func(args))
    except P2PError as exc:
        print(f"p2pfast: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`p2pfast get k | head`): not our error to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("p2pfast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the exit code says so, traceback only in debug
        import logging

        logging.getLogger("p2pfast").debug("unhandled", exc_info=True)
        err = InternalError(f"{type(exc).__name__}: {exc}")
        print(f"p2pfast: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
