"""Only the compiled kernels live here; everything else is in pyproject.toml.

P2PFAST_PURE=1 at build time installs the pure-Python twins alone.
P2PFAST_DEBUG=1 builds with annotation, line tracing and P2P_DEBUG checks.
"""

import os

from setuptools import setup

KERNELS = ("frames", "pump", "shard")


def ext_modules() -> list:
    if os.environ.get("P2PFAST_PURE") == "1":
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = os.environ.get("P2PFAST_DEBUG") == "1"
    macros = [("P2P_DEBUG", "1")] if debug else []
    if debug:
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    cflags = ["-O2", "-Wall", "-Wextra", "-Wconversion", "-Wsign-compare"]
    exts = [
        Extension(
            f"p2pfast._{name}_c",
            [f"ext/{name}.pyx"],
            include_dirs=["ext/include"],
            define_macros=macros,
            extra_compile_args=cflags,
        )
        for name in KERNELS
    ]
    directives = {"language_level": 3, "embedsignature": True}
    if debug:
        directives["linetrace"] = True
    return cythonize(exts, compiler_directives=directives, annotate=debug, include_path=["ext"])


setup(ext_modules=ext_modules())
