"""LMDB datasets in the layout of clovaai/deep-text-recognition-benchmark.

Keys: `num-samples` (decimal count), `image-%09d` (encoded image bytes) and
`label-%09d` (UTF-8 text), numbered from 1. Readers here index from 0. An optional
`lexicon-%09d` (UTF-8, comma-separated words) is the sample's own lexicon, as benchmarks such
as SVT and IIIT5K give one of 50 or 1,000 words per image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import lmdb

from ..errors import DataError, OutputError, RecordError
from ..files import Unreadable, check_output_parent, os_reason, read_regular, read_text_file
from .images import open_image

# An image file larger than this is not a word crop; it is refused before being read.
MAX_IMAGE_FILE_BYTES = 256 << 20

NUM_SAMPLES_KEY = b"num-samples"


def image_key(index: int) -> bytes:
    """Key of the image of the 0-based sample `index`."""
    return b"image-%09d" % (index + 1)


def label_key(index: int) -> bytes:
    return b"label-%09d" % (index + 1)


def lexicon_key(index: int) -> bytes:
    return b"lexicon-%09d" % (index + 1)


class LmdbWriter:
    """Appends samples to a new LMDB; the map grows as needed instead of reserving a terabyte.

    The count is written on `close()`, so an interrupted write leaves a folder without
    `num-samples`, which readers refuse clearly. Use as a context manager.
    """

    def __init__(self, path: str | Path, initial_map_size: int = 64 << 20, commit_every: int = 1000):
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()):
            raise DataError(f"{self.path}: output folder exists and is not empty")
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.path), map_size=initial_map_size, subdir=True, lock=True)
        self._pending: list[tuple[bytes, bytes]] = []
        self._commit_every = commit_every
        self.count = 0

    def add(self, image_bytes: bytes, label: str, lexicon: list[str] | None = None) -> None:
        """Append a sample; `lexicon`: its own words (none may hold a comma), stored when given, even empty."""
        self._pending.append((image_key(self.count), image_bytes))
        self._pending.append((label_key(self.count), label.encode("utf-8")))
        if lexicon is not None:
            self._pending.append((lexicon_key(self.count), ",".join(lexicon).encode("utf-8")))
        self.count += 1
        if len(self._pending) >= 2 * self._commit_every:
            self._flush()

    def _flush(self, extra: list[tuple[bytes, bytes]] = ()) -> None:
        items = self._pending + list(extra)
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                # The aborted transaction wrote nothing; double the map and retry.
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
        self._pending = []

    def close(self) -> None:
        self._flush([(NUM_SAMPLES_KEY, str(self.count).encode())])
        self._env.sync()
        self._env.close()

    def abort(self) -> None:
        self._env.close()

    def __enter__(self) -> "LmdbWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_staging_folder(path: str | Path) -> None:
    """Refuse a staging path (`OUTPUT.partial`, which a writer removes as its own stale leftover) that holds
    anything but an LMDB's own files: it would be someone's folder."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir() or set(os.listdir(path)) - {"data.mdb", "lock.mdb"}:
        raise OutputError(f"{path}: exists and is not a staging LMDB of textrec (it would be replaced); move it away")


# lmdb allows one environment per file and process: readers of the same folder share it.
# The key includes the data file's inode, so a folder rewritten in place gets a fresh environment.
_READONLY_ENVS: dict[tuple[int, str, int], lmdb.Environment] = {}
# Bumped by close_all(), so datasets know their environment was closed and reopen it.
_generation = 0


def close_all() -> None:
    """Close every environment this process opened for reading.

    Call it before forking worker processes: py-lmdb remembers open environments across fork(),
    and a child could then neither use the parent's environment nor open its own.
    """
    global _generation
    for key in [k for k in _READONLY_ENVS if k[0] == os.getpid()]:
        _READONLY_ENVS.pop(key).close()
    _generation += 1


def _open_readonly(path: Path) -> lmdb.Environment:
    try:
        key = (os.getpid(), str(path.resolve()), (path / "data.mdb").stat().st_ino)
    except OSError as exc:
        raise DataError(f"{path}: cannot open as LMDB ({exc.strerror or exc})") from None
    env = _READONLY_ENVS.get(key)
    if env is None:
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=64)
        except lmdb.Error as exc:
            raise DataError(f"{path}: cannot open as LMDB ({exc})") from None
        _READONLY_ENVS[key] = env
    return env


