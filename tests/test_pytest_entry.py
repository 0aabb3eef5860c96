"""How the suite is run: `python -m pytest` from the checkout root would import the uncompiled source
tree instead of the installed package; the root conftest.py stops it at once with one line saying what
to run instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("-m", "pytest", "-q", "tests/test_accel.py"), {}),
        (("-m", "pytest", "-q", "bench", "--collect-only"), {"P2PFAST_REQUIRE_ACCEL": "1"}),
    ],
    ids=["tests", "bench-require-accel"],
)
def test_python_m_pytest_from_the_checkout_stops_with_one_line(
    argv: tuple[str, ...], env: dict[str, str]
) -> None:
    r = _pytest(*argv, **env)
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "imported from the source tree" in lines[0] and "python -P -m pytest" in lines[0]
    assert r.stdout == ""  # stopped before collecting anything


def test_python_P_m_pytest_uses_the_installed_package() -> None:
    # -P keeps the checkout off sys.path: the same files collect, from the installed p2pfast.
    r = _pytest("-P", "-m", "pytest", "-q", "--collect-only", "tests/test_accel.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "source tree" not in r.stderr
