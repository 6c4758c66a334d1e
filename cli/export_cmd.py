"""`textrec export`: a compact or ONNX copy of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from textrec.export import FORMATS, export_onnx, export_safetensors, output_format
from textrec.files import check_output_file
from textrec.transfer import describe_rank_change

from .common import console, fail, user_errors


@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to export (.safetensors)."),
    output: Path = typer.Argument(..., help="File to write: .safetensors or .onnx (the suffix picks the format)."),
    export_format: Optional[str] = typer.Option(
        None, "--format", help=f"One of: {', '.join(FORMATS)}; needed only when OUTPUT's suffix is neither .safetensors nor .onnx.",
    ),
    half: bool = typer.Option(False, help="safetensors: store float weights as float16 (half the size)."),
    dynamic_width: Optional[bool] = typer.Option(
        None, "--dynamic-width/--fixed-width",
        help="safetensors: at inference pad each batch only to its widest image, or every image to the model width (default: as the checkpoint).",
    ),
    min_width: Optional[int] = typer.Option(
        None, min=0,
        help="safetensors, with dynamic width: pad each batch to at least this many pixels (0: no minimum; "
        "default: as the checkpoint). Models trained on padded inputs read short words alone better padded.",
    ),
    refine_rank: Optional[int] = typer.Option(
        None, min=0,
        help="safetensors: factor the refined gates' projections to this rank by a truncated SVD (0: full; "
        "default: as the checkpoint). The shipped model's are rank 16 (docs/refined_gates.md, \"Low-rank projections\").",
    ),
    int8: bool = typer.Option(
        False, "--int8",
        help="onnx: LSTM and matrix-product weights in int8 (onnxruntime's dynamic quantisation: half the size, "
        "1.1-1.25x faster on CPU for the shipped model, which reads IC13_857 at 88.56 % instead of 88.45 %; docs/deploy.md). "
        "Needs onnxruntime.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Write a checkpoint as float16 safetensors (e.g. to ship it) or as an ONNX graph.

    The suffix of OUTPUT picks the format. An ONNX graph (model.onnx) has a dynamic batch and width, and its
    metadata holds the charset, preprocessing and calibration (docs/deploy.md runs it with onnxruntime)."""
    check_output_file(output, overwrite)
    chosen = output_format(output, export_format)
    if chosen == "onnx":
        if half or dynamic_width is not None or min_width is not None or refine_rank is not None:
            fail("--half, --dynamic-width, --min-width and --refine-rank apply to the safetensors format only")
        export_onnx(checkpoint, output, int8=int8)
    else:
        if int8:
            fail("--int8 applies to the onnx format only")
        written = export_safetensors(
            checkpoint, output, half=half, dynamic_width=dynamic_width, min_width=min_width, refine_rank=refine_rank
        )
        refactored = written.info.get("refactored") if refine_rank is not None else None
        if refactored:
            console.print(describe_rank_change(refactored["rank"], refactored["energy_kept"]))
    console.print(f"wrote {output} ({chosen}, {output.stat().st_size / 1e6:.1f} MB)")
