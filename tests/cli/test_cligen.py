"""`p2pfast completion bash|zsh` and `p2pfast man`, tried for real: the bash script sourced in a real bash
and asked to complete words as readline would (COMP_WORDS), the zsh script loaded by compinit in an
interactive zsh driven through a pseudo-terminal (zpty) and sent a TAB, the manual page rendered by
`man` and checked by groff."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nodetools import cli_env, run_cli

from p2pfast.front.parser import build_parser

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        # .ci/run installs these, so a CI run without them is a broken setup, not a reason to skip.
        message = f"{name} not on PATH (Debian: apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this test may not skip")
        pytest.skip(message)
    return path


def _out(*args: str) -> str:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


# Completes the words given as arguments (the last one is being typed) and prints one candidate a line,
# as bash's programmable completion does on TAB: COMP_WORDS/COMP_CWORD, then the function `complete -F`
# registered for p2pfast, with (command, word, previous word).
BASH_DRIVER = r"""
source "$1"; shift
spec=$(complete -p p2pfast) || exit 3
fn=${spec##*-F }; fn=${fn%% *}
COMP_WORDS=(p2pfast "$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
"$fn" p2pfast "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bash") / "p2pfast"
    path.write_text(_out("completion", "bash"))
    return path


def _bash_complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    bash = _tool("bash", "bash")
    r = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", BASH_DRIVER, "complete", str(script), *words],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )
    assert r.returncode == 0 and not r.stderr, r.stderr
    return sorted(r.stdout.split())


def test_bash_completes_subcommands(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "st") == ["status", "store"]
    assert _bash_complete(bash_script, "") == SUBCOMMANDS
    assert _bash_complete(bash_script, "config", "") == ["show"]
    assert _bash_complete(bash_script, "completion", "") == ["bash", "zsh"]


def test_bash_completes_flags_choices_and_paths(bash_script: Path, tmp_path: Path) -> None:
    assert _bash_complete(bash_script, "get", "--o") == ["--output"]
    assert _bash_complete(bash_script, "serve", "--log-level", "") == ["debug", "error", "info", "warning"]
    for name in ("alpha.txt", "alps.bin", "beta"):
        (tmp_path / name).touch()
    # FILE of `store KEY FILE` is a path on this machine; KEY is not (no completion there)
    assert _bash_complete(bash_script, "store", "k", "al", cwd=tmp_path) == ["alpha.txt", "alps.bin"]
    assert _bash_complete(bash_script, "get", "k", "-o", "be", cwd=tmp_path) == ["beta"]
    (tmp_path / "dirs").mkdir()
    # a global flag before the command, and a directory for --data-dir
    assert _bash_complete(bash_script, "--data-dir", "di", cwd=tmp_path) == ["dirs"]
    joined = _bash_complete(bash_script, "init", "--join-file", "alp", cwd=tmp_path)
    assert joined == ["alpha.txt", "alps.bin"]


# An interactive zsh on a pseudo-terminal: compinit with the generated _p2pfast on fpath, then the line
# `p2pfast st` and a TAB; what zsh draws (the listing of candidates with their descriptions) is read
# until both expected candidates showed or the deadline passed.
ZSH_DRIVER = r"""
zmodload zsh/zpty zsh/datetime
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' menu no; LISTMAX=1000; print -r -- READY\$((6*7))"
deadline=$(( EPOCHREALTIME + 20 ))
seen=''
while (( EPOCHREALTIME < deadline )) && [[ $seen != *READY42* ]]; do
  zpty -r -t z line && seen+=$line
done
[[ $seen == *READY42* ]] || { print -r -- "zsh did not start: $seen"; exit 3 }
zpty -w -n z $'p2pfast st\t'
out=''
while (( EPOCHREALTIME < deadline )); do
  zpty -r -t z line && out+=$line
  [[ $out == *status*--*store*--* ]] && break
done
zpty -d z
print -r -- "$out"
"""


def test_zsh_completes_subcommands(tmp_path: Path) -> None:
    zsh = _tool("zsh", "zsh")
    (tmp_path / "_p2pfast").write_text(_out("completion", "zsh"))
    r = subprocess.run(
        [zsh, "-f", "-c", ZSH_DRIVER, "complete", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ZDOTDIR")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    listing = r.stdout.split("p2pfast st", 1)[-1]
    assert "status" in listing and "store" in listing, r.stdout
    assert "the node's health" in listing  # the subcommand's help, as its description
    assert "serve" not in listing and "shares" not in listing  # only what matches "st"


@pytest.fixture(scope="module")
def man_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("man") / "p2pfast.1"
    path.write_text(_out("man"))
    return path


def test_man_page_is_valid_roff_naming_every_subcommand(man_page: Path) -> None:
    groff = _tool("groff", "groff-base")
    r = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(man_page)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr  # -ww: every warning; -z: no output
    text = man_page.read_text()
    assert text.startswith(".TH P2PFAST 1 ") or text.startswith('.TH P2PFAST "1" ')
    for name in SUBCOMMANDS:
        assert f"'p2pfast {name}'" in text, name  # a section of its own, with its usage and options


def test_man_renders_the_page(man_page: Path) -> None:
    man = _tool("man", "man-db")
    r = subprocess.run(
        [man, "-l", str(man_page)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["P2PFAST(1)", "p2pfast", "manual", "P2PFAST(1)"]
    assert "p2pfast - A fast, encrypted peer-to-peer storage node" in r.stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert heading in lines, heading
    for name in SUBCOMMANDS:
        assert f"p2pfast {name}" in r.stdout
    assert "--metrics-listen" in r.stdout and "P2PFAST_DATA_DIR" in r.stdout


def test_other_commands_do_not_import_shtab_or_argparse_manpage() -> None:
    # The CLI starts fast: only `completion` and `man` load their generators (-X importtime lists every
    # module a run imports, on stderr).
    cases: list[tuple[tuple[str, ...], set[str]]] = [
        (("--help",), set()),
        (("completion", "bash"), {"shtab"}),
        (("man",), {"argparse_manpage"}),
    ]
    for args, loaded in cases:
        r = subprocess.run(
            [sys.executable, "-P", "-X", "importtime", "-m", "p2pfast", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
        )
        assert r.returncode == 0, r.stderr[-2000:]
        lines = [line for line in r.stderr.splitlines() if line.startswith("import time:")]
        imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines}
        assert imported & {"shtab", "argparse_manpage"} == loaded, args


def _readme_block(heading: str) -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_recipe_installs_completion_and_man_where_they_are_found(tmp_path: Path) -> None:
    # The README's lines as written, in a fresh HOME with the installed p2pfast on PATH (and ~/.local/bin,
    # which is what makes man look in ~/.local/share/man); then bash-completion's loader, zsh's compinit
    # and man each find what the lines put there.
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "p2pfast").exists():
        pytest.skip(f"no p2pfast script beside {sys.executable}")
    env = {
        k: v for k, v in cli_env().items() if not k.startswith(("XDG_", "ZDOTDIR", "MANPATH", "BASH_COMP"))
    }
    env.update(HOME=str(home), PATH=f"{home}/.local/bin:{bin_dir}:{env['PATH']}", MANPAGER="cat", PAGER="cat")
    bash = _tool("bash", "bash")
    out = ""
    for line in _readme_block("### Shell completion and the manual page"):
        r = subprocess.run(
            [bash, "-euo", "pipefail", "-c", line],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, f"{line}\n{r.stderr}"
        out = r.stdout
    assert out.splitlines()[0].split() == ["P2PFAST(1)", "p2pfast", "manual", "P2PFAST(1)"]  # man -l -

    loader = Path("/usr/share/bash-completion/bash_completion")
    if not loader.exists():
        message = "bash-completion not installed (Debian: apt-get install bash-completion)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this test may not skip")
        pytest.skip(message)
    r = subprocess.run(
        [
            bash,
            "--norc",
            "--noprofile",
            "-c",
            f"source {loader}; _completion_loader p2pfast; complete -p p2pfast",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "-F _shtab_p2pfast p2pfast" in r.stdout, r.stdout + r.stderr

    r = subprocess.run(
        [_tool("man", "man-db"), "-w", "p2pfast"], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.stdout.strip() == str(home / ".local/share/man/man1/p2pfast.1"), r.stdout + r.stderr

    zsh = _tool("zsh", "zsh")
    r = subprocess.run(
        [zsh, "-f", "-c", ZSH_DRIVER, "complete", str(home / ".zfunc")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    listing = r.stdout.split("p2pfast st", 1)[-1]
    assert r.returncode == 0 and "status" in listing and "store" in listing, r.stdout + r.stderr
