"""shard benchmarks, compiled vs pure: one digest, and a batch of 1000 digests in one buffer.

Run: PYTHONPATH=. pytest bench/bench_shard.py --benchmark-only -q   (compare rows within a group)
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

DIGEST = os.urandom(32)
BATCH = os.urandom(32 * 1000)


@pytest.fixture(params=["c", "py"])
def shard(request: pytest.FixtureRequest) -> ModuleType:
    try:
        return importlib.import_module(f"p2pfast._shard_{request.param}")
    except ImportError:
        if os.environ.get("P2PFAST_REQUIRE_ACCEL") == "1":
            raise
        pytest.skip(f"p2pfast._shard_{request.param} is not built")


def test_shard_path(benchmark, shard):
    benchmark.group = "shard_path (1 digest)"
    assert benchmark(shard.shard_path, DIGEST, 2, 2).endswith(DIGEST.hex())


def test_shard_path_deep(benchmark, shard):
    benchmark.group = "shard_path (1 digest, width=1 depth=8)"
    assert benchmark(shard.shard_path, DIGEST, 1, 8).endswith(DIGEST.hex())


def test_shard_paths(benchmark, shard):
    benchmark.group = "shard_paths (1000 digests)"
    assert len(benchmark(shard.shard_paths, BATCH, 2, 2)) == 1000
