"""The camera stage of the device-side word-image pipeline (issue 10): what a lens, a sensor and
a JPEG encoder do to a picture, batched on the training device with per-sample parameters.

Functions (images are float tensors (B, 1, H, W) in grey levels 0..255; every parameter is a
tensor of shape (B,) on the images' device, one value per sample; a neutral value leaves its
sample unchanged, exactly):

* `gaussian_blur(images, sigma)`: Gaussian blur, sigma in pixels (0: off).
* `motion_blur(images, length, angle)`: linear motion blur, `length` pixels (<= 1: off) at
  `angle` radians.
* `low_resolution(images, factor)`: a camera with `factor` (0 < factor <= 1, 1: off) times as
  many pixels per side: area-averaged down, bilinear back up to the same size.
* `levels(images, gamma, gain)`: gamma curve, then contrast gain around mid-grey (1, 1: off).
* `add_noise(images, sigma, generator)`: Gaussian sensor noise of sd `sigma` (0: off).
* `jpeg_like(images, quality)`: 8x8-block DCT quantisation as baseline JPEG does at IJG
  quality 1..99 (0 or >= 100: off), output clamped to 0..255 as a decoder does.
* `illumination(images, kind, angle, strength, centre_x, centre_y, radius)`: uneven light,
  kind 0 none, 1 shade ramp, 2 highlight towards white.
* `clamp_levels(images)`: clamp to 0..255, for the end of the stage.

The four effects that usually fire on a minority of samples (both blurs, low resolution, JPEG) return a
new tensor; with `in_place=True` they write the samples they change into `images` itself and return it,
which saves a copy of the batch for a caller that owns `images` (the scene does).

Why not torchvision.transforms.v2.functional: its `gaussian_blur`, `adjust_gamma`, `resize`
and `jpeg` take one parameter for the whole batch (and `jpeg` runs libjpeg on uint8 images),
and it has no motion blur; so each effect here is written with torch tensor ops (grouped
convolutions, batched matrix products, broadcast arithmetic), with no Python loop over
samples. Randomness only comes from the `generator` argument of `add_noise`; everything else
is a deterministic function of its inputs. Images with C > 1 channels are treated channel by
channel with the sample's parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "MAX_BLUR_KERNEL",
    "MAX_MOTION_LENGTH",
    "JPEG_LUMINANCE_TABLE",
    "gaussian_blur",
    "motion_blur",
    "low_resolution",
    "levels",
    "add_noise",
    "jpeg_like",
    "jpeg_quantisation_tables",
    "illumination",
    "clamp_levels",
]

# Largest Gaussian kernel (taps per side: 15); wider sigmas are truncated at +-15 px.
MAX_BLUR_KERNEL = 31
# Longest motion-blur line in pixels (kernel at most 33 x 33); longer lengths are clamped.
MAX_MOTION_LENGTH = 31.0
# Points rasterised along a motion-blur line: at most 0.5 px apart on the longest line.
_MOTION_POINTS = 2 * int(MAX_MOTION_LENGTH) + 2

# The standard JPEG luminance quantisation table (ITU-T T.81, Annex K, Table K.1), row-major.
JPEG_LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got {images.dtype}")


def _param(value, images: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A per-sample parameter as a (B,) tensor on the images' device (a scalar is broadcast)."""
    batch = images.shape[0]
    tensor = torch.as_tensor(value, device=images.device, dtype=dtype or images.dtype)
    if tensor.dim() == 0:
        return tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(tensor.shape)}")
    return tensor


