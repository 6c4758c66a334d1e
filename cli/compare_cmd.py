"""`textrec compare`: two checkpoints on the same samples, with the uncertainty of their difference."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from textrec.compare import PairedComparison, compare_recognizers, is_comparisons_file, save_comparisons
from textrec.data.lmdb_store import LmdbDataset
from textrec.decoder import METHODS, PER_SAMPLE
from textrec.evaluate import check_dataset
from textrec.files import check_output_file
from textrec.predict import Recognizer

from .common import console, err_console, user_errors
from .decoding import use_decoder
from .defaults import DEFAULT_DATA_ROOT
from .targets import benchmark_targets, check_reading_options


def _table(c: PairedComparison, protocol: str, decoder: str) -> Table:
    """One small table per dataset, so that it fits a terminal: the two figures, their difference and its interval."""
    table = Table(
        title=f"{c.name}: {c.samples} samples, protocol {protocol}, {decoder}",
        caption=f"right by A only: {c.only_a}, by B only: {c.only_b}; McNemar p = {c.p_value:.3f}",
    )
    table.add_column("", no_wrap=True)
    for column in ("A", "B", "B - A", f"{c.level:.0%} interval"):
        table.add_column(column, justify="right")
    low, high = c.accuracy_interval
    table.add_row("word acc. %", f"{c.accuracy_a:.2f}", f"{c.accuracy_b:.2f}", f"{c.accuracy_difference:+.2f}", f"[{low:+.2f}, {high:+.2f}]")
    low, high = c.ned_interval
    table.add_row("1-NED", f"{c.ned_a:.4f}", f"{c.ned_b:.4f}", f"{c.ned_difference:+.4f}", f"[{low:+.4f}, {high:+.4f}]")
    return table


@user_errors
def compare(
    checkpoint_a: Path = typer.Argument(..., help="Checkpoint A (.safetensors or .onnx), the reference: e.g. the shipped model."),
    checkpoint_b: Path = typer.Argument(..., help="Checkpoint B: differences are B minus A."),
    benchmark: List[str] = typer.Option([], "--benchmark", "-b", help="Benchmark name (IC13, IIIT5k_3000, ...) or `all`."),
    data: List[Path] = typer.Option([], "--data", help="Any LMDB folder to read, e.g. a validation split."),
    data_root: Path = typer.Option(DEFAULT_DATA_ROOT, help="Folder holding benchmarks/<NAME>/ or evaluation/<NAME>/ LMDBs."),
    protocol: str = typer.Option("36", help="Comparison: 36 (case-insensitive over 0-9a-z), case (62 is the same), exact."),
    decoder: str = typer.Option("greedy", help=f"CTC decoding, the same for both: {', '.join(METHODS)}."),
    beam_width: int = typer.Option(10, help="Prefixes kept by --decoder beam."),
    lexicon: Optional[str] = typer.Option(
        None, help=f"Read only words of a lexicon: a FILE of words, or `{PER_SAMPLE}` (each sample's own, from the LMDB).",
    ),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    rounds: int = typer.Option(10_000, min=100, help="Bootstrap resamples of the samples."),
    level: float = typer.Option(0.95, min=0.5, max=0.999, help="Coverage of the intervals."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparisons as a JSON list to this file (checked before reading)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file that compare did not write."),
) -> None:
    """Two checkpoints on the same samples: accuracy and 1-NED differences with paired intervals and McNemar's test."""
    check_reading_options(benchmark, data, protocol, decoder, beam_width)
    if json_out is not None:
        check_output_file(json_out, overwrite, ours=is_comparisons_file)
    targets = benchmark_targets(benchmark, data, data_root)
    recognizers = [Recognizer.from_checkpoint(path, device=device, orientation=False) for path in (checkpoint_a, checkpoint_b)]
    for recognizer in recognizers:
        use_decoder(recognizer, decoder, beam_width, lexicon, case_insensitive=protocol == "36")
    datasets = [(name, LmdbDataset(path)) for name, path in targets]  # every dataset checked before the first is read
    for _, dataset in datasets:
        check_dataset(dataset, recognizers[0].decoder)
    comparisons: list[PairedComparison] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err_console) as progress:
        for name, dataset in datasets:
            tasks = {which: progress.add_task(f"{name} ({which})", total=len(dataset)) for which in ("A", "B")}
            _, _, comparison = compare_recognizers(
                *recognizers, dataset, name, protocol=protocol, batch_size=batch_size, rounds=rounds, level=level,
                on_progress=lambda which, done, total: progress.update(tasks[which], completed=done),
            )
            comparisons.append(comparison)
    console.print(f"A: {checkpoint_a}\nB: {checkpoint_b}", markup=False)
    for comparison in comparisons:
        console.print(_table(comparison, protocol, recognizers[0].decoder.describe()))
    console.print("intervals: paired bootstrap over the samples; p: McNemar's exact test on the samples only one read right", markup=False)
    if json_out is not None:
        save_comparisons(json_out, comparisons, (str(checkpoint_a), str(checkpoint_b)))
        console.print(f"comparisons written to {json_out}", markup=False)
