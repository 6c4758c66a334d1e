"""Why a slim backbone leaves the CTC blank plateau late: `textrec train` with one thing about the network changed.

From scratch on the ablation recipe, the slim ResNet (widths 16,32,64,128) read no word in 800 steps where the
shipped VGG read 27 % (docs/model.md, "Backbones"). This runs the ordinary `textrec train` command with one
change (or several, comma-separated: `torch-init,stem16`), to tell the causes apart:

* `torch-init`: the first recurrent layer's input weights keep torch's init (±1/sqrt(hidden)) whatever the
  backbone's width, as before 2026-11-29; textrec now scales them so that the input drives the gates as a
  2 x hidden-wide one does (`CRNN._match_input_drive`). With a 128-wide backbone this halves the drive.
* `zero-init-residual`: each ResNet basic block's last batch norm starts at zero, so every block starts as
  its shortcut (torchvision's `zero_init_residual`).
* `stem16`: the ResNet's stem is 16 channels wide twice instead of a quarter and a half of the first
  stage's width (4 and 8 for the slim ResNet).
* `blocks1111`: one basic block per stage instead of 1, 2, 5 and 3 (a shallower ResNet).
* `out512`: the ResNet's last 2x2 convolution widens to 512 channels, as VGG's last layer does (256 to 512):
  the recurrent layers see 512-wide features, at about the same convolution cost.

    OMP_NUM_THREADS=1 python benchmarks/backbone_start.py out512 train --config checkpoints/ablation.toml \
        --backbone resnet --channels 16,32,64,128 --seed 0 --amp-dtype bfloat16 --output runs/resnet/out512_s0

The runs' checkpoints are for these experiments only: a `stem16`, `blocks1111` or `out512` checkpoint does not
load in textrec (its weights are not the architecture's config).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from torch import nn

import textrec.model.backbones as backbones
import textrec.model.crnn as crnn
from bucket_plateau import patched, run_textrec  # benchmarks/ is the script's folder

VARIANTS = ("torch-init", "zero-init-residual", "stem16", "blocks1111", "out512")
STEM = 16
OUT = 512


def _zero_init_residual(init):
    def zeroed(self, c_in: int, c_out: int):
        init(self, c_in, c_out)
        nn.init.zeros_(self.body[-1].weight)

    return zeroed


def _wide_stem(init):
    """The ResNet built as usual, then its stem's two convolutions (and the first block's input) 16 wide."""

    def with_wide_stem(self, in_channels: int = 1, channels: tuple[int, ...] = backbones.RESNET_CHANNELS):
        init(self, in_channels, channels)
        f = self.features
        f[0], f[1] = nn.Conv2d(in_channels, STEM, 3, 1, 1, bias=False), nn.BatchNorm2d(STEM)
        f[3], f[4] = nn.Conv2d(STEM, STEM, 3, 1, 1, bias=False), nn.BatchNorm2d(STEM)
        f[7] = backbones.BasicBlock(STEM, channels[0])  # the first block, after the stem's pool

    return with_wide_stem


def _wide_output(init):
    """The ResNet built as usual, then its last 2x2 convolution (height 2 to 1) 512 wide."""

    def with_wide_output(self, in_channels: int = 1, channels: tuple[int, ...] = backbones.RESNET_CHANNELS):
        init(self, in_channels, channels)
        f, n = self.features, len(self.features)
        f[n - 3], f[n - 2] = nn.Conv2d(channels[-1], OUT, 2, 1, 0, bias=False), nn.BatchNorm2d(OUT)
        self.out_channels = OUT

    return with_wide_output


@contextlib.contextmanager
def variant(names: str) -> Iterator[None]:
    """textrec with the named changes (comma-separated, e.g. "torch-init,stem16"), inside the block."""
    chosen = names.split(",")
    for name in chosen:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if "stem16" in chosen and "out512" in chosen:
        raise SystemExit("stem16 and out512 both rebuild the ResNet: choose one")
    resnet_init, block_init = backbones.ResNet.__init__, backbones.BasicBlock.__init__
    every = {
        "torch-init": [(crnn.CRNN, "_match_input_drive", lambda self: None)],
        "zero-init-residual": [(backbones.BasicBlock, "__init__", _zero_init_residual(block_init))],
        "stem16": [(backbones.ResNet, "__init__", _wide_stem(resnet_init))],
        "blocks1111": [(backbones, "RESNET_BLOCKS", (1, 1, 1, 1))],
        "out512": [(backbones.ResNet, "__init__", _wide_output(resnet_init))],
    }
    with patched([patch for name in chosen for patch in every[name]]):
        yield


if __name__ == "__main__":
    run_textrec(sys.argv[1:], variant, __doc__)
