"""The `textrec` Typer app: one command per job, each a thin wrapper over the library.

Each command's module (and with it torch) is imported only when that command runs or shows its own help, so
`textrec --help` and `textrec --version` answer at once.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from textrec import __version__

# name -> (module in cli/, function, the first line of its docstring: the command list of `textrec --help`).
# tests/test_cli_light.py checks that each line matches the command's own help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "create-lmdb": ("data_cmds", "create_lmdb", "Build an LMDB in the deep-text-recognition-benchmark layout, checking every image."),
    "train": ("train_cmd", "train", "Train a CRNN with CTC; run the same command again to resume an interrupted run."),
    "eval": ("eval_cmd", "evaluate", "Word accuracy and 1-NED of a checkpoint on benchmarks (case-insensitive, 36 characters by default)."),
    "compare": ("compare_cmd", "compare", "Two checkpoints on the same samples: accuracy and 1-NED differences with paired intervals and McNemar's test."),
    "predict": ("predict_cmd", "predict", "Print `image<TAB>text<TAB>confidence` per image; unreadable images are reported on stderr and the exit code is 1."),
    "calibrate": ("calibrate_cmd", "calibrate", "Fit a checkpoint's confidence on a validation LMDB, so that a confidence c means a read is right with probability about c."),
    "export": ("export_cmd", "export", "Write a checkpoint as float16 safetensors (e.g. to ship it) or as an ONNX graph."),
    "synth": ("synth", "synth", "Render synthetic scene-text word images (many fonts, backgrounds, distortions) into an LMDB."),
    "samples": ("synth", "samples", "Render a few synthetic word images as PNG files (with a gt.txt) to try `predict`, `create-lmdb` and `eval` on."),
}


def load_command(name: str) -> TyperCommand:
    """The real Click command of `name`, built from its module (which this imports)."""
    module, function, _ = COMMANDS[name]
    single = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    single.command(name)(getattr(importlib.import_module(f"cli.{module}"), function))
    return typer.main.get_command(single)


class _LazyCommand(TyperCommand):
    """Stands in for a command in the command list; parsing its arguments loads the real one."""

    def make_context(self, info_name: str | None, args: list[str], parent=None, **extra: Any):
        return load_command(self.name).make_context(info_name, args, parent=parent, **extra)


class _LazyGroup(TyperGroup):
    def __init__(self, **attrs: Any):
        super().__init__(**attrs)
        for name, (_, _, short_help) in COMMANDS.items():
            self.commands[name] = _LazyCommand(name=name, short_help=short_help, help=short_help)


app = typer.Typer(
    name="textrec",
    cls=_LazyGroup,
    help="Scene text recognition: CRNN with refined-gate recurrent layers and CTC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"textrec {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Scene text recognition: CRNN with refined-gate recurrent layers and CTC."""


if __name__ == "__main__":
    app()
