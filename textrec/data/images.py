"""Safe image decoding and the model's preprocessing.

Every image the tool reads goes through `open_image`, which refuses absurd sizes before
decoding (Pillow's decompression-bomb guard, with our own bound), applies the EXIF
orientation, and converts any mode (palette, 16-bit, CMYK, RGBA, animated) to grayscale.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from ..errors import DataError
from ..files import Unreadable, open_regular

# Word crops are small; anything above this many pixels is refused before decoding.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# With dynamic width, narrower inputs are padded to this: the CNN needs a few columns, and one
# glyph alone should still get several CTC frames.
MIN_INPUT_WIDTH = 32


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor; saved in every checkpoint.

    keep_ratio: resize to `height` keeping the aspect ratio, squeeze to `width` if wider,
    and pad on the right by repeating the last column (as deep-text-recognition-benchmark's PAD).
    Otherwise stretch to `height` x `width`.
    dynamic_width (with keep_ratio, at inference only): pad each batch only to its widest image
    instead of to `width`, so a short word alone costs what its own width costs.
    min_width (with dynamic_width): but to at least this many pixels. Training pads every image to
    `width`, and a model trained so reads a short word alone, with no padding at all, less well (the
    shipped model: 75.37 % of the validation split at batch 1 against 76.85 % padded; docs/model.md).
    0: only the MIN_INPUT_WIDTH every input gets.
    """

    height: int = 32
    width: int = 100
    keep_ratio: bool = True
    dynamic_width: bool = False
    mean: float = 0.5
    std: float = 0.5
    min_width: int = 0

    def to_dict(self) -> dict:
        values = asdict(self)
        if not self.min_width:  # older textrec versions refuse unknown keys: written only when used
            del values["min_width"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocess":
        return cls(**values)


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode an image file or bytes into a grayscale ("L") Pillow image.

    `name` is what error messages call the image (a path or an LMDB record).
    Raises DataError with one line naming the image.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "image bytes")
    try:
        # A path must be a regular file: a FIFO would block, a device never end, a link loop or dangling link is named.
        handle = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)
    except Unreadable as exc:
        raise DataError(f"{label}: {'cannot open (no such file)' if exc.kind == 'missing' else exc.reason}") from None
    try:
        with handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd metadata (corrupt EXIF): not a problem to report
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise DataError(f"{label}: image has zero size ({width}x{height})")
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{label}: image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} (refused before decoding)"
                )
            image.seek(0)  # the first frame of an animation
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_grayscale(image)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{label}: refused before decoding, image is over the limit of {MAX_IMAGE_PIXELS} pixels "
            f"(decompression bomb guard: {exc})"
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{label}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{label}: corrupt or truncated image ({exc})") from None


