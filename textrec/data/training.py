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
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from PIL import Image

from ..charset import Charset, ctc_min_length
from ..errors import DataError
from .images import Preprocess, to_tensor
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
            from .synth import SynthSource  # the renderer is only imported when asked for

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
    permutation each epoch; an endless one uses consecutive indices.
    """

    def __init__(self, sizes: list[int | None], counts: list[int], seed: int, start_step: int, max_steps: int):
        self.sizes, self.counts, self.seed = sizes, counts, seed
        self.start_step, self.max_steps = start_step, max_steps
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
            yield self.keys_for_step(step)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


class TrainingSamples(torch.utils.data.Dataset):
    """Loads one (group, index, seed) key: the image as a tensor and its label, or the error that stopped it.

    Augmentation (of sources that do not set `augmentable = False`) runs under a per-sample seed, so a sample looks the same however many
    workers there are and after a resume.
    """

    def __init__(
        self,
        sources: list[Source],
        charset: Charset,
        preprocess: Preprocess,
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ):
        self.sources, self.charset, self.preprocess, self.augment = sources, charset, preprocess, augment

    def __getitem__(self, key):
        group, index, seed = key
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                source = self.sources[group]
                image, label = source.sample(index)
                if self.augment is not None and getattr(source, "augmentable", True):
                    image = self.augment(image)
            return to_tensor(image, self.preprocess), self.charset.normalize(label), None
        except DataError as exc:
            return None, None, str(exc)


@dataclass
class Batch:
    images: torch.Tensor  # (N, 1, H, W)
    targets: torch.Tensor  # concatenated class indices
    target_lengths: torch.Tensor
    labels: list[str]
    errors: list[str]  # samples of this step that could not be loaded (skipped, counted)


class Collate:
    """Stacks loaded samples into a Batch, keeping the errors of the skipped ones."""

    def __init__(self, charset: Charset):
        self.charset = charset

    def __call__(self, items) -> Batch:
        images, labels, errors, targets, lengths = [], [], [], [], []
        for image, label, error in items:
            if error is not None:
                errors.append(error)
                continue
            encoded = self.charset.encode(label)
            images.append(image)
            labels.append(label)
            targets.extend(encoded)
            lengths.append(len(encoded))
        stacked = torch.stack(images) if images else torch.empty(0)
        return Batch(stacked, torch.tensor(targets, dtype=torch.long), torch.tensor(lengths, dtype=torch.long), labels, errors)
