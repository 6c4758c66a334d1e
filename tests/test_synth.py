"""The synthetic word renderer, its LMDB writer and CLI, and the training augmentation."""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from cli.synth import synth
from textrec.charset import Charset, ctc_min_length
from textrec.data import fonts as fonts_module
from textrec.data.augment import AUGMENTATIONS, build_augmentation
from textrec.data.fonts import BUILTIN, discover_fonts
from textrec.data.lmdb_store import LmdbDataset
from textrec.data.synth import EFFECTS, MAX_HEIGHT, MIN_HEIGHT, SynthSource, make_preview, write_synth_lmdb
from textrec.data.synth_text import TEXT_KINDS, TextSampler
from textrec.errors import DataError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "synth.md"


@pytest.fixture
def no_system_fonts(monkeypatch, tmp_path):
    """A machine without fonts: discovery searches one folder that does not exist."""
    monkeypatch.setattr(fonts_module, "SYSTEM_FONT_DIRS", (str(tmp_path / "no-fonts-here"),))


def records(path: Path) -> list[tuple[bytes, str]]:
    dataset = LmdbDataset(path)
    return [dataset.read(i) for i in range(len(dataset))]


def test_same_seed_same_lmdb_other_seed_differs(tmp_path):
    charset = Charset.from_spec("36")
    first = write_synth_lmdb(tmp_path / "a", 40, seed=1, charset=charset)
    write_synth_lmdb(tmp_path / "b", 40, seed=1, charset=charset)
    write_synth_lmdb(tmp_path / "c", 40, seed=2, charset=charset)
    assert first.written == 40 and first.images_per_second > 0
    a, b, c = records(tmp_path / "a"), records(tmp_path / "b"), records(tmp_path / "c")
    assert a == b
    assert [label for _, label in a] != [label for _, label in c]
    assert sum(x[0] != y[0] for x, y in zip(a, c)) > 30


def test_two_workers_write_what_one_writes(tmp_path):
    charset = Charset.from_spec("36")
    one = write_synth_lmdb(tmp_path / "one", 50, seed=5, charset=charset, workers=1, chunk_size=8)
    two = write_synth_lmdb(tmp_path / "two", 50, seed=5, charset=charset, workers=2, chunk_size=8)
    assert one.written == two.written == 50
    assert records(tmp_path / "one") == records(tmp_path / "two")


@pytest.mark.parametrize("spec", ["36", "94"])
def test_every_sample_decodes_with_a_label_that_fits(tmp_path, spec):
    charset = Charset.from_spec(spec)
    progress = []
    write_synth_lmdb(tmp_path / spec, 120, seed=3, charset=charset, image_format="png", on_progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (120, 120)
    dataset = LmdbDataset(tmp_path / spec)
    assert len(dataset) == 120
    labels = []
    for index in range(len(dataset)):
        image, label = dataset.read_image(index)
        assert image.mode == "L" and MIN_HEIGHT <= image.height <= MAX_HEIGHT and image.width >= 2
        assert label and not charset.unknown_chars(label), label
        assert ctc_min_length(charset.normalize(label)) <= 26
        labels.append(label)
    if spec == "36":
        assert all(label.isalnum() for label in labels)
    assert len(set(labels)) > 100  # varied text
    assert any(label.isupper() for label in labels) and any(label.islower() for label in labels)


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
    source = SynthSource(seed=0, charset=charset, max_frames=4)
    for index in range(150):
        _, label = source.sample(index)
        assert 1 <= ctc_min_length(charset.normalize(label)) <= 4, label


def test_renders_without_any_system_font(tmp_path, no_system_fonts):
    source = SynthSource(seed=0, charset=Charset.from_spec("36"))
    assert source.font_count == 0 and source.renderer.faces == [BUILTIN]
    image, label = source.sample(0)
    assert image.mode == "L" and label
    report = write_synth_lmdb(tmp_path / "out", 10, seed=0, charset=Charset.from_spec("36"))
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


def test_sample_is_a_pure_function_of_seed_and_index():
    charset = Charset.from_spec("94")
    source = SynthSource(seed=9, charset=charset, max_frames=26)
    assert source.name == "synth" and source.size is None
    image, label = source.sample(7)
    again = SynthSource(seed=9, charset=charset).sample(7)
    copied = pickle.loads(pickle.dumps(source)).sample(7)  # as a DataLoader worker gets it
    for other_image, other_label in (again, copied, source.sample(7)):
        assert other_label == label and other_image.tobytes() == image.tobytes() and other_image.size == image.size
    assert source.sample(8)[0].tobytes() != image.tobytes()


def test_words_file_replaces_the_dictionary(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("shop\t3\nhéllo\nbakery\n\n", encoding="utf-8")
    sampler = TextSampler(Charset.from_spec("36"), words=words)
    assert sampler.words.words == ["shop", "bakery"] and sampler.words.dropped == 1
    source = SynthSource(seed=1, charset=Charset.from_spec("36"), words=str(words))
    labels = {source.sample(i)[1].lower() for i in range(80)}
    assert {"shop", "bakery"} <= labels
    empty = tmp_path / "none.txt"
    empty.write_text("héllo\n", encoding="utf-8")
    with pytest.raises(DataError, match="no word of the list"):
        SynthSource(seed=1, charset=Charset.from_spec("36"), words=str(empty))


def test_tables_are_probabilities_and_documented():
    for table in (EFFECTS, AUGMENTATIONS, TEXT_KINDS):
        assert all(0 < p <= 1 for _, p, _ in table)
    assert abs(sum(p for _, p, _ in TEXT_KINDS) - 1) < 1e-9
    docs = DOCS.read_text(encoding="utf-8")
    for name, p, _ in EFFECTS + AUGMENTATIONS + TEXT_KINDS:
        assert re.search(rf"`{name}`\s*\|\s*{p:.2f}", docs), f"{name} ({p}) missing from docs/synth.md"


def test_augmentation_is_grayscale_and_deterministic_under_torch_seed():
    image = SynthSource(seed=0, charset=Charset.from_spec("36")).sample(0)[0]
    augment = build_augmentation()
    outputs = []
    for _ in range(2):
        torch.manual_seed(1234)
        outputs.append(augment(image))
    assert outputs[0].mode == "L" and outputs[0].size == image.size
    assert outputs[0].tobytes() == outputs[1].tobytes()
    results = set()
    for seed in range(12):
        torch.manual_seed(seed)
        results.add(augment(image).tobytes())
    assert len(results) > 6  # it does change images
    assert build_augmentation("none")(image).tobytes() == image.tobytes()
    torch.manual_seed(0)
    assert build_augmentation("strong")(image.convert("RGB")).mode == "L"
    with pytest.raises(DataError):
        build_augmentation("extreme")


def test_preview_sheet(tmp_path):
    source = SynthSource(seed=0, charset=Charset.from_spec("36"))
    path = make_preview([source.sample(i) for i in range(10)], tmp_path / "sheet" / "preview.png", columns=4)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.width > 4 * 200 and sheet.height > 3 * 48


def test_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(DataError, match="not an empty folder"):
        write_synth_lmdb(tmp_path / "out", 5, seed=0, charset=Charset.from_spec("36"))


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
    assert bad.exit_code == 1 and "image format" in bad.output
