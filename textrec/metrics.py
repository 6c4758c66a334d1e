"""Evaluation normalisation and scores: word accuracy and 1 - normalised edit distance."""

from __future__ import annotations

import re
from dataclasses import dataclass

import editdistance

_NOT_ALNUM_LOWER = re.compile(r"[^0-9a-z]")
_NOT_ALNUM = re.compile(r"[^0-9a-zA-Z]")

# "62" is the older name of "case" and stays accepted (calibrations and training validation use it).
PROTOCOLS = ("36", "case", "62", "exact")


def normalize_for_eval(text: str, protocol: str = "36") -> str:
    """Text as the benchmark protocol compares it.

    "36": lower-case, then drop every character outside 0-9a-z (the standard protocol).
    "case" (or "62"): keep case, drop every character outside 0-9a-zA-Z (case-sensitive alphanumeric).
    "exact": compare the strings as they are.
    """
    if protocol == "36":
        return _NOT_ALNUM_LOWER.sub("", text.lower())
    if protocol in ("case", "62"):
        return _NOT_ALNUM.sub("", text)
    if protocol == "exact":
        return text
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def normalized_edit_similarity(prediction: str, label: str) -> float:
    """1 - NED, with NED = edit distance / max(len(prediction), len(label)) (ICDAR 2019 definition)."""
    longest = max(len(prediction), len(label))
    if longest == 0:
        return 1.0
    return 1.0 - editdistance.eval(prediction, label) / longest


@dataclass
class Score:
    """Running totals for word accuracy and 1-NED over scored samples."""

    samples: int = 0
    correct: int = 0
    similarity: float = 0.0

    def add(self, prediction: str, label: str) -> bool:
        """Score one (already normalised) pair; returns whether it is correct."""
        hit = prediction == label
        self.samples += 1
        self.correct += int(hit)
        self.similarity += normalized_edit_similarity(prediction, label)
        return hit

    def add_failure(self) -> None:
        """An unreadable sample: it stays in the denominator and counts as wrong with 1-NED 0."""
        self.samples += 1

    @property
    def accuracy(self) -> float:
        """Word accuracy in percent."""
        return 100.0 * self.correct / self.samples if self.samples else 0.0

    @property
    def ned(self) -> float:
        """Mean 1 - NED in [0, 1]."""
        return self.similarity / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class SampleScore:
    """One scored sample: its 1-based record, whether the read was right, its 1 - NED (0 for an unreadable sample)."""

    record: int
    right: bool
    similarity: float


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: [low, high), how many reads fell in it, their mean confidence and the share right."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(confidences: list[float], correct: list[bool], bins: int = 10) -> list[ReliabilityBin]:
    """Reads grouped by confidence into `bins` equal-width bins over [0, 1] (1.0 goes into the last); empty bins
    are left out. Non-finite confidences are not allowed (ValueError)."""
    if len(confidences) != len(correct):
        raise ValueError("confidences and correct differ in length")
    grouped: dict[int, list[tuple[float, bool]]] = {}
    for confidence, right in zip(confidences, correct):
        if not 0.0 <= confidence <= 1.0:  # also refuses NaN
            raise ValueError(f"confidence {confidence!r} outside [0, 1]")
        grouped.setdefault(min(int(confidence * bins), bins - 1), []).append((confidence, bool(right)))
    return [
        ReliabilityBin(
            low=index / bins,
            high=(index + 1) / bins,
            count=len(members),
            confidence=sum(c for c, _ in members) / len(members),
            accuracy=sum(r for _, r in members) / len(members),
        )
        for index, members in sorted(grouped.items())
    ]


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> float:
    """ECE: the read-weighted mean, over equal-width confidence bins, of |share right - mean confidence|.

    0 means that among reads with confidence near c, a fraction c is right; it is in [0, 1].
    """
    total = len(confidences)
    if total == 0:
        return 0.0
    return sum(b.count * abs(b.accuracy - b.confidence) for b in reliability_bins(confidences, correct, bins)) / total
