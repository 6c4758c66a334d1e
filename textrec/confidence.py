"""Calibrated confidence: the probability that a read is right, fitted on a validation split.

The model's raw score for a read is the probability of its greedy CTC path (`Decoded.confidence`: the product of
the per-frame maximum probabilities). It ranks reads well but is not a probability of being right: it shrinks with
the number of frames, and the shipped model's is too low on average (on IC13_857, 26 % of its right reads score
below 0.5). A `Calibration` maps it to one that is (Platt scaling on its logarithm):

    confidence = sigmoid(slope * ln(path probability) + intercept)

two numbers fitted by logistic regression on a validation split, stored in the checkpoint's metadata
(`textrec calibrate`). Which reads count as right is the evaluation protocol the fit used (`protocol`, by default
"36": case and characters outside 0-9a-z ignored, as in the accuracy figures). A checkpoint without a calibration
reports the raw path probability.

Nothing here imports torch: the mapping is two numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import DataError
from .metrics import PROTOCOLS

METHOD = "platt-log-path-probability"
# Floor for ln(path probability): a path probability that underflows to 0 maps as if it were e**-1000.
_MIN_LOG = -1000.0


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class Calibration:
    """confidence = sigmoid(slope * ln(path probability) + intercept), fitted on `samples` reads of `data`."""

    slope: float
    intercept: float
    protocol: str = "36"
    samples: int = 0
    data: str = ""
    method: str = METHOD

    def __post_init__(self):
        if self.method != METHOD:
            raise ValueError(f"unknown calibration method {self.method!r} (this textrec knows {METHOD!r})")
        for name in ("slope", "intercept"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"calibration {name} = {value!r} (expected a finite number)")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"calibration protocol {self.protocol!r} (expected one of {', '.join(PROTOCOLS)})")
        if self.slope < 0:
            raise ValueError(f"calibration slope = {self.slope!r} (expected >= 0: a likelier path is no less likely right)")

    def apply(self, log_path_probability: float) -> float:
        """The calibrated confidence of a read whose greedy path has this natural-log probability (NaN stays NaN)."""
        if math.isnan(log_path_probability):
            return math.nan
        return _sigmoid(self.slope * max(log_path_probability, _MIN_LOG) + self.intercept)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        if not isinstance(values, dict):
            raise ValueError(f"calibration is {type(values).__name__} (expected an object)")
        return cls(**values)


def _loss(pairs: list[tuple[float, bool]], slope: float, intercept: float, l2: float) -> float:
    """Mean log-loss of the reads under the mapping, plus the ridge."""
    total = 0.0
    for x, y in pairs:
        z = slope * x + intercept
        # -log sigmoid(z) for a right read, -log(1 - sigmoid(z)) for a wrong one, without overflow
        total += math.log1p(math.exp(-abs(z))) + max(-z if y else z, 0.0)
    return total / len(pairs) + l2 * slope * slope


def fit_calibration(
    log_path_probabilities: list[float], correct: list[bool], protocol: str = "36", data: str = "", l2: float = 1e-3
) -> Calibration:
    """Logistic regression of `correct` on ln(path probability): Newton's method on the two parameters.

    `l2` is a small ridge on the slope, which keeps the fit finite when the reads are perfectly separated.
    DataError when the reads cannot support a fit (too few, or none right, or none wrong).
    """
    pairs = [(max(x, _MIN_LOG), bool(y)) for x, y in zip(log_path_probabilities, correct) if math.isfinite(x) or x == -math.inf]
    right = sum(y for _, y in pairs)
    if len(pairs) < 20 or right == 0 or right == len(pairs):
        raise DataError(
            f"{data or 'calibration data'}: cannot fit a calibration on {len(pairs)} reads of which {right} are right "
            "(it needs at least 20, with both right and wrong ones)"
        )
    n = len(pairs)
    slope, intercept = 1.0, 0.0
    for _ in range(100):
        g_s = g_i = h_ss = h_si = h_ii = 0.0
        for x, y in pairs:
            p = _sigmoid(slope * x + intercept)
            r = p - y
            w = p * (1 - p)
            g_s += r * x
            g_i += r
            h_ss += w * x * x
            h_si += w * x
            h_ii += w
        g_s = g_s / n + 2 * l2 * slope
        g_i /= n
        h_ss = h_ss / n + 2 * l2
        h_si /= n
        h_ii = h_ii / n + 1e-12
        det = h_ss * h_ii - h_si * h_si
        step_s = (h_ii * g_s - h_si * g_i) / det
        step_i = (h_ss * g_i - h_si * g_s) / det
        before = _loss(pairs, slope, intercept, l2)
        scale = 1.0
        while scale > 1e-6 and _loss(pairs, slope - scale * step_s, intercept - scale * step_i, l2) > before:
            scale /= 2  # damped Newton: never a step that makes the fit worse
        slope, intercept = slope - scale * step_s, intercept - scale * step_i
        if abs(scale * step_s) < 1e-10 and abs(scale * step_i) < 1e-10:
            break
    return Calibration(slope=max(slope, 0.0), intercept=intercept, protocol=protocol, samples=n, data=data)
