"""`textrec export`: a compact or ONNX copy of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from textrec.export import FORMATS, export_onnx, export_safetensors
from textrec.files import check_output_file

from .common import console, fail, user_errors


@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to export (.safetensors)."),
    output: Path = typer.Argument(..., help="File to write."),
    export_format: str = typer.Option("safetensors", "--format", help=f"One of: {', '.join(FORMATS)}."),
    half: bool = typer.Option(False, help="safetensors: store float weights as float16 (half the size)."),
    dynamic_width: Optional[bool] = typer.Option(
        None, "--dynamic-width/--fixed-width",
        help="safetensors: at inference pad each batch only to its widest image, or every image to the model width (default: as the checkpoint).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Write a checkpoint as float16 safetensors (e.g. to ship it) or as an ONNX graph."""
    check_output_file(output, overwrite)
    if export_format == "safetensors":
        export_safetensors(checkpoint, output, half=half, dynamic_width=dynamic_width)
    elif export_format == "onnx":
        if half or dynamic_width is not None:
            fail("--half and --dynamic-width apply to the safetensors format only")
        export_onnx(checkpoint, output)
    else:
        fail(f"unknown format {export_format!r}; choose one of {', '.join(FORMATS)}")
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
