"""The word-image pipeline: glyphs on the CPU, the batched device stage, the LMDB writer and its CLI."""

from __future__ import annotations

import math
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from cli.synth import synth
from imagegen import render_word
from textrec.charset import Charset, ctc_min_length
from textrec.data.images import Preprocess, to_tensor
from textrec.data.lmdb_store import LmdbDataset
from textrec.errors import DataError
from textrec.synth import fonts as fonts_module
from textrec.synth import glyphs as glyphs_module
from textrec.synth.fonts import BUILTIN, discover_fonts, load_font
from textrec.synth.glyphs import GlyphSource, glyph_atlas, rasterise
from textrec.synth.params import EFFECTS, Draws
from textrec.synth.pipeline import Finisher, SynthSource, collate_raw, raw_real
from textrec.synth.text import TEXT_KINDS, TextSampler
from textrec.synth.writer import Renderer, make_preview, write_synth_lmdb

DOCS = Path(__file__).resolve().parents[1] / "docs" / "synth.md"


@pytest.fixture
def no_system_fonts(monkeypatch, tmp_path):
    """A machine without fonts: discovery searches one folder that does not exist."""
    monkeypatch.setattr(fonts_module, "SYSTEM_FONT_DIRS", (str(tmp_path / "no-fonts-here"),))


def records(path: Path) -> list[tuple[bytes, str]]:
    dataset = LmdbDataset(path)
    return [dataset.read(i) for i in range(len(dataset))]


def renderer(seed=1, spec="36", **kw) -> Renderer:
    return Renderer(GlyphSource(seed, Charset.from_spec(spec), **kw))


# ---- determinism and the LMDB writer ----------------------------------------------------------------


def test_same_seed_same_lmdb_other_seed_differs(tmp_path):
    first = write_synth_lmdb(tmp_path / "a", 40, renderer(1))
    write_synth_lmdb(tmp_path / "b", 40, renderer(1))
    write_synth_lmdb(tmp_path / "c", 40, renderer(2))
    assert first.written == 40 and first.images_per_second > 0
    a, b, c = records(tmp_path / "a"), records(tmp_path / "b"), records(tmp_path / "c")
    assert a == b
    assert [label for _, label in a] != [label for _, label in c]
    assert sum(x[0] != y[0] for x, y in zip(a, c)) > 30


def test_two_workers_write_what_one_writes(tmp_path, monkeypatch):
    monkeypatch.setattr("textrec.synth.writer.CHUNK", 8)  # several chunks in flight
    one = write_synth_lmdb(tmp_path / "one", 50, renderer(5), workers=1)
    two = write_synth_lmdb(tmp_path / "two", 50, renderer(5), workers=2)
    assert one.written == two.written == 50
    assert records(tmp_path / "one") == records(tmp_path / "two")


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_stored_images_decode_to_the_finished_pixels_with_either_encoder(monkeypatch, image_format):
    # torchvision.io encodes the LMDB's files; where a torchvision has dropped its encoders, Pillow does.
    import io

    import torchvision

    from textrec.synth import writer

    batch, _ = writer.Renderer(GlyphSource(6, Charset.from_spec("36"), 26))._raw_chunk(0, 12)
    crops = Finisher(32, 100, 6, scale=1).crops(batch, 0)
    fast = writer.encode_crops(crops, image_format)
    monkeypatch.delattr(torchvision.io, "encode_jpeg")
    fallback = writer.encode_crops(crops, image_format)
    for crop, *files in zip(crops, fast, fallback):
        for data in files:
            decoded = np.asarray(Image.open(io.BytesIO(data)))
            assert decoded.shape == tuple(crop.shape[1:])
            difference = np.abs(decoded.astype(int) - crop[0].numpy()).mean()
            assert difference == 0 if image_format == "png" else difference < 3  # JPEG at quality 95


