"""ruff and mypy over the source tree, as tests, when the checkout is at hand (it is in CI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install '.[test]')")
def test_ruff_clean() -> None:
    out = subprocess.run(
        ["ruff", "check", "p2pfast", "tests", "bench", "setup.py", "conftest.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy not installed (pip install '.[test]')")
def test_mypy_strict_clean() -> None:
    out = subprocess.run(["mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
