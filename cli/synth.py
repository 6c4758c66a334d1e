"""`textrec synth`: render synthetic word images into an LMDB (and optionally a preview sheet)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from textrec.charset import DEFAULT_CHARSET, Charset
from textrec.data.lmdb_store import check_staging_folder
from textrec.data.samples import write_samples
from textrec.files import check_output_file, check_output_parent
from textrec.memory import keep_freed_memory
from textrec.synth.glyphs import GlyphSource
from textrec.synth.writer import IMAGE_FORMATS, Renderer, make_preview, write_synth_lmdb

from .common import console, err_console, fail, user_errors, warn


@user_errors
def synth(
    output_dir: Path = typer.Argument(..., help="LMDB folder to create (must not exist or be empty)."),
    count: int = typer.Option(..., "--count", "-n", min=1, help="Number of images to render."),
    seed: int = typer.Option(0, help="Seed: the same seed (and fonts, words, charset) gives the same LMDB."),
    fonts: Optional[List[Path]] = typer.Option(
        None, "--fonts", help="Extra font folder or file (.ttf/.otf/.ttc), searched recursively. Repeatable."
    ),
    system_fonts: bool = typer.Option(True, help="Also use the fonts installed on this machine."),
    words: Optional[Path] = typer.Option(
        None, help="Word list replacing the built-in dictionary: one word a line, optionally `word<TAB>weight`."
    ),
    charset: str = typer.Option(DEFAULT_CHARSET, help="Charset the labels must fit: 36, 62, 94, 95 (94 + space), file:PATH or the characters."),
    max_frames: int = typer.Option(26, min=1, help="CTC frames of the model: labels are generated to fit them."),
    height: int = typer.Option(32, min=8, help="Model input height: images are written this high (times --scale)."),
    width: int = typer.Option(100, min=8, help="Model input width: wider texts are squeezed to it (times --scale), as training squeezes them."),
    scale: int = typer.Option(1, min=1, max=4, help="Make the images this many times the model's input size (training uses 2)."),
    workers: int = typer.Option(1, min=1, help="Rendering processes."),
    image_format: str = typer.Option("jpeg", "--format", help=f"Image encoding in the LMDB: {', '.join(IMAGE_FORMATS)}."),
    preview: Optional[Path] = typer.Option(None, help="Also write a contact sheet PNG of the first samples."),
    preview_count: int = typer.Option(48, min=1, help="Samples on the preview sheet."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --preview file."),
) -> None:
    """Render synthetic scene-text word images (many fonts, backgrounds, distortions) into an LMDB."""
    # Outputs checked before any work: nothing of the user's is replaced.
    if os.path.lexists(output_dir) and (not output_dir.is_dir() or any(output_dir.iterdir())):
        fail(f"{output_dir}: output exists and is not an empty folder")
    check_output_parent(output_dir)
    check_staging_folder(output_dir.with_name(output_dir.name + ".partial"))
    if preview is not None:
        check_output_file(preview, overwrite)
    if image_format not in IMAGE_FORMATS:
        fail(f"--format must be one of {', '.join(IMAGE_FORMATS)} (got {image_format!r})")
    chars = Charset.from_spec(charset)
    glyphs = GlyphSource(seed, chars, max_frames, [str(f) for f in fonts or []], str(words) if words else None, system_fonts)
    renderer = Renderer(glyphs, height, width, scale)
    names = ", ".join(f.name for f in glyphs.faces[:-1][:6]) + (" ..." if glyphs.font_count > 6 else "")
    if glyphs.font_count:
        console.print(f"fonts: {glyphs.font_count} found ({names}) + Pillow's built-in font")
    else:
        warn(
            "no fonts found; rendering with Pillow's built-in font only. For variety install font packages "
            "(e.g. fonts-liberation2, fonts-urw-base35) or pass --fonts DIR"
        )
    for path, reason in glyphs.rejected_fonts[:5]:
        warn(f"font not used: {path}: {reason}")
    word_list = glyphs.text.words
    if word_list is None:
        console.print("words: none (the charset has no letters); numbers, codes and random strings only")
    else:
        dropped = f", {word_list.dropped:,} not writable with the charset" if word_list.dropped else ""
        console.print(f"words: {len(word_list.words):,} from {word_list.source}{dropped}")

    keep_freed_memory()  # textrec/memory.py: for the scene when this process renders (--workers 1)
    with Progress(
        TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    ) as progress:
        task = progress.add_task("", total=count)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = write_synth_lmdb(output_dir, count, renderer, workers=workers, on_progress=on_progress, image_format=image_format)
    console.print(
        f"wrote {report.written:,} images to {report.output} in {report.seconds:.1f} s "
        f"({report.images_per_second:,.0f} images/s with {workers} worker{'s' if workers > 1 else ''}, "
        f"{report.bytes_written / max(1, report.written) / 1024:.1f} KiB per image)"
    )
    if preview is not None:
        make_preview(renderer.render(min(preview_count, count)), preview, columns=4)
        console.print(f"preview: {preview}")


@user_errors
def samples(
    output_dir: Path = typer.Argument(
        Path("data/samples"), help="Folder for the PNG files and their gt.txt: new, empty, or one this command wrote."
    ),
    count: int = typer.Option(12, "--count", "-n", min=1),
    seed: int = typer.Option(2026, help="Seed of the renderer: the same seed gives the same images."),
    charset: str = typer.Option(DEFAULT_CHARSET, help="Charset the labels fit."),
) -> None:
    """Render a few synthetic word images as PNG files (with a gt.txt) to try `predict`, `create-lmdb` and `eval` on."""
    written = write_samples(output_dir, count, seed, Charset.from_spec(charset))
    console.print(f"wrote {len(written)} images and {output_dir / 'gt.txt'}")
