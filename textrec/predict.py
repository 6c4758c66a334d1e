"""The Recognizer: images in, text and confidence out."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from PIL import Image

from .charset import Charset
from .checkpoint import load_checkpoint
from .data.images import Preprocess, input_width, open_image, to_tensor
from .decode import Decoded, greedy_decode
from .errors import DataError
from .model import CRNN

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Recognizer:
    """A model with its charset and preprocessing, ready to read word images."""

    def __init__(self, model: CRNN, charset: Charset, preprocess: Preprocess, device: str | torch.device = "cpu"):
        self.model = model
        self.charset = charset
        self.preprocess = preprocess
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Recognizer":
        checkpoint = load_checkpoint(path)
        target = resolve_device(device)
        model = checkpoint.build_model().to(target).eval()
        return cls(model, checkpoint.charset, checkpoint.preprocess, target)

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
        """Text for grayscale Pillow images (see `open_image`), in batches."""
        results: list[Decoded] = []
        for start in range(0, len(images), batch_size):
            results.extend(self.recognize_tensor(self.prepare(images[start : start + batch_size])))
        return results

    def recognize_files(
        self, paths: Iterable[str | Path], batch_size: int = 32
    ) -> Iterator[tuple[Path, Decoded | DataError]]:
        """(path, result) per file, in order; an unreadable file yields its DataError instead of stopping."""
        pending: list[tuple[Path, Image.Image]] = []

        def flush():
            decoded = self.recognize([image for _, image in pending], batch_size)
            out = [(p, d) for (p, _), d in zip(pending, decoded)]
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
    """Expand files, folders (their image files, sorted) and glob patterns.

    Returns the paths and the inputs that matched nothing.
    """
    paths: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(p for p in Path(item).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif os.path.exists(item):
            found = [Path(item)]
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        if found:
            paths.extend(found)
        else:
            unmatched.append(item)
    return paths, unmatched
