"""`textrec calibrate`: fit a checkpoint's confidence on a validation LMDB."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from textrec.calibrate import calibrate_checkpoint
from textrec.files import check_output_file
from textrec.metrics import PROTOCOLS

from .common import console, err_console, fail, user_errors


@user_errors
def calibrate(
    checkpoint: Path = typer.Argument(..., help="The checkpoint (.safetensors) to calibrate."),
    data: List[Path] = typer.Option(..., "--data", help="Validation LMDB (repeat); never the test set you report on."),
    orientation_data: List[Path] = typer.Option(
        [], "--orientation-data",
        help="Also fit the orientation probe (which way up a crop is) on the crops of these LMDBs (repeat; e.g. the training data).",
    ),
    output: Optional[Path] = typer.Option(None, help="Write the calibrated checkpoint here (default: replace CHECKPOINT; the weights are unchanged)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    protocol: str = typer.Option("36", help=f"Which reads count as right: {', '.join(PROTOCOLS)}."),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Fit a checkpoint's confidence on a validation LMDB, so that a confidence c means a read is right with probability about c.

    Platt scaling of the greedy path's log-probability: two numbers, stored in the checkpoint's metadata and used
    by `predict`, `eval` (its ECE column) and the Python API. The fit reports the expected calibration error (ECE)
    before and after, on the same reads. With --orientation-data it also fits the orientation probe that
    `predict` and the Python API use to read upside-down and turned crops.
    """
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    target = output if output is not None else checkpoint
    if output is not None:
        check_output_file(output, overwrite)
    with Progress(TextColumn("calibrate"), BarColumn(), MofNCompleteColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task("", total=None)
        report = calibrate_checkpoint(
            checkpoint, data, target, protocol, device, batch_size,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            orientation_data=orientation_data,
        )
    c = report.calibration
    console.print(
        f"fitted on {report.samples} reads ({report.accuracy:.2f} % right, protocol {c.protocol}): "
        f"confidence = sigmoid({c.slope:.4f} * ln(path probability) + {c.intercept:.4f}); "
        f"ECE {report.ece_before:.4f} -> {report.ece_after:.4f}; written to {target}"
    )
    if report.orientation is not None:
        o = report.orientation
        console.print(f"orientation probe fitted on {o.samples} crops shown both ways up: {o.accuracy:.2f} % right (in-sample)")
