"""Bad input (issue #6): every messy LMDB record and image file gets one clear line naming it.

Evaluation keeps its denominator (an unreadable sample counts as wrong and is listed), training skips
and counts, `predict` answers the good images and exits 1 at the end. No traceback for a user error.
Cases already covered elsewhere: tests/test_images.py (modes, EXIF, GIF, truncated bytes, text bytes,
bomb, 1x1 and 20000-px resize), tests/test_lmdb.py (missing folder, folder without data.mdb, bad image,
non-UTF-8 label, missing image key), tests/test_training_data.py (screening of empty / unknown / too long
labels, an unreadable image skipped by Collate), tests/test_cli.py (predict: a text file named .png next
to a good one, a path that does not exist). docs/robustness.md has the full table.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from cliutil import assert_one_clear_line, error_lines, invoke
from imagegen import png_bytes, render_word, write_lmdb
from textrec.charset import Charset
from textrec.data.images import Preprocess, open_image, to_tensor
from textrec.data.lmdb_store import LmdbDataset
from textrec.data.training import Collate, TrainingSamples, open_sources
from textrec.errors import DataError, RecordError
from textrec.evaluate import evaluate_dataset
from textrec.predict import Recognizer

from test_train import TINY, save_untrained_tiny


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model: these tests check behaviour, not accuracy."""
    return save_untrained_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


# --- crafted bytes -------------------------------------------------------------------------------


def raw_lmdb(path: Path, entries: dict[bytes, bytes]) -> Path:
    """An LMDB with exactly these keys (no checks, unlike LmdbWriter)."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()
    return path


def zero_width_png(height: int = 32) -> bytes:
    """A PNG whose IHDR says 0 pixels wide (Pillow will not save one, so the chunks are written by hand)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


WIDE = Image.new("L", (20000, 32), 255)


def key(kind: str, number: int) -> bytes:
    return b"%s-%09d" % (kind.encode(), number)


@pytest.fixture
def messy_lmdb(tmp_path) -> Path:
    """Every record problem of the issue in one LMDB; what each one is, is listed in MESSY below."""
    good = png_bytes(render_word("ok"))
    entries = {
        b"num-samples": b"13",  # two more than the 11 records stored
        key("image", 1): good, key("label", 1): b"ok",
        key("image", 2): b"not an image", key("label", 2): b"junk",
        key("image", 3): good, key("label", 3): b"\xff\xfeok",  # label not UTF-8
        key("label", 4): b"noimage",  # image key missing
        key("image", 5): good,  # label key missing
        key("image", 6): zero_width_png(), key("label", 6): b"zero",
        key("image", 7): png_bytes(WIDE), key("label", 7): b"wide",
        key("image", 8): good, key("label", 8): b"",  # empty label
        key("image", 9): good, key("label", 9): b"x" * 60,  # longer than 26 output frames can emit
        key("image", 10): good, key("label", 10): "café".encode(),  # é is outside the charset
        key("image", 11): png_bytes(render_word("cut"))[:70], key("label", 11): b"trunc",
    }
    return raw_lmdb(tmp_path / "messy", entries)


# Record number -> the words its one-line message must hold when the record is read.
UNREADABLE = {
    2: "not a readable image",
    3: "label is not valid UTF-8",
    4: "image key is missing",
    5: "label key is missing",
    6: "not a readable image",
    11: "corrupt or truncated image",
    12: "num-samples (13) counts a record the LMDB does not hold",
    13: "num-samples (13) counts a record the LMDB does not hold",
}


# --- LMDB: the dataset itself ------------------------------------------------------------------------


def test_num_samples_missing_or_not_a_count(tmp_path):
    image = {key("image", 1): png_bytes(render_word("a")), key("label", 1): b"a"}
    with pytest.raises(DataError, match=r"nocount: no 'num-samples' key") as info:
        LmdbDataset(raw_lmdb(tmp_path / "nocount", image))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"'num-samples' is not a number \(b'many'\)"):
        LmdbDataset(raw_lmdb(tmp_path / "words", {**image, b"num-samples": b"many"}))
    with pytest.raises(DataError, match="'num-samples' is negative"):
        LmdbDataset(raw_lmdb(tmp_path / "negative", {**image, b"num-samples": b"-3"}))


