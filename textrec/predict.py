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
from .checkpoint import Checkpoint, load_checkpoint, shipped_checkpoint
from .confidence import Calibration
from .data.images import Preprocess, as_grayscale, input_width, open_image, to_tensor
from .decode import Decoded
from .decoder import Decoder
from .errors import ConfigError, DataError
from .model import CRNN
from .orientation import OrientationProbe, forward_with_features

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}


# Batches of at most this many images are read with one intra-op thread on a CPU unless told otherwise:
# at batch 1 each op is too small to share out, so threads mostly wait on each other, and on a busy
# machine far worse (IC13 crops, 2-core CPU: 87 vs 93 images/s for 1 vs 2 threads with one core taken,
# 80 vs 27 and 56 vs 8 under heavier load; docs/deploy.md, "Speed").
SMALL_BATCH = 4


def cpu_threads(images: int, batch_size: int, requested: int = 0) -> int | None:
    """Intra-op threads for reading `images` images in batches of `batch_size` on a CPU: `requested`
    when given (> 0); else 1 when the batches are small (SMALL_BATCH); None: leave torch's default."""
    if requested > 0:
        return requested
    return 1 if min(images, batch_size) <= SMALL_BATCH else None


def is_onnx_graph(path: str | Path) -> bool:
    """Whether `Recognizer.from_checkpoint` reads `path` as an ONNX graph (run by onnxruntime, on the CPU)."""
    return Path(path).suffix.lower() == ".onnx"


