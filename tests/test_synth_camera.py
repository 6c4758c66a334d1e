"""The camera stage of the device-side word-image pipeline (textrec.synth.camera, issue 10)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from imagegen import render_word
from textrec.synth import camera
from textrec.synth.camera import (
    add_noise,
    clamp_levels,
    gaussian_blur,
    illumination,
    jpeg_like,
    jpeg_quantisation_tables,
    levels,
    low_resolution,
    motion_blur,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _noise_generator(device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(1234)


# name -> (call(images, *params), neutral values, active draw(batch, generator) -> values)
EFFECTS = {
    "gaussian_blur": (
        gaussian_blur,
        (0.0,),
        lambda b, g: (0.6 + 3.0 * torch.rand(b, generator=g),),
    ),
    "motion_blur": (
        motion_blur,
        (0.0, 0.0),
        lambda b, g: (3.0 + 10.0 * torch.rand(b, generator=g), math.pi * torch.rand(b, generator=g)),
    ),
    "low_resolution": (
        low_resolution,
        (1.0,),
        lambda b, g: (0.25 + 0.6 * torch.rand(b, generator=g),),
    ),
    "levels": (
        levels,
        (1.0, 1.0),
        lambda b, g: (0.6 + 1.0 * torch.rand(b, generator=g), 0.6 + 0.3 * torch.rand(b, generator=g)),
    ),
    "add_noise": (
        lambda images, sigma: add_noise(images, sigma, _noise_generator(images.device)),
        (0.0,),
        lambda b, g: (2.0 + 12.0 * torch.rand(b, generator=g),),
    ),
    "jpeg_like": (
        jpeg_like,
        (100.0,),
        lambda b, g: (torch.randint(10, 80, (b,), generator=g).float(),),
    ),
    "illumination": (
        illumination,
        (0, 0.0, 0.0, 0.0, 0.0, 1.0),
        lambda b, g: (
            torch.randint(1, 3, (b,), generator=g),
            2 * math.pi * torch.rand(b, generator=g),
            0.3 + 0.5 * torch.rand(b, generator=g),
            40.0 * torch.rand(b, generator=g),
            20.0 * torch.rand(b, generator=g),
            5.0 + 20.0 * torch.rand(b, generator=g),
        ),
    ),
}


def word_like_batch(batch: int, height: int, width: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Dark strokes on a light, slightly noisy background: something every effect visibly changes."""
    g = torch.Generator().manual_seed(seed)
    images = 180.0 + 40.0 * torch.rand(batch, 1, height, width, generator=g)
    ys = torch.arange(height).view(-1, 1)
    xs = torch.arange(width).view(1, -1)
    strokes = ((xs % 9 < 3) & (ys > height // 4) & (ys < 3 * height // 4)) | ((ys - height // 2).abs() < 2)
    images[:, :, strokes] = 30.0 + 20.0 * torch.rand(batch, 1, int(strokes.sum()), generator=g)
    return images.to(device)


def params(values, batch: int, device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(v).expand(batch).clone().to(device) if not torch.is_tensor(v) or v.dim() == 0
                 else v.to(device) for v in values)


def mixed(effect: str, active: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """Parameters that are the effect's neutral value where `active` is false."""
    _, neutral, draw = EFFECTS[effect]
    batch = active.shape[0]
    drawn = draw(batch, torch.Generator().manual_seed(7))
    return tuple(
        torch.where(active, a, torch.as_tensor(n, dtype=a.dtype)).to(device) for a, n in zip(drawn, neutral)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("effect", sorted(EFFECTS))
def test_neutral_parameters_leave_images_unchanged(effect, device):
    call, neutral, _ = EFFECTS[effect]
    images = word_like_batch(5, 24, 40, device=device)
    out = call(images, *params(neutral, 5, device))
    assert torch.equal(out, images)
    assert out is not images  # a new tensor: callers may modify it in place


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("effect", sorted(EFFECTS))
def test_only_the_active_samples_change(effect, device):
    call, _, _ = EFFECTS[effect]
    active = torch.tensor([True, False, False, True, True, False, True, False])
    images = word_like_batch(8, 32, 72, seed=3, device=device)
    out = call(images, *mixed(effect, active, device))
    changed = (out - images).abs().amax(dim=(1, 2, 3)).cpu()
    assert torch.equal(out[~active.to(device)], images[~active.to(device)])
    assert bool((changed[active] > 1.0).all()), changed


@pytest.mark.parametrize("effect", sorted(set(EFFECTS) - {"add_noise"}))
def test_each_sample_is_processed_as_if_alone(effect):
    """Per-sample parameters: a sample's result does not depend on the rest of its batch (the
    kernel sizes do, but the extra taps have zero weight)."""
    call, _, _ = EFFECTS[effect]
    active = torch.tensor([True, True, False, True, True])
    images = word_like_batch(5, 20, 50, seed=5)
    values = mixed(effect, active, "cpu")
    together = call(images, *values)
    for i in range(5):
        alone = call(images[i : i + 1], *(v[i : i + 1] for v in values))
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("effect", sorted(EFFECTS) + ["clamp_levels"])
def test_shape_dtype_device_and_determinism(effect, batch, device):
    images = word_like_batch(batch, 64, 320, seed=batch, device=device)
    images[0, 0, 0, :4] = torch.tensor([-20.0, 300.0, 0.0, 255.0])  # out-of-range levels are accepted
    if effect == "clamp_levels":
        call, values = clamp_levels, ()
    else:
        call, _, draw = EFFECTS[effect]
        values = params(draw(batch, torch.Generator().manual_seed(11)), batch, device)
    out = call(images, *values)
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert bool(torch.isfinite(out).all())
    if images.device.type == "cpu":
        assert torch.equal(call(images, *values), out)


def test_blur_keeps_the_mean_and_lowers_the_variance_of_noise():
    g = torch.Generator().manual_seed(0)
    noise = 128.0 + 40.0 * torch.randn(4, 1, 48, 96, generator=g)
    for out in (
        gaussian_blur(noise, torch.tensor([0.7, 1.5, 3.0, 6.0])),
        motion_blur(noise, torch.tensor([3.0, 7.0, 15.0, 31.0]), torch.tensor([0.0, 0.5, 1.6, 2.9])),
    ):
        assert bool(((out.mean(dim=(1, 2, 3)) - noise.mean(dim=(1, 2, 3))).abs() < 0.5).all())
        variance_ratio = out.var(dim=(1, 2, 3)) / noise.var(dim=(1, 2, 3))
        assert bool((variance_ratio < 0.6).all()), variance_ratio
        assert bool((variance_ratio[1:] < variance_ratio[:-1]).all())  # stronger blur, less variance


def test_gaussian_blur_spreads_a_point_as_a_gaussian():
    point = torch.zeros(1, 1, 31, 31)
    point[0, 0, 15, 15] = 1000.0
    out = gaussian_blur(point, torch.tensor([2.0]))[0, 0]
    assert out.sum().item() == pytest.approx(1000.0, rel=1e-5)
    ys, xs = torch.meshgrid(torch.arange(31.0) - 15, torch.arange(31.0) - 15, indexing="ij")
    assert (out * xs**2).sum().item() / 1000.0 == pytest.approx(4.0, rel=0.02)  # variance sigma^2
    torch.testing.assert_close(out, out.T)


def test_motion_blur_smears_along_its_angle():
    point = torch.zeros(3, 1, 33, 33)
    point[:, 0, 16, 16] = 1000.0
    out = motion_blur(point, torch.tensor([9.0, 9.0, 9.0]), torch.tensor([0.0, math.pi / 2, math.pi / 4]))
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.full((3,), 1000.0))
    horizontal, vertical, diagonal = out[0, 0], out[1, 0], out[2, 0]
    # angle 0: all of it on the point's row, over about 9 columns
    assert horizontal[16].sum().item() == pytest.approx(1000.0, rel=1e-5)
    assert int((horizontal[16] > 1.0).sum()) in (9, 10, 11)
    # angle pi/2: all of it on the point's column
    assert vertical[:, 16].sum().item() == pytest.approx(1000.0, rel=1e-5)
    assert int((vertical[:, 16] > 1.0).sum()) in (9, 10, 11)
    # angle pi/4 (counter-clockwise as displayed): up and to the right, down and to the left
    assert diagonal[14, 18] > 50 and diagonal[18, 14] > 50 and diagonal[14, 14] == 0 and diagonal[18, 18] == 0


def test_low_resolution_is_area_down_then_bilinear_up():
    """At integer ratios it is exactly F.interpolate(area) followed by F.interpolate(bilinear)."""
    images = word_like_batch(2, 32, 64, seed=2)
    out = low_resolution(images, torch.tensor([0.5, 0.25]))
    for i, factor in enumerate((0.5, 0.25)):
        small = F.interpolate(images[i : i + 1], scale_factor=factor, mode="area")
        expected = F.interpolate(small, size=(32, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-3, rtol=0)


def test_low_resolution_removes_fine_detail_and_keeps_shapes():
    ys, xs = torch.meshgrid(torch.arange(48), torch.arange(160), indexing="ij")
    box = ((ys >= 12) & (ys < 36) & (xs >= 30) & (xs < 130)).float()
    checker = ((ys + xs) % 2).float()  # the finest detail a sensor can hold
    images = (200.0 - 150.0 * box + 40.0 * (checker - 0.5)).expand(3, 1, 48, 160).contiguous()
    factors = torch.tensor([0.8, 0.5, 0.3])
    out = low_resolution(images, factors)

    def high_frequency_energy(x):
        return ((x[..., 1:] - x[..., :-1]) ** 2).mean(dim=(1, 2, 3)) + ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean(
            dim=(1, 2, 3)
        )

    energy = high_frequency_energy(out) / high_frequency_energy(images)
    assert bool((energy < 0.5).all()), energy
    assert bool((energy[1:] < energy[:-1]).all())  # fewer pixels, less detail
    # No aliasing: the checkerboard averages to grey instead of turning into a coarser pattern.
    flat_area = out[:, 0, 2:8, 2:158]
    assert bool((flat_area.std(dim=(1, 2)) < 12.0).all())
    # The box stays where it was: same mean, edges half-way at the same places.
    assert torch.allclose(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1.0)
    middle_row = out[:, 0, 24]
    assert bool((middle_row[:, 40:120] < 80).all()) and bool((middle_row[:, :20] > 160).all())
    assert bool((middle_row[:, 140:] > 160).all())


def test_low_resolution_rejects_factors_outside_0_to_1():
    with pytest.raises(ValueError):
        low_resolution(torch.zeros(2, 1, 8, 8), torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError):
        low_resolution(torch.zeros(2, 1, 8, 8), torch.tensor([1.5, 0.5]))


def test_levels_formula():
    images = torch.linspace(0, 255, 256).view(1, 1, 16, 16).repeat(3, 1, 1, 1)
    gamma = torch.tensor([0.6, 1.0, 1.7])
    gain = torch.tensor([1.0, 0.5, 1.3])
    out = levels(images, gamma, gain).double()
    x = images.double()
    gamma, gain = gamma.double().view(-1, 1, 1, 1), gain.double().view(-1, 1, 1, 1)
    expected = (255.0 * (x / 255.0) ** gamma - 128.0) * gain + 128.0
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_noise_has_the_asked_sd_and_follows_the_generator(device):
    images = torch.full((3, 1, 200, 200), 128.0, device=device)
    sigma = torch.tensor([4.0, 0.0, 15.0], device=device)
    out = add_noise(images, sigma, torch.Generator(device=device).manual_seed(5))
    sd = (out - images).std(dim=(1, 2, 3))
    assert abs(sd[0].item() - 4.0) < 0.4 and abs(sd[2].item() - 15.0) < 1.5 and sd[1].item() == 0.0
    assert abs((out - images).mean().item()) < 0.2
    again = add_noise(images, sigma, torch.Generator(device=device).manual_seed(5))
    other = add_noise(images, sigma, torch.Generator(device=device).manual_seed(6))
    if images.device.type == "cpu":
        assert torch.equal(again, out)
    assert not torch.allclose(other, out)


def _pillow_jpeg(image: Image.Image, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32)


def _jpeg_test_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    gradient = np.linspace(40, 220, 100)[None, :] * np.ones((45, 1)) + rng.normal(0, 12, (45, 100))
    photo = Image.fromarray(gradient.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    # Word images whose sizes are not multiples of 8 (the padding is replicated as libjpeg does).
    return [render_word("Hello", 32), render_word("CRNN 2024", 40, invert=True), render_word("gate", 37), photo]


def jpeg_comparison(quality: int = 20) -> list[tuple[tuple[int, int], float, float]]:
    """Per image (width, height), mean |jpeg_like - Pillow| and mean |input - Pillow| in grey levels."""
    figures = []
    for image in _jpeg_test_images():
        pixels = np.asarray(image, dtype=np.float32)
        ours = jpeg_like(torch.from_numpy(pixels)[None, None], torch.tensor([float(quality)]))[0, 0].numpy()
        pillow = _pillow_jpeg(image, quality)
        figures.append((image.size, float(np.abs(ours - pillow).mean()), float(np.abs(pixels - pillow).mean())))
    return figures


def test_jpeg_like_is_close_to_pillows_jpeg_at_quality_20():
    for size, ours_vs_pillow, input_vs_pillow in jpeg_comparison(20):
        assert input_vs_pillow > 1.0, size  # the compression did something
        assert ours_vs_pillow < 0.5 * input_vs_pillow, (size, ours_vs_pillow, input_vs_pillow)


def test_jpeg_like_stronger_compression_loses_more():
    images = torch.from_numpy(np.asarray(render_word("quality", 32), dtype=np.float32))[None, None].repeat(3, 1, 1, 1)
    out = jpeg_like(images, torch.tensor([10.0, 40.0, 90.0]))
    error = (out - images).abs().mean(dim=(1, 2, 3))
    assert bool((error[:-1] > error[1:]).all()), error
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0


def test_jpeg_quantisation_tables_follow_the_ijg_formula():
    base = torch.tensor(camera.JPEG_LUMINANCE_TABLE, dtype=torch.float32)
    tables = jpeg_quantisation_tables(torch.tensor([50.0, 100.0, 1.0, 20.0, 75.0]))
    assert torch.equal(tables[0], base)
    assert torch.equal(tables[1], torch.ones(8, 8))
    assert torch.equal(tables[2], torch.full((8, 8), 255.0))  # baseline: 8-bit entries
    assert torch.equal(tables[3], torch.floor((base * 250 + 50) / 100).clamp(1, 255))
    assert torch.equal(tables[4], torch.floor((base * 50 + 50) / 100).clamp(1, 255))


def test_jpeg_like_off_values_and_dct_round_trip():
    images = word_like_batch(3, 20, 30)
    assert torch.equal(jpeg_like(images, torch.tensor([0.0, 100.0, 120.0])), images)
    dct = camera._dct_matrix(torch.device("cpu"), torch.float32)
    torch.testing.assert_close(dct @ dct.T, torch.eye(8), atol=1e-6, rtol=0)


def test_illumination_ramp_and_highlight():
    images = torch.full((3, 1, 20, 50), 100.0)
    kind = torch.tensor([1, 1, 2])
    out = illumination(
        images,
        kind,
        angle=torch.tensor([0.0, math.pi / 2, 0.0]),
        strength=torch.tensor([0.4, 0.5, 0.8]),
        centre_x=torch.tensor([0.0, 0.0, 10.0]),
        centre_y=torch.tensor([0.0, 0.0, 5.0]),
        radius=torch.tensor([1.0, 1.0, 4.0]),
    )
    right, up, spot = out[0, 0], out[1, 0], out[2, 0]
    # angle 0: unchanged on the left edge, 40 % darker on the right edge, constant down each column
    torch.testing.assert_close(right[:, 0], torch.full((20,), 100.0))
    torch.testing.assert_close(right[:, -1], torch.full((20,), 60.0))
    assert bool((right[:, 1:] < right[:, :-1]).all()) and bool((right == right[:1]).all())
    # angle pi/2 (up on the screen): the top row is the darkest
    torch.testing.assert_close(up[0], torch.full((50,), 50.0))
    torch.testing.assert_close(up[-1], torch.full((50,), 100.0))
    # highlight: 80 % of the way to white at its centre, back to the image far from it
    assert spot[5, 10].item() == pytest.approx(100.0 + 155.0 * 0.8)
    assert spot[5, 14].item() == pytest.approx(100.0 + 155.0 * 0.8 * math.exp(-0.5), rel=1e-5)
    assert abs(spot[19, 49].item() - 100.0) < 1e-3


def test_clamp_levels():
    images = torch.tensor([-5.0, 0.0, 12.5, 255.0, 300.0]).view(1, 1, 1, 5)
    assert clamp_levels(images).flatten().tolist() == [0.0, 0.0, 12.5, 255.0, 255.0]


def test_parameters_must_have_one_value_per_sample():
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError):
        gaussian_blur(images, torch.ones(3))
    with pytest.raises(ValueError):
        levels(images[0], torch.ones(4), torch.ones(4))


def test_effects_on_a_subset_copy_the_batch_or_write_into_it_as_asked():
    # The scene chains effects on batches it owns in place (on_subset_, in_place=True); everything else
    # (and every public camera function by default) leaves its input as it came.
    from textrec.synth.scene import on_subset, on_subset_

    images = torch.arange(4 * 1 * 2 * 3, dtype=torch.float32).view(4, 1, 2, 3)
    active = torch.tensor([True, False, True, False])
    double = lambda x, k: x * k[:, None, None, None]  # noqa: E731
    k = torch.tensor([2.0, 3.0, 4.0, 5.0])
    before = images.clone()
    copied = on_subset(active, double, images, k)
    assert torch.equal(images, before) and copied is not images
    assert torch.equal(copied[0], before[0] * 2) and torch.equal(copied[1], before[1]) and torch.equal(copied[2], before[2] * 4)
    written = on_subset_(active, double, images, k)
    assert written is images and torch.equal(written, copied)
    sigma = torch.tensor([0.0, 1.0, 0.0, 0.0])
    kept = images.clone()
    blurred = camera.gaussian_blur(images, sigma)
    assert torch.equal(images, kept) and not torch.equal(blurred[1], kept[1]) and torch.equal(blurred[0], kept[0])
    assert camera.gaussian_blur(images, sigma, in_place=True) is images and torch.equal(images, blurred)


def test_freed_memory_is_kept_where_the_c_library_is_glibc():
    # textrec/memory.py: a subprocess, so that the test process keeps its own allocator settings
    import platform
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from textrec.memory import keep_freed_memory; print(keep_freed_memory())"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
