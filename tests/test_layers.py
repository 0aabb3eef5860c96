"""Imports only go down the layers (STYLE.md 1), walked with ast over the installed package."""

from __future__ import annotations

import ast
from pathlib import Path

import p2pfast

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
    "p2pfast.cli",
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
        "p2pfast.cli",
        "p2pfast.node",
        "p2pfast.datadir",
    },
    # net sits above the store (STYLE.md: kernels -> proto and store -> net -> node): net/transfer.py moves
    # objects between a ContentStore and sessions. SQL stays out of it: it reaches the repo only through
    # the store it is given.
    "net": {"p2pfast.cli", "p2pfast.node", "p2pfast.repo", "p2pfast.datadir"},
    "store": {"asyncio", "uvloop", "p2pfast.net", "p2pfast.cli", "p2pfast.node", "p2pfast.datadir"},
    "repo": {
        "asyncio",
        "uvloop",
        "p2pfast.store",
        "p2pfast.net",
        "p2pfast.cli",
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
    "p2pfast.cli",
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


def test_sql_lives_only_in_repo() -> None:
    for path in PKG.rglob("*.py"):
        if path.parent.name == "repo":
            continue
        assert "apsw" not in imports_of(path) and "sqlite3" not in imports_of(path), path
