"""Convolutional feature extractors that turn a text-line image into a feature sequence.

Both map a 32-pixel-high input of width W to a 1-pixel-high map of W/4 + 1 frames (26 for W = 100),
so the recurrent layers, the CTC head and the frame budget of the labels are the same for either.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

# Output channels of the seven convolutions of the CRNN paper's VGG (Shi et al. 2015).
VGG_CHANNELS = (64, 128, 256, 256, 512, 512, 512)
# Widths of the four residual stages of deep-text-recognition-benchmark's ResNet (Baek et al. 2019, after
# Cheng et al. 2017's FAN): output 512; the stem has a quarter and a half of the first width.
RESNET_CHANNELS = (128, 256, 512, 512)
# Residual blocks per stage, as there.
RESNET_BLOCKS = (1, 2, 5, 3)


class MaxPool(nn.MaxPool2d):
    """`nn.MaxPool2d` with a 2x2 window that, when no gradient is needed on the CPU, takes the maxima of
    strided views (two `torch.maximum` calls) instead of torch's pooling kernel.

    The values are the same (padding is -inf, as the kernel's; NaN propagates in both), but at these
    shapes torch's CPU max-pool (NCHW, with indices) is four to seven times slower: at batch 1 the VGG's
    four pools took 1.2 ms of a 13.6-ms read on one thread (`benchmarks/pool_speed.py`). Training keeps the kernel, whose
    backward sends each gradient to one input (`torch.maximum` splits it between ties); so do CUDA and the
    ONNX exporter, which has a MaxPool operator.
    """

    def __init__(self, stride: int | tuple[int, int] = 2, padding: int | tuple[int, int] = 0):
        super().__init__(kernel_size=2, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or (x.requires_grad and torch.is_grad_enabled())
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or _exporting_onnx()
            or min(x.shape[-2:]) < 2  # too small for a 2x2 window: the kernel says so
        ):
            return super().forward(x)
        return strided_max_pool(x, _pair(self.stride), _pair(self.padding))


def _exporting_onnx() -> bool:
    # Without an export under way torch.onnx may not even be imported; importing it just to ask costs ~25 ms.
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def strided_max_pool(x: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """2x2 max pooling (no dilation, floor mode) of a (..., H, W) tensor as maxima of strided views."""
    (s_h, s_w), (p_h, p_w) = stride, padding
    if p_h or p_w:
        x = nn.functional.pad(x, (p_w, p_w, p_h, p_h), value=float("-inf"))
    rows = (x.shape[-2] - 2) // s_h + 1
    x = torch.maximum(x[..., 0 : (rows - 1) * s_h + 1 : s_h, :], x[..., 1 : (rows - 1) * s_h + 2 : s_h, :])
    cols = (x.shape[-1] - 2) // s_w + 1
    return torch.maximum(x[..., 0 : (cols - 1) * s_w + 1 : s_w], x[..., 1 : (cols - 1) * s_w + 2 : s_w])


def _conv(c_in: int, c_out: int, kernel: int = 3, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, 1, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class VGG(nn.Module):
    """The CRNN paper's VGG with batch norm after every convolution.

    A 32-pixel-high input of width W becomes a 1-pixel-high map of width W/4 + 1 (26 frames for
    W = 100): two 2x2 poolings, then two poolings of stride (2, 1) padded on the width, then a 2x2
    convolution. Any other height is reduced to 1 by averaging over the height.
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = VGG_CHANNELS):
        super().__init__()
        if len(channels) != 7:
            raise ValueError(f"VGG needs 7 channel widths, got {len(channels)}")
        c = channels
        layers = [
            *_conv(in_channels, c[0]), MaxPool(2),
            *_conv(c[0], c[1]), MaxPool(2),
            *_conv(c[1], c[2]), *_conv(c[2], c[3]), MaxPool(stride=(2, 1), padding=(0, 1)),
            *_conv(c[3], c[4]), *_conv(c[4], c[5]), MaxPool(stride=(2, 1), padding=(0, 1)),
            *_conv(c[5], c[6], kernel=2, padding=0),
        ]
        self.features = nn.Sequential(*layers)
        self.out_channels = c[6]

    @staticmethod
    def output_width(width: int) -> int:
        """Feature frames for an input width: two halvings, +1 for each padded narrow pool, -1 for the 2x2 conv."""
        return (width // 2) // 2 + 1

    def forward(self, images):
        # A mean over the height (the identity for 32-pixel inputs); unlike adaptive pooling it exports to ONNX.
        return self.features(images).mean(dim=2, keepdim=True)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 convolution where the width changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """deep-text-recognition-benchmark's ResNet feature extractor, with its four stage widths as `channels`.

    Stem: two 3x3 convolutions (a quarter and a half of the first stage's width), a 2x2 pool; stages of
    1, 2, 5 and 3 basic blocks, the first three followed by a 3x3 convolution; 2x2 pools after the first
    stage and (stride (2, 1), padded on the width) after the second; then two 2x2 convolutions, the first
    with stride (2, 1) padded on the width: the same height and frame arithmetic as `VGG`. Written from
    the paper's description and checked against that repository's layer list (tests/test_backbones.py).
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = RESNET_CHANNELS):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"ResNet needs 4 stage widths, got {len(channels)}")
        c = channels
        stem = (max(1, c[0] // 4), max(1, c[0] // 2))
        layers = [*_conv(in_channels, stem[0]), *_conv(stem[0], stem[1]), MaxPool(2)]
        previous = stem[1]
        pools = {0: MaxPool(2), 1: MaxPool(stride=(2, 1), padding=(0, 1))}
        for stage, (width, blocks) in enumerate(zip(c, RESNET_BLOCKS)):
            for _ in range(blocks):
                layers.append(BasicBlock(previous, width))
                previous = width
            if stage < 3:  # the last stage goes straight to the 2x2 convolutions
                layers += _conv(width, width)
            if stage in pools:
                layers.append(pools[stage])
        layers += [
            nn.Conv2d(previous, previous, 2, stride=(2, 1), padding=(0, 1), bias=False), nn.BatchNorm2d(previous), nn.ReLU(inplace=True),
            *_conv(previous, previous, kernel=2, padding=0),
        ]
        self.features = nn.Sequential(*layers)
        self.out_channels = previous

    output_width = staticmethod(VGG.output_width)  # the same frames for the same width

    def forward(self, images):
        return self.features(images).mean(dim=2, keepdim=True)


# name -> (class, default widths)
BACKBONES = {"vgg": (VGG, VGG_CHANNELS), "resnet": (ResNet, RESNET_CHANNELS)}
