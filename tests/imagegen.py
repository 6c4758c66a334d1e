"""Word images and LMDBs that the tests make themselves (no third-party data is used)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from textrec.data.lmdb_store import LmdbWriter


def render_word(text: str, height: int = 32, invert: bool = False) -> Image.Image:
    """A clean grayscale word image drawn with Pillow's built-in scalable font."""
    font = ImageFont.load_default(size=int(height * 0.75))
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 8, height), 0 if invert else 255)
    ImageDraw.Draw(image).text((4 - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=255 if invert else 0)
    return image


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_lmdb(path: Path, samples: list[tuple[bytes, str]]) -> Path:
    with LmdbWriter(path) as writer:
        for data, label in samples:
            writer.add(data, label)
    return path


