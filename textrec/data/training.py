"""Training data: sources with ratios, label screening, and a batch sampler that resumes exactly.

A `--train-data` spec is `PATH[:RATIO]`, where PATH may be a glob over LMDB folders (all of them
form one group that shares the ratio), or `synth[:RATIO]` for the on-the-fly renderer. Each batch
holds a fixed share of every group, as deep-text-recognition-benchmark's `batch_ratio`.

The sample order is a pure function of (seed, step): a resumed run reads exactly the
batches that the interrupted run would have read, without saving any sampler state.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from ..charset import Charset, ctc_min_length
from ..errors import DataError
from ..synth.pipeline import collate_raw, raw_real
from ..synth.scene import RawBatch
from .lmdb_store import LmdbDataset

SYNTH_NAME = "synth"


class Source(Protocol):
    """A group of training samples. `size` is None for an endless generator."""

    name: str
    size: int | None

    def sample(self, index: int) -> tuple[Image.Image, str]: ...


@dataclass
class Screening:
    """What label screening kept and dropped from one LMDB (nothing is dropped silently)."""

    kept: int = 0
    empty: int = 0
    unknown_chars: int = 0
    too_long: int = 0
    unreadable: int = 0
    examples: list[str] = field(default_factory=list)  # a few messages, to show the user

    @property
    def dropped(self) -> int:
        return self.empty + self.unknown_chars + self.too_long + self.unreadable

    def note(self, message: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(message)


class LmdbSource:
    """The usable samples of one or more LMDB folders, after label screening."""

    def __init__(self, name: str, datasets: list[LmdbDataset], charset: Charset, max_frames: int):
        self.name = name
        self.datasets = datasets
        self.screening = Screening()
        self._index: list[tuple[int, int]] = []  # (dataset number, record index)
        for number, dataset in enumerate(datasets):
            for index, label in dataset.labels():
                reason = screen_label(label, charset, max_frames)
                if reason is None:
                    self._index.append((number, index))
                    self.screening.kept += 1
                else:
                    setattr(self.screening, reason, getattr(self.screening, reason) + 1)
                    detail = str(label) if reason == "unreadable" else f"{reason.replace('_', ' ')}: {label!r}"
                    self.screening.note(f"{dataset.where(index)}: {detail}")
        self.size = len(self._index)

    def sample(self, index: int) -> tuple[Image.Image, str]:
        number, record = self._index[index]
        return self.datasets[number].read_image(record)


def screen_label(label, charset: Charset, max_frames: int) -> str | None:
    """Why a label cannot be trained on (a Screening field name), or None if it is fine."""
    if isinstance(label, Exception):
        return "unreadable"
    text = charset.normalize(label)
    if not text:
        return "empty"
    if charset.unknown_chars(text):
        return "unknown_chars"
    if ctc_min_length(text) > max_frames:
        return "too_long"
    return None


def parse_spec(spec: str) -> tuple[str, float]:
    """Split `PATH[:RATIO]`; the ratio must be a positive number."""
    path, sep, ratio = spec.rpartition(":")
    if sep and path:
        try:
            value = float(ratio)
        except ValueError:
            return spec, 1.0  # a colon inside the path, not a ratio
        if value <= 0:
            raise DataError(f"training data {spec!r}: ratio must be positive")
        return path, value
    return spec, 1.0


def open_sources(
    specs: list[str], charset: Charset, max_frames: int, seed: int, synth_options: dict | None = None
) -> tuple[list[Source], list[float]]:
    """Resolve `--train-data` specs to sources and their normalised batch shares."""
    sources: list[Source] = []
    ratios: list[float] = []
    for spec in specs:
        path, ratio = parse_spec(spec)
        if path == SYNTH_NAME:
            from ..synth.pipeline import SynthSource

            sources.append(SynthSource(seed=seed, charset=charset, **(synth_options or {})))
        else:
            folders = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
            folders = [f for f in folders if Path(f).is_dir()]
            if not folders:
                raise DataError(f"training data {path!r}: no LMDB folder matches")
            sources.append(LmdbSource(path, [LmdbDataset(f) for f in folders], charset, max_frames))
            if sources[-1].size == 0:
                raise DataError(f"training data {path!r}: no usable samples after screening labels")
        ratios.append(ratio)
    total = sum(ratios)
    return sources, [r / total for r in ratios]


def split_batch(batch_size: int, shares: list[float]) -> list[int]:
    """Samples per group in every batch: largest-remainder rounding, at least one per group."""
    if batch_size < len(shares):
        raise DataError(f"batch size {batch_size} is smaller than the number of training sources ({len(shares)})")
    exact = [batch_size * s for s in shares]
    counts = [max(1, int(x)) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    i = 0
    while sum(counts) < batch_size:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > batch_size:
        largest = max(range(len(counts)), key=counts.__getitem__)
        counts[largest] -= 1
    return counts


def _seed_of(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps `start_step`, `start_step + 1`, ..., the list of (group, index, sample seed) keys.

    Group g contributes `counts[g]` samples per step; a finite group walks through a fresh
    permutation each epoch; an endless one uses consecutive indices. In a distributed run, rank r of
    `world` processes takes keys r, r + world, ... of each step's (global) batch: the ranks read
    different samples, and together those of the same step at any number of processes.
    """

    def __init__(
        self, sizes: list[int | None], counts: list[int], seed: int, start_step: int, max_steps: int,
        rank: int = 0, world: int = 1,
    ):
        self.sizes, self.counts, self.seed = sizes, counts, seed
        self.start_step, self.max_steps = start_step, max_steps
        self.rank, self.world = rank, world
        self._perms: dict[tuple[int, int], list[int]] = {}

    def _permutation(self, group: int, epoch: int) -> list[int]:
        key = (group, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != group}  # keep one epoch per group
            generator = torch.Generator().manual_seed(_seed_of(self.seed, group, epoch))
            self._perms[key] = torch.randperm(self.sizes[group], generator=generator).tolist()
        return self._perms[key]

    def keys_for_step(self, step: int) -> list[tuple[int, int, int]]:
        keys = []
        for group, (size, count) in enumerate(zip(self.sizes, self.counts)):
            for position in range(step * count, (step + 1) * count):
                if size is None:
                    index = position
                else:
                    index = self._permutation(group, position // size)[position % size]
                keys.append((group, index, _seed_of(self.seed, "sample", group, position)))
        return keys

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            yield self.keys_for_step(step)[self.rank :: self.world]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


class TrainingSamples(torch.utils.data.Dataset):
    """Loads one (group, index, seed) key as a raw sample for the device stage, or the error that stopped it.

    A synthetic source gives its rasterised text (`textrec.synth.glyphs`); an LMDB source gives
    its decoded crop at the working canvas height. Everything random happens later, batched on
    the training device with the batch's step as seed (`textrec.synth.pipeline.Finisher`), so a
    sample looks the same however many workers there are and after a resume.
    """

    def __init__(self, sources: list[Source], charset: Charset, canvas_size: tuple[int, int], keep_ratio: bool = True, scale: int = 2):
        self.sources, self.charset = sources, charset
        self.canvas_height, self.canvas_width = canvas_size
        self.keep_ratio, self.scale = keep_ratio, scale

    def __getitem__(self, key):
        group, index, _seed = key
        try:
            source = self.sources[group]
            if hasattr(source, "raw"):
                sample = source.raw(index)
            else:
                image, label = source.sample(index)
                sample = raw_real(image, label, self.canvas_height, self.canvas_width, self.keep_ratio, self.scale)
            sample.label = self.charset.normalize(sample.label)
            sample.group = group
            return sample, None
        except DataError as exc:
            return None, str(exc)


@dataclass
class Batch:
    raw: RawBatch | None  # None: no sample of the step could be read
    targets: torch.Tensor  # concatenated class indices
    target_lengths: torch.Tensor
    labels: list[str]
    errors: list[str]  # samples of this step that could not be loaded (skipped, counted)
    groups: list[int] = field(default_factory=list)  # each sample's source group

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True): page-locked pixels copy to the GPU asynchronously."""
        if self.raw is not None:
            self.raw = RawBatch(*(t.pin_memory() for t in (self.raw.pixels, self.raw.sizes, self.raw.ink, self.raw.em, self.raw.is_real)))
        return self


class Collate:
    """Pads the loaded samples into one raw batch, keeping the errors of the skipped ones."""

    def __init__(self, charset: Charset):
        self.charset = charset

    def __call__(self, items) -> Batch:
        samples, errors, targets, lengths = [], [], [], []
        for sample, error in items:
            if error is not None:
                errors.append(error)
                continue
            encoded = self.charset.encode(sample.label)
            samples.append(sample)
            targets.extend(encoded)
            lengths.append(len(encoded))
        raw, labels = collate_raw(samples) if samples else (None, [])
        targets, lengths = torch.tensor(targets, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)
        return Batch(raw, targets, lengths, labels, errors, [sample.group for sample in samples])


def step_loader(
    sources: list[Source], counts: list[int], charset: Charset, finisher, keep_ratio: bool, seed: int,
    start_step: int, max_steps: int, workers: int = 0, rank: int = 0, world: int = 1, **options,
) -> torch.utils.data.DataLoader:
    """The loader of steps `start_step` .. `max_steps - 1`: per step, `counts[g]` raw samples of each source group
    (rank `rank` of `world` takes its share), loaded for `finisher` (its canvas and scale) and collated into one
    `Batch`. `options` go to the DataLoader (pin_memory, prefetch_factor, generator, worker_init_fn)."""
    return torch.utils.data.DataLoader(
        TrainingSamples(sources, charset, finisher.canvas_size, keep_ratio, finisher.scale),
        batch_sampler=StepBatchSampler([s.size for s in sources], counts, seed, start_step, max_steps, rank, world),
        collate_fn=Collate(charset),
        num_workers=workers,
        **options,
    )