def as_grayscale(source, name: str | None = None) -> Image.Image:
    """A grayscale ("L") image from whatever a user hands the Python API.

    - a path (str or os.PathLike) or encoded bytes: decoded by `open_image` (size guard, EXIF orientation);
    - a Pillow image of any mode, used as it is (no EXIF rotation: the pixels you pass are the pixels read);
    - a numpy array (or anything `numpy.asarray` takes): H x W gray, H x W x 3 RGB or H x W x 4 RGBA (OpenCV's
      arrays are BGR: pass `image[..., ::-1]`), of uint8, bool, integers within 0-255 or floats within 0-1.

    Transparency is composited onto a background that contrasts with the ink (`composite_transparent`).
    DataError names the image (`name`) when it cannot be used; TypeError for a type that is none of these.
    """
    if isinstance(source, (str, os.PathLike)):
        return open_image(Path(source), name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return open_image(bytes(source), name or "image bytes")
    label = name or "image"
    if isinstance(source, Image.Image):
        width, height = source.size
        if width <= 0 or height <= 0:
            raise DataError(f"{label}: image has zero size ({width}x{height})")
        try:
            return to_grayscale(source)
        except (OSError, ValueError) as exc:
            raise DataError(f"{label}: cannot convert the {source.mode} image to grayscale ({exc})") from None
    if hasattr(source, "__array__") or hasattr(source, "__array_interface__"):
        return to_grayscale(_array_to_image(source, label))
    raise TypeError(
        f"{label}: cannot read a {type(source).__name__}; give a path, image bytes, a Pillow image or a numpy array"
    )


def _array_to_image(source, label: str) -> Image.Image:
    import numpy as np

    array = np.asarray(source)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DataError(
            f"{label}: array of shape {tuple(array.shape)}; expected H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{label}: image has zero size ({array.shape[1]}x{array.shape[0]})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(f"{label}: float array outside 0-1 (or not finite); scale it to 0-1 or convert it to uint8")
        array = np.rint(array * 255).astype(np.uint8)
    elif array.dtype.kind in "ui":
        if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{label}: {array.dtype} array with values outside 0-255; convert it to uint8")
        array = array.astype(np.uint8, copy=False)
    else:
        raise DataError(f"{label}: array of dtype {array.dtype}; expected uint8, bool, integers or floats")
    return Image.fromarray(np.ascontiguousarray(array))


def to_grayscale(image: Image.Image) -> Image.Image:
    """Grayscale of any Pillow mode; transparency is composited onto a contrasting background (see `composite_transparent`)."""
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer images: scale the actual value range to 0-255.
        image = image.convert("I")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        return image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode == "F":
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        return image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in image.info:
        return composite_transparent(image.convert("RGBA"))
    return image.convert("RGB").convert("L")


def composite_transparent(rgba: Image.Image) -> Image.Image:
    """Grayscale of an RGBA image, its transparency composited onto a background that contrasts with what is drawn.

    What is drawn is the pixels at least half opaque (else any not fully transparent); if their mean gray is dark,
    the background is white, otherwise black: black text on a transparent PNG reads as black on white, white text
    as white on black (both are read, as in photos). An opaque image is unchanged.
    """
    alpha = rgba.getchannel("A")
    low, _ = alpha.getextrema()
    gray = rgba.convert("RGB").convert("L")
    if low == 255:
        return gray
    drawn = alpha.point(lambda a: 255 if a >= 128 else 0)
    if drawn.getbbox() is None:
        drawn = alpha.point(lambda a: 255 if a > 0 else 0)
    ink = ImageStat.Stat(gray, mask=drawn).mean[0] if drawn.getbbox() is not None else 0.0
    shade = 255 if ink < 128 else 0
    background = Image.new("L", rgba.size, shade)
    return Image.composite(gray, background, alpha)


def input_width(image: Image.Image, preprocess: Preprocess) -> int:
    """The width the image asks of a dynamic-width batch: its resized width, at least MIN_INPUT_WIDTH and
    `min_width`, at most `width`."""
    if not preprocess.keep_ratio:
        return preprocess.width
    w, h = image.size
    return min(preprocess.width, max(MIN_INPUT_WIDTH, preprocess.min_width, math.ceil(preprocess.height * w / h)))


def resize_for_model(image: Image.Image, preprocess: Preprocess, width: int | None = None) -> Image.Image:
    """Resize a grayscale image to the model's input size (see Preprocess); `width` overrides the padded width."""
    height, width = preprocess.height, width or preprocess.width
    if not preprocess.keep_ratio:
        return image.resize((width, height), Image.BICUBIC)
    w, h = image.size
    new_width = min(width, max(1, math.ceil(height * w / h)))
    resized = image.resize((new_width, height), Image.BICUBIC)
    if new_width == width:
        return resized
    canvas = Image.new("L", (width, height))
    canvas.paste(resized, (0, 0))
    # Repeat the last column into the padding, so the pad looks like the background.
    edge = resized.crop((new_width - 1, 0, new_width, height)).resize((width - new_width, height))
    canvas.paste(edge, (new_width, 0))
    return canvas


def to_tensor(image: Image.Image, preprocess: Preprocess, width: int | None = None) -> torch.Tensor:
    """A (1, H, W) float tensor, normalised with the preprocessing's mean and std; W is `width` or the preprocessing's."""
    width = width or preprocess.width
    resized = resize_for_model(image, preprocess, width)
    data = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
    tensor = data.view(1, preprocess.height, width).float().div_(255.0)
    return tensor.sub_(preprocess.mean).div_(preprocess.std)
