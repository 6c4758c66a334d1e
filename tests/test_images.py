"""Image decoding for every mode users throw at the tool, and the model's preprocessing."""

import io
import math

import pytest
import torch
from PIL import Image

from imagegen import png_bytes, render_word
from textrec.data.images import (
    MAX_IMAGE_PIXELS,
    MIN_INPUT_WIDTH,
    Preprocess,
    input_width,
    open_image,
    resize_for_model,
    to_tensor,
)
from textrec.errors import DataError


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_modes_become_grayscale():
    word = render_word("mode").convert("RGB")
    cases = {
        "cmyk jpeg": _save(word.convert("CMYK"), "JPEG"),
        "palette png": _save(word.convert("P"), "PNG"),
        "rgba png": _save(word.convert("RGBA"), "PNG"),
        "16-bit png": _save(word.convert("I").point(lambda v: v * 256).convert("I;16"), "PNG"),
        "1-bit png": _save(word.convert("1"), "PNG"),
    }
    for name, data in cases.items():
        image = open_image(data, name)
        assert image.mode == "L", name
        assert image.size == word.size, name
        # Text stays dark on light: the first column is background, the middle has ink.
        assert image.getextrema()[1] > 200 and image.getextrema()[0] < 80, name


def test_transparent_text_is_composited_on_white():
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (5, 2, 15, 8))
    image = open_image(_save(rgba, "PNG"), "alpha")
    assert image.getpixel((0, 0)) == 255 and image.getpixel((10, 5)) == 0


def test_exif_rotation_is_applied():
    word = render_word("up").convert("RGB")
    rotated = word.rotate(90, expand=True)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 8  # ... with "rotate 90 CW to view"
    image = open_image(_save(rotated, "JPEG", exif=exif.tobytes()), "exif")
    assert image.size == word.size


def test_animated_gif_uses_first_frame():
    frames = [render_word("one").convert("P"), render_word("two").convert("P")]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert open_image(data, "anim.gif").size == frames[0].size


@pytest.mark.parametrize(
    "data, message",
    [
        (b"hello, I am text", "not a readable image"),
        (png_bytes(render_word("cut"))[:60], "corrupt or truncated"),
        (_save(render_word("cut").convert("RGB"), "JPEG")[:200], "corrupt or truncated"),
    ],
)
def test_bad_bytes_are_one_line_errors(data, message):
    with pytest.raises(DataError, match=message) as info:
        open_image(data, "sample.png")
    assert str(info.value).startswith("sample.png: ") and "\n" not in str(info.value)


def test_huge_images_are_refused_before_decoding():
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    data = _save(Image.new("1", (side, side)), "PNG")  # tiny file, huge image
    with pytest.raises(DataError, match="over the limit"):
        open_image(data, "bomb.png")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        open_image(tmp_path / "nope.png")


def test_keep_ratio_resize_pads_and_squeezes():
    preprocess = Preprocess(height=32, width=100)
    narrow = resize_for_model(Image.new("L", (20, 64), 255), preprocess)
    assert narrow.size == (100, 32)
    wide = resize_for_model(Image.new("L", (20000, 32), 255), preprocess)
    assert wide.size == (100, 32)
    tiny = resize_for_model(Image.new("L", (1, 1), 128), preprocess)
    assert tiny.size == (100, 32)
    stretched = resize_for_model(Image.new("L", (20, 64)), Preprocess(keep_ratio=False))
    assert stretched.size == (100, 32)


def test_tensor_is_normalised():
    tensor = to_tensor(Image.new("L", (50, 32), 255), Preprocess())
    assert tensor.shape == (1, 32, 100)
    assert torch.allclose(tensor, torch.ones_like(tensor))


def test_dynamic_width_pads_a_batch_only_to_its_widest_image():
    from textrec.model import CRNN, CRNNConfig
    from textrec.charset import Charset
    from textrec.predict import Recognizer

    charset = Charset.from_spec("36")
    model = CRNN(CRNNConfig(num_classes=charset.num_classes, channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16))
    short, long = render_word("ab"), render_word("a much longer line of text")
    fixed = Recognizer(model, charset, Preprocess(width=160))
    dynamic = Recognizer(model, charset, Preprocess(width=160, dynamic_width=True))
    assert fixed.prepare([short]).shape[-1] == 160
    alone = dynamic.prepare([short])
    expected = max(MIN_INPUT_WIDTH, math.ceil(32 * short.width / short.height))
    assert alone.shape[-1] == input_width(short, dynamic.preprocess) == expected < 160
    tiny = Image.new("L", (3, 40), 255)  # a sliver still gets the minimum width
    assert dynamic.prepare([tiny]).shape[-1] == MIN_INPUT_WIDTH
    assert dynamic.prepare([short, long]).shape[-1] == 160  # the long line fills the model width
    # The image itself is resized the same way; only the padding differs.
    width = alone.shape[-1]
    assert torch.equal(alone[0, :, :, :width], fixed.prepare([short])[0, :, :, :width])
    # min_width: a short word alone is padded (by its last column, as in training) to at least that width
    padded = Recognizer(model, charset, Preprocess(width=160, dynamic_width=True, min_width=128))
    assert padded.prepare([short]).shape[-1] == input_width(short, padded.preprocess) == 128
    assert torch.equal(padded.prepare([short])[0, :, :, :width], alone[0])
    assert padded.prepare([short, long]).shape[-1] == 160


def test_min_width_is_written_only_when_used():
    """Older textrec versions refuse unknown preprocess keys: a checkpoint without a minimum keeps today's."""
    assert "min_width" not in Preprocess(width=160).to_dict()
    values = Preprocess(width=160, min_width=128).to_dict()
    assert values["min_width"] == 128 and Preprocess.from_dict(values).min_width == 128
