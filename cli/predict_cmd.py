"""`textrec predict`: read the text in word images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from textrec.errors import DataError
from textrec.predict import Recognizer, collect_image_paths

from .common import err_console, fail, user_errors
from .defaults import CHECKPOINT_ENV, resolve_checkpoint


@user_errors
def predict(
    images: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    checkpoint: Optional[Path] = typer.Option(None, envvar=CHECKPOINT_ENV, help="Model checkpoint (.safetensors); default: the shipped model."),
    batch_size: int = typer.Option(32, min=1),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    json_lines: bool = typer.Option(False, "--json", help="Print one JSON object per image (image, text, confidence)."),
) -> None:
    """Print `image<TAB>text<TAB>confidence` per image; unreadable images are reported on stderr and the exit code is 1."""
    paths, unmatched = collect_image_paths(images)
    for item in unmatched:
        err_console.print(f"[red]error:[/] {item}: no such file, folder or matching image", soft_wrap=True)
    if not paths:
        fail("no images to read")
    recognizer = Recognizer.from_checkpoint(resolve_checkpoint(checkpoint), device=device)
    failures = len(unmatched)
    for path, result in recognizer.recognize_files(paths, batch_size=batch_size):
        if isinstance(result, DataError):
            failures += 1
            err_console.print(f"[red]error:[/] {result}", soft_wrap=True)
            if json_lines:
                typer.echo(json.dumps({"image": str(path), "error": str(result)}, ensure_ascii=False))
            continue
        if json_lines:
            record = {"image": str(path), "text": result.text, "confidence": round(result.confidence, 4)}
            typer.echo(json.dumps(record, ensure_ascii=False))
        else:
            typer.echo(f"{path}\t{result.text}\t{result.confidence:.3f}")
    if failures:
        raise typer.Exit(1)