class LmdbDataset:
    """Random access to the samples of one LMDB folder.

    The environment is opened lazily per process, so the object can be handed to
    DataLoader workers (an LMDB environment must not cross a fork).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: LMDB folder does not exist")
        if not (self.path / "data.mdb").is_file():
            raise DataError(f"{self.path}: not an LMDB folder (no data.mdb inside)")
        self._env = None
        self._opened_as = None  # (pid, generation) the environment belongs to
        with self._txn() as txn:
            raw = txn.get(NUM_SAMPLES_KEY)
        if raw is None:
            raise DataError(f"{self.path}: no 'num-samples' key (not a complete textrec/DTRB LMDB)")
        try:
            self.num_samples = int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise DataError(f"{self.path}: 'num-samples' is not a number ({raw[:20]!r})") from None
        if self.num_samples < 0:
            raise DataError(f"{self.path}: 'num-samples' is negative ({self.num_samples})")
        # The count is untrusted: checked against what the file holds before anything loops over it.
        # Every record takes at least one key, so a count above the number of keys is corrupt.
        entries = self._env.stat()["entries"]
        if self.num_samples > entries:
            raise DataError(
                f"{self.path}: 'num-samples' is {self.num_samples:,} but the LMDB holds only {entries:,} keys "
                "(a corrupt count; nothing was read)"
            )

    def _txn(self):
        if self._opened_as != (os.getpid(), _generation):
            self._env = _open_readonly(self.path)
            self._opened_as = (os.getpid(), _generation)
        return self._env.begin(write=False, buffers=False)

    def __len__(self) -> int:
        return self.num_samples

    def where(self, index: int) -> str:
        """How messages name a record: the folder and the 1-based key number."""
        return f"{self.path} record {index + 1}"

    def _missing(self, txn, index: int, which: str) -> RecordError:
        other, other_key = ("label", label_key(index)) if which == "image" else ("image", image_key(index))
        if txn.get(other_key) is not None:
            return RecordError(self.where(index), f"{which} key is missing")
        return RecordError(
            self.where(index),
            f"{which} key is missing, and so is the {other}: num-samples ({self.num_samples}) counts a record the LMDB does not hold",
        )

    def read_label(self, index: int) -> str:
        with self._txn() as txn:
            return self._label(txn, index)

    def _label(self, txn, index: int) -> str:
        raw = txn.get(label_key(index))
        if raw is None:
            raise self._missing(txn, index, "label")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(self.where(index), "label is not valid UTF-8") from None

    def read(self, index: int) -> tuple[bytes, str]:
        """The encoded image bytes and label of the 0-based sample `index`."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        with self._txn() as txn:
            image = txn.get(image_key(index))
            if image is None:
                raise self._missing(txn, index, "image")
            return image, self._label(txn, index)

    def has_lexicons(self) -> bool:
        """Whether any sample has its own lexicon (a `lexicon-%09d` key)."""
        with self._txn() as txn:
            cursor = txn.cursor()
            return cursor.set_range(b"lexicon-") and cursor.key().startswith(b"lexicon-")

    def read_lexicon(self, index: int) -> list[str] | None:
        """The words of the sample's own lexicon (None: it has none); RecordError names a record that is not UTF-8."""
        with self._txn() as txn:
            raw = txn.get(lexicon_key(index))
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(self.where(index), "lexicon is not valid UTF-8") from None
        return [word.strip() for word in text.split(",") if word.strip()]

    def read_image(self, index: int):
        """The sample's decoded grayscale image and its label; RecordError names the record."""
        data, label = self.read(index)
        try:
            return open_image(data, self.where(index)), label
        except DataError as exc:
            raise RecordError(self.where(index), str(exc).split(": ", 1)[-1]) from None

    def labels(self) -> Iterator[tuple[int, str | RecordError]]:
        """Every sample's label (or the error reading it), in one read transaction."""
        with self._txn() as txn:
            for index in range(self.num_samples):
                try:
                    yield index, self._label(txn, index)
                except RecordError as exc:
                    yield index, exc


@dataclass
class CreateReport:
    written: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


# A gt file is read whole; a larger one is surely not a gt file (DTRB's largest is a few hundred MB).
MAX_GT_BYTES = 4 << 30
# Characters a label must not hold: the gt format's separators and anything invisible that breaks lines.
_LABEL_BREAKERS = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


