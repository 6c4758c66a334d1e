"""Lexicon-constrained decoding: BK-tree candidates, CTC scoring, case folding."""

import itertools
import math
import random

import pytest
import torch

from textrec.charset import Charset
from textrec.decode import greedy_decode
from textrec.lexicon import BKTree, Lexicon, fold_to_36, lexicon_decode, word_log_probs

CHARSET = Charset.from_spec("36")


def peaked(text: str, charset: Charset, frames: int = 12, sharpness: float = 6.0) -> torch.Tensor:
    """(T, C) log-probabilities whose best path reads `text` (blanks between characters)."""
    logits = torch.zeros(frames, charset.num_classes)
    path = []
    for c in charset.encode(text):
        path += [c, 0]
    path += [0] * (frames - len(path))
    for t, k in enumerate(path[:frames]):
        logits[t, k] = sharpness
    return logits.log_softmax(-1)


def test_bk_tree_finds_exactly_the_words_within_a_distance():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdef") for _ in range(rng.randint(2, 7))) for _ in range(400)]
    tree = BKTree(words)
    import editdistance

    for query in ("abc", "fedcba", "a", "bbbbbbb"):
        for d in (0, 1, 2, 3):
            expected = sorted({(editdistance.eval(query, w), w) for w in words if editdistance.eval(query, w) <= d})
            assert tree.within(query, d) == expected


def test_ctc_score_is_the_sum_over_alignments():
    log_probs = torch.full((3, CHARSET.num_classes), math.log(1 / CHARSET.num_classes))
    # "a" in 3 frames: a-- -a- --a aa- -aa aaa a-a? no (a-a reads "aa"): 6 alignments of a uniform distribution
    score = word_log_probs(log_probs, ["a"], CHARSET)[0]
    assert score.item() == pytest.approx(math.log(6 / CHARSET.num_classes**3), rel=1e-5)


def test_lexicon_picks_the_most_probable_word_and_reports_unknown_ones():
    lexicon = Lexicon.from_words(["HOTEL", "hostel", "motel", "h\u00f4tel", "", "hotel"], CHARSET)
    assert lexicon.words == ["hotel", "hostel", "motel"] and lexicon.unknown == ["h\u00f4tel"]
    log_probs = peaked("hotol", CHARSET)  # a misread: one letter wrong
    assert greedy_decode(log_probs.unsqueeze(1), CHARSET)[0].text == "hotol"
    decoded = lexicon_decode(log_probs, lexicon, CHARSET, "hotol")
    assert decoded.text == "hotel" and 0 < decoded.confidence <= 1  # one letter from the reading, motel two
    assert lexicon_decode(peaked("hostel", CHARSET, 14), lexicon, CHARSET, "hostel").text == "hostel"
    assert lexicon_decode(log_probs, Lexicon([], []), CHARSET, "hotol").text == "hotol"  # empty: unchanged


def test_large_lexicons_score_only_near_words(monkeypatch):
    rng = random.Random(1)
    words = {"".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(3000)} | {"street"}
    lexicon = Lexicon.from_words(sorted(words), CHARSET)
    assert len(lexicon.words) > 1000
    candidates = lexicon.candidates("streat")
    assert "street" in candidates and len(candidates) < 50
    assert lexicon_decode(peaked("streat", CHARSET, 14), lexicon, CHARSET, "streat").text == "street"
    assert lexicon.candidates("zzzzzzzzzzzzzz")  # nothing near: the distance grows until something is


def test_case_sensitive_models_are_folded_for_a_case_insensitive_lexicon():
    cased = Charset.from_spec("95")
    log_probs = peaked("Hotel!", cased, frames=14)
    folded = fold_to_36(log_probs, cased)
    assert folded.shape == (14, CHARSET.num_classes)
    assert torch.allclose(folded.exp().sum(-1), torch.ones(14), atol=1e-5)  # still distributions
    lexicon = Lexicon.from_words(["HOTEL", "MOTEL"], CHARSET)
    assert lexicon_decode(folded, lexicon, CHARSET, "hotel").text == "hotel"


def test_beam_search_agrees_with_greedy_on_peaked_outputs_and_sums_alignments():
    from textrec.decode import beam_decode

    batch = torch.stack([peaked("street", CHARSET, 14), peaked("a", CHARSET, 14), peaked("aa", CHARSET, 14)], 1)
    greedy = greedy_decode(batch, CHARSET)
    beam = beam_decode(batch, CHARSET, beam_width=8)
    assert [d.text for d in beam] == [d.text for d in greedy] == ["street", "a", "aa"]
    assert all(b.confidence >= g.confidence - 1e-6 for b, g in zip(beam, greedy))  # all alignments >= one path
    # Where the best path is not the most probable text, beam search finds the text:
    # frames split between "a" and blank so that no single path of "b" wins, but "b" does over all paths.
    logits = torch.full((3, CHARSET.num_classes), -20.0)
    a, b = CHARSET.encode("a")[0], CHARSET.encode("b")[0]
    for t in range(3):
        logits[t, a], logits[t, b], logits[t, 0] = math.log(0.4), math.log(0.35), math.log(0.25)
    log_probs = logits.log_softmax(-1).unsqueeze(1)
    assert greedy_decode(log_probs, CHARSET)[0].text == "a"
    texts = ["".join(p) for n in (1, 2, 3) for p in itertools.product("ab", repeat=n)]
    scores = word_log_probs(log_probs[:, 0], texts, CHARSET).tolist()
    best_score, best_text = max(zip(scores, texts))
    found = beam_decode(log_probs, CHARSET, beam_width=20)[0]
    assert found.text == best_text and found.confidence == pytest.approx(math.exp(best_score), rel=1e-4)
