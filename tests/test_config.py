"""The tiered config (p2pfast.config): flags, then the config file, then defaults.

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

Checked: which tier wins for each key and that `sources` says so; the original `key=value` file format;
that every parse error is one ConfigError line naming FILE:LINE; that `config.show` prints values which
parse back to the effective config; and `p2pfast config show` end to end as a real subprocess.

Every test runs with HOME pointing into tmp_path and P2PFAST_DATA_DIR unset, so the developer's own
~/.p2p/config is never read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodetools import cli_env, error_lines, one_error_line, run_cli

from p2pfast import config
from p2pfast.errors import ConfigError

ALL_KEYS = list(config.PARSERS)
PATH_KEYS = ["data_dir", "db", "master_key_file", "network_key_file"]
# Where show() puts a key file / the db when the config leaves it unset (None).
UNSET_PATH_NAMES = {"db": "p2p.db", "master_key_file": "master.key", "network_key_file": "network.key"}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty HOME: no ~/.p2p/config unless a test writes one."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("P2PFAST_DATA_DIR", raising=False)
    return h


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, flags: dict[str, Any] | None = None) -> config.Config:
    return config.load(flags or {}, str(write(tmp_path / "p2p.conf", text)))


def config_error(tmp_path: Path, text: str | bytes) -> tuple[Path, str]:
    """Load a config file that must be rejected: (its path, the one-line message)."""
    path = tmp_path / "bad.conf"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        write(path, text)
    with pytest.raises(ConfigError) as info:
        config.load({}, str(path))
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    assert "Traceback" not in message
    return path, message


# -- 1. precedence: flag > file > (env, data_dir only) > default ------------------------------------------
# key: (flag text, value it parses to, file text, value it parses to, default value)
# "HOME/" in a default stands for the test's HOME.
TIERS: dict[str, tuple[str, Any, str, Any, Any]] = {
    "listen": ("127.0.0.1:4000", "127.0.0.1:4000", "0.0.0.0:5000", "0.0.0.0:5000", ":3000"),
    "bootstrap": ("a.example:1,b.example:2", ("a.example:1", "b.example:2"), "c:3", ("c:3",), ()),
    "log_level": ("DEBUG", "debug", "error", "error", "warning"),
    "data_dir": ("/srv/from-flag", "/srv/from-flag", "/srv/from-file", "/srv/from-file", "HOME/.p2p"),
    "db": ("/srv/flag.db", "/srv/flag.db", "/srv/file.db", "/srv/file.db", None),
    "master_key_file": ("/k/flag.key", "/k/flag.key", "/k/file.key", "/k/file.key", None),
    "replicas": ("1", 1, "3", 3, 2),
    "max_object": ("1M", 1 << 20, "2k", 2048, None),
    "max_streams": ("4", 4, "8", 8, 16),
    "handshake_timeout": ("2.5", 2.5, "7", 7.0, 10.0),
    "metrics_listen": (":9464", ":9464", "127.0.0.1:9000", "127.0.0.1:9000", None),
    "s3_listen": (":3900", ":3900", "127.0.0.1:3901", "127.0.0.1:3901", None),
    "gateway_listen": (":8080", ":8080", "127.0.0.1:8081", "127.0.0.1:8081", None),
}


def _expected(value: Any, home: Path) -> Any:
    if isinstance(value, str) and value.startswith("HOME/"):
        return str(home / value.removeprefix("HOME/"))
    return value


@pytest.mark.parametrize("tier", ["flag", "file", "default"])
@pytest.mark.parametrize("key", list(TIERS))
def test_precedence(tmp_path: Path, home: Path, key: str, tier: str) -> None:
    flag_text, flag_value, file_text, file_value, default = TIERS[key]
    other = "log_level=info" if key != "log_level" else "listen=:3999"
    # The key sits on line 4, after a comment and a blank line; another key follows it.
    lines = ["# test config", "", other]
    lines.append(f"{key}={file_text}" if tier in ("flag", "file") else "# (key not set)")
    lines.append("max_connections=9")
    path = write(tmp_path / "p2p.conf", "\n".join(lines) + "\n")
    flags = {key: flag_text} if tier == "flag" else {key: None}

    cfg = config.load(flags, str(path))

    want_value, want_source = {
        "flag": (flag_value, "flag"),
        "file": (file_value, f"{path}:4"),
        "default": (_expected(default, home), "default"),
    }[tier]
    assert getattr(cfg, key) == want_value
    assert cfg.sources[key] == want_source
    # The neighbours come from their own lines; everything else is a default.
    assert cfg.sources[other.partition("=")[0]] == f"{path}:3"
    assert cfg.max_connections == 9 and cfg.sources["max_connections"] == f"{path}:5"
    assert set(cfg.sources) == set(ALL_KEYS)
    from_file_or_flag = {other.partition("=")[0], "max_connections"} | ({key} if tier != "default" else set())
    assert {k for k, s in cfg.sources.items() if s == "default"} == set(ALL_KEYS) - from_file_or_flag


def test_precedence_table_covers_the_key_kinds() -> None:
    # Guard for the table above: it exercises a list, a path, an optional value, an int, a float.
    assert {"listen", "bootstrap", "log_level", "data_dir", "replicas"} <= set(TIERS)
    assert set(TIERS) <= set(ALL_KEYS)


def test_all_defaults_without_any_file(home: Path) -> None:
    cfg = config.load({})  # ~/.p2p/config is absent: not an error
    assert set(cfg.sources.values()) == {"default"}
    assert cfg.data_dir == str(home / ".p2p")
    assert cfg.listen == ":3000" and cfg.bootstrap == () and cfg.log_level == "warning"
    assert cfg.db is None and cfg.replicas == 2 and cfg.max_object is None and cfg.metrics_listen is None


def test_default_file_is_read_when_present(home: Path) -> None:
    path = write(home / ".p2p" / "config", "listen=:4100\n")
    cfg = config.load({"listen": None})
    assert cfg.listen == ":4100"
    assert cfg.sources["listen"] == f"{path}:1"


def test_explicit_file_replaces_the_default_file(tmp_path: Path, home: Path) -> None:
    write(home / ".p2p" / "config", "listen=:4100\nlog_level=debug\n")
    cfg = load_text(tmp_path, "log_level=error\n")
    assert cfg.log_level == "error"
    assert cfg.listen == ":3000" and cfg.sources["listen"] == "default"  # not from ~/.p2p/config


def test_flag_does_not_hide_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p2p.conf", "listen=nope\n")
    with pytest.raises(ConfigError, match=f"{path}:1: "):
        config.load({"listen": ":4000"}, str(path))


def test_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PFAST_DATA_DIR", str(tmp_path / "env-dir"))
    cfg = load_text(tmp_path, "listen=:4000\n")
    assert cfg.data_dir == str(tmp_path / "env-dir")
    assert cfg.sources["data_dir"] == "env:P2PFAST_DATA_DIR"


def test_data_dir_env_expands_tilde(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PFAST_DATA_DIR", "~/nodes/a")
    cfg = config.load({})
    assert cfg.data_dir == str(home / "nodes" / "a")
    assert cfg.sources["data_dir"] == "env:P2PFAST_DATA_DIR"


def test_data_dir_file_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PFAST_DATA_DIR", str(tmp_path / "env-dir"))
    path = write(tmp_path / "p2p.conf", "# dirs\ndata_dir=/srv/from-file\n")
    cfg = config.load({"data_dir": None}, str(path))
    assert cfg.data_dir == "/srv/from-file"
    assert cfg.sources["data_dir"] == f"{path}:2"


def test_data_dir_flag_beats_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PFAST_DATA_DIR", str(tmp_path / "env-dir"))
    cfg = load_text(tmp_path, "data_dir=/srv/from-file\n", {"data_dir": str(tmp_path / "flag-dir")})
    assert cfg.data_dir == str(tmp_path / "flag-dir")
    assert cfg.sources["data_dir"] == "flag"


def test_empty_data_dir_env_is_ignored(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PFAST_DATA_DIR", "")
    cfg = config.load({})
    assert cfg.data_dir == str(home / ".p2p") and cfg.sources["data_dir"] == "default"


def test_env_applies_to_data_dir_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PFAST_DATA_DIR", str(tmp_path / "env-dir"))
    cfg = config.load({})
    assert cfg.db is None and cfg.sources["db"] == "default"
    assert [k for k, s in cfg.sources.items() if s != "default"] == ["data_dir"]


def test_data_dir_env_with_unset_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PFAST_TEST_UNSET_VAR", raising=False)
    monkeypatch.setenv("P2PFAST_DATA_DIR", "$P2PFAST_TEST_UNSET_VAR/node")
    with pytest.raises(ConfigError, match="P2PFAST_DATA_DIR"):
        config.load({})


# -- 2. the file format -------------------------------------------------------------------------------------
def test_original_file_format(tmp_path: Path) -> None:
    text = (
        "# p2p node configuration\n"
        "\n"
        "   # an indented comment\n"
        "listen = 0.0.0.0:3000\n"
        "\t\n"
        "bootstrap=host:3000, host2:3000\n"
        "  log_level\t=  INFO  \n"
        "replicas=all\n"
        "max_object=512M\n"
        "metrics_listen=off\n"
        "idle_timeout=1.5\n"
    )
    path = write(tmp_path / "p2p.conf", text)
    cfg = config.load({}, str(path))
    assert cfg.listen == "0.0.0.0:3000" and cfg.sources["listen"] == f"{path}:4"
    assert cfg.bootstrap == ("host:3000", "host2:3000") and cfg.sources["bootstrap"] == f"{path}:6"
    assert cfg.log_level == "info" and cfg.sources["log_level"] == f"{path}:7"
    assert cfg.replicas is None and cfg.sources["replicas"] == f"{path}:8"
    assert cfg.max_object == 512 << 20
    assert cfg.metrics_listen is None and cfg.sources["metrics_listen"] == f"{path}:10"
    assert cfg.idle_timeout == 1.5 and cfg.sources["idle_timeout"] == f"{path}:11"


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "p2p.conf"
    path.write_bytes(b"# written on Windows\r\nlisten=:4000\r\nbootstrap=a:1,b:2\r\n")
    cfg = config.load({}, str(path))
    assert cfg.listen == ":4000" and cfg.bootstrap == ("a:1", "b:2")
    assert cfg.sources["bootstrap"] == f"{path}:3"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a:1", ("a:1",)),
        ("a:1,b:2", ("a:1", "b:2")),
        (" a:1 ,  b:2 ,", ("a:1", "b:2")),
        ("[::1]:3000,10.0.0.1:3001", ("[::1]:3000", "10.0.0.1:3001")),
        ("", ()),
    ],
)
def test_bootstrap_lists(tmp_path: Path, text: str, want: tuple[str, ...]) -> None:
    assert load_text(tmp_path, f"bootstrap={text}\n").bootstrap == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1", 1),
        ("4096", 4096),
        ("2k", 2048),
        ("2K", 2048),
        ("1.5k", 1536),
        ("512M", 512 << 20),
        ("10MiB", 10 << 20),
        ("10MB", 10 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
        ("none", None),
        ("unlimited", None),
    ],
)
def test_max_object_sizes(tmp_path: Path, text: str, want: int | None) -> None:
    assert load_text(tmp_path, f"max_object={text}\n").max_object == want


def test_tilde_expanded_in_paths(tmp_path: Path, home: Path) -> None:
    cfg = load_text(
        tmp_path,
        "data_dir=~/node\ndb=~/.p2p/p2p.db\nmaster_key_file=~/keys/m.key\nnetwork_key_file=~/n.key\n",
    )
    assert cfg.data_dir == str(home / "node")
    assert cfg.db == str(home / ".p2p" / "p2p.db")
    assert cfg.master_key_file == str(home / "keys" / "m.key")
    assert cfg.network_key_file == str(home / "n.key")


def test_env_vars_expanded_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("P2PFAST_TEST_DB_DIR", "/var/lib/p2p")
    cfg = load_text(
        tmp_path,
        "network_key_file=$CREDENTIALS_DIRECTORY/network.key\n"
        "master_key_file=${CREDENTIALS_DIRECTORY}/master.key\n"
        "db=$P2PFAST_TEST_DB_DIR/p2p.db\n",
    )
    assert cfg.network_key_file == str(creds / "network.key")
    assert cfg.master_key_file == str(creds / "master.key")
    assert cfg.db == "/var/lib/p2p/p2p.db"


@pytest.mark.parametrize("value", ["$P2PFAST_TEST_UNSET_VAR/network.key", "${P2PFAST_TEST_UNSET_VAR}/n.key"])
def test_unset_env_var_in_path_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.delenv("P2PFAST_TEST_UNSET_VAR", raising=False)
    path, message = config_error(tmp_path, f"# key from systemd\nnetwork_key_file={value}\n")
    assert f"{path}:2: " in message
    assert "network_key_file" in message and "P2PFAST_TEST_UNSET_VAR" in message


# -- 3. every error path: one ConfigError line naming FILE:LINE ---------------------------------------------
POSITIVE_INT_KEYS = ["max_streams", "max_connections", "max_links", "max_pre_handshake", "repair_concurrency"]
SECONDS_KEYS = [
    "handshake_timeout",
    "idle_timeout",
    "gossip_interval",
    "suspect_after",
    "dead_after",
    "tombstone_grace",
    "connect_timeout",
    "shutdown_timeout",
    "repair_interval",
    "repair_grace",
    "scrub_period",
]
BAD_VALUES: list[tuple[str, str]] = [
    ("listen", "127.0.0.1"),  # no port
    ("listen", "127.0.0.1:"),
    ("listen", ":port"),
    ("listen", ":65536"),
    ("listen", ":-1"),
    ("listen", ""),
    ("bootstrap", "host:3000, host2"),
    ("bootstrap", "host:99999"),
    ("metrics_listen", "localhost"),
    ("metrics_listen", ":70000"),
    ("s3_listen", "localhost"),
    ("s3_listen", ":70000"),
    ("gateway_listen", "localhost"),
    ("log_level", "loud"),
    ("log_level", "warn"),
    ("log_level", ""),
    *[(k, v) for k in POSITIVE_INT_KEYS for v in ("abc", "0", "-3", "1.5", "")],
    ("max_frame", "1023"),
    ("max_frame", "65536"),
    ("max_frame", "0"),
    ("max_frame", "-1"),
    ("max_frame", "big"),
    *[(k, v) for k in SECONDS_KEYS for v in ("0", "-1", "-0.5", "abc", "", "nan")],
    ("max_object", "12Q"),
    ("max_object", "-1M"),
    ("max_object", "0"),
    ("max_object", "0.0001k"),
    ("max_object", "M"),
    ("max_object", "1.2.3M"),
    ("max_object", "5kg"),
    ("max_storage", "0"),
    ("max_storage", "lots"),
    ("repair_bandwidth", "0"),
    ("repair_bandwidth", "fast"),
    ("scrub_bandwidth", "0"),
    ("scrub_bandwidth", "fast"),
    ("scrub_bandwidth", "-32M"),
    ("replicas", "0"),
    ("replicas", "-1"),
    ("replicas", "two"),
    ("replicas", "1.5"),
    *[(k, "") for k in PATH_KEYS],
    *[(k, "$P2PFAST_TEST_UNSET_VAR/x") for k in PATH_KEYS],
]


def test_bad_value_table_covers_every_key() -> None:
    assert {k for k, _ in BAD_VALUES} == set(ALL_KEYS)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.delenv("P2PFAST_TEST_UNSET_VAR", raising=False)
    # Good lines, a comment and a blank line first: the error is on line 5.
    path, message = config_error(tmp_path, f"# node\nlisten=:3000\n\nlog_level=info\n{key}={value}\n")
    assert f"{path}:5: " in message
    assert f"bad value for {key}" in message
    # in the user's terms: what the setting takes, not what a Python conversion said
    for python_speak in ("invalid literal", "could not convert", "int()", "float", "base 10"):
        assert python_speak not in message, message


@pytest.mark.parametrize("value", ["inf", "1e400"])
def test_infinite_max_object_is_a_config_error(tmp_path: Path, value: str) -> None:
    path, message = config_error(tmp_path, f"max_object={value}\n")
    assert f"{path}:1: bad value for max_object" in message


@pytest.mark.parametrize("line", ["listen", "listen :3000", "just some words", "[node]"])
def test_line_without_equals(tmp_path: Path, line: str) -> None:
    path, message = config_error(tmp_path, f"# c\n\n{line}\n")
    assert f"{path}:3: " in message
    assert "expected key=value" in message


@pytest.mark.parametrize("line", ["colour=blue", "LISTEN=:3000", "data-dir=/x", "sources=x", "=3000"])
def test_unknown_key(tmp_path: Path, line: str) -> None:
    path, message = config_error(tmp_path, f"listen=:3000\n{line}\n")
    assert f"{path}:2: " in message
    assert "unknown key" in message


@pytest.mark.parametrize(
    ("line", "nearest"),
    [
        ("replica=2", "replicas"),
        ("LISTEN=:3000", "listen"),
        ("data-dir=/x", "data_dir"),
        ("max_stream=4", "max_streams"),
        ("idle_timout=5", "idle_timeout"),
        ("bootstrp=a:1", "bootstrap"),
    ],
)
def test_unknown_key_suggests_the_nearest_known_one(tmp_path: Path, line: str, nearest: str) -> None:
    path, message = config_error(tmp_path, f"listen=:3000\n{line}\n")
    key = line.partition("=")[0]
    assert message == f"config error: {path}:2: unknown key {key!r} (did you mean {nearest!r}?)"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("max_streams=lots", "bad value for max_streams: expected a positive whole number, got 'lots'"),
        ("max_connections=1.5", "bad value for max_connections: expected a positive whole number, got '1.5'"),
        ("replicas=two", "bad value for replicas: expected a positive whole number, got 'two'"),
        ("idle_timeout=1m", "bad value for idle_timeout: expected seconds, more than 0 and at most"),
    ],
)
def test_bad_numbers_are_said_in_the_settings_terms(tmp_path: Path, line: str, says: str) -> None:
    path, message = config_error(tmp_path, f"{line}\n")
    assert message.startswith(f"config error: {path}:1: {says}"), message


def test_unknown_key_names_the_key_and_the_known_ones(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, "listen=:3000\ncolour=blue\n")
    assert f"{path}:2: unknown key 'colour'" in message
    assert all(k in message for k in ALL_KEYS)


def test_first_bad_line_is_reported(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, "listen=:3000\nreplicas=0\nbogus=1\nno equals here\n")
    assert f"{path}:2: " in message and f"{path}:3" not in message


def test_non_utf8_file(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, b"listen=:3000\n# caf\xe9\n")
    assert str(path) in message
    assert "UTF-8" in message


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, b"listen=:3000\n# caf\xe9\n")
    assert f"{path}:2: " in message


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "p2p.conf"
    with pytest.raises(ConfigError) as info:
        config.load({}, str(missing))
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message and "\n" not in message


def test_named_config_file_tilde_is_expanded(home: Path) -> None:
    path = write(home / "conf" / "p2p.conf", "listen=:4200\n")
    cfg = config.load({}, "~/conf/p2p.conf")
    assert cfg.listen == ":4200" and cfg.sources["listen"] == f"{path}:1"


def test_named_config_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        config.load({}, str(tmp_path))


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        ({"listen": "nope"}, "--listen"),
        ({"listen": ":65536"}, "--listen"),
        ({"bootstrap": "a:1,b"}, "--bootstrap"),
        ({"log_level": "loud"}, "--log-level"),
        ({"data_dir": ""}, "--data-dir"),
        ({"master_key_file": "$P2PFAST_TEST_UNSET_VAR/m.key"}, "--master-key-file"),
        ({"max_streams": "0"}, "--max-streams"),
        ({"max_frame": "100"}, "--max-frame"),
        ({"idle_timeout": "-1"}, "--idle-timeout"),
        ({"max_object": "12Q"}, "--max-object"),
        ({"replicas": "0"}, "--replicas"),
    ],
)
def test_bad_flag_value_names_the_flag(
    monkeypatch: pytest.MonkeyPatch, flags: dict[str, str], flag: str
) -> None:
    monkeypatch.delenv("P2PFAST_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as info:
        config.load(flags)
    message = str(info.value)
    assert f"{flag}: " in message and "\n" not in message


# -- 4. show() round-trips ----------------------------------------------------------------------------------
FULL_FILE = """\
data_dir={root}/node
db={root}/db/p2p.db
master_key_file={root}/keys/master.key
network_key_file={root}/keys/network.key
listen=[::1]:4000
bootstrap=a.example:3000, 10.0.0.2:3001
log_level=DEBUG
max_frame=1024
max_streams=3
max_connections=7
max_links=5
max_pre_handshake=2
handshake_timeout=0.25
idle_timeout=1e-3
gossip_interval=45
suspect_after=2.5
dead_after=7
replicas=4
max_object=1.5G
max_storage=3T
tombstone_grace=3600
connect_timeout=0.5
metrics_listen=:9464
s3_listen=:3900
gateway_listen=:8080
shutdown_timeout=12.75
repair_interval=90
repair_grace=15.5
repair_bandwidth=8M
repair_concurrency=3
scrub_bandwidth=16M
scrub_period=86400
"""


def effective(cfg: config.Config, key: str) -> Any:
    """The value the node runs with: an unset key file / db lives under data_dir."""
    value = getattr(cfg, key)
    if value is None and key in UNSET_PATH_NAMES:
        return str(Path(cfg.data_dir) / UNSET_PATH_NAMES[key])
    return value


def round_trip_configs(tmp_path: Path) -> Iterator[config.Config]:
    yield config.load({})
    yield load_text(tmp_path, FULL_FILE.format(root=tmp_path))
    yield load_text(
        tmp_path,
        "replicas=all\nmax_object=none\nbootstrap=\nscrub_bandwidth=none\n",
        {"listen": "127.0.0.1:1", "data_dir": str(tmp_path / "d"), "log_level": "error"},
    )


def test_full_file_sets_every_key(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, FULL_FILE.format(root=tmp_path))
    assert all(src.endswith(f":{i}") for i, src in enumerate(cfg.sources.values(), 1))
    assert set(cfg.sources) == set(ALL_KEYS)
    default = config.load({})
    assert [k for k in ALL_KEYS if getattr(cfg, k) == getattr(default, k)] == []


def test_show_values_parse_back(tmp_path: Path) -> None:
    for cfg in round_trip_configs(tmp_path):
        rows = config.show(cfg)
        assert [k for k, _, _ in rows] == ALL_KEYS  # file order, every key
        for key, text, source in rows:
            assert config.PARSERS[key](text) == effective(cfg, key), (key, text)
            assert source == cfg.sources[key]


def test_show_output_as_a_file_loads_the_same_config(tmp_path: Path) -> None:
    for i, cfg in enumerate(round_trip_configs(tmp_path)):
        shown = config.show(cfg)
        path = write(tmp_path / f"shown-{i}.conf", "".join(f"{k}={v}\n" for k, v, _ in shown))
        again = config.load({}, str(path))
        assert [(k, effective(again, k)) for k in ALL_KEYS] == [(k, effective(cfg, k)) for k in ALL_KEYS]
        assert [(k, v) for k, v, _ in config.show(again)] == [(k, v) for k, v, _ in shown]
        assert again.sources == {k: f"{path}:{n}" for n, k in enumerate(ALL_KEYS, 1)}


def test_show_spells_unset_values(home: Path) -> None:
    shown = {k: v for k, v, _ in config.show(config.load({}))}
    assert shown["data_dir"] == str(home / ".p2p")
    assert shown["db"] == str(home / ".p2p" / "p2p.db")
    assert shown["master_key_file"] == str(home / ".p2p" / "master.key")
    assert shown["network_key_file"] == str(home / ".p2p" / "network.key")
    assert shown["replicas"] == "2" and shown["max_object"] == "none" and shown["metrics_listen"] == "off"
    assert shown["bootstrap"] == ""


def test_show_unset_paths_follow_data_dir(tmp_path: Path) -> None:
    shown = {k: v for k, v, _ in config.show(config.load({"data_dir": str(tmp_path / "n")}))}
    assert shown["db"] == str(tmp_path / "n" / "p2p.db")
    assert shown["network_key_file"] == str(tmp_path / "n" / "network.key")


# -- 5. `p2pfast config show` end to end ---------------------------------------------------------------------
def cli_home(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cli_env(HOME=str(tmp_path), **extra)


def show_json(tmp_path: Path, *args: str | os.PathLike[str], **env: str) -> dict[str, dict[str, Any]]:
    r = run_cli("config", "show", *args, "--json", env=cli_home(tmp_path, **env))
    assert r.returncode == 0, r.stderr
    assert error_lines(r.stderr) == []
    out: dict[str, dict[str, Any]] = json.loads(r.stdout)
    return out


def test_cli_show_json(tmp_path: Path) -> None:
    conf = write(tmp_path / "p2p.conf", "# test\nlog_level=info\n\nbootstrap=h1:3000, h2:3001\n")
    out = show_json(tmp_path, "--config", conf, "--listen", "127.0.0.1:4000")
    assert list(out) == ALL_KEYS
    assert out["listen"] == {"value": "127.0.0.1:4000", "source": "flag"}
    assert out["log_level"] == {"value": "info", "source": f"{conf}:2"}
    assert out["bootstrap"] == {"value": ["h1:3000", "h2:3001"], "source": f"{conf}:4"}
    assert out["data_dir"] == {"value": str(tmp_path / ".p2p"), "source": "default"}
    assert out["db"] == {"value": str(tmp_path / ".p2p" / "p2p.db"), "source": "default"}
    assert out["replicas"] == {"value": 2, "source": "default"}  # 3 copies: this node's and 2 more
    others = set(ALL_KEYS) - {"listen", "log_level", "bootstrap"}
    assert {k: out[k]["source"] for k in others} == dict.fromkeys(others, "default")


def test_cli_show_reads_default_file_under_home(tmp_path: Path) -> None:
    conf = write(tmp_path / ".p2p" / "config", "replicas=3\n")
    out = show_json(tmp_path)
    assert out["replicas"] == {"value": 3, "source": f"{conf}:1"}


def test_cli_show_flags_and_env(tmp_path: Path) -> None:
    conf = write(tmp_path / "p2p.conf", "data_dir=/srv/from-file\nlisten=:4001\n")
    out = show_json(
        tmp_path,
        "--config",
        conf,
        "--log-level",
        "debug",
        "--bootstrap",
        "a:1,b:2",
        P2PFAST_DATA_DIR=str(tmp_path / "env-dir"),
    )
    assert out["data_dir"] == {"value": "/srv/from-file", "source": f"{conf}:1"}  # file beats env
    assert out["listen"] == {"value": ":4001", "source": f"{conf}:2"}
    assert out["log_level"] == {"value": "debug", "source": "flag"}
    assert out["bootstrap"] == {"value": ["a:1", "b:2"], "source": "flag"}

    out = show_json(tmp_path, "--data-dir", tmp_path / "flag-dir", P2PFAST_DATA_DIR=str(tmp_path / "e"))
    assert out["data_dir"] == {"value": str(tmp_path / "flag-dir"), "source": "flag"}
    out = show_json(tmp_path, P2PFAST_DATA_DIR=str(tmp_path / "e"))
    assert out["data_dir"] == {"value": str(tmp_path / "e"), "source": "env:P2PFAST_DATA_DIR"}


def test_cli_show_json_values_are_typed(tmp_path: Path) -> None:
    """Numbers are numbers, lists arrays, all/none/off null: a script reads them without parsing."""
    text = "replicas=2\nmax_object=2G\nidle_timeout=12.5\nmetrics_listen=:9464\n"
    conf = write(tmp_path / "p2p.conf", text)
    out = {k: v["value"] for k, v in show_json(tmp_path, "--config", conf).items()}
    assert out["replicas"] == 2 and out["max_object"] == 2 << 30 and out["max_streams"] == 16
    assert out["idle_timeout"] == 12.5 and out["gossip_interval"] == 30.0
    assert type(out["max_streams"]) is int and type(out["gossip_interval"]) is float
    assert out["metrics_listen"] == ":9464" and out["bootstrap"] == []
    unset = {k: v["value"] for k, v in show_json(tmp_path).items()}
    assert unset["replicas"] == 2 and unset["max_object"] is None and unset["metrics_listen"] is None
    assert unset["network_key_file"] == str(tmp_path / ".p2p" / "network.key")


def spelled(key: str, value: Any) -> str:
    """A typed `config show --json` value as the table (and the config file) spells it."""
    if value is None:
        unset = {
            "replicas": "all",
            "max_object": "none",
            "metrics_listen": "off",
            "s3_listen": "off",
            "gateway_listen": "off",
        }
        return {**unset, "max_storage": "none", "repair_bandwidth": "none", "scrub_bandwidth": "none"}[key]
    return ",".join(value) if isinstance(value, list) else str(value)


def test_cli_show_table(tmp_path: Path) -> None:
    conf = write(tmp_path / "p2p.conf", "log_level=error\n")
    args = ("config", "show", "--config", conf, "--listen", ":4002")
    r = run_cli(*args, env=cli_home(tmp_path))
    assert r.returncode == 0, r.stderr
    want = show_json(tmp_path, *args[2:])
    lines = r.stdout.decode().splitlines()
    header = lines[0]
    assert header.split() == ["KEY", "VALUE", "SOURCE"]
    value_col, source_col = header.index("VALUE"), header.index("SOURCE")
    assert [ln.split()[0] for ln in lines[1:]] == ALL_KEYS
    for line in lines[1:]:
        key = line[:value_col].strip()
        assert line[value_col:source_col].strip() == spelled(key, want[key]["value"]), line
        assert line[source_col:] == want[key]["source"], line
    assert want["listen"]["source"] == "flag" and want["log_level"]["source"] == f"{conf}:1"


def test_cli_unknown_key_is_one_error_line(tmp_path: Path) -> None:
    conf = write(tmp_path / "p2p.conf", "listen=:3000\n# next line is wrong\ncolour=blue\n")
    r = run_cli("config", "show", "--config", conf, env=cli_home(tmp_path))
    assert r.returncode == 8
    line = one_error_line(r)
    assert f"{conf}:3: " in line and "colour" in line
    assert r.stdout == b""


def test_cli_bad_value_in_default_file(tmp_path: Path) -> None:
    conf = write(tmp_path / ".p2p" / "config", "\nmax_frame=70000\n")
    r = run_cli("config", "show", env=cli_home(tmp_path))
    assert r.returncode == 8
    assert f"{conf}:2: " in one_error_line(r)


def test_cli_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    r = run_cli("config", "show", "--config", missing, env=cli_home(tmp_path))
    assert r.returncode == 8
    assert str(missing) in one_error_line(r)


def test_cli_bad_flag(tmp_path: Path) -> None:
    r = run_cli("config", "show", "--listen", "nope", env=cli_home(tmp_path))
    assert r.returncode == 8
    assert "--listen" in one_error_line(r)


@pytest.mark.parametrize("value", ["b", "12ib", "12 k b", "1.5.2M", "M"])
def test_odd_size_spellings_are_refused(tmp_path: Path, value: str) -> None:
    path, message = config_error(tmp_path, f"max_object={value}\n")
    assert f"{path}:1: bad value for max_object" in message


@pytest.mark.parametrize(("value", "size"), [("12b", 12), ("2KiB", 2048), ("1.5m", 3 << 19), ("none", None)])
def test_size_spellings(tmp_path: Path, value: str, size: int | None) -> None:
    f = tmp_path / "c"
    f.write_text(f"max_object={value}\n")
    assert config.load({}, str(f)).max_object == size


def test_bootstrap_port_zero_is_refused(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, "bootstrap=a:3000,b:0\n")
    assert f"{path}:1: bad value for bootstrap" in message


def test_a_year_of_tombstone_grace_is_fine_and_the_bound_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c"
    f.write_text("tombstone_grace=31536000\n")
    assert config.load({}, str(f)).tombstone_grace == 31536000.0
    _, message = config_error(tmp_path, "tombstone_grace=1e12\n")
    assert "at most 315360000" in message


def test_dollar_in_a_variable_value_is_not_an_unset_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PFAST_TEST_CREDS", "/run/cred$x")
    f = tmp_path / "c"
    f.write_text("network_key_file=$P2PFAST_TEST_CREDS/network.key\n")
    assert config.load({}, str(f)).network_key_file == "/run/cred$x/network.key"


def test_byte_order_mark_is_not_part_of_the_first_key(tmp_path: Path) -> None:
    f = tmp_path / "c"
    f.write_bytes("\ufefflisten=:4000\n".encode())
    assert config.load({}, str(f)).listen == ":4000"


def test_empty_config_path_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--config: empty path"):
        config.load({}, "")


def test_network_key_file_from_the_config_is_where_init_puts_the_key(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    conf = tmp_path / "p2p.conf"
    conf.write_text(f"data_dir = {tmp_path / 'node'}\nnetwork_key_file = {secrets}/net.key\n")
    out = run_cli("init", "--config", conf, env=cli_env(HOME=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert (secrets / "net.key").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "node" / "network.key").exists()
    shown = run_cli("config", "show", "--json", "--config", conf, env=cli_env(HOME=str(tmp_path)))
    assert json.loads(shown.stdout)["network_key_file"] == {
        "value": f"{secrets}/net.key",
        "source": f"{conf}:2",
    }
    # the key is read from there: the node has an identity and can make an invite
    assert (
        run_cli("invite", "--address", "h:1", "--config", conf, env=cli_env(HOME=str(tmp_path))).returncode
        == 0
    )


def test_every_setting_has_a_parser_and_every_parser_a_setting() -> None:
    from p2pfast import config

    assert set(config.PARSERS) == set(config.Config._fields) - {"sources"}


def test_the_network_settings_reach_the_node_limits(tmp_path: Path) -> None:
    from p2pfast.front.cli import net_limits

    lim = net_limits(load_text(tmp_path, FULL_FILE.format(root=tmp_path)))
    assert (lim.max_links, lim.gossip_interval, lim.suspect_after, lim.dead_after) == (5, 45.0, 2.5, 7.0)
    assert (lim.proto.handshake_timeout, lim.proto.max_streams) == (0.25, 3)
