"""`textrec compare` and textrec/compare.py: two models on the same samples, with the uncertainty of their difference."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cliutil import assert_one_clear_line
from imagegen import png_bytes, render_word, write_lmdb
from test_faults import tiny_checkpoint
from textrec.compare import bootstrap_interval, compare_scores, mcnemar_exact
from textrec.data.lmdb_store import LmdbDataset
from textrec.evaluate import evaluate_dataset
from textrec.metrics import SampleScore
from textrec.predict import Recognizer

SHIPPED = str(Path(__file__).resolve().parents[1] / "checkpoints" / "default.safetensors")
runner = CliRunner(env={"COLUMNS": "250"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_mcnemar_exact_against_the_binomial_by_hand():
    assert mcnemar_exact(0, 0) == 1.0  # they never disagree
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)  # all ten disagreements one way
    assert mcnemar_exact(10, 0) == mcnemar_exact(0, 10)
    assert mcnemar_exact(5, 5) == 1.0  # an even split: capped at 1
    # 12 against 9 (lease 4's candidate against the shipped model on data/real_val): 2 P(X <= 9), X ~ Bin(21, 1/2)
    assert mcnemar_exact(12, 9) == pytest.approx(2 * sum(math.comb(21, i) for i in range(10)) / 2**21)
    assert 0.66 < mcnemar_exact(12, 9) < 0.67


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    assert bootstrap_interval([0.5] * 40) == (0.5, 0.5)  # no spread, no interval
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values, rounds=2000)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_interval(values, rounds=2000) == (low, high)  # the same seed, the same resamples
    wider = bootstrap_interval(values, rounds=2000, level=0.99)
    assert wider[0] <= low and wider[1] >= high
    with pytest.raises(ValueError, match="no samples"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0], level=1.5)


def test_compare_scores_pairs_samples_by_record():
    a = [SampleScore(1, True, 1.0), SampleScore(2, True, 1.0), SampleScore(3, False, 0.5), SampleScore(4, False, 0.0)]
    b = [SampleScore(4, True, 1.0), SampleScore(3, False, 0.75), SampleScore(2, False, 0.5), SampleScore(1, True, 1.0)]
    c = compare_scores(a, b, "set", rounds=500)
    assert (c.samples, c.only_a, c.only_b) == (4, 1, 1)  # record 2 for A, record 4 for B
    assert c.accuracy_a == c.accuracy_b == 50.0 and c.accuracy_difference == 0.0
    assert c.ned_a == pytest.approx(2.5 / 4) and c.ned_b == pytest.approx(3.25 / 4)
    assert c.p_value == 1.0
    assert c.accuracy_interval[0] <= 0.0 <= c.accuracy_interval[1]
    assert c.ned_interval[0] <= c.ned_difference <= c.ned_interval[1]
    with pytest.raises(ValueError, match="different samples"):
        compare_scores(a, b[:3], "set")
    with pytest.raises(ValueError, match="different samples"):
        compare_scores(a, [SampleScore(5, True, 1.0), *b[1:]], "set")


def _words_lmdb(path):
    words = ["open", "street", "coffee", "HOTEL", "taxi", "parking"]
    records = [(png_bytes(render_word(w, height=48)), w) for w in words]
    records.insert(2, (b"not an image", "broken"))  # record 3: unreadable, scored wrong for both
    return write_lmdb(path, records)


def test_evaluate_reports_every_scored_sample_in_record_order(tmp_path):
    dataset = LmdbDataset(_words_lmdb(tmp_path / "words"))
    scored = []
    result = evaluate_dataset(Recognizer.from_checkpoint(SHIPPED, device="cpu"), dataset, "words", on_scored=scored.append)
    assert [s.record for s in scored] == [1, 2, 3, 4, 5, 6, 7]
    assert scored[2] == SampleScore(3, False, 0.0)
    assert sum(s.right for s in scored) == result.correct
    assert sum(s.similarity for s in scored) / len(scored) == pytest.approx(result.ned)


def test_compare_command_agrees_with_eval_of_each_model(tmp_path):
    data = _words_lmdb(tmp_path / "words")
    untrained = tiny_checkpoint(tmp_path / "untrained.safetensors")
    out = tmp_path / "comparison.json"
    result = invoke("compare", SHIPPED, untrained, "--data", data, "--device", "cpu", "--rounds", 500, "--json", out)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())
    dataset = LmdbDataset(data)
    shipped = evaluate_dataset(Recognizer.from_checkpoint(SHIPPED, device="cpu"), dataset, "words")
    tiny = evaluate_dataset(Recognizer.from_checkpoint(untrained, device="cpu"), dataset, "words")
    assert row["samples"] == 7 and row["accuracy_a"] == pytest.approx(shipped.accuracy)
    assert row["accuracy_b"] == pytest.approx(tiny.accuracy) and row["ned_b"] == pytest.approx(tiny.ned)
    assert row["only_a"] - row["only_b"] == shipped.correct - tiny.correct
    assert row["checkpoint_a"] == SHIPPED and row["checkpoint_b"] == str(untrained)
    assert "McNemar p" in result.output and "word acc. %" in result.output
    # its own output is replaced without --overwrite; any other file is not
    assert invoke("compare", SHIPPED, SHIPPED, "--data", data, "--device", "cpu", "--rounds", 100, "--json", out).exit_code == 0
    (same,) = json.loads(out.read_text())
    assert (same["only_a"], same["only_b"], same["p_value"], same["accuracy_interval"]) == (0, 0, 1.0, [0.0, 0.0])
    other = tmp_path / "notes.json"
    other.write_text("{}")
    refused = invoke("compare", SHIPPED, SHIPPED, "--data", data, "--json", other)
    assert refused.exit_code == 1
    assert_one_clear_line(refused, "file exists")


def test_compare_decodes_both_models_alike(tmp_path):
    data = _words_lmdb(tmp_path / "words")
    out = tmp_path / "beam.json"
    result = invoke("compare", SHIPPED, SHIPPED, "--data", data, "--device", "cpu", "--decoder", "beam", "--rounds", 100, "--json", out)
    assert result.exit_code == 0, result.output
    assert "beam" in result.output
    (row,) = json.loads(out.read_text())
    assert (row["only_a"], row["only_b"]) == (0, 0)
    # a per-sample lexicon the LMDB does not hold is refused before anything is read
    result = invoke("compare", SHIPPED, SHIPPED, "--data", data, "--lexicon", "per-sample")
    assert_one_clear_line(result, "no per-sample lexicons")


def test_compare_names_what_is_missing(tmp_path):
    result = invoke("compare", SHIPPED, SHIPPED)
    assert result.exit_code == 1 and "--benchmark or --data" in result.output
    result = invoke("compare", SHIPPED, SHIPPED, "--benchmark", "SVT", "--data-root", tmp_path)
    assert result.exit_code == 1 and "benchmark SVT not found" in result.output
    result = invoke("compare", SHIPPED, tmp_path / "nowhere.safetensors", "--data", _words_lmdb(tmp_path / "w"))
    assert result.exit_code == 1 and "nowhere.safetensors" in result.output and "Traceback" not in result.output
