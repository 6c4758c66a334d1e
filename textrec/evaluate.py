"""Benchmark evaluation: run a Recognizer over LMDB datasets and score them by the benchmark protocol."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .checkpoint import atomic_write
from .data.lmdb_store import LmdbDataset
from .errors import DataError
from .files import Unreadable, read_regular
from .metrics import Score, normalize_for_eval
from .predict import Recognizer


@dataclass
class BenchmarkResult:
    name: str
    samples: int  # scored samples (unreadable ones included, as wrong)
    correct: int
    accuracy: float  # percent
    ned: float  # mean 1 - NED
    excluded_empty: int = 0  # samples whose normalised label is empty
    failed: list[str] = field(default_factory=list)  # one line per unreadable sample (counted as wrong)
    ms_per_image: float = 0.0
    path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_dataset(
    recognizer: Recognizer,
    dataset: LmdbDataset,
    name: str,
    protocol: str = "36",
    batch_size: int = 64,
    max_samples: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> BenchmarkResult:
    """Score every sample of an LMDB. Unreadable samples stay in the denominator and are listed."""
    total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    score = Score()
    excluded = 0
    failed: list[str] = []
    seconds = 0.0
    images, labels = [], []

    def run_batch():
        nonlocal seconds
        start = time.perf_counter()
        decoded = recognizer.recognize(images, batch_size)
        seconds += time.perf_counter() - start
        for result, (label, where) in zip(decoded, labels):
            if not math.isfinite(result.confidence):  # broken weights: no reading, counted wrong and listed
                failed.append(f"{where}: the model's output is not finite (NaN or infinity)")
                score.add_failure()
                continue
            score.add(normalize_for_eval(result.text, protocol), label)
        images.clear()
        labels.clear()

    for index in range(total):
        try:
            raw_label = dataset.read_label(index)
        except DataError as exc:
            failed.append(str(exc))
            score.add_failure()
            continue
        label = normalize_for_eval(raw_label, protocol)
        if not label:
            excluded += 1
            continue
        try:
            image, _ = dataset.read_image(index)
        except DataError as exc:
            failed.append(str(exc))
            score.add_failure()
            continue
        images.append(image)
        labels.append((label, dataset.where(index)))
        if len(images) >= batch_size:
            run_batch()
        if on_progress:
            on_progress(index + 1, total)
    if images:
        run_batch()
    if on_progress:
        on_progress(total, total)
    recognized = score.samples - len(failed)
    return BenchmarkResult(
        name=name,
        samples=score.samples,
        correct=score.correct,
        accuracy=score.accuracy,
        ned=score.ned,
        excluded_empty=excluded,
        failed=failed,
        ms_per_image=1000.0 * seconds / recognized if recognized else 0.0,
        path=str(dataset.path),
    )


def combine(results: list[BenchmarkResult], name: str = "total") -> BenchmarkResult:
    """The sample-weighted total of several results."""
    samples = sum(r.samples for r in results)
    correct = sum(r.correct for r in results)
    similarity = sum(r.ned * r.samples for r in results)
    recognized = sum(r.samples - len(r.failed) for r in results)
    ms = sum(r.ms_per_image * (r.samples - len(r.failed)) for r in results)
    return BenchmarkResult(
        name=name,
        samples=samples,
        correct=correct,
        accuracy=100.0 * correct / samples if samples else 0.0,
        ned=similarity / samples if samples else 0.0,
        excluded_empty=sum(r.excluded_empty for r in results),
        failed=[line for r in results for line in r.failed],
        ms_per_image=ms / recognized if recognized else 0.0,
    )


# --- the results file (`textrec eval --json`) ------------------------------------------------------------

_RESULT_KEYS = {"name", "samples", "accuracy", "ned"}


def is_results_file(path: str | Path) -> bool:
    """Whether `path` holds results as `save_results` writes them: eval may replace its own output."""
    try:
        data = json.loads(read_regular(path, 64 << 20))
    except (Unreadable, ValueError):
        return False
    return isinstance(data, list) and all(isinstance(r, dict) and _RESULT_KEYS <= r.keys() for r in data)


def save_results(path: str | Path, results: list[BenchmarkResult]) -> None:
    """Write the results as a JSON list, atomically (OutputError names the file if it cannot be written)."""
    text = json.dumps([r.to_dict() for r in results], indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
