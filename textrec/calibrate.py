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
from .metrics import expected_calibration_error, normalize_for_eval
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
    """(ln path probability, right?) for every readable sample whose label is not empty under the protocol."""
    total = sum(len(d) for d in datasets)
    scores: list[float] = []
    right: list[bool] = []
    done = 0
    for dataset in datasets:
        images, labels = [], []
        for index in range(len(dataset)):
            done += 1
            try:
                label = normalize_for_eval(dataset.read_label(index), protocol)
                if label:
                    images.append(dataset.read_image(index)[0])
                    labels.append(label)
            except DataError:
                pass  # eval lists unreadable samples; a calibration simply has one read fewer
            if len(images) >= batch_size or (index == len(dataset) - 1 and images):
                for decoded, label in zip(recognizer.recognize(images, batch_size), labels):
                    if math.isnan(decoded.log_score):
                        continue  # a non-finite output has no reading to calibrate
                    scores.append(decoded.log_score)
                    right.append(normalize_for_eval(decoded.text, protocol) == label)
                images, labels = [], []
            if on_progress:
                on_progress(done, total)
    return scores, right


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
    recognizer = Recognizer.from_checkpoint(checkpoint, device=device, orientation=False)
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
