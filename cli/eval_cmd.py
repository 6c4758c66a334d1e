"""`textrec eval`: score a checkpoint on benchmarks or any LMDB."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from textrec.data.lmdb_store import LmdbDataset
from textrec.decoder import METHODS, PER_SAMPLE
from textrec.error_report import ErrorReport, check_errors_folder
from textrec.evaluate import BenchmarkResult, check_dataset, combine, evaluate_dataset, is_results_file, save_results
from textrec.files import check_output_file
from textrec.predict import Recognizer

from .common import console, err_console, user_errors, warn
from .decoding import use_decoder
from .defaults import CHECKPOINT_ENV, DEFAULT_DATA_ROOT, resolve_checkpoint
from .targets import benchmark_targets, check_reading_options


def _table(results: list[BenchmarkResult], average: BenchmarkResult | None, title: str) -> Table:
    table = Table(title=title, caption="excluded: empty label after normalisation; failed: unreadable, counted wrong")
    columns = ("benchmark", "samples", "word acc. %", "1-NED", "ECE", "ms / image", "excl.", "failed")
    table.add_column(columns[0], no_wrap=True)  # a set's name is never cut
    for column in columns[1:]:
        table.add_column(column, justify="right")
    for result in [*results, average] if average is not None else results:
        table.add_row(
            result.name,
            str(result.samples),
            f"{result.accuracy:.2f}",
            f"{result.ned:.4f}",
            "-" if result.ece is None else f"{result.ece:.4f}",
            f"{result.ms_per_image:.2f}",
            str(result.excluded_empty),
            str(len(result.failed)),
            style="bold" if result is average else None,
        )
    return table


@user_errors
def evaluate(
    checkpoint: Optional[Path] = typer.Option(None, envvar=CHECKPOINT_ENV, help="Model checkpoint (.safetensors), or an ONNX graph from `textrec export` (.onnx, run with onnxruntime: faster on CPUs); default: the shipped model."),
    benchmark: List[str] = typer.Option(
        [], "--benchmark", "-b",
        help="Benchmark name (IC13, IIIT5k_3000, ...) or `all`: every standard set found under --data-root.",
    ),
    data: List[Path] = typer.Option([], "--data", help="Any LMDB folder to evaluate."),
    data_root: Path = typer.Option(DEFAULT_DATA_ROOT, help="Folder holding benchmarks/<NAME>/ or evaluation/<NAME>/ LMDBs."),
    protocol: str = typer.Option(
        "36", help="Comparison: 36 (case-insensitive over 0-9a-z), case (case-sensitive over 0-9a-zA-Z; 62 is the same), exact."
    ),
    decoder: str = typer.Option("greedy", help=f"CTC decoding: {', '.join(METHODS)}."),
    beam_width: int = typer.Option(10, help="Prefixes kept by --decoder beam."),
    lexicon: Optional[str] = typer.Option(
        None, help=f"Read only words of a lexicon: a FILE of words (one a line), or `{PER_SAMPLE}` (each sample's own, "
        "stored by `create-lmdb --lexicons`).",
    ),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as a JSON list to this file (checked before evaluating)."),
    errors: Optional[Path] = typer.Option(
        None, "--errors",
        help="Write every misread or unreadable sample into this folder: errors.jsonl, images/, contact sheets in sheets/.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file, or write into a non-empty --errors folder, that eval did not write."),
    show_failures: int = typer.Option(10, help="How many unreadable samples to list."),
) -> None:
    """Word accuracy and 1-NED of a checkpoint on benchmarks (case-insensitive, 36 characters by default)."""
    check_reading_options(benchmark, data, protocol, decoder, beam_width)
    # Before any work: a bad output path must not cost the evaluation.
    if json_out is not None:
        check_output_file(json_out, overwrite, ours=is_results_file)
    if errors is not None:
        check_errors_folder(errors, overwrite)
    targets = benchmark_targets(benchmark, data, data_root)
    recognizer = Recognizer.from_checkpoint(resolve_checkpoint(checkpoint), device=device, orientation=False)
    datasets = [(name, LmdbDataset(path)) for name, path in targets]  # every dataset checked before the first is run
    use_decoder(recognizer, decoder, beam_width, lexicon, case_insensitive=protocol == "36")
    for _, dataset in datasets:
        check_dataset(dataset, recognizer.decoder)
    report = ErrorReport(errors, overwrite) if errors is not None else None
    results: list[BenchmarkResult] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err_console) as progress:
        for name, dataset in datasets:
            task = progress.add_task(name, total=len(dataset))
            results.append(
                evaluate_dataset(
                    recognizer,
                    dataset,
                    name,
                    protocol=protocol,
                    batch_size=batch_size,
                    on_progress=lambda done, total, t=task: progress.update(t, completed=done),
                    on_misread=report.add if report is not None else None,
                )
            )
    if report is not None:
        report.close()
    average = combine(results, "average") if len(results) > 1 else None
    console.print(_table(results, average, f"protocol: {protocol}, decoder: {recognizer.decoder.describe()}"))
    for result in results:
        if result.unconstrained:
            warn(f"{result.name}: {result.unconstrained} samples without a lexicon (or with an empty one) were read unconstrained")
        if result.lexicon_unknown:
            warn(f"{result.name}: {result.lexicon_unknown} lexicon words the model's charset cannot write were left out")
    failures = [line for r in results for line in r.failed]
    for line in failures[:show_failures]:
        err_console.print(f"[yellow]unreadable (counted as wrong):[/] {line}", soft_wrap=True)
    if len(failures) > show_failures:
        err_console.print(f"... and {len(failures) - show_failures} more unreadable samples")
    if report is not None:
        console.print(
            f"errors: {report.misread} misread and {report.unreadable} unreadable samples written to {errors} "
            f"(errors.jsonl, {report.sheets} contact sheets)",
            markup=False,
        )
    if json_out is not None:
        save_results(json_out, [*results, average] if average is not None else results)
        console.print(f"results written to {json_out}", markup=False)
