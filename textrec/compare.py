"""Two recognisers on the same samples: is the difference larger than the data set's noise?

A validation split of a few hundred words cannot tell two models apart when they differ by a few words, and
their accuracies alone do not say so. Read side by side, the two share every sample, so the question is about
the samples they disagree on: McNemar's exact test on the reads only one of them got right (under "no
difference" each such sample is equally likely to favour either), and paired bootstrap intervals for the
differences of word accuracy and of mean 1-NED (resampling samples, each with both its reads).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import atomic_write
from .data.lmdb_store import LmdbDataset
from .evaluate import BenchmarkResult, evaluate_dataset
from .files import holds_json_records
from .metrics import SampleScore
from .predict import Recognizer


@dataclass(frozen=True)
class PairedComparison:
    """B against A on the same samples; differences are B minus A."""

    name: str
    samples: int
    accuracy_a: float  # percent
    accuracy_b: float
    only_a: int  # samples A read right and B wrong
    only_b: int
    p_value: float  # McNemar's exact two-sided test on only_a and only_b
    accuracy_interval: tuple[float, float]  # paired bootstrap interval of accuracy_b - accuracy_a, in points
    ned_a: float
    ned_b: float
    ned_interval: tuple[float, float]  # of ned_b - ned_a
    level: float  # of the intervals

    @property
    def accuracy_difference(self) -> float:
        return self.accuracy_b - self.accuracy_a

    @property
    def ned_difference(self) -> float:
        return self.ned_b - self.ned_a

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy_difference": self.accuracy_difference, "ned_difference": self.ned_difference}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test: the chance, were each disagreement a fair coin, of a split at least
    as uneven as this one. 1.0 when the two never disagree."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(differences: list[float], rounds: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of `differences` (one per sample) over `rounds` resamples of the samples."""
    if not differences:
        raise ValueError("no samples to resample")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, not {level}")
    values = torch.tensor(differences, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    n = len(differences)
    chunk = max(1, 2_000_000 // n)  # resamples drawn at once: a few tens of MB of indices
    means = torch.cat([
        values[torch.randint(n, (min(chunk, rounds - done), n), generator=generator)].mean(1)
        for done in range(0, rounds, chunk)
    ]).sort().values
    low = means[int(math.floor((1 - level) / 2 * (rounds - 1)))]
    high = means[int(math.ceil((1 + level) / 2 * (rounds - 1)))]
    return float(low), float(high)


def compare_scores(
    a: list[SampleScore], b: list[SampleScore], name: str, rounds: int = 10_000, level: float = 0.95, seed: int = 0,
) -> PairedComparison:
    """Compare two recognisers' scores of the same samples (matched by record; both must have scored the same ones)."""
    by_record = {s.record: s for s in b}
    if len(by_record) != len(b) or len({s.record for s in a}) != len(a) or set(by_record) != {s.record for s in a}:
        raise ValueError(f"{name}: the two runs scored different samples ({len(a)} and {len(b)} records)")
    if not a:
        raise ValueError(f"{name}: no scored samples to compare")
    pairs = [(s, by_record[s.record]) for s in a]
    only_a = sum(x.right and not y.right for x, y in pairs)
    only_b = sum(y.right and not x.right for x, y in pairs)
    n = len(pairs)
    right_differences = [100.0 * (int(y.right) - int(x.right)) for x, y in pairs]
    ned_differences = [y.similarity - x.similarity for x, y in pairs]
    return PairedComparison(
        name=name,
        samples=n,
        accuracy_a=100.0 * sum(x.right for x, _ in pairs) / n,
        accuracy_b=100.0 * sum(y.right for _, y in pairs) / n,
        only_a=only_a,
        only_b=only_b,
        p_value=mcnemar_exact(only_a, only_b),
        accuracy_interval=bootstrap_interval(right_differences, rounds, level, seed),
        ned_a=sum(x.similarity for x, _ in pairs) / n,
        ned_b=sum(y.similarity for _, y in pairs) / n,
        ned_interval=bootstrap_interval(ned_differences, rounds, level, seed),
        level=level,
    )


def compare_recognizers(
    a: Recognizer,
    b: Recognizer,
    dataset: LmdbDataset,
    name: str,
    protocol: str = "36",
    batch_size: int = 64,
    rounds: int = 10_000,
    level: float = 0.95,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[BenchmarkResult, BenchmarkResult, PairedComparison]:
    """Evaluate both recognisers on the dataset (`on_progress(which, done, total)`, which is "A" or "B") and compare
    them sample by sample."""
    results, scores = [], []
    for which, recognizer in (("A", a), ("B", b)):
        scored: list[SampleScore] = []
        progress = None if on_progress is None else (lambda done, total, w=which: on_progress(w, done, total))
        results.append(evaluate_dataset(
            recognizer, dataset, name, protocol=protocol, batch_size=batch_size, on_progress=progress, on_scored=scored.append,
        ))
        scores.append(scored)
    return results[0], results[1], compare_scores(scores[0], scores[1], name, rounds=rounds, level=level)


# --- the comparison file (`textrec compare --json`) -------------------------------------------------------

_COMPARISON_KEYS = {"name", "samples", "accuracy_a", "accuracy_b", "p_value"}


def is_comparisons_file(path: str | Path) -> bool:
    """Whether `path` holds comparisons as `save_comparisons` writes them: compare may replace its own output."""
    return holds_json_records(path, _COMPARISON_KEYS)


def save_comparisons(path: str | Path, comparisons: list[PairedComparison], checkpoints: tuple[str, str]) -> None:
    """Write the comparisons as a JSON list, each naming the two checkpoints, atomically."""
    rows = [{**c.to_dict(), "checkpoint_a": checkpoints[0], "checkpoint_b": checkpoints[1]} for c in comparisons]
    text = json.dumps(rows, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
