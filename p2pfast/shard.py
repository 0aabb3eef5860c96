"""Sharded path transform: facade over the compiled kernel or its pure twin (chosen by _accel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfast import _accel

if TYPE_CHECKING:
    from p2pfast._shard_py import shard_path, shard_paths
else:
    _m = _accel.module("shard")
    shard_path = _m.shard_path
    shard_paths = _m.shard_paths

__all__ = ["shard_path", "shard_paths"]
