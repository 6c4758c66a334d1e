"""`textrec create-lmdb`: a gt file of image paths and labels -> an LMDB dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from textrec.data.lmdb_store import create_lmdb as build_lmdb

from .common import console, err_console, user_errors


@user_errors
def create_lmdb(
    gt_file: Path = typer.Argument(..., help="Text file of `image-path<TAB>label` lines.", exists=True, dir_okay=False),
    output_dir: Path = typer.Argument(..., help="LMDB folder to create (must not exist or be empty)."),
    root: Optional[Path] = typer.Option(None, help="Folder the image paths are relative to (default: the gt file's folder)."),
) -> None:
    """Build an LMDB in the deep-text-recognition-benchmark layout, checking every image."""
    with Progress(
        TextColumn("[bold]create-lmdb"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    ) as progress:
        task = progress.add_task("", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_skip(line: int, reason: str) -> None:
            progress.console.print(f"[yellow]skipped[/] {gt_file}:{line}: {reason}", soft_wrap=True)

        report = build_lmdb(gt_file, output_dir, root=root, on_progress=on_progress, on_skip=on_skip)
    console.print(f"wrote {report.written} samples to {output_dir}; skipped {len(report.skipped)} bad lines")
