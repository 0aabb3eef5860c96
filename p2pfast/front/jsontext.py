"""JSON text for the CLI's output and the control socket's lines, on the stdlib's json module.

Not orjson: importing it costs about 20 ms of CPU (it loads uuid, platform, datetime and json itself),
half of what a CLI command that only asks the daemon may cost in all, for lines of a few hundred bytes.
The peer protocol, where speed matters, keeps orjson (proto/control.py).

Both directions are strict like orjson: no NaN or Infinity, UTF-8 only (a lone surrogate in a string
is an encoding error, not a line that no reader can decode).
"""

from __future__ import annotations

import json
from typing import Any

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_PRETTY = json.JSONEncoder(ensure_ascii=False, indent=2, allow_nan=False)


def line(obj: Any) -> bytes:
    """`obj` as one compact line ending in a newline. TypeError (not JSON) or ValueError (NaN, a lone
    surrogate) for what cannot be sent."""
    return (_COMPACT.encode(obj) + "\n").encode("utf-8")


def pretty(obj: Any) -> bytes:
    """`obj` indented by two spaces, as `--json` prints it (no trailing newline)."""
    return _PRETTY.encode(obj).encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | bytearray | memoryview) -> Any:
    """The value of a JSON text in UTF-8; ValueError for anything else."""
    return json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
