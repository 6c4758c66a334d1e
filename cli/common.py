"""What every command shares: consoles, and turning user errors into one red line and an exit code."""

from __future__ import annotations

import functools
import os
from typing import Callable, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from textrec.errors import TextrecError
from textrec.files import os_error_line

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line on stderr and exit."""
    rank = os.environ.get("RANK", "0")  # under torchrun every process reports: say which
    where = "" if rank == "0" else f"(rank {rank}) "
    err_console.print(f"[bold red]error:[/] {where}{escape(message)}", soft_wrap=True)  # a path may hold [brackets]
    raise typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def user_errors(command: Callable) -> Callable:
    """Run a command, reporting TextrecError (a user's input problem) and OSError in one line, exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TextrecError as exc:
            fail(str(exc))
        except OSError as exc:  # the library names the file where it knows more; this is the backstop
            fail(os_error_line(exc))

    return wrapper
