"""The CPU stage of the synthetic pipeline: what must be done per string.

`GlyphSource.sample(index)` chooses a text, a font that draws every character of it, a font
size and a letter spacing, and puts the text's coverage mask (uint8, 255 = ink) together from
glyphs rasterised once per font and size (`GlyphAtlas`), with the ink box and the em size in
mask pixels. Everything else (geometry, colours, background, clutter, camera) happens batched on
the training device (`textrec.synth.scene`).

A sample is a pure function of (seed, index) and the font list: any worker renders it alike.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFont

from ..charset import Charset
from .fonts import FontFace, discover_fonts, face_missing, font_pool, load_font
from .text import TextSampler
from .params import sample_seed

# Font sizes (pixels per em) of the masks. The device stage scales them to its canvas, so they
# only need to rasterise cleanly: large enough for thin strokes, small enough to be cheap. A few
# sizes rather than every one in 30-44: each (font, size) fills its own glyph cache in every worker
# (909 fonts x 4 sizes x 95 glyphs is about 25 s of one core), and hinting differs little between them.
EM_SIZES = (30, 34, 38, 43)
# Share of samples whose glyphs are placed one by one with extra tracking (-0.04..0.35 em).
LETTER_SPACING = 0.25
# Pixels per em at which each face's kerning is measured (1/64 px steps: 1/4096 em).
KERNING_SIZE = 64
# OpenType features turned off when kerning is measured: glyph substitutions (ligatures, contextual
# alternates, composition, localised forms) and mark positioning. Kerning itself ("kern") stays on.
UNSHAPED = ("-liga", "-clig", "-calt", "-ccmp", "-locl", "-mark", "-mkmk")


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
        size = rng.choice(EM_SIZES)
        spacing = rng.uniform(-0.04, 0.35) * size if rng.random() < LETTER_SPACING and len(text) > 1 else 0.0
        mask = rasterise(text, glyph_atlas(face, size), spacing)
        height, width = mask.shape
        return GlyphSample(mask, (2, 2, width - 2, height - 2), float(size), text, face.name)


class Kerning:
    """A face's kerning in ems, per pair of characters, measured once per process at KERNING_SIZE
    px (kerning scales with the em; measuring it per size would repeat the same work for each of EM_SIZES)."""

    def __init__(self, face: FontFace):
        self.font = load_font(face, KERNING_SIZE)
        # Shaped (libraqm) without the features that substitute glyphs or place marks: the atlas draws every
        # character as its own glyph, so a pair's length must not be that of a ligature or an alternate (an
        # "fi" ligature made its kerning the ligature's width); pairs of base letters measure the same, in
        # about 40 % less time (7.5 against 12 µs a pair).
        raqm = getattr(self.font, "layout_engine", None) == ImageFont.Layout.RAQM
        self._features = list(UNSHAPED) if raqm else None
        self._advances: dict[str, float] = {}
        self._pairs: dict[str, float] = {}

    def __call__(self, pair: str) -> float:
        """How much closer (negative) or further apart the face sets the two characters than their advances say, in ems."""
        adjust = self._pairs.get(pair)
        if adjust is None:
            advances = [self._advance(char) for char in pair]
            adjust = (self.font.getlength(pair, features=self._features) - sum(advances)) / KERNING_SIZE
            self._pairs[pair] = adjust
        return adjust

    def _advance(self, char: str) -> float:
        advance = self._advances.get(char)
        if advance is None:
            advance = self._advances[char] = self.font.getlength(char, features=self._features)
        return advance


class GlyphAtlas:
    """One font at one size, rasterised glyph by glyph on demand and kept: a text is then put
    together from cached bitmaps instead of a FreeType render per string (several times cheaper).

    Pen positions follow the font's advances plus its kerning for each pair of characters (as
    Pillow lays the pair out: its GPOS/kern adjustments), rounded to whole pixels as FreeType
    places bitmaps; overlapping glyphs combine by maximum coverage, as Pillow combines them.
    What this gives up is shaping across more than two characters: ligatures (the "ffi" of
    some fonts) are drawn as their separate letters, which is also what the label says.
    """

    def __init__(self, face: FontFace, size: int):
        self.font = load_font(face, size)
        self.size = size
        self.kerning = face_kerning(face)
        self._glyphs: dict[str, tuple[np.ndarray, int, int, float]] = {}
        self._kerning_px: dict[str, float] = {}

    def kerning_px(self, pair: str) -> float:
        """The face's kerning of `pair` at this size, in pixels."""
        adjust = self._kerning_px.get(pair)
        if adjust is None:
            adjust = self._kerning_px[pair] = self.kerning(pair) * self.size
        return adjust

    def glyph(self, char: str) -> tuple[np.ndarray, int, int, float]:
        """(bitmap, left, top, advance): the bitmap's offset from the pen (top from the ascender line) and the advance in pixels."""
        glyph = self._glyphs.get(char)
        if glyph is None:
            core, (left, top) = self.font.getmask2(char, mode="L")
            bitmap = np.asarray(Image.Image()._new(core))
            columns, rows = bitmap.any(0), bitmap.any(1)
            if columns.any():  # cut to the ink: some fonts' bitmaps carry blank columns or rows
                x0, y0 = int(columns.argmax()), int(rows.argmax())
                x1, y1 = len(columns) - int(columns[::-1].argmax()), len(rows) - int(rows[::-1].argmax())
                bitmap, left, top = bitmap[y0:y1, x0:x1], left + x0, top + y0
            else:
                bitmap = bitmap[:0, :0]
            glyph = (bitmap, left, top, self.font.getlength(char))
            self._glyphs[char] = glyph
        return glyph


@functools.lru_cache(maxsize=4096)
def face_kerning(face: FontFace) -> Kerning:
    return Kerning(face)


@functools.lru_cache(maxsize=4096)
def glyph_atlas(face: FontFace, size: int) -> GlyphAtlas:
    """The atlas of `face` at `size` pixels (cached per process; up to a few hundred KB each once filled)."""
    return GlyphAtlas(face, size)


def rasterise(text: str, atlas: GlyphAtlas, spacing: float = 0.0) -> np.ndarray:
    """The text's coverage mask (uint8, 255 = ink), cut to its ink with 2 px of margin; `spacing`
    (pixels) is added between characters on top of the font's advances and kerning."""
    pad = 2
    pen = 0.0
    placed = []
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    # Runs once per sample: the per-glyph work is kept to dictionary lookups and the box's bounds.
    glyphs, kerning_px = atlas._glyphs, atlas._kerning_px
    previous = None
    for char in text:
        if previous is not None:
            pair = previous + char
            adjust = kerning_px.get(pair)
            pen += (atlas.kerning_px(pair) if adjust is None else adjust) + spacing
        previous = char
        glyph = glyphs.get(char) or atlas.glyph(char)
        bitmap, left, top, advance = glyph
        if bitmap.size:
            x = int(math.floor(pen + 0.5)) + left
            placed.append((bitmap, x, top))
            height, width = bitmap.shape
            if x < x0:
                x0 = x
            if top < y0:
                y0 = top
            if x + width > x1:
                x1 = x + width
            if top + height > y1:
                y1 = top + height
        pen += advance
    if not placed:
        return np.zeros((2 * pad + 1, 2 * pad + 1), np.uint8)
    mask = np.zeros((y1 - y0 + 2 * pad, x1 - x0 + 2 * pad), np.uint8)
    for bitmap, x, y in placed:
        top, left = y - y0 + pad, x - x0 + pad
        region = mask[top : top + bitmap.shape[0], left : left + bitmap.shape[1]]
        np.maximum(region, bitmap, out=region)
    return mask
