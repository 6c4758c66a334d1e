"""Fonts for the synthetic word renderer: discovery, loading, and glyph coverage.

A font is named by a `FontFace`: a file path and a face index (for .ttc collections), or
`BUILTIN`, Pillow's own scalable font (`ImageFont.load_default(size=...)`, Pillow >= 10.1),
which is always there, so rendering works on a machine without any font installed.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFont

from ..errors import DataError
from ..files import os_reason, special_kind

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")

# Folders searched for system fonts (those that do not exist are skipped).
SYSTEM_FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "~/Library/Fonts",
    os.path.join(os.environ.get("WINDIR", "C:\\Windows"), "Fonts") if sys.platform == "win32" else "",
)

# Fonts whose names say they draw symbols, not letters (their Latin code points map to pictures).
_SYMBOL_HINTS = ("symbol", "dingbat", "emoji", "webding", "wingding", "ornament", "icons", "d050000l", "opensymbol")

# The characters a font must draw (not as the missing-glyph box) to be used at all.
_PROBE = "AaEe0"

# Most faces looked at in one .ttc collection.
_MAX_FACES = 16


@dataclass(frozen=True, order=True)
class FontFace:
    path: str  # "" for Pillow's built-in font
    index: int = 0

    @functools.cached_property  # read once per sample: Path() parsing cost a third of a warm text stage
    def name(self) -> str:
        if not self.path:
            return "Pillow built-in (Aileron)"
        base = Path(self.path).name
        return f"{base}#{self.index}" if self.path.lower().endswith(".ttc") else base


BUILTIN = FontFace("", 0)


@dataclass
class FontReport:
    """What discovery found: the usable faces, and the files it could not use (with why)."""

    faces: list[FontFace]
    rejected: list[tuple[str, str]]  # (file, reason)
    searched: list[str]


def _font_files(folders: list[Path]) -> list[Path]:
    files: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():  # a file named directly: whatever it is, discovery says what it makes of it
            if os.path.lexists(folder):  # (a system font folder this machine lacks is no file)
                files.add(folder)
            continue
        for root, _dirs, names in os.walk(folder, followlinks=True):
            for name in names:
                if name.lower().endswith(FONT_SUFFIXES):
                    files.add(Path(root) / name)
    return sorted(files, key=str)


def discover_fonts(folders: list[str | Path] | None = None, system: bool = True) -> FontReport:
    """Usable font faces in `folders` (files or folders, searched recursively) and, if `system`, the usual font folders.

    A face is usable when it opens and draws the probe characters "AaEe0" as real glyphs.
    The list is sorted, so the same machine always gives the same list (the renderer picks
    fonts by position in it). Pillow's built-in font is not included; see `font_pool`.
    """
    wanted = [Path(f).expanduser() for f in (folders or [])]
    for folder in wanted:
        if not folder.exists():
            raise DataError(f"{folder}: font folder or file does not exist")
    searched = [str(f) for f in wanted]
    if system:
        for folder in SYSTEM_FONT_DIRS:
            if folder:
                path = Path(folder).expanduser()
                searched.append(str(path))
                wanted.append(path)
    faces: list[FontFace] = []
    rejected: list[tuple[str, str]] = []
    for file in _font_files(wanted):
        if any(hint in file.name.lower() for hint in _SYMBOL_HINTS):
            rejected.append((str(file), "symbol font"))
            continue
        if file.suffix.lower() not in FONT_SUFFIXES:  # only named directly: folders are searched for these
            rejected.append((str(file), f"not a font file ({', '.join(FONT_SUFFIXES)})"))
            continue
        try:  # FreeType would block on a FIFO with no writer: only regular files are opened
            kind = special_kind(file.stat().st_mode)
        except OSError as exc:
            rejected.append((str(file), f"cannot open ({os_reason(exc)})"))
            continue
        if kind:
            rejected.append((str(file), f"is {kind}, not a regular file"))
            continue
        count = _MAX_FACES if file.suffix.lower() == ".ttc" else 1
        for index in range(count):
            face = FontFace(str(file), index)
            try:
                font = load_font(face, 32)
            except OSError as exc:
                if index == 0:
                    rejected.append((str(file), f"cannot open ({exc})"))
                break  # past the last face of a collection
            if missing_glyphs(font, _PROBE):
                rejected.append((face.name, "does not draw Latin letters"))
                continue
            faces.append(face)
    return FontReport(sorted(set(faces)), rejected, searched)


def font_pool(faces: list[FontFace] | None) -> list[FontFace]:
    """The fonts the renderer draws with: the given faces plus Pillow's built-in font (always last)."""
    return [f for f in (faces or []) if f != BUILTIN] + [BUILTIN]


@functools.lru_cache(maxsize=1024)
def load_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    """The face at `size` pixels (cached per process)."""
    if face == BUILTIN:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType: only a fixed bitmap font
            raise DataError("Pillow was built without FreeType; synthetic rendering needs scalable fonts")
        return font
    return ImageFont.truetype(face.path, size=size, index=face.index)


def _glyph_signature(font: ImageFont.FreeTypeFont, char: str) -> tuple:
    mask = font.getmask(char)
    width, height = mask.size
    if not width or not height:
        return (width, height, b"")
    return (width, height, Image.Image()._new(mask).tobytes())


def missing_glyphs(font: ImageFont.FreeTypeFont, chars: str) -> str:
    """Characters of `chars` that `font` draws as its missing-glyph box (or not at all, for visible characters)."""
    notdef = _glyph_signature(font, "\U0010fffd")
    missing = []
    for char in dict.fromkeys(chars):
        if char.isspace():
            continue
        signature = _glyph_signature(font, char)
        if signature == notdef or signature[2] == b"":
            missing.append(char)
    return "".join(missing)


@functools.lru_cache(maxsize=4096)
def face_missing(face: FontFace, chars: str) -> frozenset[str]:
    """The characters of `chars` that `face` cannot draw (cached per process; a pure function of the font file)."""
    return frozenset(missing_glyphs(load_font(face, 32), chars))