def test_folder_that_is_not_an_lmdb(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "data.mdb").write_bytes(b"this is not a database" * 500)
    with pytest.raises(DataError, match="fake: cannot open as LMDB"):
        LmdbDataset(fake)
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(DataError, match=r"plain.txt: not an LMDB folder"):
        LmdbDataset(tmp_path / "plain.txt")


def test_every_bad_record_names_itself(messy_lmdb):
    dataset = LmdbDataset(messy_lmdb)
    assert len(dataset) == 13
    for number, words in UNREADABLE.items():
        with pytest.raises(RecordError) as info:
            dataset.read_image(number - 1)
        message = str(info.value)
        assert message.startswith(f"{messy_lmdb} record {number}: ") and words in message, message
        assert "\n" not in message
    # The count-too-large records fail the same way through the label-only path that eval and screening use.
    labels = dict(dataset.labels())  # 0-based indices
    assert isinstance(labels[11], RecordError) and "record 12: " in str(labels[11]) and "does not hold" in str(labels[11])
    assert labels[6] == "wide" and labels[8] == "x" * 60


def test_zero_sized_and_very_wide_images():
    with pytest.raises(DataError, match="zero.png: not a readable image"):
        open_image(zero_width_png(), "zero.png")
    # 20000 px wide: decoded (640k pixels, far under the bomb limit), then squeezed to the model width.
    wide = open_image(png_bytes(WIDE), "wide.png")
    assert wide.size == (20000, 32)
    assert to_tensor(wide, Preprocess()).shape == (1, 32, 100)


def test_corrupt_metadata_in_a_good_image_is_not_noise():
    """Pillow warns (two stderr lines each) about a JPEG whose EXIF is cut; the pixels are fine, so say nothing."""
    broken_exif = Image.Exif()
    broken_exif[0x010E] = "a description long enough to cut"
    data = encode(render_word("exif").convert("RGB"), "JPEG", exif=broken_exif.tobytes()[:30])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(data, "photo.jpg").size == render_word("exif").size


# --- LMDB: evaluation keeps the denominator ------------------------------------------------------


def test_evaluation_counts_unreadable_records_as_wrong(messy_lmdb, checkpoint):
    recognizer = Recognizer.from_checkpoint(checkpoint, device="cpu")
    result = evaluate_dataset(recognizer, LmdbDataset(messy_lmdb), "messy", batch_size=4)
    # 13 records: 1 excluded (empty label), 12 scored: 4 read (ok, wide, long, café) + 8 unreadable.
    assert result.excluded_empty == 1
    assert result.samples == 12
    assert len(result.failed) == len(UNREADABLE) == 8
    for line, (number, words) in zip(result.failed, sorted(UNREADABLE.items())):
        assert f"record {number}: " in line and words in line, line
    assert 0.0 <= result.ned <= 4 / 12  # the 8 failures score 0


def test_labels_the_model_cannot_emit_are_scored_not_dropped(tmp_path, checkpoint):
    """Eval normalises labels by its protocol; a long or exotic label is simply a (probably) wrong answer."""
    good = png_bytes(render_word("ok"))
    path = write_lmdb(tmp_path / "odd", [(good, "x" * 60), (good, "café"), (good, "日本")])
    recognizer = Recognizer.from_checkpoint(checkpoint, device="cpu")
    standard = evaluate_dataset(recognizer, LmdbDataset(path), "odd")
    assert (standard.samples, standard.excluded_empty, standard.failed) == (2, 1, [])  # "日本" normalises to ""
    exact = evaluate_dataset(recognizer, LmdbDataset(path), "odd", protocol="exact")
    assert (exact.samples, exact.excluded_empty, exact.failed) == (3, 0, [])


