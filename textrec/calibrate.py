"""Fit a checkpoint's post-hoc parts and store them in the checkpoint (`textrec calibrate`): the confidence
mapping (on a validation split) and, optionally, the orientation probe (on training crops).

The reads are the plain greedy ones that `eval` scores (upright, no lexicon); which reads count as right is
the protocol's (by default "36"). The mapping itself is in `textrec.confidence`, the probe in
`textrec.orientation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .checkpoint import load_checkpoint, save_checkpoint
from .confidence import Calibration, fit_calibration
from .data.lmdb_store import LmdbDataset
from .errors import DataError
from .evaluate import evaluate_dataset
from .metrics import expected_calibration_error
from .orientation import OrientationProbe, fit_orientation_probe
from .predict import Recognizer


@dataclass(frozen=True)
class CalibrationReport:
    calibration: Calibration
    samples: int  # reads the fit used (unreadable records and labels empty under the protocol left out)
    accuracy: float  # % of those reads right
    ece_before: float  # expected calibration error of the raw path probability on the same reads
    ece_after: float  # ... and of the calibrated confidence (in-sample: `eval` reports it on other data)
    orientation: OrientationProbe | None = None  # the probe, when fitted (its `accuracy` is in-sample)


def collect_reads(
    recognizer: Recognizer,
    datasets: Sequence[LmdbDataset],
    protocol: str = "36",
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[bool]]:
    """(ln path probability, right?) for every read that `eval` scores with a finite output: the reads of
    `evaluate_dataset`, with the recognizer's own calibration set aside (its confidence is then the raw path
    probability)."""
    total = sum(len(d) for d in datasets)
    calibration, recognizer.calibration = recognizer.calibration, None
    reads: list[tuple[float, bool]] = []
    try:
        offset = 0
        for dataset in datasets:
            progress = (lambda done, _, base=offset: on_progress(base + done, total)) if on_progress else None
            reads += evaluate_dataset(recognizer, dataset, str(dataset.path), protocol, batch_size, on_progress=progress).reads
            offset += len(dataset)
    finally:
        recognizer.calibration = calibration
    return [math.log(p) if p > 0 else -math.inf for p, _ in reads], [right for _, right in reads]


def calibrate_checkpoint(
    checkpoint: str | Path,
    data: Sequence[str | Path],
    output: str | Path,
    protocol: str = "36",
    device: str = "auto",
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    orientation_data: Sequence[str | Path] = (),
) -> CalibrationReport:
    """Fit the calibration of `checkpoint` on the LMDBs `data` (and, with `orientation_data`, its orientation
    probe on the crops of those LMDBs) and write the checkpoint with them to `output` (atomically; the weights
    are unchanged; a probe already in the checkpoint is kept when no `orientation_data` is given)."""
    loaded = load_checkpoint(checkpoint)
    datasets = [LmdbDataset(path) for path in data]
    crop_sets = [LmdbDataset(path) for path in orientation_data]  # every path checked before the long work
    recognizer = Recognizer.from_loaded(loaded, device=device, orientation=False)
    scores, right = collect_reads(recognizer, datasets, protocol, batch_size, on_progress)
    calibration = fit_calibration(scores, right, protocol, data=", ".join(str(p) for p in data))
    raw = [math.exp(s) for s in scores]
    after = [calibration.apply(s) for s in scores]
    probe = loaded.orientation
    if crop_sets:
        crops = [image for dataset in crop_sets for image in readable_images(dataset)]
        probe = fit_orientation_probe(
            lambda images: recognizer.features(images, batch_size), crops, ", ".join(str(p) for p in orientation_data)
        )
    save_checkpoint(output, replace(loaded, calibration=calibration, orientation=probe))
    return CalibrationReport(
        calibration=calibration,
        samples=len(scores),
        accuracy=100.0 * sum(right) / len(right),
        ece_before=expected_calibration_error(raw, right),
        ece_after=expected_calibration_error(after, right),
        orientation=probe if crop_sets else None,
    )


def readable_images(dataset: LmdbDataset) -> list:
    """The images of an LMDB that decode (unreadable records are left out: `eval` is where they are listed)."""
    images = []
    for index in range(len(dataset)):
        try:
            images.append(dataset.read_image(index)[0])
        except DataError:
            continue
    return images
