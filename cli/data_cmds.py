"""`textrec create-lmdb`: a gt file of image paths and labels -> an LMDB dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from textrec.data.lmdb_store import create_lmdb as build_lmdb

from .common import console, err_console, user_errors

MAX_SKIP_LINES = 20


@user_errors
def create_lmdb(
    gt_file: Path = typer.Argument(..., help="Text file of `image-path<TAB>label` lines.", exists=True, dir_okay=False),
    output_dir: Path = typer.Argument(..., help="LMDB folder to create (must not exist or be empty)."),
    root: Optional[Path] = typer.Option(None, help="Folder the image paths are relative to (default: the gt file's folder)."),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Accept image paths that resolve outside --root (.., absolute paths, links)."
    ),
    lexicons: bool = typer.Option(
        False, "--lexicons",
        help="Every line has a third tab-separated column: the sample's own lexicon as comma-separated words "
        "(stored as lexicon-%09d, for `eval --lexicon per-sample`).",
    ),
) -> None:
    """Build an LMDB in the deep-text-recognition-benchmark layout, checking every image.

    Bad lines are reported and skipped; the exit code is then 1 (the LMDB of the good lines is kept).
    When no line is usable, nothing is created.
    """
    with Progress(
        TextColumn("[bold]create-lmdb"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    ) as progress:
        task = progress.add_task("", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        shown = [0]

        def on_skip(line: int, reason: str) -> None:
            shown[0] += 1
            if shown[0] <= MAX_SKIP_LINES:
                progress.console.print(f"[yellow]skipped[/] {escape(f'{gt_file}:{line}: {reason}')}", soft_wrap=True)
            elif shown[0] == MAX_SKIP_LINES + 1:
                progress.console.print("[yellow]further skipped lines are counted below[/]")

        report = build_lmdb(
            gt_file, output_dir, root=root, on_progress=on_progress, on_skip=on_skip, allow_outside_root=allow_outside_root,
            lexicons=lexicons,
        )
    with_lexicons = " with their lexicons" if lexicons else ""
    console.print(f"wrote {report.written} samples{with_lexicons} to {output_dir}; skipped {len(report.skipped)} bad lines")
    if report.skipped:
        raise typer.Exit(1)
