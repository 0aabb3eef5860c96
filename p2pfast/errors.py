"""The one exception tree. Each class's docstring is its message template; each has a unique exit code.

Exit codes (documented in README.md):
  1 generic, 2 usage (argparse), 3 not found, 4 integrity failure, 5 bad input, 6 storage/I-O error,
  7 disk full, 8 config error, 9 protocol error, 10 peer unavailable, 70 internal error (a bug).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar


class P2PError(Exception):
    """Error: {}"""

    exit_code: ClassVar[int] = 1
    # The stable name of the error in `--json` error lines (docs/cli.md): for a class of this module, its
    # name in snake_case (NotFound: "not_found"); a subclass elsewhere (net.session.RequestFailed) keeps
    # its parent's, so a script sees the same code whichever layer raised it, through a daemon or not.
    # (The attribute is `name`: ProtocolError.code is the wire error code sent to the peer.)
    name: ClassVar[str] = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ and cls.__module__ == __name__:
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.args = args

    def __str__(self) -> str:
        template = (type(self).__doc__ or "{}").strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError, ValueError):
            return " ".join(str(a) for a in self.args) or template


class BadInput(P2PError):
    """bad input: {}"""

    exit_code = 5


class ProtocolError(P2PError):
    """protocol error: {}"""

    exit_code = 9

    def __init__(self, reason: str, code: int = 1) -> None:
        super().__init__(reason)
        # code is a wire error code (p2pfast.wire.ErrorCode) sent to the peer on close.
        self.code = code


class LocalProtocolError(ProtocolError):
    """local protocol error: {}"""


class RemoteProtocolError(ProtocolError):
    """remote protocol error: {}"""


class IntegrityError(P2PError):
    """integrity check failed: {}"""

    exit_code = 4


class StorageError(P2PError):
    """storage error: {}"""

    exit_code = 6


class NotFound(StorageError):
    """not found: {}"""

    exit_code = 3


class DiskFull(StorageError):
    """disk full: {}"""

    exit_code = 7


class ConfigError(P2PError):
    """config error: {}"""

    exit_code = 8


class PeerUnavailable(P2PError):
    """peer unavailable: {}"""

    exit_code = 10


class InternalError(P2PError):
    """internal error (a bug, please report it): {}"""

    exit_code = 70