# --- LMDB: training screens, skips and counts ----------------------------------------------------


def test_training_screens_labels_and_skips_unreadable_images(messy_lmdb):
    charset = Charset.from_spec("36")
    (source,), _ = open_sources([str(messy_lmdb)], charset, max_frames=26, seed=0)
    screening = source.screening
    # Unreadable labels: 3 (not UTF-8), 5 (no label), 12 and 13 (beyond the records).
    assert (screening.unreadable, screening.empty, screening.too_long, screening.unknown_chars) == (4, 1, 1, 1)
    assert screening.kept == source.size == 6 and screening.kept + screening.dropped == 13
    assert any("record 3: label is not valid UTF-8" in e for e in screening.examples)
    samples = TrainingSamples([source], charset, (64, 200))
    batch = Collate(charset)([samples[(0, index, index)] for index in range(source.size)])
    assert sorted(batch.labels) == ["ok", "wide"]
    assert batch.raw.pixels.shape[0] == 2 and batch.raw.pixels.shape[1] == 64 and batch.raw.is_real.all()
    assert len(batch.errors) == 4
    for number in (2, 4, 6, 11):
        assert sum(f"record {number}: {UNREADABLE[number]}" in e for e in batch.errors) == 1, batch.errors


# --- the commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "no data.mdb", "not an lmdb", "no num-samples", "a file"])
def test_eval_refuses_a_bad_dataset_in_one_line(case, tmp_path, checkpoint):
    target = tmp_path / "data"
    expected = {
        "missing": "LMDB folder does not exist",
        "no data.mdb": "not an LMDB folder",
        "not an lmdb": "cannot open as LMDB",
        "no num-samples": "no 'num-samples' key",
        "a file": "not an LMDB folder",
    }[case]
    if case == "no data.mdb":
        target.mkdir()
    elif case == "not an lmdb":
        target.mkdir()
        (target / "data.mdb").write_bytes(b"\0garbage" * 1000)
    elif case == "no num-samples":
        raw_lmdb(target, {key("image", 1): png_bytes(render_word("a")), key("label", 1): b"a"})
    elif case == "a file":
        target.write_text("not a folder")
    result = invoke("eval", "--checkpoint", checkpoint, "--data", target, "--device", "cpu")
    assert_one_clear_line(result, str(target), expected)


def test_eval_lists_unreadable_records_and_keeps_them_in_the_denominator(messy_lmdb, checkpoint, tmp_path):
    out = tmp_path / "results.json"
    result = invoke("eval", "--checkpoint", checkpoint, "--data", messy_lmdb, "--device", "cpu", "--json", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    listed = [line for line in result.output.splitlines() if line.startswith("unreadable (counted as wrong):")]
    assert len(listed) == len(UNREADABLE)
    for line, (number, words) in zip(listed, sorted(UNREADABLE.items())):
        assert f"{messy_lmdb} record {number}: " in line and words in line, line
    (record,) = json.loads(out.read_text())
    assert (record["samples"], record["excluded_empty"], len(record["failed"])) == (12, 1, 8)


@pytest.mark.parametrize("case", ["train data missing", "train data not an lmdb", "val data missing", "no usable sample"])
def test_train_refuses_a_bad_dataset_in_one_line(case, tmp_path, messy_lmdb):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "data.mdb").write_bytes(b"\0garbage" * 1000)
    only_bad = raw_lmdb(tmp_path / "only_bad", {b"num-samples": b"2", key("image", 1): b"junk", key("label", 1): b""})
    train_data, val_data, expected = {
        "train data missing": (tmp_path / "absent", messy_lmdb, "no LMDB folder matches"),
        "train data not an lmdb": (fake, messy_lmdb, "cannot open as LMDB"),
        "val data missing": (messy_lmdb, tmp_path / "absent", "LMDB folder does not exist"),
        "no usable sample": (only_bad, messy_lmdb, "no usable samples after screening labels"),
    }[case]
    result = invoke(
        "train", "--train-data", train_data, "--val-data", val_data, "--output", tmp_path / "run", "--max-steps", 2,
        "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"], "--device", "cpu",
    )
    assert_one_clear_line(result, expected)


