"""Why width-bucketed batches keep a model on the CTC blank plateau: `textrec train` with one mechanism changed.

From scratch, `--width-buckets` runs left the plateau far later than full-width ones (docs/model.md, "Input
geometry"). Bucketed batches differ from full-width ones in two ways: they are cut narrower (fewer frames, less
padding), and each holds samples of one width class (so, of similar label lengths). This runs the ordinary
`textrec train` command with one of these changed, to tell the causes apart:

* `uncut`: the batches are sorted and dealt as with `--width-buckets`, but every one stays at the full width
  (`textrec.data.buckets.cut_width` returns the full width): the composition without the cut.
* `groupnorm`: every BatchNorm2d of the backbone becomes GroupNorm(8 groups), which normalises each sample on
  its own: no statistics across the batch, so batches of one width class cannot skew them.
* `ctcsum`: each sample's CTC loss is not divided by its label's length (the batch's mean of the per-sample
  sums, where textrec's loss, torch's "mean", divides each by its length first): batches of long words then weigh
  as much per character as batches of short ones.
* `shuffled`: the control. The batches go through the same pooling and dealing code, but each sample is ranked
  by a random key instead of its width, and no batch is cut: random batches at the full width, as without
  `--width-buckets`, through the bucketed code path.

    OMP_NUM_THREADS=1 python benchmarks/bucket_plateau.py uncut train --config checkpoints/ablation.toml \
        --seed 0 --amp-dtype bfloat16 --width-buckets 16 --output runs/plateau/uncut_s0
    OMP_NUM_THREADS=1 python benchmarks/bucket_plateau.py groupnorm train --config checkpoints/ablation.toml \
        --seed 0 --amp-dtype bfloat16 --width-buckets 0 --output runs/plateau/gn_wb0

The runs' checkpoints are for these experiments only: a `groupnorm` checkpoint does not load in textrec (its
weights are not the architecture's).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch
from torch import nn

import textrec.data.buckets as buckets
import textrec.model.backbones as backbones
import textrec.train as training

VARIANTS = ("uncut", "groupnorm", "ctcsum", "shuffled")
GROUPS = 8  # divides every backbone width (32 and up)


class _TorchWith:
    """Stands in for a module's `torch.nn`, with some of its classes replaced."""

    def __init__(self, **replaced):
        self.replaced = replaced

    def __getattr__(self, name: str):
        return self.replaced[name] if name in self.replaced else getattr(nn, name)


class _PerSampleCTC(nn.Module):
    """CTC loss as the batch's mean of per-sample sums (not divided by each label's length)."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False):
        super().__init__()
        self.ctc = nn.CTCLoss(blank=blank, reduction="none", zero_infinity=zero_infinity)

    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return self.ctc(log_probs, targets, input_lengths, target_lengths).mean()


def _full_width(widths, labels, full_width, multiple, output_length) -> int:
    return full_width


def _ranked_at_random(regroup):
    """`WidthBuckets.regroup` with every sample's width replaced by a random key (drawn from the pool's number)."""

    def shuffled(self, pool: list, number: int):
        generator = torch.Generator().manual_seed(number)
        keyed = [
            (batch, None if finished is None else (finished[0], torch.rand(finished[1].shape, generator=generator)))
            for batch, finished in pool
        ]
        return regroup(self, keyed, number)

    return shuffled


@contextlib.contextmanager
def patched(patches: list[tuple[object, str, object]]) -> Iterator[None]:
    """Each (owner, attribute, value) set inside the block, and the old values put back after it."""
    saved = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in patches]
    for owner, attribute, value in patches:
        setattr(owner, attribute, value)
    try:
        yield
    finally:
        for owner, attribute, value in saved:
            setattr(owner, attribute, value)


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """textrec with the named mechanism changed, inside the block."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    patches = {
        "uncut": [(buckets, "cut_width", _full_width)],
        "groupnorm": [(backbones, "nn", _TorchWith(BatchNorm2d=lambda channels: nn.GroupNorm(GROUPS, channels)))],
        "ctcsum": [(training, "nn", _TorchWith(CTCLoss=_PerSampleCTC))],
        "shuffled": [(buckets, "cut_width", _full_width),
                     (buckets.WidthBuckets, "regroup", _ranked_at_random(buckets.WidthBuckets.regroup))],
    }[name]
    with patched(patches):
        yield


def run_textrec(argv: list[str], variant, usage: str) -> None:
    """`textrec ARGS` inside `variant(NAME)`, for a command line `NAME ARGS`."""
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(usage)
    from cli.main import app

    with variant(argv[0]):
        app(argv[1:], prog_name="textrec")


if __name__ == "__main__":
    run_textrec(sys.argv[1:], variant, __doc__)
