"""The CLI starts light: `textrec --help` and `--version` answer without importing torch, and the command list
they show matches each command's own help."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.main import COMMANDS, app
from textrec import __version__

PROBE = """
import sys
from typer.testing import CliRunner
from cli.main import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, result.output
print(result.output)
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_torch(args):
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH"), result.stdout
    if args == ["--version"]:
        assert f"textrec {__version__}" in result.stdout
    else:
        assert all(name in result.stdout for name in COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_list_matches_each_commands_own_help(name):
    module, function, short = COMMANDS[name]
    doc = getattr(importlib.import_module(f"cli.{module}"), function).__doc__
    assert doc.strip().splitlines()[0] == short


def test_a_command_still_parses_its_own_options():
    result = CliRunner().invoke(app, ["predict", "--help"])
    assert result.exit_code == 0 and "--orientation" in result.output and "--json" in result.output
    result = CliRunner().invoke(app, ["predict", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output