def reads_on_cpu(checkpoint: str | Path, device: str = "auto") -> bool:
    """Whether `Recognizer.from_checkpoint(checkpoint, device)` runs its model on the CPU."""
    return is_onnx_graph(checkpoint) or resolve_device(device).type == "cpu"


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

    Two signals: the orientation probe's logit that a crop is upside down (textrec/orientation.py; computed
    from the features of the read itself, so free; 0 when the checkpoint has no probe or the model runs in
    onnxruntime) and the recognizer's log path probability of each way up. A crop is turned by 180 degrees when

        weight * logit + ln p(turned) - ln p(as given) > bias,

    and read turned only when that can happen (ln p(turned) <= 0, so only when weight * logit - ln p(as given)
    > bias): a confident upright read costs nothing more. A tall crop (height >= `tall_ratio` x width: a
    horizontal word turned by 90 degrees, as on signs and book spines, or an upright single character) is also
    read turned by 90 degrees, one way or the other decided the same way but without favouring either
    (`tall_bias`); the turned read is kept when its log path probability beats the upright one's by more than
    `margin`. The defaults were chosen on the validation split (benchmarks/orientation.py).
    """

    weight: float = 1.0
    bias: float = 2.5
    tall_ratio: float = 1.5
    margin: float = 0.0
    tall_bias: float = 0.0

    def is_tall(self, size: tuple[int, int]) -> bool:
        width, height = size
        return height >= self.tall_ratio * width

    def may_flip(self, read: Decoded, logit: float, turn: int = 0) -> bool:
        """Whether reading the crop turned by a further 180 degrees could change the decision (see the class)."""
        return self.weight * logit - read.log_score > self._bias(turn) or math.isnan(read.log_score)

    def flips(self, read: Decoded, turned: Decoded, logit: float, turn: int = 0) -> bool:
        """Whether the read turned by a further 180 degrees wins over `read` (the crop turned by `turn`)."""
        if math.isnan(read.log_score):
            return not math.isnan(turned.log_score)
        return self.weight * logit + turned.log_score - read.log_score > self._bias(turn)

    def _bias(self, turn: int) -> float:
        # As given, most crops are upright: turning one over needs evidence (`bias`). A tall crop turned by
        # 90 degrees is as likely to need 270: no side is favoured (`tall_bias`).
        return self.bias if turn == 0 else self.tall_bias

    def choose(self, given: dict[int, tuple[Decoded, float]], flipped: dict[int, Decoded]) -> tuple[int, Decoded]:
        """The (turn, read) to keep of one crop. `given`: turn (0, and 90 for a tall crop) -> (read, probe logit);
        `flipped`: turn -> the read of the crop turned by turn + 180 degrees, where `may_flip` asked for it."""
        kept = []
        for turn, (read, logit) in sorted(given.items()):
            other = flipped.get(turn)
            flip = other is not None and self.flips(read, other, logit, turn)
            kept.append(((turn + 180) % 360, other) if flip else (turn, read))
        best = kept[0]
        if len(kept) > 1 and kept[1][1].log_score > best[1].log_score + self.margin:
            best = kept[1]
        return best


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

    `read` finds the way up of each crop (see `Orientation`; `orientation=False` turns it off) and reports a
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
        orientation: Orientation | None = None,
        decoder: Decoder | None = None,
        orientation_probe: OrientationProbe | None = None,
    ):
        self.model = model
        self.charset = charset
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.calibration = calibration
        self.orientation = orientation
        # The checkpoint's orientation probe (textrec/orientation.py), used by `read` with `orientation`.
        self.orientation_probe = orientation_probe
        # How outputs become text (greedy by default; beam search, lexicons: textrec.decoder.make_decoder).
        self.decoder = decoder if decoder is not None else Decoder()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", orientation: bool | Orientation = True) -> "Recognizer":
        """A recognizer for a checkpoint file, or for an ONNX graph written by `textrec export` (`.onnx`: run
        with onnxruntime on the CPU, its charset, preprocessing and calibration read from the graph's metadata).
        `orientation`: True (the default `Orientation`), False (read every crop as it is), or your own."""
        if not is_onnx_graph(path):
            return cls.from_loaded(load_checkpoint(path), device, orientation)
        from .export import onnx_recognizer

        recognizer = onnx_recognizer(path)
        recognizer.orientation = Orientation() if orientation is True else (orientation or None)
        return recognizer

    @classmethod
    def from_loaded(cls, checkpoint: Checkpoint, device: str = "auto", orientation: bool | Orientation = True) -> "Recognizer":
        """`from_checkpoint` for a checkpoint already loaded (`load_checkpoint`)."""
        target = resolve_device(device)
        model = checkpoint.build_model().to(target).eval()
        return cls(
            model, checkpoint.charset, checkpoint.preprocess, target, checkpoint.calibration,
            Orientation() if orientation is True else (orientation or None), orientation_probe=checkpoint.orientation,
        )

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
    def recognize_tensor(self, batch: torch.Tensor, lexicons=None) -> list[Decoded]:
        """Reads of a prepared batch by `self.decoder`; `lexicons`: one per image for a per-sample decoder."""
        return self._run(batch, lexicons)[0]

    def _run(self, batch: torch.Tensor, lexicons=None, features: bool = False) -> tuple[list[Decoded], torch.Tensor | None]:
        """Reads of a prepared batch, and with `features` the pooled features the orientation probe takes
        (None for a model without a backbone, such as an onnxruntime graph)."""
        was_training = self.model.training
        self.model.eval()
        pooled = None
        try:
            with torch.inference_mode():
                batch = batch.to(self.device, non_blocking=True)
                if features and isinstance(self.model, CRNN):
                    logits, pooled = forward_with_features(self.model, batch)
                else:
                    logits = self.model(batch)
        finally:
            self.model.train(was_training)
        return self.decoder.decode(logits.float().log_softmax(2).cpu(), self.charset, lexicons), pooled

    def recognize(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[Decoded]:
        """Text for grayscale Pillow images (see `open_image`), in batches, read as they are."""
        results: list[Decoded] = []
        for start in range(0, len(images), batch_size):
            results.extend(self.recognize_tensor(self.prepare(images[start : start + batch_size])))
        return results

    def recognize_with_logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[tuple[Decoded, float]]:
        """`recognize`, with the orientation probe's logit that each image is upside down (0 without a probe)."""
        out: list[tuple[Decoded, float]] = []
        for start in range(0, len(images), batch_size):
            probe = self.orientation_probe
            decoded, pooled = self._run(self.prepare(images[start : start + batch_size]), features=probe is not None)
            logits = probe.logits(pooled) if probe is not None and pooled is not None else [0.0] * len(decoded)
            out.extend(zip(decoded, logits))
        return out

    def features(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """The pooled features (N, F) the orientation probe takes (see `forward_with_features`)."""
        if not isinstance(self.model, CRNN):
            raise ConfigError("the orientation probe needs the torch model (not an onnxruntime graph)")
        parts = [self._run(self.prepare(images[s : s + batch_size]), features=True)[1].float().cpu()
                 for s in range(0, len(images), batch_size)]
        return torch.cat(parts)

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
        """`read` for grayscale Pillow images: orientation (see `Orientation`), then calibrated confidence."""
        policy = self.orientation
        if policy is None:
            return [Reading(d.text, self.confidence(d), 0, d.confidence) for d in self.recognize(images, batch_size)]
        # Pass 1: every crop as given, and tall ones turned by 90 degrees too.
        tall = [i for i, image in enumerate(images) if policy.is_tall(image.size)]
        first = self.recognize_with_logits([*images, *(images[i].transpose(_TURNS[90]) for i in tall)], batch_size)
        given: list[dict[int, tuple[Decoded, float]]] = [{0: first[i]} for i in range(len(images))]
        for k, i in enumerate(tall):
            given[i][90] = first[len(images) + k]
        # Pass 2: turned by 180 degrees from those, where that could win.
        second = [(i, t) for i, pair in enumerate(given) for t, (read, logit) in pair.items() if policy.may_flip(read, logit, t)]
        shown = [images[i].transpose(_TURNS[(turn + 180) % 360]) for i, turn in second]
        flipped: list[dict[int, Decoded]] = [{} for _ in images]
        for (i, turn), read in zip(second, self.recognize(shown, batch_size)):
            flipped[i][turn] = read
        best = [policy.choose(g, f) for g, f in zip(given, flipped)]
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
