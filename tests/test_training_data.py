"""Training data: spec parsing, label screening, the ratio split and the resumable step sampler."""

from collections import Counter

import pytest

from imagegen import png_bytes, render_word, write_lmdb
from textrec.charset import Charset
from textrec.data.training import (
    Collate,
    StepBatchSampler,
    TrainingSamples,
    open_sources,
    parse_spec,
    split_batch,
)
from textrec.errors import DataError


def test_parse_spec():
    assert parse_spec("data/train") == ("data/train", 1.0)
    assert parse_spec("data/real_*:0.5") == ("data/real_*", 0.5)
    assert parse_spec("synth:2") == ("synth", 2.0)
    assert parse_spec("weird:name") == ("weird:name", 1.0)
    with pytest.raises(DataError):
        parse_spec("x:0")


def test_split_batch_honours_ratios():
    assert split_batch(64, [0.5, 0.5]) == [32, 32]
    assert split_batch(10, [0.7, 0.2, 0.1]) == [7, 2, 1]
    assert split_batch(4, [0.98, 0.01, 0.01]) == [2, 1, 1]  # every group is seen
    assert sum(split_batch(33, [1 / 3] * 3)) == 33
    with pytest.raises(DataError):
        split_batch(1, [0.5, 0.5])


def test_screening_counts_what_it_drops(tmp_path):
    labels = ["good", "", "bad!", "x" * 40, "fine"]
    write_lmdb(tmp_path / "mixed", [(png_bytes(render_word("w")), label) for label in labels])
    sources, shares = open_sources([str(tmp_path / "mixed")], Charset.from_spec("36"), max_frames=26, seed=0)
    screening = sources[0].screening
    assert (screening.kept, screening.empty, screening.unknown_chars, screening.too_long) == (2, 1, 1, 1)
    assert sources[0].size == 2 and shares == [1.0]
    assert any("record 3" in e for e in screening.examples)


def test_glob_groups_and_missing_paths(tmp_path):
    for name in ("a_1", "a_2"):
        write_lmdb(tmp_path / name, [(png_bytes(render_word("ab")), "ab")])
    sources, _ = open_sources([f"{tmp_path}/a_*:3"], Charset.from_spec("36"), 26, 0)
    assert sources[0].size == 2
    with pytest.raises(DataError, match="no LMDB folder matches"):
        open_sources([str(tmp_path / "zzz")], Charset.from_spec("36"), 26, 0)


def test_sampler_is_a_function_of_the_step():
    sampler = StepBatchSampler([5, 7], [2, 3], seed=1, start_step=0, max_steps=20)
    full = list(sampler)
    resumed = list(StepBatchSampler([5, 7], [2, 3], seed=1, start_step=12, max_steps=20))
    assert full[12:] == resumed
    assert len(full) == 20 and all(len(b) == 5 for b in full)
    # Each epoch of a finite group is a permutation: every sample once per epoch.
    group0 = [index for batch in full[:5] for (g, index, _) in batch if g == 0]
    assert Counter(group0) == Counter({i: 2 for i in range(5)})
    assert list(StepBatchSampler([5, 7], [2, 3], seed=2, start_step=0, max_steps=20)) != full


def test_sampler_ratio_over_many_steps():
    sampler = StepBatchSampler([100, None], [48, 16], seed=0, start_step=0, max_steps=50)
    groups = Counter(g for batch in sampler for (g, _, _) in batch)
    assert groups[0] / (groups[0] + groups[1]) == pytest.approx(0.75)


def test_samples_and_collate_skip_unreadable_records(tmp_path):
    write_lmdb(tmp_path / "d", [(png_bytes(render_word("ab")), "ab"), (b"junk", "cd")])
    charset = Charset.from_spec("36")
    sources, _ = open_sources([str(tmp_path / "d")], charset, 26, 0)
    samples = TrainingSamples(sources, charset, (64, 200))
    batch = Collate(charset)([samples[(0, 0, 1)], samples[(0, 1, 2)]])
    assert batch.raw.pixels.shape[:2] == (1, 64)
    assert batch.labels == ["ab"] and batch.target_lengths.tolist() == [2]
    assert len(batch.errors) == 1 and "record 2" in batch.errors[0]
