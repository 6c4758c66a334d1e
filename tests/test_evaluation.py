"""The benchmark protocol (issue 14): decoders, lexicons (global and per sample), `eval --benchmark all`, ECE and
the error report, on an untrained tiny model and generated words.

As in test_cli.py, the commands are checked against the same model read through the library (the same
computation), never against the ground truth; the decoders themselves are checked on crafted outputs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lmdb
import pytest
import torch
from PIL import Image

from cliutil import assert_one_clear_line, invoke
from imagegen import png_bytes, render_word, write_lmdb
from textrec.charset import Charset
from textrec.data.lmdb_store import LmdbDataset, LmdbWriter, create_lmdb
from textrec.decode import greedy_decode
from textrec.decoder import PER_SAMPLE, Decoder, make_decoder
from textrec.errors import ConfigError, DataError
from textrec.evaluate import evaluate_dataset
from textrec.lexicon import Lexicon, lexicon_decode, read_lexicon_file
from textrec.metrics import Score, expected_calibration_error, normalize_for_eval
from textrec.predict import Recognizer

from test_lexicon import CHARSET, peaked
from test_train import save_untrained_tiny

WORDS = ["cat", "door", "gate", "lstm", "text"]
# Each sample's own lexicon: its word among others ("Door" and "don't" are matched ignoring case and punctuation).
LEXICONS = [["cat", "car", "cut"], ["Door", "dorm"], ["gate", "gale", "café"], [], ["text", "next", "tent"]]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_untrained_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def lexicon_lmdb(tmp_path_factory) -> Path:
    """Five words with their own lexicons (one empty), made by `create-lmdb --lexicons`."""
    root = tmp_path_factory.mktemp("lexicons")
    for word in WORDS:
        render_word(word).save(root / f"{word}.png")
    lines = [f"{w}.png\t{w}\t{','.join(lexicon)}" for w, lexicon in zip(WORDS, LEXICONS)]
    (root / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("create-lmdb", root / "gt.txt", root / "lmdb", "--lexicons")
    assert result.exit_code == 0 and "wrote 5 samples with their lexicons" in result.output, result.output
    return root / "lmdb"


def library(model: Path, **decoder) -> Recognizer:
    recognizer = Recognizer.from_checkpoint(model, device="cpu", orientation=False)
    recognizer.decoder = make_decoder(recognizer.charset, **decoder)
    return recognizer


def score(texts: list[str], labels: list[str]) -> Score:
    total = Score()
    for text, label in zip(texts, labels):
        total.add(normalize_for_eval(text), normalize_for_eval(label))
    return total


# --- the library ---------------------------------------------------------------------------------------------


def test_the_default_decoder_is_greedy_decoding_unchanged():
    torch.manual_seed(0)
    log_probs = torch.randn(20, 4, CHARSET.num_classes).log_softmax(2)
    assert Decoder().decode(log_probs, CHARSET) == greedy_decode(log_probs, CHARSET)
    with pytest.raises(ConfigError, match="decoder 'viterbi': unknown"):
        Decoder("viterbi")
    with pytest.raises(ConfigError, match="beam width 0"):
        Decoder("beam", 0)


def test_case_insensitive_lexicons_report_words_as_written():
    lexicon = Lexicon.case_insensitive(["Don't", "DONT", "Hotel", "café", "!!!", " ", "42nd"])
    assert lexicon.words == ["dont", "hotel", "42nd"] and lexicon.unknown == ["café", "!!!"]
    cased = Charset.from_spec("95")
    decoder = make_decoder(cased, lexicon=["Don't", "Hotel", "Motel"])
    decoded = decoder.decode(peaked("HOTEL", cased, 14).unsqueeze(1), cased)
    assert decoded[0].text == "Hotel"  # an upper-case reading matched to the word as the lexicon writes it
    exact = make_decoder(cased, lexicon=["Don't", "Hotel", "Motel"], case_insensitive=False)
    assert exact.lexicon.words == ["Don't", "Hotel", "Motel"]


def test_per_sample_lexicons_none_and_empty_read_unconstrained():
    batch = torch.stack([peaked("hotol", CHARSET), peaked("street", CHARSET), peaked("gate", CHARSET)], 1)
    decoder = make_decoder(CHARSET, "beam", 4, PER_SAMPLE)
    lexicons = [decoder.make_lexicon(["hotel", "motel"], CHARSET), None, decoder.make_lexicon([], CHARSET)]
    texts = [d.text for d in decoder.decode(batch, CHARSET, lexicons)]
    assert texts == ["hotel", "street", "gate"]
    assert [d.text for d in decoder.decode(batch, CHARSET)] == ["hotol", "street", "gate"]  # no lexicons given


def test_a_large_lexicon_is_searched_through_its_prefix_tree():
    words = [f"{a}{b}{c}{d}" for a in "abcdefgh" for b in "aeiou" for c in "lmnrst" for d in "aeiou"] + ["street"]
    lexicon = Lexicon.case_insensitive(words)
    assert lexicon.large
    log_probs = peaked("streat", CHARSET, 14)
    found = lexicon.search(log_probs, CHARSET)
    assert found and "street" in found and len(found) <= 20
    decoded = lexicon_decode(log_probs, lexicon, CHARSET, "streat")
    assert decoded.text == "street" and decoded.log_confidence == pytest.approx(math.log(decoded.confidence))
    # Too few frames for any word: the search ends on none, the BK-tree gives the nearest (probability 0).
    long_words = Lexicon.case_insensitive(["x" * 10 + w for w in words])
    short = peaked("ab", CHARSET, 4)
    assert long_words.search(short, CHARSET) == []
    decoded = lexicon_decode(short, long_words, CHARSET, "ab")
    assert decoded.text in long_words.words and decoded.confidence == 0.0


def test_lexicon_files_and_decoder_errors(tmp_path):
    (tmp_path / "words.txt").write_bytes(b"\xef\xbb\xbfhotel\n\n  motel \r\ncaf\xc3\xa9\n")
    assert read_lexicon_file(tmp_path / "words.txt") == ["hotel", "motel", "café"]
    decoder = make_decoder(CHARSET, lexicon=tmp_path / "words.txt")
    assert decoder.lexicon.words == ["hotel", "motel"] and decoder.lexicon.unknown == ["café"]
    assert decoder.describe() == "greedy + lexicon (2 words)"
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "foreign.txt").write_text("日本\ncafé\n", encoding="utf-8")
    for name, message in [
        ("absent.txt", "cannot read the lexicon (no such file)"),
        ("latin1.txt", "not UTF-8"),
        ("blank.txt", "holds no words"),
        ("foreign.txt", "none of its 2 words can be written"),
    ]:
        with pytest.raises(DataError, match=re.escape(message)):
            make_decoder(CHARSET, lexicon=tmp_path / name)


def test_lmdb_lexicons_are_stored_and_the_label_checks_stay(tmp_path, lexicon_lmdb):
    dataset = LmdbDataset(lexicon_lmdb)
    assert dataset.has_lexicons()
    assert [dataset.read_lexicon(i) for i in range(len(dataset))] == LEXICONS
    assert [dataset.read_label(i) for i in range(len(dataset))] == WORDS
    plain = write_lmdb(tmp_path / "plain", [(png_bytes(render_word("a")), "a")])
    assert not LmdbDataset(plain).has_lexicons() and LmdbDataset(plain).read_lexicon(0) is None

    render_word("ok").save(tmp_path / "ok.png")
    lines = ["ok.png\tok\tok,okay", "ok.png\tok", "ok.png\tok\ta\tb", "ok.png\tok\tbell\x07", "ok.png\t\tok"]
    (tmp_path / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    skipped = []
    report = create_lmdb(tmp_path / "gt.txt", tmp_path / "out", lexicons=True, on_skip=lambda n, r: skipped.append((n, r)))
    assert report.written == 1
    assert [n for n, _ in skipped] == [2, 3, 4, 5]
    assert "no lexicon column" in skipped[0][1] and "lexicon holds a tab" in skipped[1][1]
    assert "lexicon holds a control character (U+0007)" in skipped[2][1] and skipped[3][1] == "empty label"
    # Without --lexicons a second tab is still a bad label.
    result = invoke("create-lmdb", tmp_path / "gt.txt", tmp_path / "strict")
    assert ":1: label holds a tab" in result.output and "--lexicons" in result.output


# --- the commands --------------------------------------------------------------------------------------------


def test_eval_per_sample_lexicons_and_ece_match_the_library(model, lexicon_lmdb, tmp_path):
    out = tmp_path / "results.json"
    result = invoke("eval", "--checkpoint", model, "--data", lexicon_lmdb, "--device", "cpu", "--lexicon", PER_SAMPLE,
                    "--json", out)
    assert result.exit_code == 0, result.output
    assert "decoder: greedy + per-sample lexicons" in result.output and "ECE" in result.output
    assert "1 samples without a lexicon" in result.output and "1 lexicon words the model's charset cannot" in result.output

    recognizer = library(model, lexicon=PER_SAMPLE)
    dataset = LmdbDataset(lexicon_lmdb)
    images = [dataset.read_image(i)[0] for i in range(len(dataset))]
    lexicons = [recognizer.decoder.make_lexicon(words, recognizer.charset) for words in LEXICONS]
    decoded = recognizer.recognize_tensor(recognizer.prepare(images), lexicons)
    for text, words in zip(decoded, LEXICONS):  # every read is a word of its own lexicon, when it has one
        assert not words or normalize_for_eval(text.text) in {normalize_for_eval(w) for w in words}
    expected = score([d.text for d in decoded], WORDS)
    right = [normalize_for_eval(d.text) == w for d, w in zip(decoded, WORDS)]
    ece = expected_calibration_error([recognizer.confidence(d) for d in decoded], right)
    (record,) = json.loads(out.read_text())
    assert (record["correct"], record["samples"], record["unconstrained"], record["lexicon_unknown"]) == (expected.correct, 5, 1, 1)
    assert record["ece"] == pytest.approx(ece) and record["decoder"] == "greedy + per-sample lexicons"
    (row,) = [line for line in result.output.splitlines() if "│" in line and "lmdb" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[:5] == ["lmdb", "5", f"{expected.accuracy:.2f}", f"{expected.ned:.4f}", f"{ece:.4f}"], cells


def test_eval_beam_and_a_lexicon_file_match_the_library(model, lexicon_lmdb, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["Cat", "door", "gate", "lstm", "TEXT", "tent", "café"]) + "\n", encoding="utf-8")
    out = tmp_path / "results.json"
    result = invoke("eval", "--checkpoint", model, "--data", lexicon_lmdb, "--device", "cpu", "--decoder", "beam",
                    "--beam-width", 3, "--lexicon", words, "--json", out)
    assert result.exit_code == 0, result.output
    assert "1 words the model's charset cannot write were left out (e.g. 'café')" in result.output
    recognizer = library(model, method="beam", beam_width=3, lexicon=words)
    dataset = LmdbDataset(lexicon_lmdb)
    decoded = recognizer.recognize([dataset.read_image(i)[0] for i in range(len(dataset))], batch_size=64)
    assert all(d.text in {"Cat", "door", "gate", "lstm", "TEXT", "tent"} for d in decoded)
    (record,) = json.loads(out.read_text())
    assert record["correct"] == score([d.text for d in decoded], WORDS).correct
    assert record["decoder"] == "beam 3 + lexicon (6 words)"


def test_eval_all_finds_the_standard_sets_and_adds_an_average(model, lexicon_lmdb, tmp_path):
    root = tmp_path / "root"
    write_lmdb(root / "benchmarks" / "IC13_857", [(png_bytes(render_word(w)), w) for w in WORDS[:3]])
    write_lmdb(root / "evaluation" / "SVT", [(png_bytes(render_word(w)), w) for w in WORDS])
    out = tmp_path / "all.json"
    result = invoke("eval", "--checkpoint", model, "--benchmark", "all", "--data-root", root, "--device", "cpu",
                    "--protocol", "case", "--json", out)
    assert result.exit_code == 0, result.output
    assert f"found 2 of 10 standard sets under {root}: SVT, IC13_857; missing: IIIT5k_3000, IC03_860" in result.output
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["SVT", "IC13_857", "average"]
    average = rows[-1]
    assert average["samples"] == 8 and average["correct"] == rows[0]["correct"] + rows[1]["correct"]
    assert average["ned"] == pytest.approx((rows[0]["ned"] * 5 + rows[1]["ned"] * 3) / 8)
    assert all(r["protocol"] == "case" for r in rows)
    assert any(line.startswith("│ average") for line in result.output.splitlines())
    result = invoke("eval", "--checkpoint", model, "--benchmark", "all", "--data-root", tmp_path / "nothing")
    assert_one_clear_line(result, "no standard benchmark LMDBs under", "IIIT5k_3000")


def test_eval_errors_writes_every_misread_and_unreadable_sample(model, tmp_path):
    data = write_lmdb(tmp_path / "set", [*[(png_bytes(render_word(w)), w) for w in WORDS], (b"not an image", "junk")])
    errors = tmp_path / "errors"
    result = invoke("eval", "--checkpoint", model, "--data", data, "--device", "cpu", "--errors", errors)
    assert result.exit_code == 0, result.output
    recognizer = library(model)
    decoded = recognizer.recognize([render_word(w) for w in WORDS], batch_size=64)
    wrong = [i for i, (d, w) in enumerate(zip(decoded, WORDS)) if normalize_for_eval(d.text) != w]
    records = [json.loads(line) for line in (errors / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["record"] for r in records] == [i + 1 for i in wrong] + [6]
    for r in records[:-1]:
        i = r["record"] - 1
        assert (r["label"], r["prediction"]) == (WORDS[i], decoded[i].text)
        assert r["confidence"] == pytest.approx(recognizer.confidence(decoded[i]), abs=1e-4)
        assert Image.open(errors / r["image"]).size == render_word(WORDS[i]).size
    assert records[-1]["label"] == "junk" and "not a readable image" in records[-1]["error"] and "image" not in records[-1]
    assert f"{len(wrong)} misread and 1 unreadable samples written to {errors}" in result.output
    sheet = Image.open(errors / records[0]["sheet"])
    assert sheet.width > 1000 and sheet.height >= 40 * (len(records) + 1)
    # Its own folder is emptied and rewritten; someone else's is refused unless --overwrite.
    result = invoke("eval", "--checkpoint", model, "--data", data, "--device", "cpu", "--errors", errors)
    assert result.exit_code == 0 and len((errors / "errors.jsonl").read_text().splitlines()) == len(records)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = invoke("eval", "--checkpoint", model, "--data", data, "--device", "cpu", "--errors", mine)
    assert_one_clear_line(result, str(mine), "not empty", "--overwrite")
    assert "1-NED" not in result.output  # refused before evaluating
    result = invoke("eval", "--checkpoint", model, "--data", data, "--device", "cpu", "--errors", mine, "--overwrite")
    assert result.exit_code == 0 and (mine / "notes.txt").read_text() == "keep" and (mine / "errors.jsonl").is_file()
    (tmp_path / "file").write_text("x")
    assert_one_clear_line(invoke("eval", "--checkpoint", model, "--data", data, "--errors", tmp_path / "file"), "not a folder")


def test_predict_with_beam_and_a_lexicon_prints_what_the_library_reads(model, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("cat\nDoor\ngate\n", encoding="utf-8")
    images = []
    for word in ("cat", "door"):
        images.append(tmp_path / f"{word}.png")
        render_word(word).save(images[-1])
    result = invoke("predict", "--checkpoint", model, "--device", "cpu", "--no-orientation", "--decoder", "beam",
                    "--beam-width", 3, "--lexicon", words, *images)
    assert result.exit_code == 0, result.output
    expected = library(model, method="beam", beam_width=3, lexicon=words).read(images)
    assert result.output.splitlines() == [f"{p}\t{r.text}\t{r.confidence:.3f}" for p, r in zip(images, expected)]
    assert all(r.text in {"cat", "Door", "gate"} for r in expected)


@pytest.mark.parametrize("case", ["decoder", "beam width", "protocol", "lexicon file", "per-sample without", "predict per-sample"])
def test_bad_decoder_options_are_one_clear_line(case, model, tmp_path):
    data = write_lmdb(tmp_path / "plain", [(png_bytes(render_word("a")), "a")])
    common = ["eval", "--checkpoint", model, "--data", data, "--device", "cpu"]
    args, fragments = {
        "decoder": ([*common, "--decoder", "viterbi"], ["decoder 'viterbi': unknown", "greedy, beam"]),
        "beam width": ([*common, "--decoder", "beam", "--beam-width", 0], ["beam width 0"]),
        "protocol": ([*common, "--protocol", "62x"], ["unknown protocol '62x'", "case"]),
        "lexicon file": ([*common, "--lexicon", tmp_path / "absent.txt"], ["absent.txt: cannot read the lexicon"]),
        "per-sample without": ([*common, "--lexicon", PER_SAMPLE], [f"{data}: no per-sample lexicons", "--lexicons"]),
        "predict per-sample": (["predict", "--checkpoint", model, "--lexicon", PER_SAMPLE, data], ["only eval has per-sample"]),
    }[case]
    assert_one_clear_line(invoke(*args), *fragments)


def test_the_case_protocol_is_the_62_protocol():
    assert normalize_for_eval("Don't-Stop 24/7!", "case") == normalize_for_eval("Don't-Stop 24/7!", "62") == "DontStop247"


def test_an_lmdb_writer_stores_an_empty_lexicon(tmp_path):
    with LmdbWriter(tmp_path / "w") as writer:
        writer.add(png_bytes(render_word("a")), "a", [])
        writer.add(png_bytes(render_word("b")), "b")
    dataset = LmdbDataset(tmp_path / "w")
    assert (dataset.read_lexicon(0), dataset.read_lexicon(1)) == ([], None)


def test_an_unreadable_lexicon_is_an_unreadable_sample(model, tmp_path):
    with LmdbWriter(tmp_path / "bad") as writer:
        writer.add(png_bytes(render_word("cat")), "cat", ["cat", "cut"])
        writer.add(png_bytes(render_word("door")), "door", ["door"])
    env = lmdb.open(str(tmp_path / "bad"))
    with env.begin(write=True) as txn:
        txn.put(b"lexicon-000000002", b"\xffdoor")
    env.close()
    recognizer = library(model, lexicon=PER_SAMPLE)
    result = evaluate_dataset(recognizer, LmdbDataset(tmp_path / "bad"), "bad")
    assert result.samples == 2 and result.failed == [f"{tmp_path / 'bad'} record 2: lexicon is not valid UTF-8"]


def test_ties_go_to_the_word_nearer_the_reading_then_to_the_earlier_one():
    uniform = torch.full((5, CHARSET.num_classes), -math.log(CHARSET.num_classes))
    lexicon = Lexicon.case_insensitive(["ba", "ab", "cd"])  # equally probable under uniform outputs
    assert lexicon_decode(uniform, lexicon, CHARSET, "ab").text == "ab"
    assert lexicon_decode(uniform, lexicon, CHARSET, "").text == "ba"
