"""What the command line generates about itself, from the parser `parser.build_parser()` makes: shell
completion scripts (shtab) and the manual page (argparse-manpage).

Both are made when asked (`p2pfast completion bash|zsh`, `p2pfast man`), not at build time, as restic's
`generate` does: they then always match the installed parser, the build imports nothing of the package,
and they can be installed wherever the user's shell and `man` look (a wheel's share/man is on MANPATH for
few installs: not for pipx, nor for most virtualenvs). Only the command that asks imports shtab or
argparse_manpage, so every other command starts as fast as before.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

# Arguments that name a file or a directory on this machine, by dest (the global flags before the command
# have a "global_" prefix): completed as paths. Keys and addresses are not paths: no completion there.
_FILE_DESTS = frozenset({"file", "output", "config", "master_key_file", "join_file"})
_DIR_DESTS = frozenset({"data_dir"})

_ENVIRONMENT = (
    ("P2PFAST_DATA_DIR", "default data dir (default ~/.p2p)"),
    ("P2PFAST_PURE=1", "use the pure-Python kernels (at build time: build none)"),
    ("P2PFAST_REQUIRE_ACCEL=1", "fail instead of falling back when the compiled kernels are missing"),
)
_FILES = (
    ("~/.p2p/config", "the config file: key=value lines, flags beat it, it beats the defaults"),
    ("~/.p2p/", "the data dir: master.key, node.key, network.key (0600), p2p.db, objects/, ctl.sock"),
)


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` ("bash" or "zsh"): subcommands, their flags and choices, and
    paths for the arguments that take one."""
    import shtab

    for action in _actions(parser):
        dest = action.dest.removeprefix("global_")
        if dest in _FILE_DESTS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif dest in _DIR_DESTS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell=shell))


def _markup(text: str) -> str:
    # roff: a backslash starts an escape, a leading dot or quote a request; '-' is a hyphen, '\-' a minus.
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + out if out.startswith((".", "'")) else out


def _table(rows: tuple[tuple[str, str], ...]) -> str:
    return "\n".join(f".TP\n.B {_markup(name)}\n{_markup(what)}" for name, what in rows)


def man_page(parser: argparse.ArgumentParser, version: str) -> str:
    """The p2pfast(1) manual page, in roff: every subcommand with its usage and options."""
    from argparse_manpage.manpage import Manpage

    page = Manpage(parser)
    # Manpage's documented way to set the header and NAME line is to override these attributes.
    page.source = f"p2pfast {version}"
    page.manual = "p2pfast manual"
    page.description = parser.description.rstrip(".") if parser.description else None
    page.add_section("environment", ">", _table(_ENVIRONMENT))
    page.add_section("files", ">", _table(_FILES))
    see_also = "README.md and docs/*.md in the source distribution; p2pfast COMMAND \\-\\-help"
    page.add_section("see also", ">", see_also)
    return str(page)
