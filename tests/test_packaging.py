"""What the release files hold: the sdist carries everything needed to build, test, bench and run the
service as the README says; the wheel carries the package, its stubs and the LICENSE; the declared
dependency floors are the ones CI installs (.ci/constraints-floors.txt).

The sdist and the wheel are built once, with `python -m build` (the wheel from the sdist, as a packager
would), and with P2PFAST_PURE=1, which skips compiling: what is checked here is the file lists and the
metadata, not the kernels (CI builds and tests those from the README's commands).
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parent.parent
SKIP_PARTS = {"__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks", ".mypy_cache", ".ruff_cache"}


def _tree(top: str) -> set[str]:
    """Files under ROOT/top that belong in the sdist, as POSIX paths relative to ROOT."""
    out = set()
    for path in (ROOT / top).rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and not SKIP_PARTS & set(rel.parts) and path.suffix not in (".pyc", ".so", ".c"):
            out.add(rel.as_posix())
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # From a copy without build products: setuptools adds the files listed in an existing
    # p2pfast.egg-info/SOURCES.txt to the sdist, so a build in the checkout would pass on a stale list.
    src = tmp_path_factory.mktemp("src") / "p2pfast"
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "*.so", "*.c", *SKIP_PARTS)
    shutil.copytree(ROOT, src, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        env={**os.environ, "P2PFAST_PURE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    (sdist,) = out.glob("p2pfast-*.tar.gz")
    (wheel,) = out.glob("p2pfast-*.whl")
    return sdist, wheel


def test_sdist_holds_docs_systemd_bench_tests_and_license(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        prefix = tar.getnames()[0].split("/")[0] + "/"
        names = {n.removeprefix(prefix) for n in tar.getnames() if tar.getmember(n).isfile()}
    wanted = set().union(*(_tree(top) for top in ("docs", "systemd", "bench", "tests", "ext", "p2pfast")))
    wanted |= {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "conftest.py",
        ".ci/run",
        ".ci/constraints-floors.txt",
    }
    assert wanted - names == set(), "missing from the sdist"
    assert "tests/helpers/netnodes.py" in names and "systemd/p2pfast@.service" in names
    assert not [n for n in names if n.endswith((".so", ".c", ".pyc")) or "__pycache__" in n]


def test_wheel_holds_the_package_stubs_and_license(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(whl.read(meta_name).decode())
        dist_info = meta_name.rsplit("/", 1)[0]
        license_text = whl.read(f"{dist_info}/licenses/LICENSE").decode()
    # the front ends are a package of their own, with the control socket a subpackage of it
    front = {"p2pfast/front/__init__.py", "p2pfast/front/cli.py", "p2pfast/front/ctl/codec.py"}
    assert {"p2pfast/py.typed", "p2pfast/_frames_c.pyi"} | front <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or n.endswith((".c", ".pyx"))]
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 the p2pfast authors" in license_text
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {minor}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    requires = {Requirement(r).name: str(Requirement(r).specifier) for r in meta.get_all("Requires-Dist")}
    assert requires["apsw"] == ">=3.51.0.0"


def _floors() -> dict[str, Version]:
    """Every requirement of pyproject.toml (runtime, test extra, build system) -> its `>=` floor."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["test"],
        *project["build-system"]["requires"],
    ]
    floors = {}
    for text in reqs:
        req = Requirement(text)
        (floor,) = [s.version for s in req.specifier if s.operator == ">="]
        floors[req.name.lower().replace("_", "-")] = Version(floor)
    return floors


def test_constraints_pin_every_dependency_at_its_floor() -> None:
    pins = {}
    for line in (ROOT / ".ci" / "constraints-floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower().replace("_", "-")] = Version(spec.version)
    floors = _floors()
    # setuptools 77.0.0 was never published: 77.0.1 is the oldest release the `>=77` floor admits
    assert floors.pop("setuptools") == Version("77") and pins.pop("setuptools") == Version("77.0.1")
    assert pins == floors


def test_every_test_ci_names_exists() -> None:
    # .ci/run runs a smoke subset on the dependency floors and on Python 3.13 by path: a moved test file
    # must not turn that phase into "file not found" (it did once: tests/net/test_transfer.py).
    import re

    text = (ROOT / ".ci" / "run").read_text()
    named = re.findall(r"^\s+(tests/[\w/]+\.py)(?:::\w+)?\s*$", text, flags=re.M)
    assert len(named) >= 10, named
    assert [p for p in named if not (ROOT / p).is_file()] == []
