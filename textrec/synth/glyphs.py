"""The CPU stage of the synthetic pipeline: what must be done per string.

`GlyphSource.sample(index)` chooses a text, a font that draws every character of it, a font
size and a letter spacing, and rasterises the text once into a coverage mask (uint8, 255 =
ink), with the ink box and the em size in mask pixels. Everything else (geometry, colours,
background, clutter, camera) happens batched on the training device (`textrec.synth.scene`).

A sample is a pure function of (seed, index) and the font list: any worker renders it alike.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..charset import Charset
from .fonts import FontFace, discover_fonts, face_missing, font_pool, load_font
from .text import TextSampler
from .params import sample_seed

# Font sizes (pixels per em) of the masks. The device stage scales them to its canvas, so the
# range only needs to rasterise cleanly: large enough for thin strokes, small enough to be cheap.
EM_SIZES = (30, 44)
# Share of samples whose glyphs are placed one by one with extra tracking (-0.04..0.35 em).
LETTER_SPACING = 0.25


@dataclass
class GlyphSample:
    """One rasterised text: the mask (H, W) uint8 cut to the ink plus 2 px, the ink box (x0, y0, x1, y1), the em in pixels."""

    mask: np.ndarray
    ink: tuple[int, int, int, int]
    em: float
    label: str
    font: str


class GlyphSource:
    """Endless (index -> GlyphSample) stream of one seed; see the module docstring."""

    def __init__(
        self,
        seed: int,
        charset: Charset,
        max_frames: int = 26,
        fonts: list[str] | None = None,
        words: str | None = None,
        system_fonts: bool = True,
        faces: list[FontFace] | None = None,
    ):
        self.seed = int(seed)
        self.charset = charset
        self.max_frames = max_frames
        self.words = words
        if faces is None:
            report = discover_fonts(fonts, system=system_fonts)
            faces, self.rejected_fonts = report.faces, report.rejected
        else:
            self.rejected_fonts = []
        self.faces = font_pool(faces)  # Pillow's built-in font is always the last one
        self._text: TextSampler | None = None
        self.text  # load the word list now, so that its errors surface at construction

    def __getstate__(self):  # the word list is rebuilt in each process rather than pickled
        state = dict(self.__dict__)
        state["_text"] = None
        return state

    @property
    def text(self) -> TextSampler:
        if self._text is None:
            self._text = TextSampler(self.charset, self.max_frames, self.words)
        return self._text

    @property
    def font_count(self) -> int:
        """Fonts found on the system and in the given folders (Pillow's built-in font not counted)."""
        return len(self.faces) - 1

    def pick_font(self, rng: random.Random, text: str) -> FontFace:
        """A font that draws every character of `text` (the search starts at a random font)."""
        start = rng.randrange(len(self.faces))
        alphabet = self.text.alphabet
        wanted = set(text) - {" "}
        for step in range(len(self.faces)):
            face = self.faces[(start + step) % len(self.faces)]
            if not (face_missing(face, alphabet) & wanted):
                return face
        raise LookupError(f"no font draws every character of {text!r}")

    def sample(self, index: int) -> GlyphSample:
        rng = random.Random(sample_seed(self.seed, index, "glyphs"))
        for _ in range(10):
            text = self.text.sample(rng)
            try:
                face = self.pick_font(rng, text)
                break
            except LookupError:
                continue  # a text no font can draw (a rare character set): draw another
        else:
            raise LookupError("no font draws the texts of this charset; add fonts with --synth-fonts")
        size = rng.randint(*EM_SIZES)
        font = load_font(face, size)
        spacing = rng.uniform(-0.04, 0.35) * size if rng.random() < LETTER_SPACING and len(text) > 1 else 0.0
        mask = rasterise(text, font, spacing)
        height, width = mask.shape
        return GlyphSample(mask, (2, 2, width - 2, height - 2), float(size), text, face.name)


def rasterise(text: str, font, spacing: float = 0.0) -> np.ndarray:
    """The text's coverage mask, cut to its ink with 2 px of margin: one FreeType render with the
    font's own kerning, or glyph by glyph when `spacing` adds tracking."""
    pad = 2
    if not spacing:
        core, _ = font.getmask2(text, mode="L")
        ink = np.asarray(Image.Image()._new(core))
        return np.pad(ink, pad) if ink.size else np.zeros((2 * pad + 1, 2 * pad + 1), np.uint8)
    ascent, descent = font.getmetrics()
    width = int(math.ceil(font.getlength(text) + max(0.0, spacing) * (len(text) - 1))) + 2 * ascent
    image = Image.new("L", (max(1, width), 2 * (ascent + descent)), 0)
    draw = ImageDraw.Draw(image)
    x = ascent / 2
    for i, char in enumerate(text):
        draw.text((x + font.getlength(text[:i]) + i * spacing, ascent / 2), char, font=font, fill=255)
    box = image.getbbox()
    if box is None:
        return np.zeros((2 * pad + 1, 2 * pad + 1), np.uint8)
    return np.pad(np.asarray(image.crop(box)), pad)
