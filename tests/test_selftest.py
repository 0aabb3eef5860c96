"""The start-up selftest passes on the kernels in use and catches a kernel that disagrees with its twin."""

from __future__ import annotations

import types

import pytest

from p2pfast import _shard_py, selftest
from p2pfast.errors import InternalError


def test_selftest_passes_on_kernels_in_use() -> None:
    selftest.run()


def test_selftest_catches_a_disagreeing_kernel() -> None:
    broken = types.ModuleType("p2pfast._shard_broken")
    broken.shard_path = lambda digest, width=2, depth=2: _shard_py.shard_path(digest, width, depth)[::-1]
    broken.shard_paths = _shard_py.shard_paths
    with pytest.raises(InternalError, match="disagrees with its pure twin"):
        selftest.check("shard", broken)


@pytest.mark.parametrize("name", sorted(selftest.CHECKS))
def test_selftest_checks_compiled_against_twin(both, name: str) -> None:  # type: ignore[no-untyped-def]
    compiled, _ = both(name)
    selftest.check(name, compiled)
