"""shard benchmarks, compiled vs pure: one digest, and a batch of 1000 digests in one buffer.

Run: PYTHONPATH=. pytest bench/bench_shard.py --benchmark-only -q   (compare rows within a group)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

import pytest

DIGEST = os.urandom(32)
BATCH = os.urandom(32 * 1000)


@pytest.fixture
def shard(impl: Callable[[str], ModuleType]) -> ModuleType:
    return impl("shard")


def test_shard_path(benchmark, shard):
    benchmark.group = "shard_path (1 digest)"
    assert benchmark(shard.shard_path, DIGEST, 2, 2).endswith(DIGEST.hex())


def test_shard_path_deep(benchmark, shard):
    benchmark.group = "shard_path (1 digest, width=1 depth=8)"
    assert benchmark(shard.shard_path, DIGEST, 1, 8).endswith(DIGEST.hex())


def test_shard_paths(benchmark, shard):
    benchmark.group = "shard_paths (1000 digests)"
    assert len(benchmark(shard.shard_paths, BATCH, 2, 2)) == 1000