def read_gt_file(gt_file: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw UTF-8 line bytes) of a gt file; parsing is the caller's, so bad lines can be reported.

    A UTF-8 byte-order mark is dropped; a UTF-16 file (with its byte-order mark) is read as such.
    """
    raw = read_text_file(gt_file, MAX_GT_BYTES, "the gt file")
    for number, line in enumerate(raw.splitlines(), start=1):
        yield number, line


def label_problem(label: str, what: str = "label") -> str | None:
    """Why a label (or, `what="lexicon"`, a lexicon column) cannot be stored (a tab, a control character, a line
    break), or None."""
    if "\t" in label:
        if what == "label":
            return ("label holds a tab (only one tab may separate the image path from the label; "
                    "a third column of lexicon words needs --lexicons)")
        return f"{what} holds a tab (a line has at most three tab-separated columns)"
    for char in label:
        kind = _LABEL_BREAKERS.get(unicodedata.category(char))
        if kind:
            return f"{what} holds {kind} (U+{ord(char):04X})"
    return None


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def create_lmdb(
    gt_file: str | Path,
    output: str | Path,
    root: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_skip: Callable[[int, str], None] | None = None,
    allow_outside_root: bool = False,
    lexicons: bool = False,
) -> CreateReport:
    """Build an LMDB from a gt file of `image-path<TAB>label` lines.

    With `lexicons`, every line has a third column, the sample's own lexicon as comma-separated words
    (`image-path<TAB>label<TAB>word,word,...`; empty for none), stored as `lexicon-%09d`.

    Paths are relative to the gt file's folder unless `root` is given; a path that resolves outside
    that folder (`..`, an absolute path, a symbolic link) is refused unless `allow_outside_root`.
    Every image is decoded to check it; bad lines (unreadable image, special file, label with a tab or
    a control character, ...) are skipped and reported through `on_skip(line, reason)`.
    The output is written to a temporary sibling folder and renamed into place when complete; when
    nothing could be written, or on any failure, nothing is left behind (DataError for no samples).
    """
    gt_path = Path(gt_file)
    base = Path(root) if root is not None else gt_path.parent
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: output exists and is not an empty folder")
    if not base.is_dir():
        raise DataError(f"{base}: the root folder of the image paths does not exist or is not a folder")
    check_output_parent(output)
    lines = list(read_gt_file(gt_path))
    base_real = os.path.realpath(base)
    report = CreateReport()

    def skip(number: int, reason: str) -> None:
        report.skipped.append((number, reason))
        if on_skip:
            on_skip(number, reason)

    created = _make_parents(output.parent)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
        with LmdbWriter(staging) as writer:
            for done, (number, raw) in enumerate(lines, start=1):
                if on_progress:
                    on_progress(done, len(lines))
                try:
                    line = raw.decode("utf-8").rstrip("\r")
                except UnicodeDecodeError as exc:
                    skip(number, f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}; "
                                 "is the file in another encoding?)")
                    continue
                if not line.strip():
                    continue  # blank lines are not samples
                if "\t" not in line:
                    skip(number, "no tab between image path and label")
                    continue
                rel, label = line.split("\t", 1)
                words = None
                if lexicons:
                    label, tab, column = label.partition("\t")
                    if not tab:
                        skip(number, "no lexicon column (with --lexicons a line is image<TAB>label<TAB>word,word,...)")
                        continue
                    problem = label_problem(column, "lexicon")
                    if problem:
                        skip(number, problem)
                        continue
                    words = [word.strip() for word in column.split(",") if word.strip()]
                if not label:
                    skip(number, "empty label")
                    continue
                problem = label_problem(label)
                if problem:
                    skip(number, problem)
                    continue
                if not rel:
                    skip(number, "empty image path")
                    continue
                image_path = base / rel
                if not allow_outside_root and not _inside(os.path.realpath(image_path), base_real):
                    skip(number, f"{image_path}: resolves outside the root folder {base} "
                                 f"(to {os.path.realpath(image_path)}); allow it with --allow-outside-root")
                    continue
                try:
                    data = read_regular(image_path, MAX_IMAGE_FILE_BYTES)
                except Unreadable as exc:
                    skip(number, f"{image_path}: {exc.reason}")
                    continue
                try:
                    open_image(data, str(image_path))
                except DataError as exc:
                    skip(number, str(exc))
                    continue
                writer.add(data, label, words)
        report.written = writer.count
        if report.written == 0:
            first = f" (line {report.skipped[0][0]}: {report.skipped[0][1]})" if report.skipped else ""
            raise DataError(
                f"{gt_path}: no sample written, {len(report.skipped)} of {len(lines)} lines skipped{first}; "
                f"image paths are read relative to {base} (see --root); nothing was created"
            )
        if output.exists():
            output.rmdir()
        os.rename(staging, output)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{output}: cannot write the LMDB ({os_reason(exc)}); nothing was left behind") from None
        if isinstance(exc, lmdb.Error):
            raise OutputError(f"{output}: cannot write the LMDB ({exc}); nothing was left behind") from None
        raise
    return report


def _make_parents(folder: Path) -> Path | None:
    """Create `folder` and missing parents; returns the topmost one created (to remove on failure), or None."""
    missing = [p for p in [folder, *folder.parents] if not os.path.lexists(p)]
    if not missing:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the folder ({os_reason(exc)})") from None
    return missing[-1]
