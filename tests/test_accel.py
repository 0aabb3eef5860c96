"""The compiled kernels are the ones in use unless P2PFAST_PURE says otherwise (yarl, frozenlist)."""

from __future__ import annotations

import os
import subprocess
import sys

from p2pfast import _accel


def test_compiled_kernels_loaded_unless_pure() -> None:
    if os.environ.get("P2PFAST_PURE") == "1":
        assert not _accel.ACCELERATED
        for name, mod in _accel.MODULES.items():
            assert mod.__name__ == f"p2pfast._{name}_py"
    else:
        # CI runs with P2PFAST_REQUIRE_ACCEL=1, so a missing build fails at import; locally the fallback
        # is allowed, but then this test says so.
        assert _accel.ACCELERATED, "compiled kernels not loaded: pip install . with a C compiler"
        for name, mod in _accel.MODULES.items():
            assert mod.__name__ == f"p2pfast._{name}_c"


def test_reimport_with_pure_picks_twins() -> None:
    code = (
        "from p2pfast import _accel, frames, pump, shard;"
        "print(_accel.ACCELERATED, frames.FrameParser.__module__, pump.Pump.__module__,"
        " shard.shard_path.__module__)"
    )
    env = dict(os.environ, P2PFAST_PURE="1")
    env.pop("P2PFAST_REQUIRE_ACCEL", None)
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "p2pfast._frames_py", "p2pfast._pump_py", "p2pfast._shard_py"]


def test_version_reports_kernels() -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-m", "p2pfast", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("p2pfast ")
    assert ("accelerated" in out) == _accel.ACCELERATED
