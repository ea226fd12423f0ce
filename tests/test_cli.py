"""The command line as a newcomer meets it: help on every flag, a version, help without torch."""

import argparse
import json
import os
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


@pytest.fixture
def torchless_cli(monkeypatch):
    """The command line freshly imported where torch cannot be imported (`.[book]`'s environment):
    the package's modules imported so far are set aside (restored afterwards), so nothing of
    torch's reaches the commands through them; the fresh copies are dropped afterwards."""
    hidden = ("reproresnet", "torch", "torchvision")
    before = set(sys.modules)
    for name in list(sys.modules):
        if name.partition(".")[0] in hidden:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    import reproresnet.cli
    yield reproresnet.cli
    for name in set(sys.modules) - before:  # monkeypatch then puts the set-aside modules back
        if name.partition(".")[0] in hidden:
            del sys.modules[name]


def test_list_and_recipe_answer_without_torch_and_train_names_the_install_step(torchless_cli, capsys, tmp_path):
    assert torchless_cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "preact_resnet110" in listing and "1,727,962" in listing  # the committed table's count
    assert torchless_cli.main(["list", "--json"]) == 0
    assert {"name": "wrn_16_4", "family": "wide", "block": "basic", "depth": 16, "width": 4,
            "params": 2_748_890} in json.loads(capsys.readouterr().out)
    assert torchless_cli.main(["recipe", "seed", "--arch", "preact_resnet110", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "preact_resnet110"
    for argv in (["train", "--arch", "preact_resnet20", "--out", str(tmp_path / "run"), "--dataset", "synthetic"],
                 ["campaign", "--out", str(tmp_path / "campaign"), "--budget", "60"], ["list", "--csv"]):
        assert torchless_cli.main(argv) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert captured.out == "" and len(lines) == 1, argv
        assert lines[0].startswith(f"reproresnet: error: {argv[0]} needs torch") and \
            lines[0].endswith("pip install -e '.[train]'"), lines
    assert list(tmp_path.iterdir()) == []  # refused before anything was created
    assert "torch" not in {name.partition(".")[0] for name, module in sys.modules.items() if module is not None}


def test_a_reader_that_stops_early_gets_no_traceback():
    """`reproresnet list | head -3`: the reader closed the pipe before the table was written;
    the command ends quietly (exit 1), not with a BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    try:
        result = subprocess.run([sys.executable, "-m", "reproresnet", "list"], stdout=write, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
