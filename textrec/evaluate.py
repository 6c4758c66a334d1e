"""Benchmark evaluation: run a Recognizer over LMDB datasets and score them by the benchmark protocol."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from PIL import Image

from .checkpoint import atomic_write
from .data.lmdb_store import LmdbDataset
from .decoder import Decoder
from .errors import DataError
from .files import holds_json_records
from .lexicon import Lexicon
from .metrics import SampleScore, Score, expected_calibration_error, normalize_for_eval, normalized_edit_similarity
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
    # Expected calibration error of the recognizer's confidence (calibrated, else raw) over the reads with a
    # finite confidence; None when there is none.
    ece: float | None = None
    protocol: str = "36"
    decoder: str = "greedy"
    unconstrained: int = 0  # per-sample lexicons: samples without one (or with an empty one), read unconstrained
    lexicon_unknown: int = 0  # per-sample lexicon words the model's charset cannot write (left out)
    # (confidence, right) of every read, for the ECE of combined results; not written to the results file.
    reads: list[tuple[float, bool]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reads"}


@dataclass
class Misread:
    """A sample read wrong, or not read at all (`error` says why): what `evaluate_dataset` hands `on_misread`."""

    dataset: str  # the result's name
    path: str  # the LMDB folder
    record: int  # 1-based, as the LMDB's keys count
    label: str | None  # as stored (None: it could not be read)
    prediction: str | None = None
    confidence: float | None = None
    image: Image.Image | None = None
    error: str | None = None


def _ece(reads: list[tuple[float, bool]]) -> float | None:
    if not reads:
        return None
    return expected_calibration_error([c for c, _ in reads], [right for _, right in reads])


def check_dataset(dataset: LmdbDataset, decoder: Decoder) -> None:
    """DataError when the decoder needs what the dataset lacks (per-sample lexicons); call it before long work."""
    if decoder.per_sample and not dataset.has_lexicons():
        raise DataError(
            f"{dataset.path}: no per-sample lexicons (no lexicon-%09d keys); `textrec create-lmdb --lexicons` stores "
            "them from a third column of the gt file"
        )


def evaluate_dataset(
    recognizer: Recognizer,
    dataset: LmdbDataset,
    name: str,
    protocol: str = "36",
    batch_size: int = 64,
    max_samples: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_misread: Callable[[Misread], None] | None = None,
    on_scored: Callable[[SampleScore], None] | None = None,
) -> BenchmarkResult:
    """Score every sample of an LMDB, read by the recognizer's decoder (per-sample lexicons from the LMDB when it
    asks for them). Unreadable samples stay in the denominator and are listed; `on_misread` gets every sample
    read wrong or not read, `on_scored` every sample scored (in record order; for paired comparisons)."""
    decoder = recognizer.decoder
    check_dataset(dataset, decoder)
    total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    score = Score()
    excluded = unconstrained = unknown = 0
    failed: list[str] = []
    reads: list[tuple[float, bool]] = []
    seconds = 0.0
    images: list[Image.Image] = []
    # In record order: (normalised label, label, index, lexicon, image) of a sample to read, or (None, label,
    # index, None, error line) of one that cannot be read; reported in that order once the batch is read.
    pending: list[tuple] = []

    def fail(index: int, label: str | None, message: str, image: Image.Image | None = None) -> None:
        failed.append(message)
        score.add_failure()
        if on_scored:
            on_scored(SampleScore(index + 1, False, 0.0))
        if on_misread:
            on_misread(Misread(name, str(dataset.path), index + 1, label, image=image, error=message))

    def run_batch():
        nonlocal seconds
        decoded = iter(())
        if images:
            start = time.perf_counter()
            lexicons = [entry[3] for entry in pending if entry[0] is not None] if decoder.per_sample else None
            decoded = iter(recognizer.recognize_tensor(recognizer.prepare(images), lexicons))
            seconds += time.perf_counter() - start
        for label, raw_label, index, _, image in pending:
            if label is None:  # `image` is the error line
                fail(index, raw_label, image)
                continue
            result = next(decoded)
            if not math.isfinite(result.confidence):  # broken weights: no reading, counted wrong and listed
                fail(index, raw_label, f"{dataset.where(index)}: the model's output is not finite (NaN or infinity)", image)
                continue
            read = normalize_for_eval(result.text, protocol)
            right = score.add(read, label)
            if on_scored:
                on_scored(SampleScore(index + 1, right, normalized_edit_similarity(read, label)))
            confidence = recognizer.confidence(result)
            if math.isfinite(confidence):
                reads.append((min(max(confidence, 0.0), 1.0), right))
            if not right and on_misread:
                on_misread(Misread(name, str(dataset.path), index + 1, raw_label, result.text, confidence, image))
        images.clear()
        pending.clear()

    for index in range(total):
        try:
            raw_label = dataset.read_label(index)
        except DataError as exc:
            pending.append((None, None, index, None, str(exc)))
            continue
        label = normalize_for_eval(raw_label, protocol)
        if not label:
            excluded += 1
            continue
        try:
            image, _ = dataset.read_image(index)
            words = dataset.read_lexicon(index) if decoder.per_sample else None
        except DataError as exc:
            pending.append((None, raw_label, index, None, str(exc)))
            continue
        lexicon = None
        if decoder.per_sample:
            lexicon = decoder.make_lexicon(words or [], recognizer.charset)
            unknown += len(lexicon.unknown)
            unconstrained += not lexicon.words
        images.append(image)
        pending.append((label, raw_label, index, lexicon, image))
        if len(images) >= batch_size:
            run_batch()
        if on_progress:
            on_progress(index + 1, total)
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
        ece=_ece(reads),
        protocol=protocol,
        decoder=decoder.describe(),
        unconstrained=unconstrained,
        lexicon_unknown=unknown,
        reads=reads,
    )


def combine(results: list[BenchmarkResult], name: str = "total") -> BenchmarkResult:
    """The sample-weighted total of several results (the ECE of all their reads together)."""
    samples = sum(r.samples for r in results)
    correct = sum(r.correct for r in results)
    similarity = sum(r.ned * r.samples for r in results)
    recognized = sum(r.samples - len(r.failed) for r in results)
    ms = sum(r.ms_per_image * (r.samples - len(r.failed)) for r in results)
    reads = [read for r in results for read in r.reads]
    return BenchmarkResult(
        name=name,
        samples=samples,
        correct=correct,
        accuracy=100.0 * correct / samples if samples else 0.0,
        ned=similarity / samples if samples else 0.0,
        excluded_empty=sum(r.excluded_empty for r in results),
        failed=[line for r in results for line in r.failed],
        ms_per_image=ms / recognized if recognized else 0.0,
        ece=_ece(reads),
        protocol=results[0].protocol if results else "36",
        decoder=results[0].decoder if results else "greedy",
        unconstrained=sum(r.unconstrained for r in results),
        lexicon_unknown=sum(r.lexicon_unknown for r in results),
        reads=reads,
    )


# --- the results file (`textrec eval --json`) ------------------------------------------------------------

_RESULT_KEYS = {"name", "samples", "accuracy", "ned"}


def is_results_file(path: str | Path) -> bool:
    """Whether `path` holds results as `save_results` writes them: eval may replace its own output."""
    return holds_json_records(path, _RESULT_KEYS)


def save_results(path: str | Path, results: list[BenchmarkResult]) -> None:
    """Write the results as a JSON list, atomically (OutputError names the file if it cannot be written)."""
    text = json.dumps([r.to_dict() for r in results], indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
