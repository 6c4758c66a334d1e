"""Finished synthetic images outside training: LMDBs (`textrec synth`), sample PNGs, preview sheets.

The same two stages as training: `glyphs` rasterises, `scene` finishes batches. Samples are
finished in chunks of CHUNK consecutive indices, chunk k with the scene parameters of step k,
so an LMDB depends only on (seed, charset, max_frames, fonts, words, size, format), never on
the number of worker processes. Each worker runs both stages for its chunks on one CPU thread.
"""

from __future__ import annotations

import io
import math
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torchvision
from PIL import Image, ImageDraw

from ..charset import Charset
from ..data.lmdb_store import LmdbWriter
from ..errors import DataError
from ..memory import keep_freed_memory
from .glyphs import GlyphSource
from .pipeline import Finisher, RawSample, collate_raw, fit_width

# Samples finished together (one scene batch): large enough for the batched ops to pay (the scene's few thousand
# tensor ops per batch cost their dispatch whatever the batch size; 512 wrote 2-18 % more images/s than 256 on
# the 2-core CPU, 1,024 no more), small for the writer's window.
CHUNK = 512

IMAGE_FORMATS = ("jpeg", "png")
JPEG_QUALITY = 95
PNG_COMPRESSION = 6


class Renderer:
    """Finished images of one seed's stream: sample `index` is the same in any process."""

    def __init__(self, glyphs: GlyphSource, height: int = 32, width: int = 100, scale: int = 1):
        self.glyphs = glyphs
        self.finisher = Finisher(height, width, glyphs.seed, scale=scale)
        self.max_mask_width = int(1.5 * self.finisher.canvas_size[1])

    def chunk(self, number: int, count: int) -> list[tuple[Image.Image, str]]:
        """Samples number*CHUNK .. number*CHUNK + count - 1, finished as one batch."""
        batch, labels = self._raw_chunk(number, count)
        return list(zip(self.finisher.images(batch, number), labels))

    def encoded_chunk(self, number: int, count: int, image_format: str) -> list[tuple[bytes, str]]:
        """`chunk`'s samples encoded as `image_format` files (what an LMDB stores)."""
        batch, labels = self._raw_chunk(number, count)
        return list(zip(encode_crops(self.finisher.crops(batch, number), image_format), labels))

    def _raw_chunk(self, number: int, count: int):
        raws = []
        for index in range(number * CHUNK, number * CHUNK + count):
            glyph = self.glyphs.sample(index)
            pixels, ink, em = fit_width(glyph.mask, glyph.ink, glyph.em, self.max_mask_width)
            raws.append(RawSample(pixels, ink, em, glyph.label, False))
        return collate_raw(raws)

    def render(self, count: int, start_chunk: int = 0) -> list[tuple[Image.Image, str]]:
        out: list[tuple[Image.Image, str]] = []
        number = start_chunk
        while len(out) < count:
            out.extend(self.chunk(number, min(CHUNK, count - len(out))))
            number += 1
        return out


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


_worker_renderer: Renderer | None = None


def _init_worker(renderer: Renderer) -> None:
    global _worker_renderer
    torch.set_num_threads(1)  # one process per core: the batched ops run on the worker's own core
    keep_freed_memory()  # a worker process of ours: the scene's batch-sized tensors come and go
    _worker_renderer = renderer


def encode_crops(crops: list[torch.Tensor], image_format: str) -> list[bytes]:
    """(1, H, w) uint8 tensors as JPEG (quality JPEG_QUALITY) or PNG files.

    torchvision.io encodes straight from the tensors (libjpeg-turbo, libpng): the same JPEG bytes as Pillow at
    quality 95, a list of JPEGs in one call, about a third of Pillow's time per word image (no PIL image, no
    BytesIO). torchvision 0.29 deprecates these encoders in favour of TorchCodec; where they are gone, Pillow
    writes the files (the pixels decode the same either way)."""
    if not crops:
        return []
    encode_jpeg, encode_png = getattr(torchvision.io, "encode_jpeg", None), getattr(torchvision.io, "encode_png", None)
    if encode_jpeg is None or encode_png is None:
        return [_pillow_encode(crop, image_format) for crop in crops]
    with warnings.catch_warnings():  # the deprecation notice, once per call of a library that caps torchvision
        warnings.simplefilter("ignore", DeprecationWarning)
        if image_format == "jpeg":
            encoded = encode_jpeg(crops, quality=JPEG_QUALITY)
        else:
            encoded = [encode_png(crop, compression_level=PNG_COMPRESSION) for crop in crops]
    return [data.numpy().tobytes() for data in encoded]


def _pillow_encode(crop: torch.Tensor, image_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "jpeg" else {"compress_level": PNG_COMPRESSION}
    Image.fromarray(crop[0].numpy(), "L").save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def _render_chunk(number: int, count: int, image_format: str, renderer: Renderer | None = None) -> list[tuple[bytes, str]]:
    return (renderer or _worker_renderer).encoded_chunk(number, count, image_format)


def write_synth_lmdb(
    output: str | Path,
    count: int,
    renderer: Renderer,
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    image_format: str = "jpeg",
) -> SynthReport:
    """Render samples 0..count-1 into a new LMDB (written to OUTPUT.partial, renamed when complete).

    Labels are the text as drawn (case kept); training normalises them with its charset.
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
    staging = output.with_name(output.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    chunks = [(n, min(CHUNK, count - n * CHUNK)) for n in range(math.ceil(count / CHUNK))]
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
    glyphs = renderer.glyphs
    words_list = glyphs.text.words
    return SynthReport(
        output=output,
        written=done,
        seconds=seconds,
        fonts=glyphs.font_count,
        font_names=[f.name for f in glyphs.faces],
        rejected_fonts=list(glyphs.rejected_fonts),
        word_source=words_list.source if words_list else None,
        words=len(words_list.words) if words_list else 0,
        words_dropped=words_list.dropped if words_list else 0,
        workers=workers,
        image_format=image_format,
        bytes_written=written_bytes,
        kinds=dict(glyphs.text.kinds),
    )


def _rendered_chunks(renderer: Renderer, chunks, image_format: str, workers: int) -> Iterable[list[tuple[bytes, str]]]:
    """Rendered chunks in index order; with several workers, a bounded window of chunks is in flight."""
    if workers == 1 or len(chunks) == 1:
        for number, size in chunks:
            yield _render_chunk(number, size, image_format, renderer)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(renderer,)) as pool:
        pending = []
        upcoming = iter(chunks)
        for number, size in upcoming:
            pending.append(pool.submit(_render_chunk, number, size, image_format))
            if len(pending) >= 3 * workers:
                break
        while pending:
            results = pending.pop(0).result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(_render_chunk, following[0], following[1], image_format))
            yield results


def make_preview(samples: list[tuple[Image.Image, str]], path: str | Path, columns: int = 4, cell_height: int = 48, cell_width: int = 240) -> Path:
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


def write_sample_images(output: str | Path, count: int, seed: int, charset: Charset, max_frames: int = 26) -> list[tuple[Path, str]]:
    """Render `count` samples as PNG files plus a `gt.txt` (`file<TAB>label`, the create-lmdb input format).

    For trying `predict` and `create-lmdb`/`eval` on images the project makes itself.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(GlyphSource(seed, charset, max_frames))
    written = []
    for index, (image, label) in enumerate(renderer.render(count)):
        path = folder / f"word_{index + 1:03d}.png"
        image.save(path)
        written.append((path, label))
    lines = "".join(f"{path.name}\t{label}\n" for path, label in written)
    (folder / "gt.txt").write_text(lines, encoding="utf-8")
    return written
