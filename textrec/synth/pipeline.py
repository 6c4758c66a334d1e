"""Both sides of the word-image pipeline: loader workers make raw samples, the device finishes them.

Loader side (CPU workers, per sample): `SynthSource.sample` rasterises a text (`glyphs`);
`raw_real` resizes a real crop to the working canvas height. `collate_raw` pads a batch of
either kind into one uint8 tensor (`scene.RawBatch`).
Device side (per batch): `Finisher` draws the batch's random parameters from (seed, step) and
runs `scene.Scene`, giving the model's input, or finished images for LMDBs and previews.
Training, `textrec synth` and `textrec samples` all go through here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..charset import Charset
from .glyphs import GlyphSource
from .params import sample_seed
from .scene import Canvas, RawBatch, Scene

# Working canvas for training: the model's input scale times this (warps and blurs act on more pixels
# than the model sees). `textrec synth` writes at the model's scale (1) unless asked for more.
CANVAS_SCALE = 2
# Masks wider than this many canvas widths are scaled down on the CPU (the canvas would squeeze them anyway).
MAX_MASK_WIDTHS = 1.5


@dataclass
class RawSample:
    pixels: np.ndarray  # (h, w) uint8
    ink: tuple[float, float, float, float]
    em: float
    label: str
    is_real: bool
    group: int = 0  # the training source group it came from (width buckets keep each batch's share of every group)


def fit_width(pixels: np.ndarray, ink, em: float, max_width: int):
    """Scale a mask down (both axes) when it is wider than `max_width`; the ink box and em follow."""
    height, width = pixels.shape
    if width <= max_width:
        return pixels, ink, em
    factor = max_width / width
    size = (max_width, max(1, round(height * factor)))
    scaled = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
    return scaled, tuple(v * factor for v in ink), em * factor


def raw_real(
    image: Image.Image, label: str, canvas_height: int, canvas_width: int, keep_ratio: bool = True, scale: int = CANVAS_SCALE
) -> RawSample:
    """A real crop on the working canvas: resized to the model's height exactly as `Preprocess` does
    at inference (keep-ratio, bicubic, squeezed if wider), then each pixel repeated `scale` times,
    so that with no effect the device stage gives the model what inference gives it."""
    height, max_width = canvas_height // scale, canvas_width // scale
    width = min(max_width, max(1, math.ceil(height * image.width / image.height))) if keep_ratio else max_width
    small = np.asarray(image.convert("L").resize((width, height), Image.BICUBIC))
    pixels = small.repeat(scale, 0).repeat(scale, 1)
    w, h = float(pixels.shape[1]), float(pixels.shape[0])
    return RawSample(pixels, (0.0, 0.0, w, h), h * 0.7, label, True)


class SynthSource:
    """The endless training source `synth`: sample(index) rasterises sample `index` of the seed's stream.

    `fonts` are extra font files or folders (the system's fonts are searched too, and Pillow's
    built-in font is always there); `words` replaces the built-in dictionary.
    """

    name = "synth"
    size = None

    def __init__(self, seed: int, charset: Charset, max_mask_width: int = 480, **glyph_options):
        """`glyph_options`: those of `GlyphSource` (max_frames, fonts, words, system_fonts)."""
        self.glyphs = GlyphSource(seed, charset, **glyph_options)
        self.max_mask_width = max_mask_width

    @property
    def font_count(self) -> int:
        return self.glyphs.font_count

    @property
    def rejected_fonts(self) -> list[tuple[str, str]]:
        """(file, reason) for each font file found or named that is not drawn with."""
        return list(self.glyphs.rejected_fonts)

    def raw(self, index: int) -> RawSample:
        glyph = self.glyphs.sample(index)
        pixels, ink, em = fit_width(glyph.mask, glyph.ink, glyph.em, self.max_mask_width)
        return RawSample(pixels, ink, em, glyph.label, False)


def collate_raw(samples: list[RawSample]) -> tuple[RawBatch, list[str]]:
    """Pad samples (top-left aligned) into one uint8 batch; returns it with the labels."""
    height = max(s.pixels.shape[0] for s in samples)
    width = max(s.pixels.shape[1] for s in samples)
    pixels = torch.zeros(len(samples), height, width, dtype=torch.uint8)
    view = pixels.numpy()
    for number, sample in enumerate(samples):
        h, w = sample.pixels.shape
        view[number, :h, :w] = sample.pixels
    sizes = torch.tensor([s.pixels.shape for s in samples], dtype=torch.float32)
    ink = torch.tensor([s.ink for s in samples], dtype=torch.float32)
    em = torch.tensor([s.em for s in samples], dtype=torch.float32)
    is_real = torch.tensor([s.is_real for s in samples], dtype=torch.bool)
    return RawBatch(pixels, sizes, ink, em, is_real), [s.label for s in samples]


class Finisher:
    """The device side: RawBatch -> images, with the random parameters of (seed, step)."""

    def __init__(
        self,
        model_height: int,
        model_width: int,
        seed: int,
        device: torch.device | str = "cpu",
        mean: float = 0.5,
        std: float = 0.5,
        keep_ratio: bool = True,
        augment_real: bool = True,
        scale: int = CANVAS_SCALE,
    ):
        self.scene = Scene(model_height, model_width, scale, keep_ratio=keep_ratio, augment_real=augment_real)
        self.scale = scale
        self.seed = int(seed)
        self.device = torch.device(device)
        self.mean, self.std = mean, std

    @property
    def canvas_size(self) -> tuple[int, int]:
        return self.scene.height, self.scene.width

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(sample_seed(self.seed, step, "scene"))

    @torch.no_grad()
    def canvas(self, batch: RawBatch, step: int) -> Canvas:
        return self.scene.canvas(batch.to(self.device), self.generator(step))

    @torch.no_grad()
    def model_input(self, batch: RawBatch, step: int) -> torch.Tensor:
        """(B, 1, H, W) normalised model input for the batch of `step`."""
        return self.scene.model_input(self.canvas(batch, step), self.mean, self.std)

    @torch.no_grad()
    def model_input_and_widths(self, batch: RawBatch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`model_input` and each sample's content width in model pixels (for width-bucketed training)."""
        canvas = self.canvas(batch, step)
        return self.scene.model_input(canvas, self.mean, self.std), torch.ceil(canvas.widths / self.scale)

    @torch.no_grad()
    def crops(self, batch: RawBatch, step: int) -> list[torch.Tensor]:
        """Finished images on the working canvas as (1, H, w) uint8 CPU tensors, each cut to its content width."""
        canvas = self.canvas(batch, step)
        pixels = canvas.images.round().clamp(0, 255).to(torch.uint8).cpu()
        return [pixels[i, :, :, : int(w)].contiguous() for i, w in enumerate(canvas.widths.cpu().tolist())]

    def images(self, batch: RawBatch, step: int) -> list[Image.Image]:
        """`crops` as greyscale PIL images (for previews and sample files)."""
        return [Image.fromarray(crop[0].numpy(), "L") for crop in self.crops(batch, step)]
