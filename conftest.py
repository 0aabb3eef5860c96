"""Loaded first by every pytest run in this checkout (tests/ and bench/): stop at once, with one line, when
the tests would not exercise the installed package.

`python -m pytest` from the checkout root puts the checkout on sys.path, so `import p2pfast` finds the
source tree, which has no compiled kernels: the compiled half of the suite is skipped, the guard tests
fail with confusing messages, and P2PFAST_REQUIRE_ACCEL=1 fails at collection. The installed `pytest`
script and `python -P -m pytest` (-P: no cwd on sys.path) import the installed package. An editable
install of this checkout (`pip install -e .`) is the installed package, and is let through.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
HOW = (
    "run the installed `pytest` script, or `python -P -m pytest`, after pip install '.[test]'"
    " (README, Set up)"
)


def _editable_from_here() -> bool:
    # Not importlib.metadata.distribution(): with the checkout on sys.path it finds the build's own
    # p2pfast.egg-info there, not what pip installed.
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    dists = importlib.metadata.distributions(name="p2pfast", path=elsewhere)
    text = next((d.read_text("direct_url.json") for d in dists), None)
    if not text:
        return False
    info = json.loads(text)
    url = str(info.get("url", ""))
    return (
        bool(info.get("dir_info", {}).get("editable"))
        and url.startswith("file://")
        and (Path(url.removeprefix("file://")).resolve() == ROOT)
    )


def _problem() -> str | None:
    spec = importlib.util.find_spec("p2pfast")
    if spec is None or spec.origin is None:
        return "p2pfast is not installed in this Python"
    origin = Path(spec.origin).resolve()
    if origin.is_relative_to(ROOT / "p2pfast") and not _editable_from_here():
        return f"p2pfast is imported from the source tree ({origin.parent}), not the installed package"
    return None


_why = _problem()
if _why is not None:
    # Raised here, at import: this conftest is imported before tests/conftest.py and bench/conftest.py,
    # which import p2pfast (and fail under P2PFAST_REQUIRE_ACCEL=1). Not pytest.exit(): raised while a
    # conftest is imported, pytest reports it as an ImportError with a traceback; SystemExit passes
    # through its `except Exception` and leaves this one line.
    sys.stderr.write(f"pytest: {_why}: {HOW}\n")
    raise SystemExit(int(pytest.ExitCode.USAGE_ERROR))
