"""Width-bucketed training batches (issue 11, item 2): samples of similar width are trained together.

Training pads every image to the model's full input width, yet the mean training sample fills 0.64 of it
(docs/model.md, "Input geometry"), and the backbone's and the recurrent layers' work grow with the width.
Cutting each batch to its own widest sample saves nothing by itself: a fifth of the samples are full width,
so nearly every batch holds one. `WidthBuckets` groups across batches instead. It takes the finished batches of
`pool` consecutive steps, sorts their samples by content width and deals them out again as batches of the
same sizes, each cut to its widest sample rounded up to `multiple` pixels (and wide enough for the CTC frames of
its longest label). Each source group (`--train-data` spec: synthetic, real, ...) is sorted and dealt apart, so
that every batch keeps the group's share, as unbucketed batches do: batch r takes the r-th narrowest slice of
each group (sorted together, the real crops, narrower than the synthetic texts, filled batches of their own).

For continuing a trained model: on the CPU a continuation of the shipped model tied its full-width twin at 1.31
times the samples per hour, but from scratch every bucketed run stayed on the CTC blank plateau far longer, while
runs that left it at full width trained on with buckets as well as without (docs/model.md, "Input geometry": it is
the batches' composition by width that does it, not the cut). So a run from scratch gives `start`, a step past the
plateau (`--width-buckets-from`): the steps before it train their batches at full width, as they come. No recipe
uses them. The batches are trained in an order drawn from (seed, pool), so that no step pattern (narrow first,
wide last) repeats from pool to pool.

What each sample looks like does not change: every batch is finished with its own step's random parameters
before the pool is sorted, and a cut removes only padding (columns that repeat the content's last one).
Which step trains which sample does change, and it is a function of (seed, step // pool): a run resumed
inside a pool finishes the whole pool again and skips the batches already trained. The last pool of a run may
be shorter (the run's `max_steps` ends it), so a run lengthened by resuming keeps its steps only up to the old
end's pool.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Callable, Iterable, Iterator

import torch

from ..charset import ctc_min_length
from .training import Batch

# Cut widths are multiples of this many model pixels: a few shapes only (cuDNN's autotuning and the CUDA
# graphs of the recurrent layer keep one plan per shape), for at most 15 px of padding per batch.
DEFAULT_MULTIPLE = 16


def _pool_seed(seed: int, pool: int) -> int:
    digest = hashlib.blake2b(repr((seed, "width-buckets", pool)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def bucket_start(step: int, pool: int) -> int:
    """The first bucketed step of `--width-buckets-from step`: the first whole pool's, so that pools keep their
    numbers (step // pool) and a run bucketed from there trains as a full-width run resumed there with buckets."""
    return -(-step // pool) * pool


def cut_width(widths: list[float], labels: list[str], full_width: int, multiple: int, output_length: Callable[[int], int]) -> int:
    """The width a batch of samples is cut to: its widest content rounded up to `multiple`, widened until the model
    emits enough frames for its longest label (CTC), never more than `full_width`."""
    width = min(full_width, max(multiple, math.ceil(max(widths) / multiple) * multiple))
    needed = max(ctc_min_length(label) for label in labels)
    while width < full_width and output_length(width) < needed:
        width = min(full_width, width + multiple)
    return width


def _groups(batch: Batch) -> list[int]:
    """Each sample's source group (one group where the batch does not say)."""
    return batch.groups or [0] * len(batch.labels)


class WidthBuckets:
    """Iterates (batch, images) over finished (batch, (images, widths)) items, `pool` steps at a time.

    `images`: (B, 1, H, full_width) model inputs; `widths`: (B,) content widths in model pixels. `first_step` is
    the step of the first item (a multiple of `pool`, or any step before `start`); the first `skip` batches are
    finished and sorted but not given out (a resumed run's). Steps before `start` (a multiple of `pool`; default:
    `first_step`) are given out as they come, at full width. Unreadable steps (images None) keep their place.
    """

    def __init__(
        self,
        finished: Iterable,
        pool: int,
        first_step: int,
        output_length: Callable[[int], int],
        seed: int = 0,
        skip: int = 0,
        multiple: int = DEFAULT_MULTIPLE,
        start: int | None = None,
    ):
        start = first_step if start is None else start
        if pool < 1:
            raise ValueError(f"pool must be at least 1, not {pool}")
        if start % pool:
            raise ValueError(f"start {start} does not start a pool of {pool}")
        if first_step >= start and first_step % pool:
            raise ValueError(f"first_step {first_step} does not start a pool of {pool}")
        if skip and first_step < start:
            raise ValueError(f"skip {skip} before the first bucketed step {start}: only a pool's batches are skipped")
        self.finished, self.pool, self.first_step, self.start = finished, pool, first_step, start
        self.output_length, self.seed, self.skip, self.multiple = output_length, seed, skip, multiple
        self.pixels = 0  # model-input columns trained so far (times samples), against...
        self.full_pixels = 0  # ...what full-width batches would have been: the saving is 1 - pixels / full_pixels

    def __iter__(self) -> Iterator[tuple[Batch, torch.Tensor | None]]:
        items = iter(self.finished)
        for batch, finished in itertools.islice(items, max(0, self.start - self.first_step)):  # before `start`: as they come
            if finished is None:
                yield batch, None
                continue
            images = finished[0]
            columns = images.shape[-1] * images.shape[0]  # at full width: trained and full-width columns alike
            self.pixels += columns
            self.full_pixels += columns
            yield batch, images
        number = max(self.first_step, self.start) // self.pool
        skip = self.skip
        while pool := list(itertools.islice(items, self.pool)):
            for batch, images in self.regroup(pool, number):
                if skip:
                    skip -= 1
                    continue
                yield batch, images
            number += 1

    def regroup(self, pool: list, number: int) -> list[tuple[Batch, torch.Tensor | None]]:
        """The pool's batches dealt out again by width (see the module docstring)."""
        readable = [k for k, (_, finished) in enumerate(pool) if finished is not None]
        if not readable:
            return [(batch, None) for batch, _ in pool]
        images = torch.cat([pool[k][1][0] for k in readable])
        widths = torch.cat([pool[k][1][1].reshape(-1) for k in readable]).float().cpu()
        labels = [label for k in readable for label in pool[k][0].labels]
        groups = [g for k in readable for g in _groups(pool[k][0])]
        lengths = torch.cat([pool[k][0].target_lengths for k in readable])
        targets = torch.cat([pool[k][0].targets for k in readable]).split(lengths.tolist())
        full_width = images.shape[-1]
        order = torch.sort(widths, stable=True).indices.tolist()
        by_group: dict[int, list[int]] = {}  # each group's samples, narrowest first
        for i in order:
            by_group.setdefault(groups[i], []).append(i)
        taken = dict.fromkeys(by_group, 0)
        slots = torch.randperm(len(readable), generator=torch.Generator().manual_seed(_pool_seed(self.seed, number))).tolist()
        dealt = [None] * len(readable)
        for rank, slot in enumerate(slots):  # the narrowest slice of every group goes to the first slot drawn, and so on
            chosen = []
            shares = _groups(pool[readable[rank]][0])
            for group in sorted(by_group):  # as many of each group as batch `rank` of the pool had
                count = shares.count(group)
                chosen += by_group[group][taken[group] : taken[group] + count]
                taken[group] += count
            chunk_labels = [labels[i] for i in chosen]
            width = cut_width([float(widths[i]) for i in chosen], chunk_labels, full_width, self.multiple, self.output_length)
            index = torch.tensor(chosen, device=images.device)
            chunk = images[..., :width].index_select(0, index)
            batch = Batch(
                raw=None,  # the raw samples are spread over the pool; the finished images are what trains
                targets=torch.cat([targets[i] for i in chosen]),  # a readable batch holds at least one sample
                target_lengths=lengths[chosen],
                labels=chunk_labels,
                errors=pool[readable[slot]][0].errors,
                groups=[groups[i] for i in chosen],
            )
            self.pixels += width * len(chosen)
            self.full_pixels += full_width * len(chosen)
            dealt[slot] = (batch, chunk)
        out, slot = [], 0
        for batch, finished in pool:
            if finished is None:
                out.append((batch, None))
            else:
                out.append(dealt[slot])
                slot += 1
        return out
