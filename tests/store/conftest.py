"""Fixtures for store tests: an initialised data dir in tmp_path and a LocalNode opened on it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

from p2pfast.datadir import Layout, LocalNode, init


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout.of(tmp_path / "node")
    init(lay)
    return lay


@pytest.fixture
def open_node() -> Iterator[Callable[[Layout], LocalNode]]:
    """open_node(layout) -> LocalNode, closed at teardown if the test did not close it."""
    opened: list[LocalNode] = []

    def _open(lay: Layout, **kw: float) -> LocalNode:
        n = LocalNode(lay, **kw)
        opened.append(n)
        return n

    yield _open
    for n in opened:
        n.close()


@pytest.fixture
def node(layout: Layout, open_node: Callable[[Layout], LocalNode]) -> LocalNode:
    return open_node(layout)
