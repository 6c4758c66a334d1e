"""What every command shares: consoles, and turning user errors into one red line and an exit code."""

from __future__ import annotations

import functools
from typing import Callable, NoReturn

import typer
from rich.console import Console

from textrec.errors import TextrecError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line on stderr and exit."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def user_errors(command: Callable) -> Callable:
    """Run a command, reporting TextrecError (a user's input problem) without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TextrecError as exc:
            fail(str(exc))

    return wrapper
