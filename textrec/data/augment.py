"""Augmentation of training images (grayscale Pillow images in, grayscale Pillow images out).

Built on torchvision transforms v2. Every random draw comes from torch's global generator,
which `TrainingSamples.__getitem__` seeds per sample: a sample is augmented the same way
whatever the number of workers, and again after a resume. Nothing here keeps state.

Geometric transforms fill the uncovered corners with the mean of the image's border, not
black, so the padding looks like background. The table below is the reference (docs/synth.md
repeats it); probabilities and magnitudes are for strength "default" and are scaled by
`STRENGTHS` for the others.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import DataError

# (transform, probability at "default", what it does). Kept in step with docs/synth.md.
AUGMENTATIONS: tuple[tuple[str, float, str], ...] = (
    ("affine", 0.30, "rotation up to 3 deg, horizontal shear up to 12 deg, scale 0.9-1.05, shift up to 3%/6% (x/y)"),
    ("perspective", 0.20, "corners moved by up to 12% of the width/height (v2.functional.perspective)"),
    ("blur", 0.20, "v2.GaussianBlur, kernel 5, sigma 0.1-1.0"),
    ("low_resolution", 0.15, "downscaled to 40-80% of its size and scaled back (bilinear)"),
    ("color_jitter", 0.50, "v2.ColorJitter: brightness and contrast +-40%"),
    ("invert", 0.05, "v2.RandomInvert: light text on dark becomes dark on light and back"),
    ("noise", 0.20, "Gaussian noise, sd 2-10 grey levels (torch.randn)"),
    ("jpeg", 0.15, "JPEG re-encoding at quality 20-80 (Pillow)"),
)

# strength -> (probability factor, magnitude factor); probabilities are capped at 0.9.
STRENGTHS: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0),
    "light": (0.5, 0.6),
    "default": (1.0, 1.0),
    "strong": (1.5, 1.4),
}


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high).item())


def _fires(p: float) -> bool:
    return p > 0 and float(torch.rand(1).item()) < p


def _border_mean(image: Image.Image) -> int:
    array = np.asarray(image)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return int(border.mean())


class Augment:
    """The augmentation pipeline; call it on a Pillow "L" image."""

    def __init__(self, strength: str = "default"):
        if strength not in STRENGTHS:
            raise DataError(f"augmentation strength must be one of {', '.join(STRENGTHS)} (got {strength!r})")
        self.strength = strength
        pf, mf = STRENGTHS[strength]
        self.p = {name: min(0.9, p * pf) for name, p, _ in AUGMENTATIONS}
        self.m = mf
        self.color = v2.ColorJitter(brightness=0.4 * mf, contrast=0.4 * mf) if mf else None
        self.blur = v2.GaussianBlur(kernel_size=5, sigma=(0.1, max(0.11, 1.0 * mf)))
        self.invert = v2.RandomInvert(p=1.0)

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.mode != "L":
            image = image.convert("L")
        p, m = self.p, self.m
        if _fires(p["affine"]):
            width, height = image.size
            image = F.affine(
                image,
                angle=_uniform(-3 * m, 3 * m),
                translate=[round(_uniform(-0.03, 0.03) * m * width), round(_uniform(-0.06, 0.06) * m * height)],
                scale=_uniform(1 - 0.1 * m, 1 + 0.05 * m),
                shear=[_uniform(-12 * m, 12 * m), 0.0],
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=_border_mean(image),
            )
        if _fires(p["perspective"]):
            image = self._perspective(image, 0.12 * m)
        if _fires(p["blur"]):
            image = self.blur(image)
        if _fires(p["low_resolution"]):
            width, height = image.size
            factor = _uniform(1 - 0.6 * m, 1 - 0.2 * m) if m else 1.0
            if factor < 1 and height * factor >= 6:
                small = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.BILINEAR)
                image = small.resize((width, height), Image.BILINEAR)
        if self.color is not None and _fires(p["color_jitter"]):
            image = self.color(image)
        if _fires(p["invert"]):
            image = self.invert(image)
        if _fires(p["noise"]):
            sigma = _uniform(2, 10 * m)
            array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()
            array = (array + torch.randn(array.shape) * sigma).clamp_(0, 255).to(torch.uint8)
            image = Image.frombytes("L", image.size, array.numpy().tobytes())
        if _fires(p["jpeg"]):
            quality = int(torch.randint(max(5, round(80 - 60 * m)), 81, (1,)).item())
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
        return image

    def _perspective(self, image: Image.Image, distortion: float) -> Image.Image:
        width, height = image.size
        dx, dy = distortion * width, distortion * height
        start = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
        end = [
            [round(x + _uniform(-dx, dx)), round(y + _uniform(-dy, dy))] for x, y in start
        ]
        return F.perspective(
            image, start, end, interpolation=v2.InterpolationMode.BILINEAR, fill=_border_mean(image)
        )

    def __repr__(self) -> str:
        return f"Augment(strength={self.strength!r})"


def build_augmentation(strength: str = "default") -> Callable[[Image.Image], Image.Image]:
    """The training augmentation for real (and synthetic) word images; see AUGMENTATIONS."""
    return Augment(strength)
