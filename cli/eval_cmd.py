"""`textrec eval`: score a checkpoint on benchmarks or any LMDB."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from textrec.data import benchmarks as registry
from textrec.data.lmdb_store import LmdbDataset
from textrec.errors import BenchmarkNotFoundError
from textrec.evaluate import BenchmarkResult, combine, evaluate_dataset, is_results_file, save_results
from textrec.files import check_output_file
from textrec.metrics import PROTOCOLS
from textrec.predict import Recognizer

from .common import console, err_console, fail, user_errors
from .defaults import CHECKPOINT_ENV, DEFAULT_DATA_ROOT, resolve_checkpoint


def _targets(benchmark: list[str], data: list[Path], data_root: Path) -> list[tuple[str, Path]]:
    targets: list[tuple[str, Path]] = []
    for name in benchmark:
        if name.lower() == "all":
            found = registry.available(data_root)
            if not found:
                fail(f"no benchmark LMDBs under {data_root} (looked for {', '.join(registry.BENCHMARKS)})")
            targets.extend(found)
            continue
        canonical = registry.canonical_name(name)
        if canonical != name:
            err_console.print(f"{name} means {canonical} ({registry.BENCHMARKS[canonical].description})")
        try:
            targets.append((canonical, registry.locate(canonical, data_root)))
        except BenchmarkNotFoundError as exc:
            fail(
                f"{exc}. Make it with `textrec create-lmdb GT_FILE {registry.candidate_paths(canonical, data_root)[0]}`"
                f" or point --data-root at a folder holding deep-text-recognition-benchmark's evaluation LMDBs"
            )
    targets.extend((path.name, path) for path in data)
    return targets


@user_errors
def evaluate(
    checkpoint: Optional[Path] = typer.Option(None, envvar=CHECKPOINT_ENV, help="Model checkpoint (.safetensors); default: the shipped model."),
    benchmark: List[str] = typer.Option([], "--benchmark", "-b", help="Benchmark name (IC13, IIIT5k_3000, ...) or `all`."),
    data: List[Path] = typer.Option([], "--data", help="Any LMDB folder to evaluate."),
    data_root: Path = typer.Option(DEFAULT_DATA_ROOT, help="Folder holding benchmarks/<NAME>/ LMDBs."),
    protocol: str = typer.Option("36", help=f"Comparison protocol: {', '.join(PROTOCOLS)}."),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as a JSON list to this file (checked before evaluating)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file that eval did not write."),
    show_failures: int = typer.Option(10, help="How many unreadable samples to list."),
) -> None:
    """Word accuracy and 1-NED of a checkpoint on benchmarks (case-insensitive, 36 characters by default)."""
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not benchmark and not data:
        fail("name at least one --benchmark or --data")
    if json_out is not None:  # before any work: a bad path must not cost the evaluation
        check_output_file(json_out, overwrite, ours=is_results_file)
    targets = _targets(benchmark, data, data_root)
    recognizer = Recognizer.from_checkpoint(resolve_checkpoint(checkpoint), device=device)
    datasets = [(name, LmdbDataset(path)) for name, path in targets]  # every dataset checked before the first is run
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
                )
            )
    total = combine(results)
    table = Table(title=f"protocol: {protocol}")
    for column in ("benchmark", "samples", "word acc. %", "1-NED", "ms / image", "excluded (empty label)", "unreadable"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for result in [*results, total] if len(results) > 1 else results:
        table.add_row(
            result.name,
            str(result.samples),
            f"{result.accuracy:.2f}",
            f"{result.ned:.4f}",
            f"{result.ms_per_image:.2f}",
            str(result.excluded_empty),
            str(len(result.failed)),
            style="bold" if result is total else None,
        )
    console.print(table)
    failures = [line for r in results for line in r.failed]
    for line in failures[:show_failures]:
        err_console.print(f"[yellow]unreadable (counted as wrong):[/] {line}", soft_wrap=True)
    if len(failures) > show_failures:
        err_console.print(f"... and {len(failures) - show_failures} more unreadable samples")
    if json_out is not None:
        save_results(json_out, results)
        console.print(f"results written to {json_out}")
