"""`textrec predict`: read the text in word images."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from textrec.decoder import METHODS, PER_SAMPLE
from textrec.errors import DataError
from textrec.predict import Recognizer, collect_image_paths, cpu_threads, reads_on_cpu

from .common import err_console, fail, user_errors
from .decoding import check_decoder_options, use_decoder
from .defaults import CHECKPOINT_ENV, resolve_checkpoint


@user_errors
def predict(
    images: List[str] = typer.Argument(..., help="Image files, folders (searched with their sub-folders) or glob patterns."),
    checkpoint: Optional[Path] = typer.Option(None, envvar=CHECKPOINT_ENV, help="Model checkpoint (.safetensors), or an ONNX graph from `textrec export` (.onnx, run with onnxruntime: faster on CPUs); default: the shipped model."),
    batch_size: int = typer.Option(32, min=1),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    threads: int = typer.Option(
        0, min=0, help="CPU threads for the model (torch or onnxruntime); 0: one when reading up to 4 images "
        "(faster at batch 1, by far on a busy machine), else torch's default (the number of cores).",
    ),
    orientation: bool = typer.Option(
        True, "--orientation/--no-orientation",
        help="Read crops that are upside down or turned by 90 degrees (tall crops) too; --no-orientation reads every crop as it is (faster; better for crops of single characters).",
    ),
    json_lines: bool = typer.Option(False, "--json", help="Print one JSON object per image (image, text, confidence, rotation)."),
    decoder: str = typer.Option("greedy", help=f"CTC decoding: {', '.join(METHODS)}."),
    beam_width: int = typer.Option(10, help="Prefixes kept by --decoder beam."),
    lexicon: Optional[Path] = typer.Option(
        None, help="Read only words of this lexicon FILE (one word a line; matched ignoring case and punctuation, "
        "reported as written there)."
    ),
) -> None:
    """Print `image<TAB>text<TAB>confidence` per image; unreadable images are reported on stderr and the exit code is 1.

    The confidence is the estimated probability that the text is right (ignoring case and punctuation, as the
    accuracy figures do): among reads with confidence near 0.8, about 80 % are right. It is fitted on a validation
    split and stored in the checkpoint; a checkpoint without it reports the raw CTC path probability, which is not
    calibrated (docs/model.md, "Confidence"). rotation (--json) is how far the crop was turned, counter-clockwise, to
    read it: 0, 90, 180 or 270. A progress bar shows on stderr when stderr is a terminal and there are more images
    than one batch. With --decoder beam or a --lexicon, the raw score is the probability of the text summed over
    all its CTC alignments (docs/evaluation.md).
    """
    check_decoder_options(decoder, beam_width)
    if lexicon is not None and str(lexicon) == PER_SAMPLE:
        fail(f"--lexicon {PER_SAMPLE}: only eval has per-sample lexicons (from an LMDB); give predict a lexicon FILE")
    paths, problems = collect_image_paths(images)
    for problem in problems:
        err_console.print(f"[red]error:[/] {escape(problem)}", soft_wrap=True)
    if not paths:
        fail("no images to read")
    model_file = resolve_checkpoint(checkpoint)
    chosen = cpu_threads(len(paths), batch_size, threads)
    if chosen and reads_on_cpu(model_file, device):
        torch.set_num_threads(chosen)  # onnxruntime takes torch's number of threads too
    recognizer = Recognizer.from_checkpoint(model_file, device=device, orientation=orientation)
    use_decoder(recognizer, decoder, beam_width, lexicon)
    failures = len(problems)
    with _progress(len(paths), show=err_console.is_terminal and len(paths) > batch_size) as (advance, emit):
        for path, result in recognizer.recognize_files(paths, batch_size=batch_size):
            advance()
            if isinstance(result, DataError):
                failures += 1
                err_console.print(f"[red]error:[/] {escape(str(result))}", soft_wrap=True)
                if json_lines:
                    emit(json.dumps({"image": str(path), "error": str(result)}, ensure_ascii=False))
                continue
            confidence = result.confidence if math.isfinite(result.confidence) else None
            if json_lines:
                record = {
                    "image": str(path),
                    "text": result.text,
                    "confidence": None if confidence is None else round(confidence, 4),
                    "rotation": result.rotation,
                }
                emit(json.dumps(record, ensure_ascii=False, allow_nan=False))
            else:
                emit(f"{path}\t{result.text}\t{'-' if confidence is None else f'{confidence:.3f}'}")
    if failures:
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress(total: int, show: bool):
    """(advance, emit): a transient progress bar on stderr when `show`; `emit` prints a result line on stdout.

    When stdout is the same terminal, result lines are printed above the bar (through its console), so the two
    do not overwrite each other; when stdout goes to a file or pipe, they go there unchanged.
    """
    if not show:
        yield (lambda: None), typer.echo
        return
    columns = (TextColumn("reading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task("", total=total)
        through_bar = sys.stdout.isatty()

        def emit(line: str) -> None:
            if through_bar:
                progress.console.print(line, markup=False, highlight=False, soft_wrap=True, emoji=False)
            else:
                typer.echo(line)

        yield (lambda: progress.advance(task)), emit
