"""Synthetic word images: a renderer in the spirit of MJSynth, tuned to look like scene-text crops.

`render(seed, index)` is a pure function: the image and label come from generators seeded
by a hash of (seed, index) only, never from global random state, so any process renders
any sample identically (given the same font list). Each effect below fires with its own
probability; the table is the reference (docs/synth.md repeats it).

Pieces: `synth_text.TextSampler` chooses the text, `fonts` finds and loads fonts, this
module draws: glyph masks -> curve -> one homography (scale, slant, rotation, perspective)
-> crop with margins -> background -> composite -> camera degradations.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..charset import Charset
from ..errors import DataError
from .fonts import FontFace, discover_fonts, face_missing, font_pool, load_font
from .lmdb_store import LmdbWriter
from .synth_text import TextSampler

# (effect, probability that it fires on a sample, what it does). Kept in step with docs/synth.md.
EFFECTS: tuple[tuple[str, float, str], ...] = (
    # text style
    ("dark_text", 0.62, "dark text on a lighter background (otherwise light on dark)"),
    ("low_contrast", 0.12, "text/background difference 30-60 grey levels instead of 60-230"),
    ("faux_bold", 0.10, "glyphs thickened by a 1-2 px stroke of their own shade"),
    ("outline", 0.10, "a 1-3 px outline in a contrasting shade (sign lettering)"),
    ("shadow", 0.12, "a soft drop shadow, offset 1-4 px"),
    ("text_shading", 0.15, "a shade gradient across the glyphs (lit or embossed letters)"),
    ("letter_spacing", 0.25, "tracking from -0.04 to +0.35 em (glyphs placed one by one)"),
    ("width_scale", 0.30, "horizontal stretch x0.7-1.4 (condensed / extended lettering)"),
    # geometry
    ("rotation", 0.45, "rotation, normally distributed, sd 3 degrees, at most 8"),
    ("strong_rotation", 0.04, "rotation of 8-20 degrees (replaces the one above)"),
    ("slant", 0.20, "horizontal shear -0.3..0.3 (fake italics, camera skew)"),
    ("perspective", 0.30, "each corner of the word box moved by up to 20% of the text height"),
    ("curve", 0.08, "baseline bent along an arc or a wave, amplitude 8-25% of the font size"),
    # crop
    ("tight_crop", 0.45, "margins of 0-8% of the text height (else 5-35% vertical, 5-60% horizontal)"),
    ("cut_edge", 0.05, "one side cut into the ink: top/bottom up to 8% of the text height, left/right up to 3%"),
    # background
    ("gradient", 0.35, "linear shade gradient in a random direction"),
    ("texture", 0.35, "smooth blotches: upsampled low-resolution noise (walls, paper, foliage)"),
    ("grain", 0.30, "per-pixel texture, sd 3-12 (at most contrast/5), full or half resolution (concrete, paper)"),
    ("pattern", 0.08, "regular stripes or a grid, amplitude 15-35% of the contrast (wood, tiles, bricks, blinds)"),
    ("edges", 0.15, "1-3 border bands above/below the text or frame edges in the side margins"),
    ("clutter", 0.25, "fragments of other words: the lines above/below, the neighbouring words"),
    ("ghost_text", 0.08, "a large, blurred, faint word behind the text"),
    # camera
    ("illumination", 0.25, "uneven light: a shade ramp (up to 50% darker) or a highlight towards white"),
    ("blur", 0.30, "Gaussian blur, radius 1.5-5% of the font size (0.5-1.6 px for 32 px letters)"),
    ("motion_blur", 0.07, "linear motion blur over 6-18% of the font size, in a random direction"),
    ("low_resolution", 0.30, "downscaled until the font size is 12-24 px, and scaled back (small, far text)"),
    # Of blur, motion_blur and low_resolution at most two fire together (one on low-contrast text); illumination
    # and levels never take the text/background difference below MIN_CONTRAST.
    ("levels", 0.20, "global gamma 0.6-1.6 and contrast gain 0.6-1.0"),
    ("noise", 0.45, "Gaussian sensor noise, sd 2-14 grey levels (at most contrast/5)"),
    ("jpeg", 0.30, "JPEG compression at quality 15-75"),
)
P: dict[str, float] = {name: p for name, p, _ in EFFECTS}

# Font sizes drawn (pixels per em), before the height is brought into MIN_HEIGHT..MAX_HEIGHT.
FONT_SIZES = (24, 52)
# Crops outside these heights are scaled (before the camera effects) to fit: small text is upsampled as a
# camera pipeline would, tall crops are shrunk (keeps LMDBs small; the model sees 32 px anyway).
MIN_HEIGHT, MAX_HEIGHT = 32, 64
# Effects that lower contrast stop where text and background differ by this many grey levels.
MIN_CONTRAST = 28.0

SynthSample = tuple[Image.Image, str]


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of one sample: a hash of (seed, index), the same in every process and Python version."""
    digest = hashlib.blake2b(f"textrec-synth/{int(seed)}/{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _fires(rng: random.Random, effect: str) -> bool:
    return rng.random() < P[effect]


class SynthRenderer:
    """Renders (image, label) pairs; `render(index)` is a pure function of (seed, index) and the font list."""

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
            faces = report.faces
            self.rejected_fonts = report.rejected
        else:
            self.rejected_fonts = []
        self.faces = font_pool(faces)  # Pillow's built-in font is always the last one
        self._text: TextSampler | None = None
        self.text  # load the word list now, so its errors surface at construction

    # The word list is rebuilt in each process rather than pickled with the renderer.
    def __getstate__(self):
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

    # ---- the pipeline ----------------------------------------------------------------------------------------

    def render(self, index: int) -> SynthSample:
        seed = sample_seed(self.seed, index)
        rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        text = self.text.sample(rng)
        face = self._pick_font(rng, text)
        size = rng.randint(*FONT_SIZES)
        font = load_font(face, size)

        style = self._style(rng, size)
        masks = self._glyph_masks(text, font, style)
        if _fires(rng, "curve"):
            masks = _curve(masks, rng, size)
        masks, ink = self._warp(masks, rng, size)
        masks, crop = self._crop(masks, ink, rng)
        height, width = masks.shape[:2]

        fg, bg, stroke, contrast = self._levels(rng)
        canvas = self._background(rng, nrng, width, height, bg, fg, contrast, crop, face, size)
        image = self._composite(rng, canvas, masks, fg, bg, stroke, style)
        em = float(size)  # the font size in output pixels: blur and resolution loss are measured against it
        if not MIN_HEIGHT <= height <= MAX_HEIGHT:  # camera effects act at the output's pixel scale
            target = min(MAX_HEIGHT, max(MIN_HEIGHT, height))
            size_out = (max(1, round(width * target / height)), target)
            image = np.asarray(Image.fromarray(image).resize(size_out, Image.BILINEAR))
            em *= target / height
        return self._camera(rng, nrng, image, contrast, em), text

    def _pick_font(self, rng: random.Random, text: str) -> FontFace:
        start = rng.randrange(len(self.faces))
        alphabet = self.text.alphabet
        for step in range(len(self.faces)):
            face = self.faces[(start + step) % len(self.faces)]
            if not (face_missing(face, alphabet) & set(text)):
                return face
        return self.faces[start]  # no font draws every character; the missing ones show as boxes

    def _style(self, rng: random.Random, size: int) -> dict:
        style = {"stroke": 0, "outline": 0, "shadow": None, "spacing": 0.0, "shading": None}
        if _fires(rng, "faux_bold"):
            style["stroke"] = rng.choice((1, 1, 2)) if size > 30 else 1
        elif _fires(rng, "outline"):
            style["outline"] = rng.randint(1, 3 if size > 36 else 2)
        if _fires(rng, "shadow"):
            style["shadow"] = (rng.choice((-1, 1)) * rng.randint(1, 4), rng.randint(1, 4), rng.uniform(0.3, 1.5))
        if _fires(rng, "letter_spacing"):
            style["spacing"] = rng.uniform(-0.04, 0.35) * size
        if _fires(rng, "text_shading"):
            style["shading"] = (rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.5))
        return style

    def _glyph_masks(self, text: str, font, style: dict) -> np.ndarray:
        """(H, W, 3) uint8: fill, fill+outline, shadow. Glyphs are drawn with the font's own kerning."""
        spread = style["stroke"] + style["outline"]
        shadow = style["shadow"]
        pad = spread + 2 + (max(abs(shadow[0]), abs(shadow[1])) + 2 if shadow else 0)
        ascent, descent = font.getmetrics()
        spacing = style["spacing"]
        # The ink can reach past the advance and the line (italic overhangs, accents): measure it.
        left, top, right, bottom = font.getbbox(text, stroke_width=spread)
        extra = max(0.0, spacing) * (len(text) - 1)
        x0, y0 = pad - min(0, left), pad - min(0, top)
        width = int(math.ceil(max(right, font.getlength(text) + spread) + extra - min(0, left))) + 2 * pad + 2
        height = int(max(bottom, ascent + descent) - min(0, top)) + 2 * pad
        fill = Image.new("L", (width, height), 0)
        outer = Image.new("L", (width, height), 0) if spread else fill
        draws = [(ImageDraw.Draw(fill), style["stroke"])]
        if spread:
            draws.append((ImageDraw.Draw(outer), spread))
        if spacing and len(text) > 1:
            positions = [(x0 + font.getlength(text[:i]) + i * spacing, c) for i, c in enumerate(text)]
        else:
            positions = [(x0, text)]
        for draw, stroke in draws:
            for x, chunk in positions:
                draw.text((x, y0), chunk, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        masks = np.zeros((height, width, 3), np.uint8)
        masks[..., 0] = np.asarray(fill)
        masks[..., 1] = np.asarray(outer)
        if shadow:
            dx, dy, _ = shadow
            src = masks[..., 1]
            masks[max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx), 2] = src[
                max(0, -dy) : height + min(0, -dy), max(0, -dx) : width + min(0, -dx)
            ]
        return masks

    def _warp(self, masks: np.ndarray, rng: random.Random, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """One perspective transform for scale, slant, rotation and perspective; returns the masks and their ink box."""
        image = Image.fromarray(masks, "RGB")
        box = image.getbbox()
        if box is None:  # nothing drawn (cannot happen with a usable font); keep a blank box
            return masks, (0, 0, masks.shape[1], masks.shape[0])
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        text_height = max(4.0, y1 - y0)
        sx = rng.uniform(0.7, 1.4) if _fires(rng, "width_scale") else 1.0
        shear = rng.uniform(-0.3, 0.3) if _fires(rng, "slant") else 0.0
        if _fires(rng, "strong_rotation"):
            angle = rng.choice((-1, 1)) * rng.uniform(8, 20)
        elif _fires(rng, "rotation"):
            angle = max(-8.0, min(8.0, rng.gauss(0, 3)))
        else:
            angle = 0.0
        jitter = 0.2 * text_height if _fires(rng, "perspective") else 0.0
        if sx == 1.0 and shear == 0.0 and angle == 0.0 and jitter == 0.0:
            return masks, box
        theta = math.radians(angle)
        cos, sin = math.cos(theta), math.sin(theta)
        src = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        dst = []
        for x, y in src:
            u, v = (x - cx) * sx, y - cy
            u = u - shear * v
            u, v = u * cos + v * sin, -u * sin + v * cos
            dst.append((u + rng.uniform(-jitter, jitter), v + rng.uniform(-jitter, jitter)))
        forward = _homography(src, dst)
        height, width = masks.shape[:2]
        corners = _apply(forward, [(0, 0), (width, 0), (width, height), (0, height)])
        left, top = corners[:, 0].min(), corners[:, 1].min()
        out_w = int(min(math.ceil(corners[:, 0].max() - left), 6 * width)) + 2
        out_h = int(min(math.ceil(corners[:, 1].max() - top), 6 * height + 4 * width)) + 2
        dst_shifted = [(u - left + 1, v - top + 1) for u, v in dst]
        inverse = _homography(dst_shifted, src)
        coeffs = tuple((inverse / inverse[2, 2]).flatten()[:8])
        warped = image.transform((out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.BILINEAR)
        box = warped.getbbox() or (0, 0, out_w, out_h)
        return np.asarray(warped), box

    def _crop(self, masks: np.ndarray, ink: tuple[int, int, int, int], rng: random.Random):
        """Cut the crop around the ink box with tight or loose margins; parts outside the masks are empty."""
        x0, y0, x1, y1 = ink
        # The fill+outline channel is the ink; a shadow may extend beyond it and is allowed to be cut.
        fill_box = Image.fromarray(masks[..., 1]).getbbox()
        if fill_box:
            x0, y0, x1, y1 = fill_box
        h = max(4, y1 - y0)
        if _fires(rng, "tight_crop"):
            margins = [rng.uniform(0, 0.08) * h for _ in range(4)]
        else:
            margins = [rng.uniform(0.05, 0.6) * h, rng.uniform(0.05, 0.35) * h, rng.uniform(0.05, 0.6) * h, rng.uniform(0.05, 0.35) * h]
        if _fires(rng, "cut_edge"):  # sideways less: a cut into the first or last glyph can change it
            side = rng.randrange(4)
            margins[side] = -rng.uniform(0, 0.08 if side % 2 else 0.03) * h
        left, top, right, bottom = margins  # order: left, top, right, bottom
        box = (
            int(round(x0 - left)),
            int(round(y0 - top)),
            max(int(round(x1 + right)), int(round(x0 - left)) + 2),
            max(int(round(y1 + bottom)), int(round(y0 - top)) + 2),
        )
        cropped = np.asarray(Image.fromarray(masks, "RGB").crop(box))
        ink_in_crop = (x0 - box[0], y0 - box[1], x1 - box[0], y1 - box[1])
        return cropped, ink_in_crop

    def _levels(self, rng: random.Random) -> tuple[float, float, float, float]:
        """Grey levels of text, background and outline, with enough contrast."""
        contrast = rng.uniform(30, 60) if _fires(rng, "low_contrast") else rng.uniform(60, 230)
        dark = rng.uniform(0, 255 - contrast)
        light = dark + contrast
        fg, bg = (dark, light) if _fires(rng, "dark_text") else (light, dark)
        # an outline contrasts with the fill: towards the far end of the range from the fill
        stroke = rng.uniform(0, 40) if fg > 127 else rng.uniform(215, 255)
        return fg, bg, stroke, contrast

    # ---- background ------------------------------------------------------------------------------------------

    def _background(self, rng, nrng, width, height, bg, fg, contrast, ink, face, size) -> np.ndarray:
        canvas = np.full((height, width), bg, np.float32)
        amplitude = contrast * 0.45
        if _fires(rng, "gradient"):
            angle = rng.uniform(0, 2 * math.pi)
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(width, height)
            canvas += (ramp - ramp.mean()) * rng.uniform(0.3, 1.0) * amplitude * 2
        if _fires(rng, "texture"):
            cell = rng.uniform(3, 12)
            small = nrng.normal(0, 1, (max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
            field_ = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
            canvas += field_ * rng.uniform(0.2, 0.5) * amplitude
        if _fires(rng, "grain"):
            sigma = min(rng.uniform(3, 12), contrast / 5)
            if rng.random() < 0.5:
                canvas += nrng.normal(0, sigma, (height, width)).astype(np.float32)
            else:  # coarser grain: half resolution, scaled up
                grain = nrng.normal(0, sigma, ((height + 1) // 2, (width + 1) // 2)).astype(np.float32)
                canvas += np.asarray(Image.fromarray(grain).resize((width, height), Image.BILINEAR))
        if _fires(rng, "pattern"):
            angle = rng.uniform(0, math.pi)
            period = rng.uniform(3, 16)
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
            wave = np.sin(phase + nrng.normal(0, 0.3, (1, width)).astype(np.float32).cumsum(axis=1) * 0.1)
            if rng.random() < 0.4:  # a second direction: tiles, bricks
                phase2 = (-xs * math.sin(angle) + ys * math.cos(angle)) * (2 * math.pi / rng.uniform(6, 24))
                wave = np.maximum(wave, np.sin(phase2))
            canvas += wave * rng.uniform(0.15, 0.35) * contrast * 0.5
        if _fires(rng, "edges"):
            canvas = self._edges(rng, canvas, bg, fg, contrast, ink)
        if _fires(rng, "ghost_text"):
            canvas = self._ghost(rng, canvas, bg, fg, contrast, face, size)
        if _fires(rng, "clutter"):
            canvas = self._clutter(rng, canvas, fg, ink, face, size)
        return canvas

    def _edges(self, rng, canvas, bg, fg, contrast, ink) -> np.ndarray:
        """Borders and frame edges; they stay out of the text's middle, where a bar could read as a letter."""
        height, width = canvas.shape
        x0, y0, x1, y1 = ink
        h = max(4.0, y1 - y0)
        layer = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(layer)
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            thickness = rng.randint(1, max(2, int(h * 0.15)))
            if kind < 0.4:  # a border band above the text, touching at most its top edge
                y = rng.uniform(-thickness, y0 + 0.05 * h) - thickness
                draw.rectangle((-2, y, width + 2, y + thickness), fill=255)
            elif kind < 0.8:  # a border band or underline below the text
                y = rng.uniform(y1 - 0.05 * h, height + thickness)
                draw.rectangle((-2, y, width + 2, y + thickness), fill=255)
            elif x0 > 2 and kind < 0.9:  # a frame edge in the left margin
                x = rng.uniform(0, x0 - 1)
                draw.line((x, -2, x + rng.uniform(-0.15, 0.15) * height, height + 2), fill=255, width=thickness)
            elif width - x1 > 2:  # a frame edge in the right margin
                x = rng.uniform(x1 + 1, width)
                draw.line((x, -2, x + rng.uniform(-0.15, 0.15) * height, height + 2), fill=255, width=thickness)
        mask = np.asarray(layer, np.float32) / 255.0
        level = rng.choice((fg, bg + rng.choice((-1, 1)) * contrast * rng.uniform(0.3, 0.8)))
        return canvas * (1 - mask) + level * mask

    def _ghost(self, rng, canvas, bg, fg, contrast, face, size) -> np.ndarray:
        height, width = canvas.shape
        big = load_font(face, min(160, int(size * rng.uniform(1.5, 3.0))))
        layer = Image.new("L", (width, height), 0)
        ImageDraw.Draw(layer).text(
            (rng.uniform(-width * 0.3, width * 0.3), rng.uniform(-height, 0)), self.text.sample(rng), font=big, fill=255
        )
        mask = np.asarray(layer.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3))), np.float32) / 255.0
        level = bg + (fg - bg) * rng.uniform(0.15, 0.35)
        return canvas * (1 - mask) + level * mask

    def _clutter(self, rng, canvas, fg, ink, face, size) -> np.ndarray:
        """Fragments of neighbouring text in the margins: the line above or below, the word before or after."""
        height, width = canvas.shape
        x0, y0, x1, y1 = ink
        h = max(4.0, y1 - y0)
        font = load_font(face if rng.random() < 0.7 else rng.choice(self.faces), max(8, int(size * rng.uniform(0.8, 1.2))))
        ascent, descent = font.getmetrics()
        layer = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(layer)
        for _ in range(rng.randint(1, 2)):
            where = rng.random()
            word = self.text.sample(rng)
            if where < 0.35:  # the line above: its bottom reaches into the top margin
                bottom = y0 - rng.uniform(0.05, 0.35) * h
                draw.text((rng.uniform(-width * 0.5, width * 0.5), bottom), word, font=font, fill=255, anchor="ld")
            elif where < 0.7:  # the line below
                top = y1 + rng.uniform(0.1, 0.4) * h
                draw.text((rng.uniform(-width * 0.5, width * 0.5), top), word, font=font, fill=255, anchor="lt")
            elif where < 0.85:  # the word before, ending a word space to the left
                right = x0 - rng.uniform(0.35, 0.6) * h
                draw.text((right, y1), word, font=font, fill=255, anchor="rs" if rng.random() < 0.5 else "rd")
            else:  # the word after
                left = x1 + rng.uniform(0.35, 0.6) * h
                draw.text((left, y1), word, font=font, fill=255, anchor="ls" if rng.random() < 0.5 else "ld")
        mask = np.asarray(layer, np.float32) / 255.0
        level = fg if rng.random() < 0.7 else canvas.mean() + (fg - canvas.mean()) * rng.uniform(0.4, 0.8)
        return canvas * (1 - mask) + level * mask

    # ---- composite and camera --------------------------------------------------------------------------------

    def _composite(self, rng, canvas, masks, fg, bg, stroke, style) -> np.ndarray:
        fill = masks[..., 0].astype(np.float32) / 255.0
        outer = masks[..., 1].astype(np.float32) / 255.0
        image = canvas
        if style["shadow"]:
            blur = style["shadow"][2]
            shadow = np.asarray(Image.fromarray(masks[..., 2]).filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255.0
            shade = min(bg, fg) * rng.uniform(0.1, 0.6)
            opacity = rng.uniform(0.5, 0.9)
            image = image * (1 - shadow * opacity) + shade * shadow * opacity
        if style["outline"]:
            image = image * (1 - outer) + stroke * outer
        text_level: float | np.ndarray = fg
        if style["shading"]:
            angle, strength = style["shading"]
            height, width = fill.shape
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            ramp = (xs * math.cos(angle) * 0.2 + ys * math.sin(angle)) / max(1, height)
            ramp -= ramp.mean()
            direction = 1.0 if fg < bg else -1.0  # shade away from the background, never into it
            text_level = fg - direction * np.abs(ramp) * strength * 255
        return image * (1 - fill) + text_level * fill

    def _camera(self, rng, nrng, image: np.ndarray, contrast: float, em: float) -> Image.Image:
        """Light, optics and sensor. Effects that eat contrast are bounded so that MIN_CONTRAST remains."""
        height, width = image.shape
        room = max(0.0, 1.0 - MIN_CONTRAST / contrast)  # the share of the contrast that may still be lost
        if _fires(rng, "illumination"):
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            strength = min(rng.uniform(0.2, 0.5), room)
            if rng.random() < 0.6:  # a shade ramp: darker towards one side
                angle = rng.uniform(0, 2 * math.pi)
                ramp = xs * math.cos(angle) + ys * math.sin(angle)
                ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
                image = image * (1 - strength * ramp)
            else:  # a highlight: towards white around a point
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
                radius = rng.uniform(0.5, 1.5) * height
                spot = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
                image = image + (255.0 - image) * spot * strength
            contrast *= 1 - strength
            room = max(0.0, 1.0 - MIN_CONTRAST / contrast)
        pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L")
        # At most two of the three ways to lose detail, and one on low-contrast text: stacked, they leave nothing to read.
        losses = [name for name in ("blur", "motion_blur", "low_resolution") if _fires(rng, name)]
        del losses[1 if contrast < 60 else 2 :]
        if "blur" in losses:
            pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.015, 0.05) * em))
        if "motion_blur" in losses:
            pil = _motion_blur(pil, max(2, round(rng.uniform(0.06, 0.18) * em)), rng.uniform(0, math.pi))
        if "low_resolution" in losses:
            small_h = round(height * rng.uniform(12, 24) / em)  # the font size becomes 12-24 px
            if small_h < height:
                small = pil.resize((max(1, round(width * small_h / height)), small_h), rng.choice((Image.BILINEAR, Image.BOX)))
                pil = small.resize((width, height), rng.choice((Image.NEAREST, Image.BILINEAR, Image.BICUBIC)))
        levels, noise = _fires(rng, "levels"), _fires(rng, "noise")
        if levels or noise:
            array = np.asarray(pil, np.float32)
            if levels:
                gamma, gain = rng.uniform(0.6, 1.6), max(rng.uniform(0.6, 1.0), 1.0 - room)
                array = 255.0 * (array / 255.0) ** gamma
                array = (array - 128.0) * gain + 128.0
                contrast *= gain
            if noise:
                sigma = min(rng.uniform(2, 14), max(2.0, contrast / 5))
                array = array + nrng.normal(0, sigma, array.shape).astype(np.float32)
            pil = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
        if _fires(rng, "jpeg"):
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=rng.randint(15, 75))
            pil = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
        return pil


