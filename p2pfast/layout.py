"""The paths of a node's data directory (the tree is drawn in datadir.py), built from the config alone.

Light on purpose: a CLI command that only asks the running daemon needs the data dir's ctl.sock and
nothing that opens it (datadir.py imports the repo, the store and their crypto).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class Layout(NamedTuple):
    # A NamedTuple, not a dataclass: dataclasses imports inspect and ast, which a CLI command that only
    # asks the daemon has no other use for (config.Config says what it costs).
    root: Path
    master_key_file: Path
    db: Path
    network_key: Path

    @classmethod
    def of(
        cls,
        data_dir: str | os.PathLike[str],
        master_key_file: str | os.PathLike[str] | None = None,
        db: str | os.PathLike[str] | None = None,
        network_key_file: str | os.PathLike[str] | None = None,
    ) -> Layout:
        root = Path(data_dir).expanduser()

        def where(given: str | os.PathLike[str] | None, default: str) -> Path:
            return Path(given).expanduser() if given else root / default

        return cls(
            root,
            where(master_key_file, "master.key"),
            where(db, "p2p.db"),
            where(network_key_file, "network.key"),
        )

    @property
    def network_key_old(self) -> Path:
        """The network key before the last rotation, kept until its overlap window ends (beside the key
        file, which network_key_file may put elsewhere)."""
        return self.network_key.with_name(self.network_key.name + ".old")

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def dirty(self) -> Path:
        return self.root / "dirty"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def config(self) -> Path:
        return self.root / "config"
