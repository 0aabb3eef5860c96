"""Shared fixtures. `impl` runs a test over the compiled kernels and their pure twins."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from p2pfast import _accel

# tests/helpers (ConnectionPair, node processes, loops) is importable from every test module
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))


def load_kernel(name: str, kind: str) -> ModuleType:
    if kind == "c" and _accel.PURE:
        pytest.skip("P2PFAST_PURE=1: the compiled kernels are not in use")
    try:
        return _accel.twin(name, kind)
    except ImportError:
        if _accel.REQUIRE:
            raise
        pytest.skip(f"p2pfast._{name}_{kind} is not built")


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> Callable[[str], ModuleType]:
    """impl("frames") -> p2pfast._frames_c or p2pfast._frames_py, per parameter."""
    kind = request.param
    return lambda name: load_kernel(name, kind)


@pytest.fixture
def both() -> Callable[[str], tuple[ModuleType, ModuleType]]:
    """both("frames") -> (compiled, pure), for tests that cross the twins; skipped when pure."""
    return lambda name: (load_kernel(name, "c"), load_kernel(name, "py"))


@pytest.fixture(autouse=True)
def _no_node_outlives_its_test() -> Iterator[None]:
    """Every node process a test started (tests/helpers/netnodes.py) is ended when the test ends; one
    still running then is killed here and reported as the test's error, since the test forgot it."""
    yield
    netnodes = sys.modules.get("netnodes")
    if netnodes is not None:
        left = netnodes.kill_started()
        assert not left, f"{left} node process(es) outlived the test: end them (netnodes.running)"
