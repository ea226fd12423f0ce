"""The command line as a newcomer meets it: help on every flag, a version, help without torch."""

import argparse
import subprocess
import sys

import pytest

from reproresnet import __version__, cli

COMMANDS = ("list", "train", "recipe", "bench", "sweep", "campaign", "selfcheck", "bundle", "unbundle", "pages")
# Commands whose help needs no torch: the GPU-only tools (bench, selfcheck) describe torch settings.
LIGHT = ("", "list", "train", "recipe", "sweep", "campaign", "bundle", "unbundle", "pages")


class _Parsed(Exception):
    pass


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser `python -m reproresnet COMMAND` parses with (its own module's, for a delegated one)."""
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Parsed):
        cli.main([command, "--help"])
    parser = seen[0]
    if command in cli.DELEGATED:
        return parser
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_the_usage_names_python_m_reproresnet(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    silent = [action.option_strings or action.dest for action in parser._actions if not action.help]
    assert silent == [], f"{command}: flags without help text: {silent}"
    assert parser.prog == f"python -m reproresnet {command}"
    assert "{'" not in parser.format_help(), "help shows a Python dict"


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"reproresnet {__version__}"


@pytest.mark.parametrize("command", LIGHT)
def test_help_imports_no_torch(command):
    """`--help` answers without importing torch (seconds on a cold start)."""
    argv = [command, "--help"] if command else ["--help"]
    code = ("import sys\nfrom reproresnet import cli\ntry:\n    cli.main(%r)\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "IMPORTED []"