@pytest.mark.parametrize("spec", ["36", "94"])
def test_every_sample_decodes_with_a_label_that_fits(tmp_path, spec):
    charset = Charset.from_spec(spec)
    progress = []
    write_synth_lmdb(tmp_path / spec, 120, renderer(3, spec), image_format="png", on_progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (120, 120)
    dataset = LmdbDataset(tmp_path / spec)
    assert len(dataset) == 120
    labels = []
    for index in range(len(dataset)):
        image, label = dataset.read_image(index)
        assert image.mode == "L" and image.height == 32 and 8 <= image.width <= 100  # a 32x100 model's input, unpadded
        assert label and not charset.unknown_chars(label), label
        assert ctc_min_length(charset.normalize(label)) <= 26
        labels.append(label)
    if spec == "36":
        assert all(label.isalnum() for label in labels)
    assert len(set(labels)) > 100  # varied text
    assert any(label.isupper() for label in labels) and any(label.islower() for label in labels)


def test_raw_samples_are_a_pure_function_of_seed_and_index():
    source = SynthSource(seed=9, charset=Charset.from_spec("94"))
    assert source.name == "synth" and source.size is None
    first = source.raw(7)
    again = SynthSource(seed=9, charset=Charset.from_spec("94")).raw(7)
    copied = pickle.loads(pickle.dumps(source)).raw(7)  # as a DataLoader worker gets it
    for other in (again, copied, source.raw(7)):
        assert other.label == first.label and (other.pixels == first.pixels).all() and other.ink == first.ink
    assert source.raw(8).label != first.label or (source.raw(8).pixels.shape != first.pixels.shape)


def test_device_stage_is_deterministic_per_step_on_cpu():
    source = SynthSource(seed=0, charset=Charset.from_spec("36"))
    batch, _ = collate_raw([source.raw(i) for i in range(16)])
    finisher = Finisher(32, 100, seed=3)
    a, b = finisher.model_input(batch, 5), finisher.model_input(batch, 5)
    assert torch.equal(a, b)
    assert not torch.equal(a, finisher.model_input(batch, 6))
    assert not torch.equal(a, Finisher(32, 100, seed=4).model_input(batch, 5))
    assert a.shape == (16, 1, 32, 100) and a.min() >= -1 and a.max() <= 1


def test_every_sample_of_a_batch_gets_its_own_parameters():
    source = SynthSource(seed=0, charset=Charset.from_spec("36"))
    one = source.raw(0)
    batch, _ = collate_raw([one] * 24)  # the same text 24 times
    images = Finisher(32, 100, seed=0).model_input(batch, 0)
    distinct = {images[i].numpy().tobytes() for i in range(24)}
    assert len(distinct) == 24
    draws = Draws(torch.Generator().manual_seed(0), torch.zeros(1000, dtype=torch.bool))
    fires = draws.fires("blur").float().mean().item()
    assert 0.25 < fires < 0.35  # blur's synth probability, 0.30, drawn per sample


def test_real_crops_without_effects_match_inference_preprocessing():
    image = render_word("Door")
    finisher = Finisher(32, 100, seed=0, augment_real=False)
    batch, labels = collate_raw([raw_real(image, "Door", *finisher.canvas_size)])
    trained_on = finisher.model_input(batch, 0)[0]
    assert labels == ["Door"]
    assert torch.allclose(trained_on, to_tensor(image, Preprocess(32, 100)), atol=1e-5)
    augmented = Finisher(32, 100, seed=0).model_input(collate_raw([raw_real(image, "Door", *finisher.canvas_size)] * 16)[0], 0)
    assert sum(not torch.allclose(augmented[i], trained_on, atol=1e-3) for i in range(16)) >= 4  # some effects fire


def test_mixed_batches_of_synthetic_and_real_samples():
    source = SynthSource(seed=0, charset=Charset.from_spec("36"))
    finisher = Finisher(32, 128, seed=0)
    raws = [source.raw(i) for i in range(6)] + [raw_real(render_word("exit"), "exit", *finisher.canvas_size)] * 2
    batch, labels = collate_raw(raws)
    assert batch.is_real.tolist() == [False] * 6 + [True] * 2 and labels[-1] == "exit"
    images = finisher.images(batch, 0)
    assert all(im.mode == "L" and im.height == 64 for im in images)
    word = render_word("exit")
    assert images[-1].width == 2 * min(128, math.ceil(32 * word.width / word.height))  # its own width, unpadded


# ---- labels, fonts and texts ------------------------------------------------------------------------


def test_label_is_the_rasterised_text():
    source = GlyphSource(seed=4, charset=Charset.from_spec("94"))
    by_name = {face.name: face for face in source.faces}
    untracked = 0
    for index in range(40):
        sample = source.sample(index)
        assert sample.label and sample.mask.shape[0] > 4
        redrawn = rasterise(sample.label, glyph_atlas(by_name[sample.font], int(sample.em)))
        if redrawn.shape == sample.mask.shape:  # drawn without extra tracking
            assert (redrawn == sample.mask).all(), sample.label
            untracked += 1
    assert untracked >= 20  # tracking is added to a quarter of the texts


@pytest.mark.parametrize("face_index", [0, -1], ids=["first-system-font", "pillow-builtin"])
def test_glyph_atlas_draws_what_freetype_draws_for_the_whole_string(face_index):
    # The atlas puts texts together from cached glyphs; Pillow's own whole-string render (FreeType with the
    # font's kerning) is the reference. Texts without the f-ligatures that shaping would substitute.
    face = GlyphSource(seed=0, charset=Charset.from_spec("94")).faces[face_index]
    for size in (30, 37, 44):
        font = load_font(face, size)
        for text in ("AVATAR", "Typography", "WAVE", "To", "hello", "12/05/2024", "jumpy", "Wolf's"):
            core, _ = font.getmask2(text, mode="L")
            reference = np.asarray(Image.Image()._new(core))
            rows, columns = np.nonzero(reference)
            reference = reference[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
            got = rasterise(text, glyph_atlas(face, size))[2:-2, 2:-2]
            assert got.shape[0] == reference.shape[0] and abs(got.shape[1] - reference.shape[1]) <= 1, (text, size)
            width = min(got.shape[1], reference.shape[1])
            difference = np.abs(got[:, :width].astype(int) - reference[:, :width]).mean()
            assert difference < 4, (face.name, text, size, difference)


def test_ligature_pairs_are_spaced_as_separate_letters():
    # The atlas draws "fi" as f and i: their spacing is that of the string shaped without ligatures (it was the
    # ligature's width before, which pushed the i into the f).
    from PIL import ImageFont

    from textrec.synth.glyphs import UNSHAPED

    path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf")
    if not path.is_file():
        pytest.skip("DejaVu Serif Bold is not installed here")
    face = fonts_module.FontFace(str(path))
    font = load_font(face, 43)
    if font.layout_engine != ImageFont.Layout.RAQM:
        pytest.skip("Pillow without libraqm shapes no ligatures")
    for text in ("Confidentially", "staffordshire", "flea"):
        core, _ = font.getmask2(text, mode="L", features=list(UNSHAPED))
        reference = np.asarray(Image.Image()._new(core))
        rows, columns = np.nonzero(reference)
        reference = reference[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        got = rasterise(text, glyph_atlas(face, 43))[2:-2, 2:-2]
        assert got.shape == reference.shape, text
        assert np.abs(got.astype(int) - reference).mean() < 4, text


def test_letter_spacing_moves_every_glyph_by_the_same_step():
    face = GlyphSource(seed=0, charset=Charset.from_spec("36")).faces[0]
    atlas = glyph_atlas(face, 32)
    plain, tracked = rasterise("iiii", atlas), rasterise("iiii", atlas, spacing=10.0)
    assert tracked.shape[0] == plain.shape[0] and tracked.shape[1] - plain.shape[1] in (29, 30, 31)
    assert tracked.sum() == plain.sum()  # the same glyphs, apart


def test_a_font_lacking_a_glyph_is_never_used_for_that_string(monkeypatch):
    source = GlyphSource(seed=2, charset=Charset.from_spec("36"))
    if source.font_count < 2:
        pytest.skip("needs two fonts; a fresh machine has the 22 DejaVu faces")
    lacking = source.faces[0]
    real_missing = glyphs_module.face_missing
    monkeypatch.setattr(
        glyphs_module, "face_missing", lambda face, chars: frozenset("eE") | real_missing(face, chars) if face == lacking else real_missing(face, chars)
    )
    used = [(s.label, s.font) for s in (source.sample(i) for i in range(300))]
    assert any("e" in label.lower() for label, _ in used)
    assert not any("e" in label.lower() and font == lacking.name for label, font in used)
    assert any(font == lacking.name for _, font in used)  # it is still used for other strings


def test_spaces_only_between_the_words_of_phrases():
    rng = random.Random(5)
    with_space = TextSampler(Charset.from_spec("95"), max_frames=41)
    texts = [with_space.sample(rng) for _ in range(2000)]
    phrases = [t for t in texts if " " in t]
    assert 0.03 < len(phrases) / len(texts) < 0.10  # the `phrase` kind's share (0.06)
    for text in phrases:
        assert text == text.strip() and "  " not in text and len(text.split(" ")) >= 2, repr(text)
        assert ctc_min_length(text) <= 41
    without_space = TextSampler(Charset.from_spec("94"), max_frames=41)
    assert not any(" " in without_space.sample(rng) for _ in range(500))


def test_labels_fit_a_small_frame_budget():
    charset = Charset.from_spec("62")
    source = GlyphSource(seed=0, charset=charset, max_frames=4)
    for index in range(150):
        label = source.sample(index).label
        assert 1 <= ctc_min_length(charset.normalize(label)) <= 4, label


def test_renders_without_any_system_font(tmp_path, no_system_fonts):
    source = GlyphSource(seed=0, charset=Charset.from_spec("36"))
    assert source.font_count == 0 and source.faces == [BUILTIN]
    assert source.sample(0).label
    report = write_synth_lmdb(tmp_path / "out", 10, Renderer(source))
    assert report.fonts == 0 and report.written == 10


def test_font_folders_are_searched_and_bad_files_reported(tmp_path, no_system_fonts):
    folder = tmp_path / "fonts"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "broken.ttf").write_bytes(b"not a font")
    (folder / "readme.txt").write_text("ignored")
    report = discover_fonts([folder])
    assert report.faces == []
    assert [Path(path).name for path, _ in report.rejected] == ["broken.ttf"]
    with pytest.raises(DataError, match="does not exist"):
        discover_fonts([tmp_path / "missing"])
    system = [Path(p) for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",) if Path(p).is_file()]
    if system:  # a real font given by file is used
        assert [Path(f.path) for f in discover_fonts(system).faces] == system


def test_fifos_and_dangling_links_given_as_fonts_or_words_are_refused_without_blocking(tmp_path, no_system_fonts):
    # FreeType and a plain read() would wait forever on a FIFO with no writer: such files are named and skipped.
    import os

    folder = tmp_path / "fonts"
    folder.mkdir()
    os.mkfifo(folder / "pipe.ttf")
    (folder / "gone.ttf").symlink_to(tmp_path / "nowhere.ttf")
    os.mkfifo(tmp_path / "given.otf")
    report = discover_fonts([folder, tmp_path / "given.otf"])
    reasons = {Path(path).name: reason for path, reason in report.rejected}
    assert reasons["pipe.ttf"] == reasons["given.otf"] == "is a FIFO (named pipe), not a regular file"
    assert reasons["gone.ttf"].startswith("cannot open") and report.faces == []
    (tmp_path / "font.woff").write_bytes(b"wOFF")  # named directly but not a kind of font file we open: said so
    assert discover_fonts([tmp_path / "font.woff"]).rejected == [(str(tmp_path / "font.woff"), "not a font file (.ttf, .otf, .ttc)")]
    os.mkfifo(tmp_path / "words.txt")
    with pytest.raises(DataError, match=r"words.txt: cannot read word list \(is a FIFO \(named pipe\), not a regular file\)"):
        TextSampler(Charset.from_spec("36"), words=tmp_path / "words.txt")


def test_words_file_replaces_the_dictionary(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("shop\t3\nhéllo\nbakery\n\n", encoding="utf-8")
    sampler = TextSampler(Charset.from_spec("36"), words=words)
    assert sampler.words.words == ["shop", "bakery"] and sampler.words.dropped == 1
    source = GlyphSource(seed=1, charset=Charset.from_spec("36"), words=str(words))
    labels = {source.sample(i).label.lower() for i in range(80)}
    assert {"shop", "bakery"} <= labels
    empty = tmp_path / "none.txt"
    empty.write_text("héllo\n", encoding="utf-8")
    with pytest.raises(DataError, match="no word of the list"):
        GlyphSource(seed=1, charset=Charset.from_spec("36"), words=str(empty))


def test_tables_are_probabilities_and_documented():
    for name, p_synth, p_real, _ in EFFECTS:
        assert p_synth is not None or p_real is not None
        assert all(0 < p <= 1 for p in (p_synth, p_real) if p is not None)
    assert all(0 < p <= 1 for _, p, _ in TEXT_KINDS)
    assert abs(sum(p for _, p, _ in TEXT_KINDS) - 1) < 1e-9
    docs = DOCS.read_text(encoding="utf-8")
    shown = lambda p: "–" if p is None else f"{p:.2f}"  # noqa: E731
    for name, p_synth, p_real, _ in EFFECTS:
        pattern = rf"`{name}`\s*\|\s*{re.escape(shown(p_synth))}\s*\|\s*{re.escape(shown(p_real))}\s*\|"
        assert re.search(pattern, docs), f"{name} ({p_synth}, {p_real}) missing from docs/synth.md"
    for name, p, _ in TEXT_KINDS:
        assert re.search(rf"`{name}`\s*\|\s*{p:.2f}", docs), f"{name} ({p}) missing from docs/synth.md"


# ---- previews and the CLI ---------------------------------------------------------------------------


def test_preview_sheet(tmp_path):
    path = make_preview(renderer(0).render(10), tmp_path / "sheet" / "preview.png", columns=4)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.width > 4 * 200 and sheet.height > 3 * 48


def test_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(DataError, match="not an empty folder"):
        write_synth_lmdb(tmp_path / "out", 5, renderer(0))


def test_cli_writes_lmdb_and_preview(tmp_path):
    app = typer.Typer()
    app.command()(synth)
    out, sheet = tmp_path / "synth", tmp_path / "preview.png"
    result = CliRunner().invoke(app, [str(out), "--count", "12", "--seed", "4", "--preview", str(sheet), "--charset", "94"])
    assert result.exit_code == 0, result.output
    assert "fonts:" in result.output or "no fonts found" in result.output
    assert "images/s" in result.output
    assert len(LmdbDataset(out)) == 12 and sheet.is_file()
    bad = CliRunner().invoke(app, [str(tmp_path / "x"), "--count", "3", "--format", "gif"])
    # refused before any work: no progress bar, no font search
    assert bad.exit_code == 1 and bad.output == "error: --format must be one of jpeg, png (got 'gif')\n"


def test_cli_names_bad_font_files(tmp_path):
    app = typer.Typer()
    app.command()(synth)
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    (fonts / "broken.ttf").write_bytes(b"\x00" * 100)
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(tmp_path / "out"), "--count", "4", "--fonts", str(fonts)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "broken.ttf" in line]
    assert len(lines) == 1 and "font not used" in lines[0]


def test_phrases_put_marks_before_the_space_as_printed():
    rng = random.Random(7)
    sampler = TextSampler(Charset.from_spec("95"), max_frames=41)
    phrases = [t for t in (sampler.sample(rng) for _ in range(6000)) if " " in t]
    inner = [w for t in phrases for w in t.split(" ")[:-1]]
    marked = [w for w in inner if w[-1] in ",.:;!-"]
    assert 0.08 < len(marked) / len(inner) < 0.25  # PHRASE_MARK_RATE (0.15), a few words end in one anyway
    assert sum(w.endswith(",") for w in marked) > len(marked) / 3  # mostly commas: "Hello, World"
    assert not any(" ," in t or " ." in t for t in phrases)  # never a space before the mark
    without = TextSampler(Charset.from_spec("36"), max_frames=41)  # no punctuation in the charset: none drawn
    assert not any(set(without.sample(rng)) & set(",.:;!-") for _ in range(500))


def test_training_names_the_fonts_it_was_given_but_does_not_use(tmp_path, no_system_fonts):
    # `textrec train --synth-fonts` shows them under the data table (cli/train_cmd.py), as `textrec synth` does
    from textrec.train import _source_info

    (tmp_path / "broken.ttf").write_bytes(b"\x00" * 100)
    source = SynthSource(0, Charset.from_spec("36"), fonts=[str(tmp_path / "broken.ttf")])
    info = _source_info(source, 1.0, 8)
    assert info.fonts == 0 and [Path(path).name for path, _ in info.rejected_fonts] == ["broken.ttf"]
    assert info.rejected_fonts[0][1].startswith("cannot open")
