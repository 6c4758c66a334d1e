"""The Recognizer: images in, text and confidence out."""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from PIL import Image

from .charset import Charset
from .checkpoint import load_checkpoint, shipped_checkpoint
from .confidence import Calibration
from .data.images import Preprocess, as_grayscale, input_width, open_image, to_tensor
from .decode import Decoded, greedy_decode
from .errors import ConfigError, DataError
from .model import CRNN

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device an option names; ConfigError when it is unknown or not on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r}: unknown; use cpu, cuda, cuda:N or auto") from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use cpu or auto")
        if target.index is not None and target.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), numbered from 0")
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available on this machine; use cpu or auto")
    elif target.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: not supported; use cpu, cuda, cuda:N or auto")
    return target


# Rotation, in degrees counter-clockwise, to the Pillow transpose that turns a crop by it (lossless).
_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class Orientation:
    """How `Recognizer.read` finds the way up of a crop (docs/orientation.md has the measurements behind it).

    Every crop is first read as it is. A tall crop (height >= `tall_ratio` x width: a horizontal word turned by
    90 degrees, as on signs and book spines) is also read turned by 90, 270 and 180 degrees; a wide crop whose
    upright read is not sure (path probability below `settled`) is also read turned by 180 degrees. The read
    kept is the likeliest, except that a turned read must beat the upright one's log path probability by
    `margin` (most crops are upright, and some words read almost as well upside down).
    """

    tall_ratio: float = 1.5
    settled: float = 0.9
    margin: float = 1.0

    def turns(self, size: tuple[int, int], upright: Decoded) -> tuple[int, ...]:
        """The turns (degrees counter-clockwise) to try besides the upright read of a crop of `size` (w, h)."""
        width, height = size
        if height >= self.tall_ratio * width:
            return (90, 270, 180)
        if not upright.log_score >= math.log(self.settled):  # also when it is NaN
            return (180,)
        return ()

    def better(self, kept: tuple[int, Decoded], other: tuple[int, Decoded]) -> tuple[int, Decoded]:
        """The likelier of two (turn, read) pairs, the upright read favoured by `margin`."""
        bar = kept[1].log_score + (self.margin if kept[0] == 0 else 0.0)
        return other if other[1].log_score > bar else kept


@dataclass(frozen=True)
class Reading:
    """What `Recognizer.read` returns for one image."""

    text: str
    # The estimated probability that `text` is right (case and punctuation aside, as the accuracy figures count),
    # when the checkpoint holds a calibration (`textrec calibrate`); otherwise the raw path probability.
    confidence: float
    # How far the crop was turned, counter-clockwise, to read it: 0, 90, 180 or 270.
    rotation: int = 0
    # The model's raw score: the probability of its greedy CTC path (the product of per-frame maxima).
    path_probability: float = math.nan


