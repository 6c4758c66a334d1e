"""Running the Typer app in tests and checking that a user error is one clear line."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner(env={"COLUMNS": "250"})  # wide enough that rich never wraps a message we look for


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_one_clear_line(result, *fragments: str) -> str:
    """Exit 1, exactly one `error:` line holding every fragment, no traceback; returns the line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    (line,) = error_lines(result.output)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
