"""Safe image decoding and the model's preprocessing.

Every image the tool reads goes through `open_image`, which refuses absurd sizes before
decoding (Pillow's decompression-bomb guard, with our own bound), applies the EXIF
orientation, and converts any mode (palette, 16-bit, CMYK, RGBA, animated) to grayscale.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

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
    instead of to `width`, so a short word alone costs what its own width costs. Training always
    pads to `width`, which is how the model learns to ignore any amount of padding.
    """

    height: int = 32
    width: int = 100
    keep_ratio: bool = True
    dynamic_width: bool = False
    mean: float = 0.5
    std: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

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
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise DataError(f"{label}: cannot open ({exc.strerror or exc})") from None
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


def to_grayscale(image: Image.Image) -> Image.Image:
    """Grayscale of any Pillow mode; transparency is composited onto white."""
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
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("RGB").convert("L")


def input_width(image: Image.Image, preprocess: Preprocess) -> int:
    """The width the image takes in the model's input before padding (at least MIN_INPUT_WIDTH)."""
    if not preprocess.keep_ratio:
        return preprocess.width
    w, h = image.size
    return min(preprocess.width, max(MIN_INPUT_WIDTH, math.ceil(preprocess.height * w / h)))


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