def _keep(images: torch.Tensor, result: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """The result, with the samples whose effect is off (off: (B,) bool) exactly as they came."""
    return torch.where(off.view(-1, 1, 1, 1), images, result)


def _on_active(images: torch.Tensor, active: torch.Tensor, effect, *params: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """effect(images, *params) run on the samples where `active` (B,) is true only; the others
    are returned exactly as they came. The costly effects fire on a minority of samples, so this
    saves most of their work; it synchronises with the device once (which they need anyway,
    for a kernel size or an early exit). `in_place`: the active samples are written into `images`
    itself (for a caller that owns it: no copy of the whole batch)."""
    if bool(active.all()):
        return effect(images, *params)
    index = active.nonzero().squeeze(1)
    out = images if in_place else images.clone()
    if index.numel():
        out.index_copy_(0, index, effect(images.index_select(0, index), *(p.index_select(0, index) for p in params)))
    return out


def _grouped_conv(images: torch.Tensor, kernels: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Correlate every sample with its own kernel: kernels (B, kh, kw), replicate padding
    (left, right, top, bottom). One conv2d call with groups = B * C."""
    batch, channels, height, width = images.shape
    weight = kernels.repeat_interleave(channels, dim=0).unsqueeze(1)  # (B*C, 1, kh, kw)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, pad, mode="replicate")
    return F.conv2d(flat, weight, groups=batch * channels).view(batch, channels, height, width)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Per-sample Gaussian blur, `sigma` (B,) in pixels (0: unchanged), replicate padding.

    The kernel size is the batch's: 2 * ceil(3 * max sigma) + 1, at most MAX_BLUR_KERNEL (31);
    each sample's separable kernel is its own Gaussian sampled on the taps within ceil(3 sigma)
    (zero beyond, so a sample's result does not depend on the others in its batch), normalised
    to sum 1. Sigmas above 5 are truncated at +-15 px. The 2-D blur
    is applied as two grouped 1-D convolutions (rows, then columns): 2k taps per pixel instead
    of k * k for the same result."""
    _check_images(images)
    sigma = _param(sigma, images, "sigma").clamp(min=0)
    return _on_active(images, sigma > 0, _gaussian_blur, sigma, in_place=in_place)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    radius = min(int(math.ceil(3.0 * float(sigma.max()))), MAX_BLUR_KERNEL // 2)
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.unsqueeze(1)) ** 2)
    # Each sample's kernel ends at its own 3 sigma, so its result does not depend on the batch.
    kernel = torch.where(taps.abs() <= torch.ceil(3.0 * sigma).unsqueeze(1), kernel, torch.zeros_like(kernel))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, k)
    # Tails far below float32's resolution become exact zeros: denormal weights (exp(-90) for a
    # small sigma on a wide kernel) make the CPU convolution several times slower.
    kernel = torch.where(kernel < 1e-12, torch.zeros_like(kernel), kernel)
    out = _grouped_conv(images, kernel.unsqueeze(1), (radius, radius, 0, 0))
    return _grouped_conv(out, kernel.unsqueeze(2), (0, 0, radius, radius))


def motion_blur(images: torch.Tensor, length: torch.Tensor, angle: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Per-sample linear motion blur along a line of `length` pixels (<= 1: unchanged; at most
    MAX_MOTION_LENGTH, 31) through the pixel, at `angle` radians (0: horizontal; positive turns
    counter-clockwise as displayed, image rows going down), replicate padding.

    Each sample's k x k kernel (k = 2 * ceil(max length / 2) + 1 for the batch) is the line
    rasterised with anti-aliasing: 64 points evenly along it (<= 0.5 px apart), each spread
    bilinearly on its four neighbouring taps (the outer product of tent weights in x and y),
    normalised to sum 1. One grouped conv2d for the batch."""
    _check_images(images)
    length = _param(length, images, "length").clamp(max=MAX_MOTION_LENGTH)
    angle = _param(angle, images, "angle")
    return _on_active(images, length > 1, _motion_blur, length, angle, in_place=in_place)


def _motion_blur(images: torch.Tensor, length: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    length_max = float(length.max())
    radius = int(math.ceil(length_max / 2.0))
    points = _MOTION_POINTS  # the same for every batch, so a sample's kernel is its own
    device, dtype = images.device, images.dtype
    # Positions along the line, -length/2 .. length/2, per sample: (B, N).
    t = torch.linspace(-0.5, 0.5, points, device=device, dtype=dtype).unsqueeze(0) * length.unsqueeze(1)
    x = t * torch.cos(angle).unsqueeze(1)
    y = -t * torch.sin(angle).unsqueeze(1)
    taps = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    tent_x = (1 - (x.unsqueeze(2) - taps).abs()).clamp(min=0)  # (B, N, k)
    tent_y = (1 - (y.unsqueeze(2) - taps).abs()).clamp(min=0)
    kernel = torch.einsum("bni,bnj->bij", tent_y, tent_x)  # (B, k rows, k columns)
    kernel = kernel / kernel.sum(dim=(1, 2), keepdim=True)
    return _grouped_conv(images, kernel, (radius, radius, radius, radius))


def _resample_matrices(size: int, factor: torch.Tensor) -> torch.Tensor:
    """(B, size, size) matrices that take a line of `size` pixels to n = round(size * factor)
    pixels by area averaging (each low-resolution pixel the exact mean of the stretch of input
    it covers, s = size / n input pixels, partly covered pixels weighted by their share) and
    back to `size` pixels by linear interpolation with F.interpolate's align_corners=False
    convention.

    Output pixel x lies between the low-resolution pixels j0 and j1 = j0 + 1 (weight w on j1),
    so its row is (1 - w) D[j0] + w D[j1], where D[j, x'] is the overlap of input pixel
    [x', x' + 1) with [j s, (j + 1) s), divided by s: a trapezoid in a = x' - j s (s >= 1),
    min(a + 1, s - a) clamped to 0..1. A row is non-zero on fewer than 2s + 2 pixels from
    floor(j0 s), so only that band (K taps) is computed, then scattered into the dense matrix:
    elementwise work on (B, size, K) instead of (B, size, size)."""
    n = torch.clamp(torch.round(size * factor), min=1, max=size)  # low-resolution pixels (B,)
    last = (n - 1).view(-1, 1, 1)
    scale = (size / n).view(-1, 1, 1)  # input pixels per low-resolution pixel, >= 1
    band = int(math.ceil(2.0 * float(scale.max()))) + 3
    x = torch.arange(size, device=factor.device, dtype=factor.dtype)
    u = torch.minimum(((x + 0.5).view(1, -1, 1) / scale - 0.5).clamp(min=0), last)  # (B, size, 1)
    j0 = torch.floor(u)
    w = u - j0
    j1 = torch.minimum(j0 + 1, last)
    start = torch.floor(j0 * scale)
    source = start + torch.arange(band, device=factor.device, dtype=factor.dtype)  # (B, size, K)

    def trapezoid(j: torch.Tensor) -> torch.Tensor:
        a = source - j * scale
        return torch.minimum(a + 1, scale - a).clamp(0, 1)

    weights = ((1 - w) * trapezoid(j0) + w * trapezoid(j1)) / scale
    # Taps past the last pixel (weight 0) land in `band` spare columns, cut off afterwards.
    dense = torch.zeros(factor.shape[0], size, size + band, device=factor.device, dtype=factor.dtype)
    dense.scatter_(2, source.long(), weights)
    return dense[:, :, :size]


def low_resolution(images: torch.Tensor, factor: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """A camera with fewer pixels: each sample downscaled to round(factor * H) x round(factor * W)
    pixels (0 < factor <= 1; 1: unchanged) by area averaging, then scaled back up bilinearly
    (align_corners=False), to the same size.

    Implementation: neither buckets nor grid_sample. Resampling is linear and separable, so
    each sample's down-and-up is one (H x H) matrix for the columns and one (W x W) for the
    rows, built from its own factor: out = My @ image @ Mx^T, two batched matmuls. Every sample
    gets its exact factor (buckets would quantise it to a few levels) and a true area average
    over the fractional footprint of each low-resolution pixel (grid_sample only interpolates,
    so it would need a separate per-sample box filter against aliasing). At an integer ratio
    (factor 0.5 on an even size) it equals F.interpolate(mode='area') then
    F.interpolate(mode='bilinear', align_corners=False). Cost: O(B * H * W * (H + W)), 26 MB
    of matrices for 64 samples 320 px wide; meant for word images, not for large pictures."""
    _check_images(images)
    factor = _param(factor, images, "factor")
    if bool(((factor <= 0) | (factor > 1)).any()):
        raise ValueError("factor must lie in (0, 1]")
    height, width = images.shape[-2:]
    active = (torch.round(height * factor) < height) | (torch.round(width * factor) < width)
    return _on_active(images, active, _low_resolution, factor, in_place=in_place)


def _low_resolution(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    rows = _resample_matrices(height, factor).unsqueeze(1)  # (B, 1, H, H)
    columns = _resample_matrices(width, factor).unsqueeze(1)  # (B, 1, W, W)
    return torch.matmul(torch.matmul(rows, images), columns.transpose(-1, -2))


def levels(images: torch.Tensor, gamma: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """255 * (x / 255) ** gamma, then (x - 128) * gain + 128, per sample (gamma 1 and gain 1:
    unchanged). Values below 0 are taken as 0 by the gamma curve (where gamma != 1)."""
    _check_images(images)
    gamma = _param(gamma, images, "gamma").view(-1, 1, 1, 1)
    gain = _param(gain, images, "gain").view(-1, 1, 1, 1)
    curved = 255.0 * torch.pow(images.clamp(min=0) / 255.0, gamma)
    curved = torch.where(gamma == 1, images, curved)
    # x * gain + 128 * (1 - gain) is (x - 128) * gain + 128, and exactly x when gain is 1.
    return curved * gain + 128.0 * (1 - gain)


def add_noise(images: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise of standard deviation `sigma` (B,) grey levels per sample (0: unchanged),
    drawn from `generator`, which must live on the images' device (None: torch's default
    generator for that device). Noise is drawn for the whole batch, so a sample's noise depends
    on its position in the batch and the generator's state, never on the other samples' sigma."""
    _check_images(images)
    sigma = _param(sigma, images, "sigma").clamp(min=0)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    out = images + noise * sigma.view(-1, 1, 1, 1)
    return _keep(images, out, sigma <= 0)


_CONSTANTS: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def _constant(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The DCT matrix or the JPEG table on a device, built once per (device, dtype) and cached."""
    key = (name, torch.device(device), dtype)
    value = _CONSTANTS.get(key)
    if value is None:
        if name == "dct":
            k = torch.arange(8, dtype=torch.float64, device="cpu").view(-1, 1)
            n = torch.arange(8, dtype=torch.float64, device="cpu").view(1, -1)
            value = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
            value[0] = math.sqrt(1 / 8)
        else:
            value = torch.tensor(JPEG_LUMINANCE_TABLE, dtype=torch.float64, device="cpu")
        value = _CONSTANTS[key] = value.to(device=device, dtype=dtype)
    return value


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix C (coefficients = C @ block @ C.T), cached per device."""
    return _constant("dct", device, dtype)


def jpeg_quantisation_tables(quality: torch.Tensor) -> torch.Tensor:
    """(B, 8, 8) luminance quantisation tables for IJG qualities (B,) as libjpeg's
    jpeg_set_quality(quality, force_baseline=TRUE) makes them (Pillow's JPEG encoder): quality
    clamped to 1..100, scale = 5000 / q below 50, else 200 - 2q; table = floor((T * scale + 50)
    / 100) clamped to 1..255 (baseline JPEG stores 8-bit entries)."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q).view(-1, 1, 1)
    table = _constant("table", quality.device, quality.dtype)
    return torch.floor((table * scale + 50.0) / 100.0).clamp(1, 255)


def jpeg_like(images: torch.Tensor, quality: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """JPEG compression artefacts at per-sample IJG quality 1..99 (0 or >= 100: unchanged):
    clamp to 0..255 (a JPEG stores 8-bit pixels), replicate-pad H and W to multiples of 8 (as
    libjpeg does), shift by -128, 8x8 block DCT-II (orthonormal), quantise with the luminance
    table of `jpeg_quantisation_tables` (divide, round, multiply back), inverse DCT, shift back,
    crop, and clamp to 0..255 again as a decoder does (the ringing next to black or white ink
    overshoots by tens of levels and a real decoder cuts it off). The result stays float: it is
    not rounded to whole grey levels."""
    _check_images(images)
    quality = _param(quality, images, "quality")
    return _on_active(images, (quality > 0) & (quality < 100), _jpeg_like, quality, in_place=in_place)


def _jpeg_like(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = images.shape
    pad_h, pad_w = -height % 8, -width % 8
    x = images.clamp(0.0, 255.0)
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
    rows, cols = (height + pad_h) // 8, (width + pad_w) // 8
    blocks = (x - 128.0).reshape(batch, channels, rows, 8, cols, 8).transpose(3, 4)  # (B, C, r, c, 8, 8)
    dct = _dct_matrix(images.device, images.dtype)
    coefficients = dct @ blocks @ dct.T
    table = jpeg_quantisation_tables(quality).view(batch, 1, 1, 1, 8, 8)
    coefficients = torch.round(coefficients / table) * table
    blocks = dct.T @ coefficients @ dct
    out = blocks.transpose(3, 4).reshape(batch, channels, rows * 8, cols * 8)[..., :height, :width] + 128.0
    return out.clamp(0.0, 255.0)


def illumination(
    images: torch.Tensor,
    kind: torch.Tensor,
    angle: torch.Tensor,
    strength: torch.Tensor,
    centre_x: torch.Tensor,
    centre_y: torch.Tensor,
    radius: torch.Tensor,
) -> torch.Tensor:
    """Uneven light, per sample by `kind` (B,): 0 none (unchanged); 1 shade ramp, image *
    (1 - strength * ramp), the ramp rising from 0 to 1 across the image in the direction
    `angle` (radians, 0: towards the right, positive counter-clockwise as displayed), so the
    far side is darkened by `strength`; 2 highlight, image + (255 - image) * strength * spot,
    spot = exp(-d^2 / (2 radius^2)) for the distance d in pixels from (centre_x, centre_y)
    (pixel centres at integer coordinates, x to the right, y down). Parameters a sample's kind
    does not use are ignored."""
    _check_images(images)
    kind = _param(kind, images, "kind", dtype=torch.long).view(-1, 1, 1, 1)
    angle, strength, centre_x, centre_y, radius = (
        _param(value, images, name).view(-1, 1, 1, 1)
        for value, name in ((angle, "angle"), (strength, "strength"), (centre_x, "centre_x"),
                            (centre_y, "centre_y"), (radius, "radius"))
    )
    height, width = images.shape[-2:]
    xs = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, 1, -1)
    ys = torch.arange(height, device=images.device, dtype=images.dtype).view(1, 1, -1, 1)
    # Ramp: the projection on (cos, -sin) (y goes down), rescaled by its range over the image.
    dx, dy = torch.cos(angle), -torch.sin(angle)
    projection = xs * dx + ys * dy
    low = torch.clamp(dx * (width - 1), max=0) + torch.clamp(dy * (height - 1), max=0)
    span = (dx * (width - 1)).abs() + (dy * (height - 1)).abs()
    ramp = torch.where(span > 0, (projection - low) / span.clamp(min=1e-6), torch.zeros_like(projection))
    shaded = images * (1 - strength * ramp)
    spot = torch.exp(-((xs - centre_x) ** 2 + (ys - centre_y) ** 2) / (2 * radius.clamp(min=1e-3) ** 2))
    lit = images + (255.0 - images) * spot * strength
    return torch.where(kind == 1, shaded, torch.where(kind == 2, lit, images))


def clamp_levels(images: torch.Tensor) -> torch.Tensor:
    """Clamp to the grey levels 0..255 (the last step of the camera stage)."""
    return images.clamp(0.0, 255.0)