class Recognizer:
    """A model with its charset and preprocessing, ready to read word images.

        from textrec import Recognizer
        rec = Recognizer.load()                 # the shipped model; Recognizer.load("run/best.safetensors")
        print(rec.read("word.png").text)        # a path, Pillow image, numpy array, or a list of them

    `read` finds the way up of each crop (see `Orientation`; `orientation=None` turns it off) and reports a
    calibrated confidence when the checkpoint holds a calibration. `recognize` is the plain model: upright
    grayscale images in, greedy CTC reads with raw path probabilities out (what the benchmarks score).
    """

    def __init__(
        self,
        model: CRNN,
        charset: Charset,
        preprocess: Preprocess,
        device: str | torch.device = "cpu",
        calibration: Calibration | None = None,
        orientation: Orientation | None = Orientation(),
    ):
        self.model = model
        self.charset = charset
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.calibration = calibration
        self.orientation = orientation

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", orientation: bool | Orientation = True) -> "Recognizer":
        """A recognizer for a checkpoint file. `orientation`: True (the default `Orientation`), False, or your own."""
        checkpoint = load_checkpoint(path)
        target = resolve_device(device)
        model = checkpoint.build_model().to(target).eval()
        policy = Orientation() if orientation is True else (orientation or None)
        return cls(model, checkpoint.charset, checkpoint.preprocess, target, checkpoint.calibration, policy)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", orientation: bool | Orientation = True) -> "Recognizer":
        """The shipped model (or the checkpoint `path`); see `shipped_checkpoint` for where it is looked for."""
        return cls.from_checkpoint(path if path is not None else shipped_checkpoint(), device, orientation)

    # --- the plain model ----------------------------------------------------------------------------

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        width = None
        if self.preprocess.dynamic_width and self.preprocess.keep_ratio and images:
            width = max(input_width(image, self.preprocess) for image in images)
        return torch.stack([to_tensor(image, self.preprocess, width) for image in images])

    @torch.inference_mode()
    def recognize_tensor(self, batch: torch.Tensor) -> list[Decoded]:
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(batch.to(self.device, non_blocking=True))
        finally:
            self.model.train(was_training)
        return greedy_decode(logits.float().log_softmax(2).cpu(), self.charset)

    def recognize(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[Decoded]:
        """Text for grayscale Pillow images (see `open_image`), in batches, read as they are."""
        results: list[Decoded] = []
        for start in range(0, len(images), batch_size):
            results.extend(self.recognize_tensor(self.prepare(images[start : start + batch_size])))
        return results

    def confidence(self, decoded: Decoded) -> float:
        """The calibrated confidence of a read (its raw path probability when there is no calibration)."""
        if self.calibration is None:
            return decoded.confidence
        return self.calibration.apply(decoded.log_score)

    # --- reading what users give it -------------------------------------------------------------------

    def read(self, images, batch_size: int = 32):
        """Read one image or a list of them: paths, image bytes, Pillow images (any mode) or numpy arrays
        (H x W, H x W x 3 RGB or H x W x 4 RGBA). Returns a `Reading` for one image, a list for a list.

        DataError names an image that cannot be used (for a list: its path, or `images[i]`).
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        gray = []
        for index, item in enumerate(items):
            name = None if isinstance(item, (str, os.PathLike)) else ("image" if single else f"images[{index}]")
            gray.append(as_grayscale(item, name))
        readings = self.read_grayscale(gray, batch_size)
        return readings[0] if single else readings

    def read_grayscale(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[Reading]:
        """`read` for grayscale Pillow images: orientation, then calibrated confidence."""
        first = self.recognize(images, batch_size)
        best = [(0, d) for d in first]
        if self.orientation is not None:
            tries = [(i, turn) for i, (image, d) in enumerate(zip(images, first)) for turn in self.orientation.turns(image.size, d)]
            turned = self.recognize([images[i].transpose(_TURNS[turn]) for i, turn in tries], batch_size)
            for (index, turn), decoded in zip(tries, turned):
                best[index] = self.orientation.better(best[index], (turn, decoded))
        return [Reading(d.text, self.confidence(d), turn, d.confidence) for turn, d in best]

    def recognize_files(
        self, paths: Iterable[str | Path], batch_size: int = 32
    ) -> Iterator[tuple[Path, Reading | DataError]]:
        """(path, reading) per file, in order; an unreadable file yields its DataError instead of stopping."""
        pending: list[tuple[Path, Image.Image]] = []

        def flush():
            readings = self.read_grayscale([image for _, image in pending], batch_size)
            # A non-finite output has no reading (its confidence would be NaN, which is not even valid JSON).
            out = [(p, r if math.isfinite(r.path_probability) else DataError(f"{p}: the model's output is not finite "
                    "(NaN or infinity); no reading")) for (p, _), r in zip(pending, readings)]
            pending.clear()
            return out

        for path in paths:
            path = Path(path)
            try:
                pending.append((path, open_image(path)))
            except DataError as exc:
                yield from flush()
                yield path, exc
                continue
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()


def collect_image_paths(inputs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (their image files and those of every sub-folder, sorted) and glob patterns.

    Returns the paths, and one line for each input that gave none (naming it and why: nothing by that name, a
    folder without image files, a pattern that matched nothing) or for each sub-folder that could not be listed.
    """
    paths: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found, others = _images_under(Path(item), problems)
            if not found:
                kinds = ", ".join(sorted(IMAGE_SUFFIXES))
                other = f"; it holds {others} file(s) of other types" if others else ""
                problems.append(f"{item}: folder without images (none in it or its sub-folders{other}; images are {kinds})")
        elif os.path.lexists(item):
            found = [Path(item)]
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if not os.path.isdir(p))
            if not found:
                problems.append(f"{item}: no such file, folder or matching image")
        paths.extend(found)
    return paths, problems


def _images_under(folder: Path, problems: list[str]) -> tuple[list[Path], int]:
    """The image files in a folder and its sub-folders (links to folders are not followed), sorted, and how many
    other files there are. Not only regular files: a FIFO, socket, device, link loop or dangling link with an image
    name is kept, so that open_image reports it (one line each) instead of it vanishing."""
    found: list[Path] = []
    others = 0

    def unreadable(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot list this folder ({exc.strerror or exc}); its images are skipped")

    for root, _, files in os.walk(folder, onerror=unreadable):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root, name))
            else:
                others += 1
    return sorted(found), others
