"""`eval --errors DIR`: every misread sample as an image file, a JSON line and a row of a contact sheet.

    DIR/errors.jsonl                   one object per sample read wrong or not read (unreadable)
    DIR/images/<set>/<record>.png      the image of each misread sample, as the model saw it (grayscale)
    DIR/sheets/<set>-001.png, ...      contact sheets of 40 rows: record, image, label, prediction, confidence

`record` is the 1-based number of the LMDB's keys (`image-000000123` is record 123). A folder that eval did not
make is refused when it is not empty, unless `overwrite` (its files of the same names are then replaced); a
folder eval made before is emptied of its previous errors first.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import OutputError
from .evaluate import Misread
from .files import check_output_parent, make_output_folder, os_reason

ERRORS_FILE = "errors.jsonl"
IMAGES = "images"
SHEETS = "sheets"
ROWS_PER_SHEET = 40

# Contact sheet layout, in pixels: columns (title, width), row height, margin.
_COLUMNS = (("record", 90), ("image", 320), ("label", 250), ("prediction", 250), ("confidence", 100))
_ROW = 40
_MARGIN = 8
_IMAGE_HEIGHT = 32


def _ours(folder: Path) -> bool:
    """Whether the folder holds only what an earlier `eval --errors` wrote."""
    entries = set(os.listdir(folder))
    return ERRORS_FILE in entries and entries <= {ERRORS_FILE, IMAGES, SHEETS}


def check_errors_folder(folder: str | Path, overwrite: bool = False) -> None:
    """Check, before any work, that `folder` may receive the error report (OutputError says why not)."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        check_output_parent(folder)
        return
    if folder.is_dir() and os.listdir(folder) and not overwrite and not _ours(folder):
        raise OutputError(
            f"{folder}: folder exists and is not empty (not an `eval --errors` folder); give another folder, "
            "or --overwrite to write into it"
        )
    make_output_folder(folder)  # a file, a dangling link or an unwritable folder: one line naming it


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name).strip(".") or "set"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` cut (with an ellipsis) to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


class ErrorReport:
    """Writes the misread samples of an evaluation into a folder (see the module's description).

    Create it after `check_errors_folder` and before the evaluation; hand `add` to `evaluate_dataset` as
    `on_misread`; `close` writes the last sheets. OutputError names a file that cannot be written.
    """

    def __init__(self, folder: str | Path, overwrite: bool = False):
        self.folder = Path(folder)
        check_errors_folder(self.folder, overwrite)
        make_output_folder(self.folder)
        if _ours(self.folder):
            self._remove_previous()
        self.misread = 0
        self.unreadable = 0
        self.sheets = 0
        self._sets: dict[tuple[str, str], str] = {}  # (name, LMDB folder) -> folder name
        self._rows: dict[str, list[Misread]] = {}
        self._pages: dict[str, int] = {}
        self._font = ImageFont.load_default(size=15)
        self._jsonl = self._open(self.folder / ERRORS_FILE)

    def _remove_previous(self) -> None:
        for name in (ERRORS_FILE, IMAGES, SHEETS):
            path = self.folder / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    path.unlink()
            except OSError as exc:
                raise OutputError(f"{path}: cannot remove the previous error report ({os_reason(exc)})") from None

    @staticmethod
    def _open(path: Path):
        try:
            return open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({os_reason(exc)})") from None

    def _set_folder(self, sample: Misread) -> str:
        key = (sample.dataset, sample.path)
        if key not in self._sets:
            base = _safe_name(sample.dataset)
            name, taken = base, set(self._sets.values())
            number = 2
            while name in taken:
                name, number = f"{base}-{number}", number + 1
            self._sets[key] = name
        return self._sets[key]

    def add(self, sample: Misread) -> None:
        """Record one sample read wrong (or not read)."""
        name = self._set_folder(sample)
        record = {"dataset": sample.dataset, "lmdb": sample.path, "record": sample.record, "label": sample.label}
        try:
            if sample.image is not None:
                relative = Path(IMAGES, name, f"{sample.record:09d}.png")
                (self.folder / relative).parent.mkdir(parents=True, exist_ok=True)
                sample.image.save(self.folder / relative)
                record["image"] = str(relative)
            if sample.error is None:
                self.misread += 1
                confidence = sample.confidence if sample.confidence is not None and math.isfinite(sample.confidence) else None
                record.update(prediction=sample.prediction, confidence=None if confidence is None else round(confidence, 4))
            else:
                self.unreadable += 1
                record["error"] = sample.error
            rows = self._rows.setdefault(name, [])
            rows.append(sample)
            record["sheet"] = str(Path(SHEETS, f"{name}-{self._pages.get(name, 0) + 1:03d}.png"))
            self._jsonl.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            if len(rows) >= ROWS_PER_SHEET:
                self._write_sheet(name)
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write the error report ({os_reason(exc)})") from None

    def close(self) -> None:
        """Write the sheets not yet full and close the JSON lines file."""
        try:
            for name in list(self._rows):
                if self._rows[name]:
                    self._write_sheet(name)
            self._jsonl.close()
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write the error report ({os_reason(exc)})") from None

    def _write_sheet(self, name: str) -> None:
        rows = self._rows[name]
        page = self._pages.get(name, 0) + 1
        width = 2 * _MARGIN + sum(w for _, w in _COLUMNS)
        sheet = Image.new("RGB", (width, _MARGIN * 2 + _ROW * (len(rows) + 1)), "white")
        draw = ImageDraw.Draw(sheet)
        font = self._font
        lefts = [_MARGIN + sum(w for _, w in _COLUMNS[:i]) for i in range(len(_COLUMNS))]
        draw.text((_MARGIN, _MARGIN + 4), f"{rows[0].dataset}  page {page}", font=font, fill="black")
        for (title, _), left in zip(_COLUMNS[2:], lefts[2:]):
            draw.text((left, _MARGIN + 4), title, font=font, fill="gray")
        for number, sample in enumerate(rows, start=1):
            top = _MARGIN + _ROW * number
            if number % 2:
                draw.rectangle((0, top, width, top + _ROW - 1), fill=(242, 242, 242))
            middle = top + _ROW // 2
            cells = [str(sample.record), "", sample.label if sample.label is not None else "(label unreadable)"]
            if sample.error is None:
                confidence = "-" if sample.confidence is None or not math.isfinite(sample.confidence) else f"{sample.confidence:.3f}"
                cells += [sample.prediction or "(nothing read)", confidence]
                colours = ["black", None, "black", (200, 0, 0), "black"]
            else:
                cells += ["unreadable: " + sample.error.rsplit(": ", 1)[-1], ""]
                colours = ["black", None, "black", (150, 90, 0), "black"]
            for text, colour, left, (_, cell) in zip(cells, colours, lefts, _COLUMNS):
                if colour is not None and text:
                    draw.text((left, middle), _fit(draw, text, font, cell - 8), font=font, fill=colour, anchor="lm")
            if sample.image is not None:
                image = sample.image
                scale = min(_IMAGE_HEIGHT / max(image.height, 1), (_COLUMNS[1][1] - 8) / max(image.width, 1))
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                sheet.paste(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), (lefts[1], middle - size[1] // 2))
        path = self.folder / SHEETS / f"{name}-{page:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
        self._pages[name] = page
        self._rows[name] = []
        self.sheets += 1
