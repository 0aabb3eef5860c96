"""Configuration: CLI flags, then the config file (default ~/.p2p/config), then defaults.

The file keeps the original system's format: `key=value` lines, `#` comments, comma-separated lists,
`~` expanded in paths. An unknown key or a bad value is a one-line ConfigError naming the file and line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from p2pfast.errors import ConfigError

DEFAULT_CONFIG = "~/.p2p/config"
DEFAULT_DATA_DIR = "~/.p2p"
LOG_LEVELS = ("debug", "info", "warning", "error")
_NO_SOURCES: Mapping[str, str] = MappingProxyType({})


_VAR_RE = re.compile(r"\$(\w+|\{([^}]*)\})")
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?)\s*(?:([kmgt])(?:i?b)?|b)?")
MAX_SECONDS = 10 * 365 * 86400.0  # ten years: anything longer is a typo, not a setting


def _path(v: str) -> str:
    if not v:
        raise ValueError("empty path")
    # $VARS too: under systemd a secret comes as $CREDENTIALS_DIRECTORY/NAME (LoadCredential=)
    for m in _VAR_RE.finditer(v):
        name = m.group(2) if m.group(2) is not None else m.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable ${name} is not set (in {v!r})")
    return str(Path(os.path.expandvars(v)).expanduser())


def _listen(v: str, lowest_port: int = 0) -> str:
    _host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not lowest_port <= int(port) <= 65535:
        raise ValueError(f"expected [HOST]:PORT with port {lowest_port}..65535, got {v!r}")
    return v


def _optional_listen(v: str) -> str | None:
    if v.strip().lower() in ("", "off", "none"):
        return None
    return _listen(v)


def _addr_list(v: str) -> tuple[str, ...]:
    return tuple(_listen(a.strip(), lowest_port=1) for a in v.split(",") if a.strip())


def _log_level(v: str) -> str:
    if v.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return v.lower()


def _positive_int(v: str) -> int:
    # Not int()'s own message ("invalid literal for int() with base 10"): the user wrote a setting.
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n <= 0:
        raise ValueError(f"expected a positive whole number, got {v!r}")
    return n


def _seconds(v: str) -> float:
    try:
        n = float(v)
    except ValueError:  # not "could not convert string to float"
        n = float("nan")
    if not 0 < n <= MAX_SECONDS:
        raise ValueError(f"expected seconds, more than 0 and at most {MAX_SECONDS:.0f} (10 years), got {v!r}")
    return n


def _replicas(v: str) -> int | None:
    if v.strip().lower() in ("all", ""):
        return None
    return _positive_int(v)


def _size(v: str) -> int | None:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = v.strip().lower()
    if t in ("none", "unlimited"):
        return None
    m = _SIZE_RE.fullmatch(t)
    if m is None:
        raise ValueError(f"expected a size like 512M or 2G (or none), got {v!r}")
    n = int(float(m.group(1)) * units[m.group(2) or ""])
    if n <= 0:
        raise ValueError(f"expected a positive size, got {v!r}")
    return n


def _max_frame(v: str) -> int:
    n = _positive_int(v)
    if not 1024 <= n <= 65535:
        raise ValueError("max_frame must be 1024..65535 (a frame carries one Noise message)")
    return n


class Config(NamedTuple):
    """The settings in effect. A NamedTuple, not a dataclass: dataclasses imports inspect and ast,
    ~15 ms of CPU that every CLI command, even one that only asks the daemon, would pay."""

    data_dir: str = DEFAULT_DATA_DIR
    db: str | None = None  # default: DATA_DIR/p2p.db
    master_key_file: str | None = None  # default: DATA_DIR/master.key
    network_key_file: str | None = None  # default: DATA_DIR/network.key
    listen: str = ":3000"
    bootstrap: tuple[str, ...] = ()
    log_level: str = "warning"
    # network limits (p2pfast.net.limits and p2pfast.proto.connection.Limits say why each default)
    max_frame: int = 65535
    max_streams: int = 16
    max_connections: int = 256
    max_links: int = 16
    max_pre_handshake: int = 32
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    gossip_interval: float = 30.0
    # failure detection (node/viewsync.py; net/limits.py says why the defaults)
    suspect_after: float = 5.0
    dead_after: float = 30.0
    # replication: copies a store places besides its own, picked by rendezvous hashing; all = every
    # connected peer, as the original system does. 2 (3 copies in all, as Garage, Ceph and HDFS keep by
    # default) survives the loss of any two holders while a 50-node network stores 3 copies, not 50.
    replicas: int | None = 2
    # largest object this node accepts from a peer (none = only free space limits it)
    max_object: int | None = None
    # the most plaintext bytes this node stores for its peers and users (none = only free space limits it);
    # a full node refuses replicas with its reason, and the store moves on to the next-ranked peer
    max_storage: int | None = None
    # how long a delete is remembered, so a peer that was offline cannot bring the file back
    tombstone_grace: float = 7 * 86400.0
    # how long a CLI command with no daemon waits for its embedded node to find its peers
    connect_timeout: float = 5.0
    # Prometheus metrics over HTTP (":9464" binds 127.0.0.1 only; off by default)
    metrics_listen: str | None = None
    # the S3 API (front/s3/; ":3900" binds 127.0.0.1 only; off by default)
    s3_listen: str | None = None
    # the read-only HTTP gateway (front/gateway.py; ":8080" binds 127.0.0.1 only; off by default)
    gateway_listen: str | None = None
    # on SIGTERM, how long transfers in flight may take to finish before they are aborted
    shutdown_timeout: float = 30.0
    # self-healing (node/repair.py; docs/operations.md, "Self-healing")
    repair_interval: float = 600.0
    repair_grace: float = 300.0
    repair_bandwidth: int | None = 32 << 20
    repair_concurrency: int = 2
    # the background scrub (node/scrub.py): every local object read back and verified once per
    # scrub_period, at most scrub_bandwidth bytes a second (none: unthrottled); docs/operations.md
    scrub_bandwidth: int | None = 32 << 20
    scrub_period: float = 30 * 86400.0
    sources: Mapping[str, str] = _NO_SOURCES  # key -> "flag" | "file:LINE" | "default"


# key -> the parser of its value in a config file or flag (every field but `sources`)
PARSERS: dict[str, Callable[[str], Any]] = {
    "data_dir": _path,
    "db": _path,
    "master_key_file": _path,
    "network_key_file": _path,
    "listen": _listen,
    "bootstrap": _addr_list,
    "log_level": _log_level,
    "max_frame": _max_frame,
    "max_streams": _positive_int,
    "max_connections": _positive_int,
    "max_links": _positive_int,
    "max_pre_handshake": _positive_int,
    "handshake_timeout": _seconds,
    "idle_timeout": _seconds,
    "gossip_interval": _seconds,
    "suspect_after": _seconds,
    "dead_after": _seconds,
    "replicas": _replicas,
    "max_object": _size,
    "max_storage": _size,
    "tombstone_grace": _seconds,
    "connect_timeout": _seconds,
    "metrics_listen": _optional_listen,
    "s3_listen": _optional_listen,
    "gateway_listen": _optional_listen,
    "shutdown_timeout": _seconds,
    "repair_interval": _seconds,
    "repair_grace": _seconds,
    "repair_bandwidth": _size,
    "repair_concurrency": _positive_int,
    "scrub_bandwidth": _size,
    "scrub_period": _seconds,
}


def _nearest(key: str) -> str:
    """'did you mean ...?' for a near miss (a typo, another case, '-' for '_'), else the known keys."""
    import difflib

    close = difflib.get_close_matches(key.lower().replace("-", "_"), PARSERS, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(PARSERS))}"


def parse_file(path: Path) -> dict[str, tuple[Any, str]]:
    """key -> (value, "FILE:LINE"). Raises ConfigError on the first bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM some editors write is not part of the first key
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{lineno}: not UTF-8 text") from None
    out: dict[str, tuple[Any, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        where = f"{path}:{lineno}"
        if not sep:
            raise ConfigError(f"{where}: expected key=value, got {line!r}")
        if key not in PARSERS:
            raise ConfigError(f"{where}: unknown key {key!r} ({_nearest(key)})")
        try:
            out[key] = (PARSERS[key](value), where)
        except ValueError as exc:
            raise ConfigError(f"{where}: bad value for {key}: {exc}") from None
    return out


def default_path(flags: Mapping[str, Any]) -> Path:
    """The config file a command reads when no --config names one: the data dir's own `config`
    (DATA_DIR from --data-dir, else $P2PFAST_DATA_DIR, else ~/.p2p; so ~/.p2p/config by default),
    which is where `init` writes it."""
    given = flags.get("data_dir") or os.environ.get("P2PFAST_DATA_DIR")
    if not given:
        return Path(DEFAULT_CONFIG).expanduser()
    try:
        return Path(_path(str(given))) / "config"
    except ValueError as exc:
        raise ConfigError(f"{'--data-dir' if flags.get('data_dir') else 'P2PFAST_DATA_DIR'}: {exc}") from None


def load(flags: Mapping[str, Any], config_path: str | None = None, missing_ok: bool = False) -> Config:
    """flags: values given on the command line (None = not given). config_path None = the default file
    (default_path), which may be absent; an explicitly named file must exist."""
    explicit = config_path is not None
    if config_path == "":
        raise ConfigError("--config: empty path")
    path = Path(config_path).expanduser() if config_path else default_path(flags)
    from_file: dict[str, tuple[Any, str]] = {}
    if path.exists():
        from_file = parse_file(path)
    elif explicit and not missing_ok:
        raise ConfigError(f"config file {path} does not exist")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, parse in PARSERS.items():
        if flags.get(name) is not None:
            try:
                values[name] = parse(flags[name]) if isinstance(flags[name], str) else flags[name]
            except ValueError as exc:
                raise ConfigError(f"--{name.replace('_', '-')}: {exc}") from None
            sources[name] = "flag"
        elif name in from_file:
            values[name], sources[name] = from_file[name]
        else:
            sources[name] = "default"
    env_dir = os.environ.get("P2PFAST_DATA_DIR")
    if sources["data_dir"] == "default" and env_dir:
        try:
            values["data_dir"], sources["data_dir"] = _path(env_dir), "env:P2PFAST_DATA_DIR"
        except ValueError as exc:
            raise ConfigError(f"P2PFAST_DATA_DIR: {exc}") from None
    values.setdefault("data_dir", _path(DEFAULT_DATA_DIR))  # shown and used as the real path
    return Config(**values, sources=sources)


HELP: dict[str, str] = {
    "data_dir": "node data directory",
    "db": "the repo (default DATA_DIR/p2p.db)",
    "master_key_file": "master key (default DATA_DIR/master.key; e.g. a systemd credential)",
    "network_key_file": "the network key (default DATA_DIR/network.key)",
    "listen": "address 'serve' listens on ([HOST]:PORT; no host: every interface)",
    "bootstrap": "comma-separated HOST:PORT list of nodes to join the network through",
    "log_level": "debug, info, warning or error",
    "max_frame": "largest frame payload accepted (one Noise message)",
    "max_streams": "concurrent streams per peer",
    "max_connections": "connections of any kind",
    "max_links": "sessions kept open to other members once idle (a network of N links to log2 N + 2)",
    "max_pre_handshake": "connections still in their handshake",
    "handshake_timeout": "seconds a peer has to finish the handshake",
    "idle_timeout": "seconds of silence before a peer is dropped",
    "gossip_interval": "seconds between peer exchanges",
    "suspect_after": "seconds a member's session may stay ended before it is suspected",
    "dead_after": "seconds a suspicion stands unrefuted before the member is declared dead",
    "replicas": "peers a store copies to: all, or N picked by rendezvous hashing",
    "max_object": "largest object accepted from a peer (512M, 2G, none)",
    "max_storage": "most bytes this node stores in all (500G, 2T, none: only free space limits it)",
    "tombstone_grace": "seconds a delete is remembered",
    "connect_timeout": "seconds a command with no daemon waits for its peers",
    "metrics_listen": "[HOST]:PORT of the Prometheus listener, or off (:9464 binds 127.0.0.1 only)",
    "s3_listen": "[HOST]:PORT of the S3 API, or off (:3900 binds 127.0.0.1 only; docs/gateway.md)",
    "gateway_listen": "[HOST]:PORT of the read-only HTTP gateway, or off (:8080 binds 127.0.0.1 only)",
    "shutdown_timeout": "seconds transfers in flight get to finish after SIGTERM",
    "repair_interval": "seconds between repair passes (files below their copies are copied again)",
    "repair_grace": "seconds a member may be gone before its copies stop counting (and are re-made)",
    "repair_bandwidth": "bytes per second repair copies may send, all replicas together (32M, none)",
    "repair_concurrency": "objects a repair pass copies at once",
    "scrub_bandwidth": "bytes a second the background scrub reads at most (32M, none: unthrottled)",
    "scrub_period": "seconds between the starts of two scrub passes (2592000: 30 days)",
}


def template(cfg: Config, settings: Mapping[str, str]) -> str:
    """The config file `init` writes: every key with its help and its default, commented out, except
    `settings` (key -> value as the file spells it), which are set."""
    unknown = set(settings) - set(PARSERS)
    if unknown:
        raise ValueError(f"not config keys: {sorted(unknown)}")
    defaults = {name: text for name, text, _src in show(Config(data_dir=cfg.data_dir))}
    lines = [
        "# p2pfast config, written by 'p2pfast init'. key = value; # starts a comment.",
        "# Flags beat this file, which beats the defaults shown here (commented out).",
        "# 'p2pfast config show' prints the effective values and where each came from.",
    ]
    for name in PARSERS:
        lines += ["", f"# {HELP[name]}"]
        if name in settings:
            lines.append(f"{name} = {settings[name]}")
        else:
            lines.append(f"# {name} = {defaults[name]}")
    return "\n".join(lines) + "\n"


def show(cfg: Config) -> list[tuple[str, str, str]]:
    """(key, value as the file would spell it, where it came from) for every key, in file order."""
    root = Path(cfg.data_dir)
    unset = {
        "db": str(root / "p2p.db"),
        "master_key_file": str(root / "master.key"),
        "network_key_file": str(root / "network.key"),
        "replicas": "all",
        "max_object": "none",
        "max_storage": "none",
        "metrics_listen": "off",
        "s3_listen": "off",
        "gateway_listen": "off",
        "repair_bandwidth": "none",
        "scrub_bandwidth": "none",
    }
    rows = []
    for name in PARSERS:
        value = getattr(cfg, name)
        if value is None:
            text = unset[name]
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        rows.append((name, text, cfg.sources.get(name, "default")))
    return rows


def show_typed(cfg: Config) -> dict[str, dict[str, Any]]:
    """`config show --json`: key -> {"value", "source"}, each value typed as JSON (docs/cli.md): numbers,
    arrays for lists, paths resolved under the data dir, and null where the file says all/none/off
    (replicas: every connected peer; max_object: no limit; metrics_listen: no listener)."""
    root = Path(cfg.data_dir)
    paths = {"db": "p2p.db", "master_key_file": "master.key", "network_key_file": "network.key"}
    out: dict[str, dict[str, Any]] = {}
    for name in PARSERS:
        value = getattr(cfg, name)
        if value is None and name in paths:
            value = str(root / paths[name])
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = {"value": value, "source": cfg.sources.get(name, "default")}
    return out
