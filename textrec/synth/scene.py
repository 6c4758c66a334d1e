"""The device stage: a batch of rasterised texts and real crops -> finished word images, batched.

Every sample of the batch gets its own random parameters (`params.Draws`), and every effect
is a tensor op over the samples it fires on (grid_sample for geometry, broadcasting for
backgrounds, grouped convolutions in `camera`), so the stage runs at GPU speed and equally on
a CPU, where its cost scales with the share of samples each effect fires on.

Images are built on a working canvas `scale` times the model's input size (warps and blurs act
on more pixels than the model sees), padded by repeating each sample's last column, and pooled
to the model's input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import camera
from .params import MIN_CONTRAST, Draws, degrees

Tensor = torch.Tensor


@dataclass
class RawBatch:
    """What the loader hands to the device: pixels and where their content is.

    pixels  (B, H, W) uint8: synth coverage masks (255 = ink) or real grayscale crops, top-left aligned
    sizes   (B, 2) float: content height and width of each sample in `pixels`
    ink     (B, 4) float: synth ink box x0, y0, x1, y1 in mask pixels (real: the whole crop)
    em      (B,) float: synth font size in mask pixels (real: unused)
    is_real (B,) bool
    """

    pixels: Tensor
    sizes: Tensor
    ink: Tensor
    em: Tensor
    is_real: Tensor

    def to(self, device: torch.device) -> "RawBatch":
        return RawBatch(*(t.to(device, non_blocking=True) for t in (self.pixels, self.sizes, self.ink, self.em, self.is_real)))


@dataclass
class Canvas:
    """The working canvas of a batch: (B, 1, H, W) grey levels 0..255 and each sample's content width."""

    images: Tensor
    widths: Tensor  # (B,) content width in canvas pixels; columns beyond it repeat the last one


# ---- small tensor helpers -----------------------------------------------------------------------------


def _col(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast a per-sample value over images."""
    return values[:, None, None, None]


def homography(src: Tensor, dst: Tensor) -> Tensor:
    """(B, 3, 3) matrices mapping the four points src (B, 4, 2) onto dst (B, 4, 2)."""
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    system = torch.stack([rows_u, rows_v], 2).reshape(-1, 8, 8)
    rhs = torch.stack([u, v], 2).reshape(-1, 8, 1)
    solution = torch.linalg.solve(system.double(), rhs.double()).squeeze(-1).to(src.dtype)
    return torch.cat([solution, torch.ones_like(solution[:, :1])], 1).reshape(-1, 3, 3)


def project(matrix: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Apply (B, 3, 3) homographies to the grid of columns xs (B, 1, W) and rows ys (B, H, 1): (B, H, W) each.

    Each row of the matrix is a sum of a column part and a row part, so the full grid is touched by one
    addition per row and one division per coordinate (the parts themselves are a row or a column)."""
    m = matrix[:, :, :, None, None]  # (B, 3, 3, 1, 1)
    column = m[:, 2, 0] * xs + m[:, 2, 2]
    row = m[:, 2, 1] * ys
    w = column + row
    # |w| < 1e-6 would blow the division up: such points become 1e-6. w is linear on the grid, so its
    # extremes are the sums of the parts' extremes; the grids of the samples where they reach it are
    # checked point by point (a strong perspective whose horizon crosses the grid: about one in 256).
    low = column.amin((1, 2)) + row.amin((1, 2))
    high = column.amax((1, 2)) + row.amax((1, 2))
    index = (~((low >= 1e-6) | (high <= -1e-6))).nonzero().squeeze(1)
    if index.numel():
        part = w.index_select(0, index)
        w.index_copy_(0, index, torch.where(part.abs() < 1e-6, torch.full_like(part, 1e-6), part))
    x = (m[:, 0, 0] * xs + m[:, 0, 2]).add(m[:, 0, 1] * ys).div_(w)
    y = (m[:, 1, 0] * xs + m[:, 1, 2]).add(m[:, 1, 1] * ys).div_(w)
    return x, y


def _corners(x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor) -> Tensor:
    return torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1), torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], 1)


