"""Stub for the compiled shard kernel (ext/shard.pyx); the pure twin is p2pfast/_shard_py.py."""

DIGEST_SIZE: int
MAX_WIDTH: int
MAX_DEPTH: int

__all__ = ["DIGEST_SIZE", "MAX_DEPTH", "MAX_WIDTH", "shard_path", "shard_paths"]

def shard_path(digest: bytes | bytearray | memoryview, width: int = 2, depth: int = 2) -> str: ...
def shard_paths(digests: bytes | bytearray | memoryview, width: int = 2, depth: int = 2) -> list[str]: ...
