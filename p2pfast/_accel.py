"""The one place that chooses between the compiled kernels and their pure-Python twins.

P2PFAST_PURE=1 (or a non-CPython interpreter) selects the twins. Otherwise the compiled module is imported
and, when it is missing, the twin is used with one WARNING, unless P2PFAST_REQUIRE_ACCEL=1 makes that
fallback an error: a demand, not a preference (benches and CI set it).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

KERNELS = ("frames", "pump", "shard")

PURE = os.environ.get("P2PFAST_PURE") == "1" or sys.implementation.name != "cpython"
REQUIRE = os.environ.get("P2PFAST_REQUIRE_ACCEL") == "1"


def _load(name: str) -> tuple[ModuleType, bool]:
    if PURE:
        return importlib.import_module(f"p2pfast._{name}_py"), False
    try:
        return importlib.import_module(f"p2pfast._{name}_c"), True
    except ImportError as exc:
        if REQUIRE:
            raise ImportError(
                f"P2PFAST_REQUIRE_ACCEL=1 but the compiled kernel p2pfast._{name}_c is missing: {exc}"
            ) from exc
        logging.getLogger("p2pfast").warning(
            "event=accel_fallback kernel=%s reason=%r hint=%s",
            name,
            str(exc),
            "pip install . with a C compiler",
        )
        return importlib.import_module(f"p2pfast._{name}_py"), False


_LOADED = {name: _load(name) for name in KERNELS}
MODULES: dict[str, ModuleType] = {name: mod for name, (mod, _) in _LOADED.items()}
ACCELERATED: bool = all(compiled for _, compiled in _LOADED.values())


def module(name: str) -> ModuleType:
    return MODULES[name]


def twin(name: str, kind: str) -> ModuleType:
    """p2pfast._NAME_c (kind "c") or p2pfast._NAME_py (kind "py") itself, for tests and benches that run
    both; raises ImportError when the compiled one is not built."""
    if kind not in ("c", "py"):
        raise ValueError(f"kind must be 'c' or 'py', not {kind!r}")
    return importlib.import_module(f"p2pfast._{name}_{kind}")
