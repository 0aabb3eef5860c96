"""Imports only go down the layers (STYLE.md 1), walked with ast over the installed package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pfast

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

PKG = Path(p2pfast.__file__).parent
KERNELS = {"_frames_py", "_pump_py", "_shard_py", "frames", "pump", "shard", "wire", "errors", "_accel"}
FORBIDDEN_IN_KERNELS = {
    "asyncio",
    "socket",
    "apsw",
    "sqlite3",
    "p2pfast.store",
    "p2pfast.repo",
    "p2pfast.net",
    "p2pfast.front",
    "p2pfast.node",
    "p2pfast.config",
    "logging",
}
# what each layer may not import
RULES = {
    "proto": {
        "asyncio",
        "socket",
        "time",
        "logging",
        "uvloop",
        "p2pfast.store",
        "p2pfast.repo",
        "p2pfast.net",
        "p2pfast.front",
        "p2pfast.node",
        "p2pfast.datadir",
    },
    # net is transport glue only: sessions, streams, peers, gossip messages. It moves no object and
    # touches no disk or client pipe: that is the node's services' work (node/).
    "net": {"p2pfast.front", "p2pfast.node", "p2pfast.repo", "p2pfast.store", "p2pfast.datadir"},
    # the node's services sit under the front ends: none of them imports a front end
    "node": {"p2pfast.front"},
    "store": {"asyncio", "uvloop", "p2pfast.net", "p2pfast.front", "p2pfast.node", "p2pfast.datadir"},
    "repo": {
        "asyncio",
        "uvloop",
        "p2pfast.store",
        "p2pfast.net",
        "p2pfast.front",
        "p2pfast.node",
        "p2pfast.datadir",
    },
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from p2pfast.store import objects` imports p2pfast.store.objects: name the submodule too
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def hits(names: set[str], forbidden: set[str]) -> set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


# Inside store/, the at-rest format sits below the store's logic: envelope.py seals and opens buffers with
# a data key, and so imports no SQL, network, logging or event loop, nor the store modules that do I/O
# (durable, keys, upload, objects). Each module of the chain imports none after it: the upload pipeline
# knows its store only through a Protocol.
ENVELOPE_FORBIDDEN = {
    "asyncio",
    "uvloop",
    "socket",
    "logging",
    "apsw",
    "sqlite3",
    "p2pfast.repo",
    "p2pfast.net",
    "p2pfast.node",
    "p2pfast.front",
    "p2pfast.datadir",
    "p2pfast.pump",
    "p2pfast.store.durable",
    "p2pfast.store.keys",
}
STORE_CHAIN = ["segments", "envelope", "upload", "objects"]


def test_envelope_imports_no_io_layer() -> None:
    path = PKG / "store" / "envelope.py"
    assert not hits(imports_of(path), ENVELOPE_FORBIDDEN), path


def test_store_chain_imports_downward_only() -> None:
    for i, name in enumerate(STORE_CHAIN):
        later = {f"p2pfast.store.{m}" for m in STORE_CHAIN[i + 1 :]}
        path = PKG / "store" / f"{name}.py"
        assert not hits(imports_of(path), later), path


def test_kernels_import_nothing_above_them() -> None:
    for name in KERNELS:
        path = PKG / f"{name}.py"
        forbidden = FORBIDDEN_IN_KERNELS - ({"logging"} if name == "_accel" else set())
        assert not hits(imports_of(path), forbidden), path


def test_layers_import_downward_only() -> None:
    for layer, forbidden in RULES.items():
        for path in (PKG / layer).glob("*.py"):
            assert not hits(imports_of(path), forbidden), path


# The front ends (CLI, daemon, client I/O, metrics, the control socket) sit on top: nothing below them
# imports p2pfast.front, not even lazily inside a function. __main__.py is `python -m p2pfast`, the CLI.
FRONT_IMPORTERS = {"__main__.py"}


def test_nothing_below_the_front_ends_imports_them() -> None:
    below = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if not rel.startswith("front/") and rel not in FRONT_IMPORTERS:
            below[rel] = hits(imports_of(path), {"p2pfast.front"})
    assert {"datadir.py", "runtime.py", "net/session.py", "store/objects.py", "repo/repo.py"} <= set(below)
    assert not {rel: sorted(names) for rel, names in below.items() if names}
    # an entry of the allow-list that no longer imports the front ends goes from the list
    for rel in FRONT_IMPORTERS:
        assert hits(imports_of(PKG / rel), {"p2pfast.front"}), f"{rel} imports no p2pfast.front: unlist it"


def test_sql_lives_only_in_repo() -> None:
    for path in PKG.rglob("*.py"):
        if path.parent.name == "repo":
            continue
        assert "apsw" not in imports_of(path) and "sqlite3" not in imports_of(path), path


# -- the CLI's client side: a command that asks a running daemon (STYLE.md 1) -------------------------

# What a CLI command that only asks the daemon must not load: the event loop, SQL, crypto.
HEAVY = {"asyncio", "uvloop", "apsw", "cryptography"}
# Nor, through a daemon, what it has no use for: logging (nothing in the process logs) and shutil (which
# argparse imports only for the terminal width, parser._Formatter finds it itself), and orjson, whose import
# costs ~20 ms of CPU: the control socket's lines and --json output use the stdlib (front/jsontext.py).
UNUSED_THROUGH_DAEMON = {"logging", "shutil", "orjson"}
# The package's own modules that bring those in (or open the data dir): none is on the client's path. The
# front ends' daemon side too: the CLI imports them inside the commands that run a node or read the repo.
HEAVY_OWN = {
    "p2pfast.front.ctl.server",
    "p2pfast.front.daemon",
    "p2pfast.front.commands",
    "p2pfast.front.clientio",
    "p2pfast.front.metrics",
    "p2pfast.front.sdnotify",
    "p2pfast.front.listings",
    "p2pfast.node.status",
    "p2pfast.front.demo",
    "p2pfast.datadir",
    "p2pfast.identity",
    "p2pfast.node",
    "p2pfast.runtime",
    "p2pfast.repo",
    "p2pfast.store",
    "p2pfast.net",
    "p2pfast.proto",
}


def module_path(name: str) -> Path | None:
    """The file of p2pfast module `name` in the installed package, None for anything else."""
    parts = name.split(".")
    if parts[0] != "p2pfast":
        return None
    base = PKG.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _names(nodes: list[ast.stmt] | list[ast.AST]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from p2pfast.front import ctl` imports the module p2pfast.front.ctl
            names.update(
                f"{node.module}.{a.name}" for a in node.names if module_path(f"{node.module}.{a.name}")
            )
    return names


def eager_imports(path: Path) -> set[str]:
    """What importing `path` imports: its module-level import statements, not those inside functions
    (cli.py's lazy ones) nor those under `if TYPE_CHECKING:`."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node = ast.Module(body=node.orelse, type_ignores=[])
        found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return _names(found)


def closure(start: str) -> set[str]:
    """Every module importing `start` imports, following the package's own modules (and their parent
    packages, whose __init__ runs first)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = module_path(name)
        if path is not None:
            todo += sorted(eager_imports(path))
    return seen


# What the CLI client imports at start: the script's module and what a command run through a daemon adds.
CLIENT_SIDE = [
    "p2pfast.__main__",
    "p2pfast.front.cli",
    "p2pfast.front.parser",
    "p2pfast.front.render",
    "p2pfast.front.ctl",
    "p2pfast.front.ctl.client",
    "p2pfast.front.ctl.codec",
    "p2pfast.layout",
    "p2pfast.config",
]


def test_the_cli_client_imports_no_asyncio_apsw_or_crypto() -> None:
    for start in CLIENT_SIDE:
        names = closure(start)
        assert not hits(names, HEAVY | HEAVY_OWN), (start, sorted(hits(names, HEAVY | HEAVY_OWN)))


def test_the_front_package_init_is_a_docstring_only() -> None:
    # every `import p2pfast.front.X` runs it first, the CLI's included: it must cost nothing
    body = ast.parse((PKG / "front" / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    assert isinstance(body[0].value.value, str)


def test_the_control_socket_codec_is_sans_io() -> None:
    # codec.py is the format alone: no socket, no loop, and neither side of the conversation
    forbidden = {
        "asyncio",
        "uvloop",
        "socket",
        "select",
        "selectors",
        "p2pfast.front.ctl.client",
        "p2pfast.front.ctl.server",
    }
    assert not hits(imports_of(PKG / "front" / "ctl" / "codec.py"), forbidden)
    assert not hits(imports_of(PKG / "front" / "ctl" / "client.py"), {"p2pfast.front.ctl.server"} | HEAVY)


def test_the_closure_sees_what_the_daemon_imports() -> None:
    # the walk above is not blind: the server and datadir do bring in what the client must not
    assert "asyncio" in closure("p2pfast.front.ctl.server")
    assert {"p2pfast.front.commands", "p2pfast.front.clientio", "p2pfast.front.sdnotify"} <= closure(
        "p2pfast.front.daemon"
    )
    assert {"apsw", "cryptography"} <= {n.split(".")[0] for n in closure("p2pfast.datadir")}


def _imported(args: list[str]) -> tuple[set[str], bytes]:
    """The top-level packages `p2pfast ARGS` imports (-X importtime lists every module on stderr), and
    its stdout."""
    import subprocess
    import sys

    from nodetools import cli_env

    r = subprocess.run(
        [sys.executable, "-P", "-X", "importtime", "-m", "p2pfast", *args],
        capture_output=True,
        timeout=60,
        env=cli_env(),
    )
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, (args, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines}, r.stdout


def test_commands_through_a_running_daemon_import_no_asyncio_apsw_or_crypto(tmp_path: Path) -> None:
    import orjson
    from netnodes import make_nodes, running

    (node,) = make_nodes(tmp_path, 1)
    src, out = tmp_path / "src.bin", tmp_path / "out.bin"
    src.write_bytes(b"through the daemon\n" * 100)
    d = ["--data-dir", str(node.root)]
    with running([node]):
        node.start()
        loaded, stdout = _imported(["status", *d, "--json"])
        status = orjson.loads(stdout)
        assert status["running"] is True and status["pid"] == node.proc.pid  # the daemon answered
        assert not loaded & (HEAVY | UNUSED_THROUGH_DAEMON), (
            "status",
            sorted(loaded & (HEAVY | UNUSED_THROUGH_DAEMON)),
        )
        for args in (
            ["store", "k", str(src)],
            ["files"],
            ["peers"],
            ["shares"],
            ["get", "k", "-o", str(out)],
            ["delete", "k"],
        ):
            loaded, stdout = _imported([*args, *d, "--json"])
            assert not loaded & (HEAVY | UNUSED_THROUGH_DAEMON), (
                args[0],
                sorted(loaded & (HEAVY | UNUSED_THROUGH_DAEMON)),
            )
            if args[0] == "files":
                assert [r["key"] for r in orjson.loads(stdout)] == ["k"]
        assert out.read_bytes() == src.read_bytes()
        node.stop()
    # With no daemon the command opens the repo itself: then apsw is loaded, as it must be, and logging
    loaded, _ = _imported(["status", *d, "--json"])
    assert {"apsw", "logging"} <= loaded


def test_no_module_imports_itself_back() -> None:
    # No import cycle among the package's modules, counting `if TYPE_CHECKING:` imports too (a cycle
    # hidden from the interpreter is still two modules that each need the other: net/session.py names
    # what it needs of the protocol as a Protocol class instead).
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        # a module's own parent packages are not an edge: their __init__ runs before it in any case
        graph[name] = {
            n for n in imports_of(path) if module_path(n) is not None and not (name + ".").startswith(n + ".")
        }

    def cycle_from(start: str) -> list[str] | None:
        stack, path, done = [(start, iter(sorted(graph.get(start, ()))))], [start], set()
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                done.add(node)
                continue
            if child == start:
                return [*path, child]
            if child in path or child in done or child.startswith(start + "."):
                continue  # a package importing its own submodules (__init__ re-exports) is no cycle
            stack.append((child, iter(sorted(graph.get(child, ())))))
            path.append(child)
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name)) is not None]
    assert not cycles, cycles[:3]
