"""Charset coding, CTC greedy decoding and the evaluation normalisation."""

import math

import pytest
import torch

from textrec.charset import PRESETS, Charset, ctc_min_length
from textrec.decode import greedy_decode
from textrec.errors import LabelError
from textrec.metrics import Score, normalize_for_eval, normalized_edit_similarity


def test_charset_round_trip_and_blank():
    charset = Charset.from_spec("62")
    indices = charset.encode("Ab9")
    assert 0 not in indices  # 0 is the CTC blank
    assert charset.decode(indices) == "Ab9"
    assert charset.num_classes == 63


def test_case_insensitive_charset_lowercases():
    charset = Charset.from_spec("36")
    assert not charset.case_sensitive
    assert charset.encode("HeLLo") == charset.encode("hello")


@pytest.mark.parametrize("label", ["", "hé", "a b"])
def test_bad_labels_are_refused(label):
    with pytest.raises(LabelError):
        Charset.from_spec("36").encode(label)


def test_charset_file_and_duplicates(tmp_path):
    path = tmp_path / "chars.txt"
    path.write_text("abc\n", encoding="utf-8")
    assert Charset.from_spec(f"file:{path}").chars == "abc"
    with pytest.raises(LabelError, match="repeated"):
        Charset("abca")
    assert len(PRESETS["94"]) == 94


def test_ctc_min_length_counts_repeats():
    assert ctc_min_length("abc") == 3
    assert ctc_min_length("hello") == 6  # the double l needs a blank between


def _log_probs(paths: list[list[int]], classes: int) -> torch.Tensor:
    """(T, B, C) log-probabilities whose argmax follows the given paths with probability 0.9."""
    frames = len(paths[0])
    probs = torch.full((frames, len(paths), classes), 0.1 / (classes - 1))
    for b, path in enumerate(paths):
        for t, k in enumerate(path):
            probs[t, b, k] = 0.9
    return probs.log()


def test_greedy_decode_merges_repeats_and_drops_blanks():
    charset = Charset("abc")
    # a a _ a b b _ _ c  ->  "aabc"   (blank separates the two a's)
    log_probs = _log_probs([[1, 1, 0, 1, 2, 2, 0, 0, 3], [0] * 9], charset.num_classes)
    first, second = greedy_decode(log_probs, charset)
    assert first.text == "aabc"
    assert first.confidence == pytest.approx(0.9**9, rel=1e-4)
    assert second.text == ""


def test_eval_normalisation_is_the_36_character_protocol():
    assert normalize_for_eval("Don't-Stop 24/7!") == "dontstop247"
    assert normalize_for_eval("ÉCOLE") == "cole"
    assert normalize_for_eval("Ab!", "exact") == "Ab!"
    with pytest.raises(ValueError):
        normalize_for_eval("x", "nope")


def test_scores():
    assert normalized_edit_similarity("abc", "abd") == pytest.approx(2 / 3)
    assert normalized_edit_similarity("", "") == 1.0
    score = Score()
    score.add("abc", "abc")
    score.add("abd", "abc")
    score.add_failure()
    assert score.samples == 3 and score.correct == 1
    assert score.accuracy == pytest.approx(100 / 3)
    assert math.isclose(score.ned, (1 + 2 / 3 + 0) / 3)
