"""The command line's definition (front/parser.py) and what runs it (front/cli.py's HANDLERS) name the same
commands: a command the parser takes but no handler runs would fail only when someone types it."""

from __future__ import annotations

import argparse

from p2pfast.front.cli import HANDLERS, _command_name
from p2pfast.front.parser import build_parser, parse_args


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every command name the parser takes, a command with subcommands as "command subcommand"."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names: set[str] = set()
    for name, p in sub.choices.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            names |= _commands(p, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def test_every_command_of_the_parser_has_a_handler_and_no_handler_is_left_over() -> None:
    assert _commands(build_parser()) == set(HANDLERS)


def test_a_parsed_command_line_names_its_handler() -> None:
    assert _command_name(parse_args(["status", "--json"])) == "status"
    assert _command_name(parse_args(["--data-dir", "/nonexistent", "config", "show"])) == "config show"
    assert HANDLERS[_command_name(parse_args(["man"]))].__name__ == "cmd_man"