def _homography(src, dst) -> np.ndarray:
    """The 3x3 matrix that maps the four points `src` onto `dst`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend((u, v))
    solution = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(solution, 1.0).reshape(3, 3)


def _apply(matrix: np.ndarray, points) -> np.ndarray:
    pts = np.hstack([np.asarray(points, np.float64), np.ones((len(points), 1))]) @ matrix.T
    return pts[:, :2] / pts[:, 2:3]


def _curve(masks: np.ndarray, rng: random.Random, size: int) -> np.ndarray:
    """Bend the baseline: every column moves vertically along an arc or a wave (linear interpolation)."""
    height, width = masks.shape[:2]
    amplitude = rng.uniform(0.08, 0.25) * size
    pad = int(math.ceil(amplitude)) + 1
    padded = np.zeros((height + 2 * pad, width, 3), np.float32)
    padded[pad : pad + height] = masks
    t = np.linspace(-1, 1, width, dtype=np.float32)
    if rng.random() < 0.6:
        offset = amplitude * (t**2 - 0.5) * rng.choice((-1, 1))  # arc, bending up or down
    else:
        offset = amplitude * 0.6 * np.sin(t * math.pi * rng.uniform(0.7, 1.5) + rng.uniform(0, 2 * math.pi))
    rows = np.arange(height + 2 * pad, dtype=np.float32)[:, None] - offset[None, :]
    low = np.clip(np.floor(rows).astype(np.int64), 0, height + 2 * pad - 1)
    high = np.clip(low + 1, 0, height + 2 * pad - 1)
    frac = (rows - np.floor(rows))[..., None]
    cols = np.arange(width)[None, :]
    bent = padded[low, cols] * (1 - frac) + padded[high, cols] * frac
    return np.clip(bent, 0, 255).astype(np.uint8)


def _motion_blur(image: Image.Image, length: int, angle: float) -> Image.Image:
    array = np.asarray(image, np.float32)
    pad = length
    padded = np.pad(array, pad, mode="edge")
    height, width = array.shape
    total = np.zeros_like(array)
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, length):
        dx, dy = int(round(t * math.cos(angle))), int(round(t * math.sin(angle)))
        total += padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return Image.fromarray(np.clip(total / length, 0, 255).astype(np.uint8), "L")


# ---- training source ---------------------------------------------------------------------------------------------


class SynthSource:
    """The endless training source `synth`: sample(index) renders sample `index` of the seed's stream.

    `fonts` are extra font files or folders (the system's fonts are always searched too, and
    Pillow's built-in font is always there); `words` replaces the built-in dictionary.
    """

    name = "synth"
    size = None
    # The renderer applies its own degradations; training augmentation would apply them twice.
    augmentable = False

    def __init__(
        self,
        seed: int,
        charset: Charset,
        max_frames: int = 26,
        fonts: list[str] | None = None,
        words: str | None = None,
        system_fonts: bool = True,
    ):
        self.renderer = SynthRenderer(seed, charset, max_frames, fonts, words, system_fonts)

    @property
    def font_count(self) -> int:
        return self.renderer.font_count

    def sample(self, index: int) -> SynthSample:
        return self.renderer.render(index)


# ---- LMDB writer -------------------------------------------------------------------------------------------------


@dataclass
class SynthReport:
    output: Path
    written: int
    seconds: float
    fonts: int  # fonts found (Pillow's built-in font not counted)
    font_names: list[str]
    rejected_fonts: list[tuple[str, str]]
    word_source: str | None  # None: the charset has no letters, so no words are drawn
    words: int
    words_dropped: int  # word-list entries the charset cannot write (never drawn)
    workers: int
    image_format: str
    bytes_written: int = 0
    kinds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("inf")


IMAGE_FORMATS = {"jpeg": ("JPEG", {"quality": 95}), "png": ("PNG", {"compress_level": 6})}

# Renderer of a worker process, built once by the pool's initializer.
_worker_renderer: SynthRenderer | None = None


def _init_worker(renderer: SynthRenderer) -> None:
    global _worker_renderer
    _worker_renderer = renderer


def _encode(image: Image.Image, image_format: str) -> bytes:
    fmt, options = IMAGE_FORMATS[image_format]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _render_chunk(start: int, stop: int, image_format: str, renderer: SynthRenderer | None = None) -> list[tuple[bytes, str]]:
    renderer = renderer or _worker_renderer
    out = []
    for index in range(start, stop):
        image, label = renderer.render(index)
        out.append((_encode(image, image_format), label))
    return out


def write_synth_lmdb(
    output: str | Path,
    count: int,
    seed: int,
    charset: Charset,
    fonts: list[str] | None = None,
    words: str | None = None,
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    max_frames: int = 26,
    image_format: str = "jpeg",
    system_fonts: bool = True,
    chunk_size: int = 200,
    renderer: SynthRenderer | None = None,
) -> SynthReport:
    """Render samples 0..count-1 of `seed` into a new LMDB (written to OUTPUT.partial, renamed when complete).

    The content depends only on (seed, charset, max_frames, fonts, words, image_format): any
    number of workers writes the same records in the same order. Labels are the rendered
    text as drawn (case kept); training normalises them with the charset.
    """
    if count < 1:
        raise DataError(f"count must be at least 1 (got {count})")
    if workers < 1:
        raise DataError(f"workers must be at least 1 (got {workers})")
    if image_format not in IMAGE_FORMATS:
        raise DataError(f"image format must be one of {', '.join(IMAGE_FORMATS)} (got {image_format!r})")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: output exists and is not an empty folder")
    if renderer is None:
        renderer = SynthRenderer(seed, charset, max_frames, fonts, words, system_fonts)
    elif (renderer.seed, renderer.charset, renderer.max_frames) != (int(seed), charset, max_frames):
        raise ValueError("the renderer passed in was built for another seed, charset or max_frames")
    staging = output.with_name(output.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    chunks = [(start, min(count, start + chunk_size)) for start in range(0, count, chunk_size)]
    started = time.perf_counter()
    done = written_bytes = 0
    try:
        with LmdbWriter(staging) as writer:
            for results in _rendered_chunks(renderer, chunks, image_format, workers):
                for data, label in results:
                    writer.add(data, label)
                    written_bytes += len(data)
                done += len(results)
                if on_progress:
                    on_progress(done, count)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    if output.exists():
        output.rmdir()
    staging.rename(output)
    words_list = renderer.text.words
    return SynthReport(
        output=output,
        written=done,
        seconds=seconds,
        fonts=renderer.font_count,
        font_names=[f.name for f in renderer.faces],
        rejected_fonts=list(renderer.rejected_fonts),
        word_source=words_list.source if words_list else None,
        words=len(words_list.words) if words_list else 0,
        words_dropped=words_list.dropped if words_list else 0,
        workers=workers,
        image_format=image_format,
        bytes_written=written_bytes,
        kinds=dict(renderer.text.kinds),
    )


def _rendered_chunks(renderer: SynthRenderer, chunks, image_format: str, workers: int) -> Iterable[list[tuple[bytes, str]]]:
    """Rendered chunks in index order; with several workers, a bounded window of chunks is in flight."""
    if workers == 1 or len(chunks) == 1:
        for start, stop in chunks:
            yield _render_chunk(start, stop, image_format, renderer)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(renderer,)) as pool:
        pending = []
        upcoming = iter(chunks)
        for start, stop in upcoming:
            pending.append(pool.submit(_render_chunk, start, stop, image_format))
            if len(pending) >= 3 * workers:
                break
        while pending:
            results = pending.pop(0).result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(_render_chunk, following[0], following[1], image_format))
            yield results


# ---- preview -----------------------------------------------------------------------------------------------------


def make_preview(samples: list[SynthSample], path: str | Path, columns: int = 4, cell_height: int = 48, cell_width: int = 240) -> Path:
    """A contact sheet PNG: each sample scaled to `cell_height` (at most `cell_width` wide) with its label under it."""
    from PIL import ImageFont

    if not samples:
        raise DataError("no samples to preview")
    columns = max(1, min(columns, len(samples)))
    rows = math.ceil(len(samples) / columns)
    label_font = ImageFont.load_default(size=13)
    label_height = 18
    pad = 6
    sheet = Image.new("L", (columns * (cell_width + pad) + pad, rows * (cell_height + label_height + pad) + pad), 255)
    draw = ImageDraw.Draw(sheet)
    for number, (image, label) in enumerate(samples):
        row, col = divmod(number, columns)
        x = pad + col * (cell_width + pad)
        y = pad + row * (cell_height + label_height + pad)
        width = max(1, round(image.width * cell_height / image.height))
        if width > cell_width:
            shown = image.resize((cell_width, max(1, round(image.height * cell_width / image.width))), Image.BILINEAR)
        else:
            shown = image.resize((width, cell_height), Image.BILINEAR)
        sheet.paste(shown.convert("L"), (x, y))
        text = label if len(label) <= 30 else label[:29] + "…"
        draw.text((x, y + cell_height + 2), text, font=label_font, fill=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path


def write_sample_images(
    output: str | Path, count: int, seed: int, charset: Charset, max_frames: int = 26
) -> list[tuple[Path, str]]:
    """Render `count` samples as PNG files plus a `gt.txt` (`file<TAB>label`, the create-lmdb input format).

    For trying `predict` and `create-lmdb`/`eval` on images the project makes itself.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    renderer = SynthRenderer(seed, charset, max_frames)
    written = []
    for index in range(count):
        image, label = renderer.render(index)
        path = folder / f"word_{index + 1:03d}.png"
        image.save(path)
        written.append((path, label))
    lines = "".join(f"{path.name}\t{label}\n" for path, label in written)
    (folder / "gt.txt").write_text(lines, encoding="utf-8")
    return written