def _sample(pixels: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Bilinear samples of pixels (B, 1, H, W) at pixel coordinates x, y (B, h, w); zeros outside."""
    height, width = pixels.shape[-2:]
    # Normalised before broadcasting: for a row of columns and a column of rows that is a few hundred values each.
    grid = torch.stack(torch.broadcast_tensors(_to_grid_(x.clone(), width), _to_grid_(y.clone(), height)), -1)
    return _sample_grid(pixels, grid)


def _sample_grid(pixels: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _to_grid_(coordinate: Tensor, size: int) -> Tensor:
    """Pixel coordinates to grid_sample's -1..1 over `size` pixels, in place."""
    return coordinate.mul_(2).div_(size).sub_(1)


def dilate(masks: Tensor, radius: Tensor) -> Tensor:
    """Grey-level dilation of (B, 1, H, W) by a (2r+1)-square, r (B,) in 1..3 per sample: separable shifted maxima."""
    out = grown = masks
    for step in range(1, int(radius.max()) + 1):
        padded = F.pad(grown, (1, 1, 0, 0))
        rows = torch.maximum(torch.maximum(padded[..., :-2], padded[..., 2:]), grown)
        padded = F.pad(rows, (0, 0, 1, 1))
        grown = torch.maximum(torch.maximum(padded[..., :-2, :], padded[..., 2:, :]), rows)
        out = torch.where(_col(radius >= step), grown, out)
    return out


def on_subset(active: Tensor, fn, images: Tensor, *params: Tensor) -> Tensor:
    """fn(images, *params) on the samples where `active` (B,) only; the others as they came.

    Most effects fire on a minority of samples: their work scales with the share that fires."""
    return _on_subset(active, fn, images, params, in_place=False)


def on_subset_(active: Tensor, fn, images: Tensor, *params: Tensor) -> Tensor:
    """`on_subset` writing into `images` itself (returned, or fn's result where every sample fires).

    For the chains of effects on a batch the scene owns: a copy of the whole batch per effect was
    about a tenth of the stage's time on a CPU. Never for a tensor that is read again as it was."""
    return _on_subset(active, fn, images, params, in_place=True)


def _on_subset(active: Tensor, fn, images: Tensor, params, in_place: bool) -> Tensor:
    index = active.nonzero().squeeze(1)
    if index.numel() == 0:
        return images
    if index.numel() == active.numel():
        return fn(images, *params)
    out = images if in_place else images.clone()
    out.index_copy_(0, index, fn(images.index_select(0, index), *(p.index_select(0, index) for p in params)))
    return out


def _blend(images: Tensor, layer: Tensor, level: Tensor) -> Tensor:
    """Paint `level` (per sample, or per pixel) over the images with coverage `layer` in 0..1."""
    return images + (level - images) * layer


class Scene:
    """Turns RawBatches into finished images; see the module docstring. `height`/`width`: the working canvas."""

    def __init__(self, model_height: int = 32, model_width: int = 100, scale: int = 2, keep_ratio: bool = True, augment_real: bool = True):
        self.model_height, self.model_width, self.scale = model_height, model_width, scale
        self.keep_ratio = keep_ratio  # False: every sample is stretched to the full width, as Preprocess does
        self.augment_real = augment_real  # False: real crops pass through unchanged (synthetic ones never do)
        self.height, self.width = model_height * scale, model_width * scale

    def _coords(self, device) -> tuple[Tensor, Tensor]:
        """Pixel-centre coordinates of the canvas, (1, 1, 1, W) and (1, 1, H, 1)."""
        xs = (torch.arange(self.width, device=device, dtype=torch.float32) + 0.5)[None, None, None, :]
        ys = (torch.arange(self.height, device=device, dtype=torch.float32) + 0.5)[None, None, :, None]
        return xs, ys

    # ---- geometry ----------------------------------------------------------------------------------------

    def _synth_geometry(self, d: Draws, ink: Tensor, em: Tensor):
        """Per synth sample: its homography (scene -> mask), curve, crop box and output width (all (B,...))."""
        H, W = self.height, self.width
        ix0, iy0, ix1, iy1 = ink.unbind(1)
        th = (iy1 - iy0).clamp(min=4.0)
        sx = torch.where(d.fires("width_scale"), d.uniform(0.7, 1.4), 1.0)
        shear = torch.where(d.fires("slant"), d.uniform(-0.3, 0.3), 0.0)
        strong = d.fires("strong_rotation")
        angle = torch.where(strong, d.sign() * d.uniform(8, 20), torch.where(d.fires("rotation"), d.normal(0, 3).clamp(-8, 8), 0.0))
        jitter = torch.where(d.fires("perspective"), 0.2 * th, 0.0)
        src = _corners(ix0, iy0, ix1, iy1)
        p = src - src.mean(1, keepdim=True)
        px = p[..., 0] * sx[:, None]
        py = p[..., 1]
        px = px - shear[:, None] * py
        theta = degrees(angle)[:, None]
        qx = px * torch.cos(theta) + py * torch.sin(theta)
        qy = -px * torch.sin(theta) + py * torch.cos(theta)
        noise = torch.stack([d.uniform(-1, 1) for _ in range(8)], 1).reshape(-1, 4, 2) * jitter[:, None, None]
        dst = torch.stack([qx, qy], -1) + noise
        # Curved baseline: each column of the mask moves vertically along an arc or a wave.
        curve = {
            "on": d.fires("curve"),
            "amplitude": d.uniform(0.08, 0.25) * em,
            "arc": d.chance(0.6),
            "bend": d.sign(),
            "frequency": d.uniform(0.7, 1.5),
            "phase": d.uniform(0, 2 * math.pi),
        }
        spread = torch.where(curve["on"], 0.6 * curve["amplitude"], 0.0)
        X0, X1 = dst[..., 0].min(1).values, dst[..., 0].max(1).values
        Y0, Y1 = dst[..., 1].min(1).values - spread, dst[..., 1].max(1).values + spread
        h = (Y1 - Y0).clamp(min=4.0)
        tight = d.fires("tight_crop")
        margins = torch.stack(
            [
                torch.where(tight, d.uniform(0, 0.08), d.uniform(0.05, 0.6)),
                torch.where(tight, d.uniform(0, 0.08), d.uniform(0.05, 0.35)),
                torch.where(tight, d.uniform(0, 0.08), d.uniform(0.05, 0.6)),
                torch.where(tight, d.uniform(0, 0.08), d.uniform(0.05, 0.35)),
            ],
            1,
        ) * h[:, None]
        cut, side = d.fires("cut_edge"), d.randint(0, 3).long()
        cut_depth = torch.where(side % 2 == 1, d.uniform(0, 0.08), d.uniform(0, 0.03)) * h
        margins = torch.where(F.one_hot(side, 4).bool() & cut[:, None], -cut_depth[:, None], margins)
        cx0, cy0 = X0 - margins[:, 0], Y0 - margins[:, 1]
        crop_w = (X1 + margins[:, 2] - cx0).clamp(min=2.0)
        crop_h = (Y1 + margins[:, 3] - cy0).clamp(min=2.0)
        width = torch.round(H * crop_w / crop_h).clamp(8, W) if self.keep_ratio else torch.full_like(crop_w, float(W))
        ink_canvas = torch.stack(
            [(X0 - cx0) * width / crop_w, (Y0 + spread - cy0) * H / crop_h, (X1 - cx0) * width / crop_w, (Y1 - spread - cy0) * H / crop_h], 1
        )
        return homography(dst, src), curve, (cx0, cy0, crop_w, crop_h), width, ink_canvas, em * H / crop_h

    def _synth_grid(self, inverse, ink, crop, width, on, amplitude, arc, bend, frequency, phase):
        xs, ys = self._coords(inverse.device)
        xs, ys = xs[:, 0], ys[:, 0]
        cx0, cy0, crop_w, crop_h = crop.unbind(1)
        X = cx0[:, None, None] + xs * (crop_w / width)[:, None, None]
        Y = cy0[:, None, None] + ys * (crop_h / self.height)[:, None, None]
        mx, my = project(inverse, X, Y)

        def bent(my, mx, ink, amplitude, arc, bend, frequency, phase):
            ix0, ix1 = ink[:, 0:1, None], ink[:, 2:3, None]
            t = (2 * (mx - ix0) / (ix1 - ix0).clamp(min=1.0) - 1).clamp(-1.5, 1.5)
            wave = 0.6 * torch.sin(t * math.pi * frequency[:, None, None] + phase[:, None, None])
            shape = torch.where(arc[:, None, None], bend[:, None, None] * (t * t - 0.5), wave)
            return my - amplitude[:, None, None] * shape

        my = on_subset_(on, lambda m, *a: bent(m, *a), my, mx, ink, amplitude, arc, bend, frequency, phase)
        return mx, my

    def _real_geometry(self, d: Draws, sizes: Tensor):
        """Per real sample: the homography (output -> crop) of a small affine + perspective change, and its width."""
        rh, rw = sizes[:, 0], sizes[:, 1]
        affine, persp = d.fires("rotation"), d.fires("perspective")
        angle = torch.where(affine, degrees(d.uniform(-3, 3)), 0.0)
        shear = torch.where(affine, torch.tan(degrees(d.uniform(-12, 12))), 0.0)
        scale = torch.where(affine, d.uniform(0.9, 1.05), 1.0)
        shift = torch.stack([torch.where(affine, d.uniform(-0.03, 0.03) * rw, 0.0), torch.where(affine, d.uniform(-0.06, 0.06) * rh, 0.0)], -1)
        corners = _corners(torch.zeros_like(rw), torch.zeros_like(rh), rw, rh)
        mid = corners.mean(1, keepdim=True)
        c = corners - mid
        cx, cy = c[..., 0] - shear[:, None] * c[..., 1], c[..., 1]
        a = angle[:, None]
        moved = torch.stack([cx * torch.cos(a) - cy * torch.sin(a), cx * torch.sin(a) + cy * torch.cos(a)], -1)
        moved = moved * scale[:, None, None] + mid + shift[:, None]
        corner_noise = torch.stack([d.uniform(-0.12, 0.12) for _ in range(8)], 1).reshape(-1, 4, 2)
        moved = moved + corner_noise * torch.stack([rw, rh], -1)[:, None] * persp[:, None, None]
        return homography(moved, corners), torch.round(rw * self.height / rh).clamp(1, self.width)

    def _real_grid(self, inverse, sizes):
        xs, ys = self._coords(inverse.device)
        rh, rw = sizes[:, 0], sizes[:, 1]
        k = (rh / self.height)[:, None, None]  # crops arrive at the canvas height; this keeps other heights right
        rx, ry = project(inverse, xs[:, 0] * k, ys[:, 0] * k)
        rx = torch.minimum(rx.clamp(min=0.5), (rw - 0.5)[:, None, None])  # outside the crop: its border
        ry = torch.minimum(ry.clamp(min=0.5), (rh - 0.5)[:, None, None])
        return rx, ry

    # ---- the synthetic scene -----------------------------------------------------------------------------

    def _levels(self, d: Draws):
        contrast = torch.where(d.fires("low_contrast"), d.uniform(30, 60), d.uniform(60, 230))
        dark = d.uniform(0, 1) * (255 - contrast)
        light = dark + contrast
        dark_text = d.fires("dark_text")
        fg, bg = torch.where(dark_text, dark, light), torch.where(dark_text, light, dark)
        stroke = torch.where(fg > 127, d.uniform(0, 40), d.uniform(215, 255))
        return fg, bg, stroke, contrast

    def _background(self, d: Draws, canvas, fg, bg, contrast, widths, ink, fill) -> Tensor:
        H, W = self.height, self.width
        xs, ys = self._coords(canvas.device)
        g = d.generator
        amplitude = contrast * 0.45

        def gradient(images, angle, span, strength, width):
            c, s = _col(torch.cos(angle)), _col(torch.sin(angle))
            ramp = (xs * c + ys * s - (_col(width) / 2 * c + H / 2 * s)) / _col(span)
            return images + ramp * _col(strength)

        angle = d.uniform(0, 2 * math.pi)
        span = torch.maximum(widths, torch.full_like(widths, float(H)))
        canvas = on_subset_(d.fires("gradient"), gradient, canvas, angle, span, d.uniform(0.3, 1.0) * amplitude * 2, widths)

        def blotches(images, coarse, strength):
            n = images.shape[0]
            fine = torch.randn(n, 1, 10, max(10, W // 6), generator=g, device=images.device)
            low = torch.randn(n, 1, 4, max(4, W // 16), generator=g, device=images.device)
            # Each sample's field is its coarse or its fine noise, upsampled: only that one is upsampled.
            field = torch.empty_like(images)
            for noise, wanted in ((low, coarse), (fine, ~coarse)):
                index = wanted.nonzero().squeeze(1)
                if index.numel():
                    upsampled = F.interpolate(noise.index_select(0, index), size=(H, W), mode="bicubic", align_corners=False)
                    field.index_copy_(0, index, upsampled)
            return images + field * _col(strength)

        canvas = on_subset_(d.fires("texture"), blotches, canvas, d.chance(0.5), d.uniform(0.2, 0.5) * amplitude)

        def grain(images, full, sigma):
            n = images.shape[0]
            fine = torch.randn(n, 1, H, W, generator=g, device=images.device)
            half = torch.randn(n, 1, (H + 1) // 2, (W + 1) // 2, generator=g, device=images.device)
            half = F.interpolate(half, size=(H, W), mode="bilinear", align_corners=False)
            return images + torch.where(_col(full), fine, half) * _col(sigma)

        canvas = on_subset_(d.fires("grain"), grain, canvas, d.chance(0.5), torch.minimum(d.uniform(3, 12), contrast / 5))

        def stripes(images, angle, period, period2, crossed, strength):
            c, s = _col(torch.cos(angle)), _col(torch.sin(angle))
            wave = torch.sin((xs * c + ys * s) * _col(2 * math.pi / period))
            cross = torch.sin((-xs * s + ys * c) * _col(2 * math.pi / period2))
            return images + torch.where(_col(crossed), torch.maximum(wave, cross), wave) * _col(strength)

        canvas = on_subset_(
            d.fires("pattern"), stripes, canvas, d.uniform(0, math.pi), d.uniform(3, 16) * self.scale,
            d.uniform(6, 24) * self.scale, d.chance(0.4), d.uniform(0.15, 0.35) * contrast * 0.5,
        )

        def bands(images, ink, widths, level, first, other, second):
            x0, y0, x1, y1 = (_col(v) for v in ink.unbind(1))
            h = (y1 - y0).clamp(min=4.0)
            layer = torch.zeros_like(images)
            for number, u in enumerate((first, other)):
                kind, thick, pos_a, pos_b, slope, _ = (_col(v) for v in u.unbind(1))
                thickness = 1 + thick * (0.15 * h).clamp(min=1.0)
                above = pos_a * (y0 + 0.05 * h + thickness) - 2 * thickness  # touching at most the text's top
                below = y1 - 0.05 * h + pos_a * (H - y1 + 0.05 * h + thickness)
                band_y = torch.where(kind < 0.4, above, below)
                horizontal = (torch.minimum(ys - band_y, band_y + thickness - ys) + 0.5).clamp(0, 1)
                left = pos_b * (x0 - 1).clamp(min=0)
                right = x1 + 1 + pos_b * (_col(widths) - x1 - 1).clamp(min=0)
                line_x = torch.where(kind < 0.9, left, right) + (slope - 0.5) * 0.3 * (ys - H / 2)
                vertical = (thickness / 2 - (xs - line_x).abs() + 0.5).clamp(0, 1)
                vertical = vertical * torch.where(kind < 0.9, x0 > 2, _col(widths) - x1 > 2)
                band = torch.where(kind < 0.8, horizontal, vertical)
                if number == 1:
                    band = band * _col(second)
                layer = torch.maximum(layer, band)
            return _blend(images, layer, _col(level))

        level = torch.where(d.chance(0.5), fg, bg + d.sign() * contrast * d.uniform(0.3, 0.8))
        first, other = (torch.stack([d.uniform(0, 1) for _ in range(6)], 1) for _ in range(2))
        canvas = on_subset_(d.fires("edges"), bands, canvas, ink, widths, level, first, other, d.chance(0.5).float())

        def ghost(images, layer, scale, dx, dy, blur, level):
            faint = camera.gaussian_blur(self._placed(layer, scale, dx, dy), blur)
            return _blend(images, faint, _col(level))

        canvas = on_subset_(
            d.fires("ghost_text"), ghost, canvas, fill.roll(2, 0), d.uniform(1.5, 3.0), d.uniform(-0.3, 0.3) * widths,
            d.uniform(-1.0, 0.0) * H, d.uniform(1, 3) * self.scale, bg + (fg - bg) * d.uniform(0.15, 0.35),
        )
        return self._clutter(d, canvas, fill, fg, widths, ink)

    def _placed(self, layer: Tensor, scale: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
        """`layer` (B, 1, H, W) scaled by `scale` about the origin and shifted by (dx, dy) canvas pixels."""
        xs, ys = self._coords(layer.device)
        s = scale[:, None, None]
        return _sample(layer, (xs[:, 0] - dx[:, None, None]) / s, (ys[:, 0] - dy[:, None, None]) / s)

    def _clutter(self, d: Draws, canvas, fill, fg, widths, ink) -> Tensor:
        """The line above or below, or the word before or after: another sample's text, in this one's margins."""
        x0, y0, x1, y1 = ink.unbind(1)
        nx0, ny0, nx1, ny1 = ink.roll(1, 0).unbind(1)
        h = (y1 - y0).clamp(min=4.0)
        s = d.uniform(0.8, 1.2)
        where = d.uniform(0, 1)
        space = d.uniform(0.35, 0.6) * h
        dx = torch.where(where < 0.7, d.uniform(-0.5, 0.5) * widths, torch.where(where < 0.85, x0 - space - s * nx1, x1 + space - s * nx0))
        above_dy = y0 - d.uniform(0.05, 0.35) * h - s * ny1
        below_dy = y1 + d.uniform(0.1, 0.4) * h - s * ny0
        dy = torch.where(where < 0.35, above_dy, torch.where(where < 0.7, below_dy, y1 - s * ny1))
        mix, shade = d.chance(0.7), d.uniform(0.4, 0.8)

        def clutter(images, layer, s, dx, dy, fg, mix, shade):
            mean = images.mean((1, 2, 3))
            level = torch.where(mix, fg, mean + (fg - mean) * shade)
            return _blend(images, self._placed(layer, s, dx, dy), _col(level))

        return on_subset_(d.fires("clutter"), clutter, canvas, fill.roll(1, 0), s, dx, dy, fg, mix, shade)

    def _text(self, d: Draws, canvas, fill, fg, bg, stroke) -> Tensor:
        bold = d.fires("faux_bold")
        fill = on_subset_(bold, dilate, fill, torch.where(d.chance(0.33), 2, 1))  # `canvas` made fill for this
        outline = d.fires("outline") & ~bold
        outer = on_subset(outline, dilate, fill, d.randint(1, 3).long())  # a copy: equals fill where there is no outline

        def shadow(images, shape, dx, dy, blur, shade, opacity):
            soft = camera.gaussian_blur(self._placed(shape, torch.ones_like(dx), dx, dy), blur)
            return _blend(images, soft * _col(opacity), _col(shade))

        canvas = on_subset_(
            d.fires("shadow"), shadow, canvas, outer, d.sign() * d.randint(1, 4) * self.scale / 2,
            d.randint(1, 4) * self.scale / 2, d.uniform(0.3, 1.5) * self.scale / 2,
            torch.minimum(bg, fg) * d.uniform(0.1, 0.6), d.uniform(0.5, 0.9),
        )
        canvas = on_subset_(outline, lambda images, outer, stroke: _blend(images, outer, _col(stroke)), canvas, outer, stroke)
        xs, ys = self._coords(fill.device)

        def shaded(images, fill, fg, bg, angle, strength):
            ramp = (xs * _col(torch.cos(angle)) * 0.2 + ys * _col(torch.sin(angle))) / self.height
            ramp = ramp - ramp.mean((2, 3), keepdim=True)
            direction = torch.where(fg < bg, 1.0, -1.0)  # away from the background's level, never into it
            return _blend(images, fill, _col(fg) - _col(direction) * ramp.abs() * _col(strength) * 255)

        shading = d.fires("text_shading")
        angle, strength = d.uniform(0, 2 * math.pi), d.uniform(0.15, 0.5)
        # Flat text on most samples: blended over the whole batch in place, weighted 0 where the text is shaded
        # (the same numbers as `_blend` on those samples, without gathering the 85 % that fire and scattering them back).
        flat = canvas.add_((_col(fg) - canvas).mul_(fill).mul_(_col((~shading).to(canvas.dtype))))
        return on_subset_(shading, shaded, flat, fill, fg, bg, angle, strength)

    # ---- camera ------------------------------------------------------------------------------------------

    def _camera(self, d: Draws, images: Tensor, contrast: Tensor, em: Tensor) -> Tensor:
        real, H = d.is_real, self.height
        room = (1 - MIN_CONTRAST / contrast).clamp(min=0)
        light = d.fires("illumination")
        strength = torch.minimum(d.uniform(0.2, 0.5), room)
        kind = torch.where(d.chance(0.6), 1, 2)
        images = on_subset_(
            light, camera.illumination, images, kind, d.uniform(0, 2 * math.pi), strength,
            d.uniform(0, 1) * self.width, d.uniform(0, 1) * H, d.uniform(0.5, 1.5) * H,
        )
        contrast = torch.where(light, contrast * (1 - strength), contrast)
        room = (1 - MIN_CONTRAST / contrast).clamp(min=0)
        # At most two of the three ways to lose detail on a synthetic sample, one on low-contrast text.
        losses = torch.stack([d.fires("blur"), d.fires("motion_blur"), d.fires("low_resolution")], 1)
        allowed = torch.where(real, 3, torch.where(contrast < 60, 1, 2))
        losses = losses & (losses.long().cumsum(1) <= allowed[:, None])
        sigma = torch.where(real, d.uniform(0.1, 1.0) * self.scale, d.uniform(0.015, 0.05) * em)
        images = camera.gaussian_blur(images, torch.where(losses[:, 0], sigma, 0.0), in_place=True)
        length = torch.round(d.uniform(0.06, 0.18) * em).clamp(min=2)
        images = camera.motion_blur(images, torch.where(losses[:, 1], length, 0.0), d.uniform(0, math.pi), in_place=True)
        factor = torch.where(real, d.uniform(0.4, 0.8), (d.uniform(12, 24) / em.clamp(min=1.0)).clamp(max=1.0))
        images = camera.low_resolution(images, torch.where(losses[:, 2], factor, 1.0), in_place=True)
        # levels: gamma and gain (synth), brightness and contrast (real); inversion (real)
        levels = d.fires("levels")
        gamma, gain = d.uniform(0.6, 1.6), torch.maximum(d.uniform(0.6, 1.0), 1 - room)
        images = on_subset_(levels & ~real, camera.levels, images, gamma, gain)
        contrast = torch.where(levels & ~real, contrast * gain, contrast)

        def jitter(images, brightness, contrast):
            mean = images.mean((1, 2, 3), keepdim=True)
            return (images - mean) * _col(brightness * contrast) + mean * _col(brightness)

        images = on_subset_(levels & real, jitter, images, d.uniform(0.6, 1.4), d.uniform(0.6, 1.4))
        images = on_subset_(d.fires("invert"), lambda x: 255 - x.clamp(0, 255), images)
        noise = torch.where(real, d.uniform(2, 10), torch.minimum(d.uniform(2, 14), (contrast / 5).clamp(min=2)))
        images = on_subset_(d.fires("noise"), lambda x, s: camera.add_noise(x, s, d.generator), images, noise)
        quality = torch.where(real, d.randint(20, 80), d.randint(15, 75))
        images = camera.jpeg_like(images.clamp_(0.0, 255.0), torch.where(d.fires("jpeg"), quality, 0.0), in_place=True)
        return images.clamp_(0.0, 255.0)  # camera.clamp_levels, in place: the scene owns the batch

    # ---- the whole stage ---------------------------------------------------------------------------------

    def canvas(self, batch: RawBatch, generator: torch.Generator) -> Canvas:
        """The finished images on the working canvas (for LMDBs and previews); `model_input` pools them."""
        d = Draws(generator, batch.is_real, self.augment_real)
        B, H, W = batch.is_real.shape[0], self.height, self.width
        dev = batch.pixels.device
        synth_inverse, curve, crop, synth_width, ink, em = self._synth_geometry(d, batch.ink, batch.em)
        real_inverse, real_width = self._real_geometry(d, batch.sizes)
        fg, bg, stroke, contrast = self._levels(d)
        widths = torch.where(batch.is_real, real_width, synth_width)
        # Where each canvas pixel samples its source: the synthetic and the real samples apart, written
        # straight into grid_sample's grid (no coordinate buffers, no stacking).
        source_height, source_width = batch.pixels.shape[-2:]
        grid = torch.empty(B, H, W, 2, device=dev)
        for kind, wanted in (("synth", ~batch.is_real), ("real", batch.is_real)):
            index = wanted.nonzero().squeeze(1)
            if not index.numel():
                continue
            pick = lambda t: t.index_select(0, index)  # noqa: E731
            if kind == "synth":
                gx, gy = self._synth_grid(
                    pick(synth_inverse), pick(batch.ink), pick(torch.stack(crop, 1)), pick(synth_width),
                    *(pick(curve[k]) for k in ("on", "amplitude", "arc", "bend", "frequency", "phase")),
                )
            else:
                gx, gy = self._real_grid(pick(real_inverse), pick(batch.sizes))
            grid[..., 0].index_copy_(0, index, _to_grid_(gx, source_width))  # gx, gy: (n, H, W), new tensors
            grid[..., 1].index_copy_(0, index, _to_grid_(gy, source_height))
        warped = _sample_grid(batch.pixels[:, None].float(), grid)  # synth coverage * 255, or the real crop
        images = warped
        synth = (~batch.is_real).nonzero().squeeze(1)
        if synth.numel():  # the scene around the synthetic texts: background, clutter, glyph styles
            pick = lambda t: t.index_select(0, synth)  # noqa: E731
            ds = d.subset(synth)
            fill = (pick(warped) / 255).clamp_(0, 1)
            canvas = _col(pick(bg)).expand_as(fill).clone()
            canvas = self._background(ds, canvas, pick(fg), pick(bg), pick(contrast), pick(widths), pick(ink), fill)
            images = warped.index_copy(0, synth, self._text(ds, canvas, fill, pick(fg), pick(bg), pick(stroke)))
        contrast = torch.where(batch.is_real, torch.full_like(contrast, 255.0), contrast)
        images = self._camera(d, images, contrast, torch.where(batch.is_real, float(H) * 0.7, em))
        # Columns beyond each sample's content repeat its last one, as the model's preprocessing pads.
        columns = torch.arange(W, device=dev)
        last = (widths.long() - 1).clamp(min=0)[:, None]
        index = torch.minimum(columns[None, :], last)[:, None, None, :].expand_as(images)
        return Canvas(images.gather(3, index), widths)

    def model_input(self, canvas: Canvas, mean: float = 0.5, std: float = 0.5) -> Tensor:
        """(B, 1, model_height, model_width) normalised as `Preprocess` normalises."""
        pooled = F.avg_pool2d(canvas.images, self.scale) if self.scale > 1 else canvas.images
        return (pooled / 255.0 - mean) / std