def test_train_skips_and_counts_bad_records(messy_lmdb, tmp_path):
    result = invoke(
        "train", "--train-data", messy_lmdb, "--output", tmp_path / "run", "--max-steps", 2, "--batch-size", 6,
        "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"],
        "--workers", 0, "--no-augment", "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    # Screening: shown per reason, with examples naming records.
    assert "unreadable: 4" in result.output and "empty: 1" in result.output and "too long: 1" in result.output
    assert "dropped e.g." in result.output and "record 3: label is not valid UTF-8" in result.output
    # Each step draws all 6 screened samples, of which 4 do not decode: skipped, named, counted.
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped sample:")]
    assert len(skipped) == 8 and all("messy record " in line for line in skipped)
    assert "2 steps; 8 unreadable samples skipped" in result.output
    assert (tmp_path / "run" / "last.safetensors").is_file()


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, set[str], dict[str, str]]:
    """Good images of every awkward kind, and bad files; returns (folder, good names, bad name -> message)."""
    word = render_word("gate").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees to view
    broken_exif = Image.Exif()
    broken_exif[0x010E] = "a description long enough to cut"
    good = {
        "plain.png": png_bytes(word),
        "cmyk.jpg": encode(word.convert("CMYK"), "JPEG"),
        "sixteen_bit.png": encode(word.convert("I").point(lambda v: v * 256).convert("I;16"), "PNG"),
        "palette.png": encode(word.convert("P"), "PNG"),
        "rgba.png": encode(word.convert("RGBA"), "PNG"),
        "animated.gif": encode(word.convert("P"), "GIF", save_all=True, append_images=[render_word("two").convert("P")]),
        "one_pixel.png": encode(Image.new("L", (1, 1), 128), "PNG"),
        "exif_rotated.jpg": encode(word.rotate(90, expand=True), "JPEG", exif=exif.tobytes()),
        "corrupt_exif.jpg": encode(word, "JPEG", exif=broken_exif.tobytes()[:30]),  # Pillow warns, still decodes
        "wide.png": png_bytes(WIDE),
    }
    bad = {
        "truncated.png": (png_bytes(word)[:80], "corrupt or truncated image"),
        "truncated.jpg": (encode(word, "JPEG")[:300], "corrupt or truncated image"),
        "text.png": (b"I am a text file\n", "not a readable image"),
        "empty.jpg": (b"", "not a readable image"),
        "zero_width.png": (zero_width_png(), "not a readable image"),
        "bomb.png": (encode(Image.new("1", (7000, 7000)), "PNG"), "refused before decoding"),
    }
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image suffix: ignored when a folder is given")
    return folder, set(good), {name: message for name, (_, message) in bad.items()}


def test_predict_answers_good_images_and_reports_each_bad_one(image_folder, checkpoint):
    folder, good, bad = image_folder
    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", folder)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Warning" not in result.output
    answered = {Path(line.split("\t")[0]).name for line in result.output.splitlines() if "\t" in line}
    assert answered == good
    errors = error_lines(result.output)
    assert len(errors) == len(bad)
    for name, message in bad.items():
        (line,) = [e for e in errors if f"{folder / name}: " in e]
        assert message in line, line
    # --json: one object per image, errors included, in the same order.
    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", "--json", folder)
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {Path(r["image"]).name for r in records if "text" in r} == good
    assert {Path(r["image"]).name for r in records if "error" in r} == set(bad)


def test_predict_with_only_bad_input(tmp_path, checkpoint):
    (tmp_path / "text.png").write_text("hello")
    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", tmp_path / "text.png")
    assert_one_clear_line(result, "text.png: not a readable image")
    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", tmp_path / "nothing*.png")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nothing*.png: no such file" in result.output and "no images to read" in result.output
