"""Convolutional feature extractors that turn a text-line image into a feature sequence."""

from __future__ import annotations

from torch import nn

# Output channels of the seven convolutions of the CRNN paper's VGG (Shi et al. 2015).
VGG_CHANNELS = (64, 128, 256, 256, 512, 512, 512)


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
        narrow_pool = nn.MaxPool2d(kernel_size=2, stride=(2, 1), padding=(0, 1))
        layers = [
            *_conv(in_channels, c[0]), nn.MaxPool2d(2, 2),
            *_conv(c[0], c[1]), nn.MaxPool2d(2, 2),
            *_conv(c[1], c[2]), *_conv(c[2], c[3]), narrow_pool,
            *_conv(c[3], c[4]), *_conv(c[4], c[5]), nn.MaxPool2d(kernel_size=2, stride=(2, 1), padding=(0, 1)),
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
