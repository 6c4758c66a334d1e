"""The knobs of the word-image pipeline: one table of effects for synthetic and real samples.

Every effect fires on a sample with its own probability, drawn per sample, for each kind of
sample: `synth` (text rasterised by `glyphs`, everything else drawn by `scene`) and `real`
(a photographed crop from an LMDB). `None`: the effect does not apply to that kind (a real
crop already has its own background and text colours). docs/synth.md repeats the table.
"""

from __future__ import annotations

import hashlib
import math

import torch

# (effect, probability for synth, probability for real (None: not applied), what it does)
EFFECTS: tuple[tuple[str, float, float | None, str], ...] = (
    # text style (synth)
    ("dark_text", 0.62, None, "dark text on a lighter background (otherwise light on dark)"),
    ("low_contrast", 0.12, None, "text/background difference 30-60 grey levels instead of 60-230"),
    ("faux_bold", 0.10, None, "glyphs thickened by 1-2 px at the working scale (max-pool dilation)"),
    ("outline", 0.10, None, "a 1-3 px outline in a contrasting shade (sign lettering)"),
    ("shadow", 0.12, None, "a soft drop shadow, offset 1-4 px"),
    ("text_shading", 0.15, None, "a shade gradient across the glyphs (lit or embossed letters)"),
    ("width_scale", 0.30, None, "horizontal stretch x0.7-1.4 (condensed / extended lettering)"),
    # geometry
    ("rotation", 0.45, 0.30, "synth: rotation, normal, sd 3 degrees, at most 8; real: up to 3 degrees with shear and scale"),
    ("strong_rotation", 0.04, None, "rotation of 8-20 degrees (replaces the one above)"),
    ("slant", 0.20, None, "horizontal shear -0.3..0.3 (fake italics, camera skew)"),
    ("perspective", 0.30, 0.20, "corners moved by up to 20% of the text height (real: 12% of the crop)"),
    ("curve", 0.08, None, "baseline bent along an arc or a wave, amplitude 8-25% of the em"),
    # crop (synth)
    ("tight_crop", 0.45, None, "margins of 0-8% of the text height (else 5-35% vertical, 5-60% horizontal)"),
    ("cut_edge", 0.05, None, "one side cut into the ink: top/bottom up to 8% of the text height, left/right up to 3%"),
    # background (synth)
    ("gradient", 0.35, None, "linear shade gradient in a random direction"),
    ("texture", 0.35, None, "smooth blotches: upsampled low-resolution noise (walls, paper, foliage)"),
    ("grain", 0.30, None, "per-pixel texture, sd 3-12 (at most contrast/5), full or half resolution"),
    ("pattern", 0.08, None, "regular stripes or a grid (wood, tiles, bricks, blinds)"),
    ("edges", 0.15, None, "one or two border bands above/below the text or frame edges in the side margins"),
    ("clutter", 0.25, None, "fragments of other words of the batch: the line above/below, the word before/after"),
    ("ghost_text", 0.08, None, "a large, blurred, faint word of the batch behind the text"),
    # camera (both)
    ("illumination", 0.25, None, "uneven light: a shade ramp (up to 50% darker) or a highlight towards white"),
    ("blur", 0.30, 0.20, "Gaussian blur: synth 1.5-5% of the em; real 0.1-1.0 px at the model's scale"),
    ("motion_blur", 0.07, None, "linear motion blur over 6-18% of the em, in a random direction"),
    ("low_resolution", 0.30, 0.15, "synth: downscaled until the em is 12-24 px; real: to 40-80%; and scaled back"),
    ("levels", 0.20, 0.50, "synth: gamma 0.6-1.6, contrast gain 0.6-1.0; real: brightness and contrast +-40%"),
    ("invert", None, 0.05, "light text on dark becomes dark on light and back (real)"),
    ("noise", 0.45, 0.20, "Gaussian sensor noise: synth sd 2-14 (at most contrast/5); real sd 2-10"),
    ("jpeg", 0.30, 0.15, "8x8-block DCT quantisation as JPEG does: synth quality 15-75, real 20-80"),
)
P_SYNTH: dict[str, float] = {name: p for name, p, _, _ in EFFECTS if p is not None}
P_REAL: dict[str, float] = {name: p for name, _, p, _ in EFFECTS if p is not None}

# Effects that lower contrast stop where text and background differ by this many grey levels.
MIN_CONTRAST = 28.0


def sample_seed(seed: int, index: int, stream: str = "") -> int:
    """A 63-bit seed for (seed, index[, stream]): the same in every process and Python version."""
    digest = hashlib.blake2b(f"textrec-synth/{int(seed)}/{int(index)}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class Draws:
    """Per-sample random draws for a batch, from one generator on the batch's device."""

    def __init__(self, generator: torch.Generator, is_real: torch.Tensor, augment_real: bool = True):
        self.generator = generator
        self.is_real = is_real
        self.augment_real = augment_real  # False: no effect fires on a real sample
        self.size = is_real.shape[0]
        self.device = is_real.device

    def subset(self, index: torch.Tensor) -> "Draws":
        """Draws for some samples of the batch (their later draws come from the same generator)."""
        return Draws(self.generator, self.is_real.index_select(0, index), self.augment_real)

    def uniform(self, low, high) -> torch.Tensor:
        u = torch.rand(self.size, generator=self.generator, device=self.device)
        return low + (high - low) * u

    def normal(self, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        return mean + std * torch.randn(self.size, generator=self.generator, device=self.device)

    def randint(self, low: int, high: int) -> torch.Tensor:
        """Integers in [low, high] (both ends included), as float."""
        return torch.floor(self.uniform(low, high + 1 - 1e-6))

    def sign(self) -> torch.Tensor:
        return torch.where(self.uniform(0, 1) < 0.5, -1.0, 1.0)

    def chance(self, p: float) -> torch.Tensor:
        return self.uniform(0, 1) < p

    def fires(self, effect: str) -> torch.Tensor:
        """Whether the effect fires, per sample, with the probability of the sample's kind."""
        p_synth, p_real = P_SYNTH.get(effect), P_REAL.get(effect)
        u = self.uniform(0, 1)
        synth = u < p_synth if p_synth is not None else torch.zeros_like(self.is_real)
        real = u < p_real if p_real is not None and self.augment_real else torch.zeros_like(self.is_real)
        return torch.where(self.is_real, real, synth)


def degrees(value: torch.Tensor) -> torch.Tensor:
    return value * (math.pi / 180.0)
