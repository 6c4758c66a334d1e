"""LMDB datasets in the layout of clovaai/deep-text-recognition-benchmark.

Keys: `num-samples` (decimal count), `image-%09d` (encoded image bytes) and
`label-%09d` (UTF-8 text), numbered from 1. Readers here index from 0.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import lmdb

from ..errors import DataError, RecordError
from .images import open_image

NUM_SAMPLES_KEY = b"num-samples"


def image_key(index: int) -> bytes:
    """Key of the image of the 0-based sample `index`."""
    return b"image-%09d" % (index + 1)


def label_key(index: int) -> bytes:
    return b"label-%09d" % (index + 1)


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

    def add(self, image_bytes: bytes, label: str) -> None:
        self._pending.append((image_key(self.count), image_bytes))
        self._pending.append((label_key(self.count), label.encode("utf-8")))
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


def read_gt_file(gt_file: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line bytes) of a gt file; parsing is the caller's, so bad lines can be reported."""
    try:
        raw = gt_file.read_bytes()
    except OSError as exc:
        raise DataError(f"{gt_file}: cannot read ({exc.strerror or exc})") from None
    for number, line in enumerate(raw.splitlines(), start=1):
        yield number, line


def create_lmdb(
    gt_file: str | Path,
    output: str | Path,
    root: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_skip: Callable[[int, str], None] | None = None,
) -> CreateReport:
    """Build an LMDB from a gt file of `image-path<TAB>label` lines.

    Paths are relative to the gt file's folder unless `root` is given. Every image is
    decoded to check it; bad lines are skipped and reported through `on_skip(line, reason)`.
    The output is written to a temporary folder and renamed into place when complete.
    """
    gt_path = Path(gt_file)
    base = Path(root) if root is not None else gt_path.parent
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: output exists and is not an empty folder")
    lines = list(read_gt_file(gt_path))
    report = CreateReport()
    staging = output.with_name(output.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)

    def skip(number: int, reason: str) -> None:
        report.skipped.append((number, reason))
        if on_skip:
            on_skip(number, reason)

    try:
        with LmdbWriter(staging) as writer:
            for done, (number, raw) in enumerate(lines, start=1):
                if on_progress:
                    on_progress(done, len(lines))
                try:
                    line = raw.decode("utf-8").rstrip("\r")
                except UnicodeDecodeError:
                    skip(number, "line is not valid UTF-8")
                    continue
                if not line.strip():
                    continue  # blank lines are not samples
                if "\t" not in line:
                    skip(number, "no tab between image path and label")
                    continue
                rel, label = line.split("\t", 1)
                if not label:
                    skip(number, "empty label")
                    continue
                image_path = base / rel
                try:
                    data = image_path.read_bytes()
                except OSError as exc:
                    skip(number, f"{image_path}: cannot read ({exc.strerror or exc})")
                    continue
                try:
                    open_image(data, str(image_path))
                except DataError as exc:
                    skip(number, str(exc))
                    continue
                writer.add(data, label)
        report.written = writer.count
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        output.rmdir()
    staging.rename(output)
    return report
