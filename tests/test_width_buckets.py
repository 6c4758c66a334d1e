"""Width-bucketed training batches (textrec/data/buckets.py; issue 11, item 2).

A pool of finished batches is dealt out again by width: every sample once, with its own label, in a batch cut no
narrower than its content or its label's CTC frames; the same pool for the same seed, and a resumed run inside a
pool trains what the uninterrupted run trains.
"""

from __future__ import annotations

import json
import signal

import pytest
import torch

import textrec.train
from textrec.charset import Charset, ctc_min_length
from textrec.data.buckets import DEFAULT_MULTIPLE, WidthBuckets, bucket_start, cut_width
from textrec.data.training import Batch
from textrec.nn.graphs import GraphedTraining
from textrec.synth.pipeline import Finisher, RawSample, collate_raw

from test_faults import assert_same_weights, words  # noqa: F401  (the fixture)
from test_train import Recorder, tiny_config

FULL = 160
CHARSET = Charset.from_spec("36")


def output_length(width: int) -> int:
    return width // 4 + 1  # the VGG backbone's frames


def finished_batch(ids: list[int], widths: list[int], labels: list[str] | None = None, errors=()) -> tuple:
    """A finished batch whose image n is filled with its sample id (to follow it) up to its width, then padding."""
    labels = labels or [f"w{i}" for i in ids]
    images = torch.full((len(ids), 1, 2, FULL), -1.0)
    for row, (sample, width) in enumerate(zip(ids, widths)):
        images[row, :, :, :width] = float(sample)
    encoded = [CHARSET.encode(label) for label in labels]
    batch = Batch(
        raw=None,
        targets=torch.tensor([c for e in encoded for c in e], dtype=torch.long),
        target_lengths=torch.tensor([len(e) for e in encoded], dtype=torch.long),
        labels=labels,
        errors=list(errors),
    )
    return batch, (images, torch.tensor(widths, dtype=torch.float32))


def random_pool(count: int, size: int, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    pool, next_id = [], 0
    for k in range(count):
        widths = torch.randint(8, FULL + 1, (size,), generator=generator).tolist()
        pool.append(finished_batch(list(range(next_id, next_id + size)), widths, errors=[f"error of batch {k}"]))
        next_id += size
    return pool


def test_every_sample_once_with_its_label_in_a_batch_cut_to_its_widest():
    pool = random_pool(8, 16)
    out = list(WidthBuckets(pool, 8, 0, output_length, seed=3))
    assert len(out) == 8 and [len(b.labels) for b, _ in out] == [16] * 8
    seen = []
    for batch, images in out:
        ids = [int(v) for v in images[:, 0, 0, 0].tolist()]
        seen += ids
        assert batch.labels == [f"w{i}" for i in ids]  # labels follow their images
        assert batch.target_lengths.tolist() == [len(CHARSET.encode(label)) for label in batch.labels]
        assert torch.equal(batch.targets, torch.tensor([c for label in batch.labels for c in CHARSET.encode(label)]))
        width = images.shape[-1]
        assert width == FULL or width % DEFAULT_MULTIPLE == 0
        # No content was cut: each image's own columns are all still there (its padding starts after them).
        contents = [int((row[0, 0] >= 0).sum()) for row in images]
        assert max(contents) <= width < max(contents) + DEFAULT_MULTIPLE or width == FULL
    assert sorted(seen) == list(range(8 * 16))
    # Errors of the loaded batches are each reported once.
    assert sorted(e for b, _ in out for e in b.errors) == sorted(f"error of batch {k}" for k in range(8))


def test_every_batch_keeps_each_source_groups_share():
    """Real crops are narrower than synthetic texts: sorted together they would fill batches of their own. Each group
    is dealt apart, so every batch holds as many of each group as the loader's batches did."""
    generator = torch.Generator().manual_seed(1)
    pool, next_id = [], 0
    for _ in range(8):
        groups = [0] * 12 + [1] * 4  # 12 synthetic, 4 real, as a 75/25 split deals them
        widths = [int(w) for w in torch.randint(60, FULL + 1, (12,), generator=generator)] + \
            [int(w) for w in torch.randint(8, 90, (4,), generator=generator)]
        batch, finished = finished_batch(list(range(next_id, next_id + 16)), widths)
        batch.groups = groups
        pool.append((batch, finished))
        next_id += 16
    out = list(WidthBuckets(pool, 8, 0, output_length, seed=2))
    for batch, images in out:
        assert sorted(batch.groups) == [0] * 12 + [1] * 4
        ids = [int(v) for v in images[:, 0, 0, 0].tolist()]
        assert [i % 16 >= 12 for i in ids] == [g == 1 for g in batch.groups]  # each sample keeps its group
    # within a group the slices are in width order: the batch with the narrowest real crops has the narrowest synthetic texts
    by_real = sorted(out, key=lambda item: max(w for w, g in zip(_contents(item[1]), item[0].groups) if g == 1))
    synthetic_widest = [max(w for w, g in zip(_contents(images), batch.groups) if g == 0) for batch, images in by_real]
    assert synthetic_widest == sorted(synthetic_widest)


def _contents(images) -> list[int]:
    return [int((row[0, 0] >= 0).sum()) for row in images]


def test_the_batches_do_less_work_than_full_width_and_come_in_a_drawn_order():
    buckets = WidthBuckets(random_pool(8, 16), 8, 0, output_length, seed=3)
    widths = [images.shape[-1] for _, images in buckets]
    assert widths != sorted(widths)  # not narrowest first: the order is drawn per pool
    assert buckets.pixels == sum(w * 16 for w in widths) and buckets.full_pixels == 8 * 16 * FULL
    assert buckets.pixels / buckets.full_pixels < 0.75  # uniform widths from 8 to 160 px: about 0.6


def test_a_long_label_on_a_narrow_image_keeps_its_ctc_frames():
    label = "abcdefghijklmnop"  # 16 frames needed: at least 60 px for this backbone
    assert cut_width([10.0], [label], FULL, DEFAULT_MULTIPLE, output_length) == 64
    assert output_length(64) >= ctc_min_length(label) > output_length(48)
    pool = [finished_batch([0, 1], [10, 12], ["abcdefghijklmnop", "ab"]), finished_batch([2, 3], [150, 160])]
    out = list(WidthBuckets(pool, 2, 0, output_length))
    narrow = next(images for batch, images in out if "ab" in batch.labels)
    assert narrow.shape[-1] == 64
    assert cut_width([3.0], ["a"], FULL, DEFAULT_MULTIPLE, output_length) == DEFAULT_MULTIPLE
    assert cut_width([159.5], ["a"], FULL, DEFAULT_MULTIPLE, output_length) == FULL


def test_the_same_seed_deals_the_same_batches_and_a_resume_skips_exactly_the_trained_ones():
    def deal(seed, skip=0, first=0):
        return [(b.labels, images) for b, images in WidthBuckets(random_pool(12, 8), 4, first, output_length, seed=seed, skip=skip)]

    once, again, other = deal(5), deal(5), deal(6)
    assert [l for l, _ in once] == [l for l, _ in again] and all(torch.equal(a, b) for (_, a), (_, b) in zip(once, again))
    assert [l for l, _ in once] != [l for l, _ in other]
    # A run resumed at step 6 reloads pool 1 (steps 4-7) and skips its first two batches.
    resumed = [(b.labels, images) for b, images in WidthBuckets(random_pool(12, 8)[4:], 4, 4, output_length, seed=5, skip=2)]
    assert [l for l, _ in resumed] == [l for l, _ in once[6:]]
    with pytest.raises(ValueError, match="does not start a pool"):
        list(WidthBuckets([], 4, 6, output_length))


def test_steps_before_the_start_come_as_they_are_and_pools_keep_their_numbers():
    """--width-buckets-from: full-width batches before `start`, then the pools a run started there would deal."""
    pool = random_pool(14, 8)
    buckets = WidthBuckets(pool, 4, 1, output_length, seed=5, start=4)  # a run from step 1, bucketed from step 4
    out = list(buckets)
    assert len(out) == 14
    for (batch, images), (original, (full, _)) in zip(out[:3], pool[:3]):  # steps 1-3: untouched, full width
        assert batch is original and images is full
    later = [(b.labels, images) for b, images in WidthBuckets(pool[3:], 4, 4, output_length, seed=5)]
    assert [b.labels for b, _ in out[3:]] == [l for l, _ in later]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(out[3:], later))
    assert 0 < buckets.pixels < buckets.full_pixels
    # resumed at step 6 (inside the pool of steps 4-7): as without a start
    resumed = [(b.labels, images) for b, images in WidthBuckets(pool[3:], 4, 4, output_length, seed=5, skip=2, start=4)]
    assert [l for l, _ in resumed] == [l for l, _ in later[2:]]
    assert [bucket_start(s, 4) for s in (0, 1, 4, 5, 8)] == [0, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="start 6 does not start a pool"):
        WidthBuckets([], 4, 0, output_length, start=6)
    with pytest.raises(ValueError, match="before the first bucketed step"):
        WidthBuckets([], 4, 1, output_length, skip=1, start=4)


def test_unreadable_steps_keep_their_place_and_a_short_last_pool_is_dealt_too():
    readable = random_pool(3, 4)
    unreadable = (Batch(None, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), [], ["all bad"]), None)
    out = list(WidthBuckets([readable[0], unreadable, readable[1], readable[2]], 3, 0, output_length))
    assert len(out) == 4
    assert out[1][1] is None and out[3][1] is not None and out[1][0].errors == ["all bad"]
    ids = sorted(int(v) for _, images in (out[0], out[2], out[3]) for v in images[:, 0, 0, 0].tolist())
    assert ids == list(range(12))


def test_the_finisher_gives_the_model_input_and_each_content_width():
    samples = [
        RawSample((torch.rand(64, w) * 255).to(torch.uint8).numpy(), (0.0, 0.0, float(w), 64.0), 44.8, "a", True)
        for w in (40, 200, 600)
    ]
    raw, _ = collate_raw(samples)
    finisher = Finisher(32, FULL, seed=1, augment_real=False)
    images, widths = finisher.model_input_and_widths(raw, 3)
    assert torch.equal(images, finisher.model_input(raw, 3))
    assert widths.tolist() == [20.0, 100.0, 160.0]  # the real crops at 32 px high, keeping their aspect
    # beyond its content each image repeats one column, so a cut at the content loses nothing
    assert torch.equal(images[0, ..., 20:], images[0, ..., 20:21].expand(-1, -1, FULL - 20))


def test_graphs_capture_each_bucket_shape_up_to_their_limit():
    from test_graphs import StandIn, _layer

    rnn = _layer()
    stand_in = StandIn()
    graphs = GraphedTraining(rnn, make_graphed=stand_in, device_type="cpu", max_shapes=2)
    for length in (5, 7, 5, 9, 7):
        rnn(torch.randn(length, 3, 6, requires_grad=True))
    assert [shape for shape, _ in stand_in.captures] == [(5, 3, 6), (7, 3, 6)]
    assert graphs.replays == 4  # the third shape (9) ran the plain layer


def test_training_with_width_buckets_logs_the_work_it_saved(words, tmp_path):  # noqa: F811
    recorder = Recorder()
    result = train_run(words, tmp_path / "run", recorder, max_steps=8, val_interval=8, log_interval=4, width_buckets=4)
    assert result.steps == 8 and not result.interrupted
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    shares = [r["width_share"] for r in records if "loss" in r]
    assert len(shares) == 2 and all(0 < s < 1 for s in shares), shares  # the generated words are narrower than 100 px
    assert any(e.startswith("--width-buckets from scratch kept models on the CTC blank plateau") for e in recorder.events)


def train_run(words, output, recorder=None, **overrides):  # noqa: F811
    return textrec.train.train(tiny_config(words, output, **overrides), recorder)


@pytest.mark.parametrize("ahead", [0, 2], ids=["in-loop", "finish-ahead-2"])
def test_ctrl_c_inside_a_pool_resumes_exactly(words, tmp_path, monkeypatch, ahead):  # noqa: F811
    """Interrupted at step 7, inside the pool of steps 4-7, the resumed run reloads that pool, skips the three batches
    already trained and ends with the uninterrupted run's weights (in the loop), also when a thread finishes whole
    pools ahead."""
    config = dict(val_data=[], max_steps=12, save_interval=5, log_interval=1, batch_size=4, width_buckets=4)
    train_run(words, tmp_path / "straight", **config)
    original = textrec.train._Run._loss
    fired = []

    def loss_then_ctrl_c(self, batch, images):
        loss = original(self, batch, images)
        if self.step == 6 and not fired:
            fired.append(True)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # as the interpreter does (training holds it)
        return loss

    monkeypatch.setattr(textrec.train._Run, "_loss", loss_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = train_run(words, tmp_path / "stopped", **config, finish_ahead=ahead)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fired and result.interrupted and result.steps == 7
    monkeypatch.setattr(textrec.train._Run, "_loss", original)
    result = train_run(words, tmp_path / "stopped", **config, finish_ahead=ahead)
    assert result.steps == 12 and not result.interrupted
    assert_same_weights(tmp_path / "stopped" / "last.safetensors", tmp_path / "straight" / "last.safetensors")


@pytest.mark.parametrize("ahead", [0, 2], ids=["in-loop", "finish-ahead-2"])
def test_buckets_from_a_step_train_as_a_full_width_run_resumed_there_with_buckets(words, tmp_path, monkeypatch, ahead):  # noqa: F811
    """One run with --width-buckets-from 5 (pools of 4: bucketed from step 8) ends with the weights of a full-width run
    stopped at step 8 and resumed with --width-buckets 4 --accept-changes; it warns of nothing. Also with batches
    finished ahead in a thread, as the lease script trains."""
    config = dict(val_data=[], max_steps=14, save_interval=4, log_interval=1, batch_size=4, finish_ahead=ahead)
    recorder = Recorder()
    result = train_run(words, tmp_path / "one", recorder, **config, width_buckets=4, width_buckets_from=5)
    assert result.steps == 14
    assert not any("plateau" in e for e in recorder.events)
    records = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    shares = {r["step"]: r["width_share"] for r in records if "loss" in r}
    assert shares[7] == 1 and shares[14] < 1  # full width up to step 8 (the 7 steps so far), buckets after

    def stopped_after(steps: int, output, **options):
        original = textrec.train._Run._loss

        def loss_then_ctrl_c(self, batch, images):
            loss = original(self, batch, images)
            if self.step == steps - 1:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            return loss

        monkeypatch.setattr(textrec.train._Run, "_loss", loss_then_ctrl_c)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            assert train_run(words, output, **config, **options).steps == steps
        finally:
            signal.signal(signal.SIGINT, previous)
            monkeypatch.setattr(textrec.train._Run, "_loss", original)

    stopped_after(8, tmp_path / "two")  # full width, the same schedule (max_steps 14)
    train_run(words, tmp_path / "two", **config, width_buckets=4, accept_changes=True)
    assert_same_weights(tmp_path / "one" / "last.safetensors", tmp_path / "two" / "last.safetensors")
    # and resumed before the first bucketed step, the one run ends the same
    stopped_after(6, tmp_path / "three", width_buckets=4, width_buckets_from=5)
    train_run(words, tmp_path / "three", **config, width_buckets=4, width_buckets_from=5)
    assert_same_weights(tmp_path / "one" / "last.safetensors", tmp_path / "three" / "last.safetensors")


def test_width_buckets_are_part_of_the_run(words, tmp_path):  # noqa: F811
    from textrec.errors import CheckpointError, ConfigError

    train_run(words, tmp_path / "run", max_steps=4, val_interval=4, width_buckets=4)
    with pytest.raises(CheckpointError, match="width_buckets: 4 -> 2"):
        train_run(words, tmp_path / "run", max_steps=8, val_interval=8, width_buckets=2)
    with pytest.raises(ConfigError, match="--width-buckets"):
        train_run(words, tmp_path / "bad", width_buckets=-1)
    with pytest.raises(ConfigError, match="--width-buckets-from 8 needs --width-buckets"):
        train_run(words, tmp_path / "bad", width_buckets_from=8)
    with pytest.raises(CheckpointError, match="width_buckets_from: 0 -> 4"):
        train_run(words, tmp_path / "run", max_steps=8, val_interval=8, width_buckets=4, width_buckets_from=4)


def test_the_benchmark_counts_the_work_as_training_cuts_it():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from input_widths import pooled_share

    # two batches: (150, 20) and (30, 140) px, one source group. Cut alone they train at 160 and 144 px; pooled,
    # the two narrow samples train at 32 px and the wide ones at 160 px (150 rounded up).
    batches = [[(150.0, "a", 0), (20.0, "b", 0)], [(30.0, "c", 0), (140.0, "d", 0)]]
    assert pooled_share(batches, 1, FULL, output_length) == pytest.approx((160 * 2 + 144 * 2) / (160 * 4))
    assert pooled_share(batches, 2, FULL, output_length) == pytest.approx((32 * 2 + 160 * 2) / (160 * 4))
    # two groups, one sample of each per batch: each batch keeps one of each, so the narrow pair of group 0 (20, 30)
    # is split: (20, 140) and (30, 150) -> 144 and 160 px
    batches = [[(150.0, "a", 1), (20.0, "b", 0)], [(30.0, "c", 0), (140.0, "d", 1)]]
    assert pooled_share(batches, 2, FULL, output_length) == pytest.approx((144 * 2 + 160 * 2) / (160 * 4))


def test_the_plateau_experiments_change_one_mechanism_each_and_restore_it(monkeypatch):
    """benchmarks/bucket_plateau.py: `uncut` keeps the dealing but not the cut; `groupnorm` swaps the backbone's norm."""
    from benchmark_loader import load_benchmark
    from textrec.model import CRNN, CRNNConfig

    plateau = load_benchmark("bucket_plateau", monkeypatch)

    def dealt(seed=3):
        return [(batch.labels, images) for batch, images in WidthBuckets(random_pool(8, 16), 8, 0, output_length, seed=seed)]

    cut = dealt()
    with plateau.variant("uncut"):
        uncut = dealt()
    assert [labels for labels, _ in uncut] == [labels for labels, _ in cut]  # the same samples together...
    assert all(images.shape[-1] == FULL for _, images in uncut)  # ...at the full width
    assert any(images.shape[-1] < FULL for _, images in cut)
    assert all(torch.equal(u[..., : c.shape[-1]], c) for (_, u), (_, c) in zip(uncut, cut))
    assert [images.shape for _, images in dealt()] == [images.shape for _, images in cut]  # restored
    with plateau.variant("shuffled"):
        shuffled = dealt()
    assert all(images.shape[-1] == FULL for _, images in shuffled)
    assert sorted(label for labels, _ in shuffled for label in labels) == sorted(label for labels, _ in cut for label in labels)

    def width_spread(batches):  # how far apart the widths of a batch's samples lie, on average
        return sum(float(images.ne(-1.0)[:, 0, 0].sum(-1).float().std()) for _, images in batches) / len(batches)

    assert width_spread(shuffled) > 2 * width_spread(cut)  # random batches, not batches of one width class
    assert [images.shape for _, images in dealt()] == [images.shape for _, images in cut]  # restored

    def norms(model):
        return {type(m).__name__ for m in model.backbone.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))}

    config = CRNNConfig(num_classes=5, channels=(8, 8, 16, 16, 16, 16, 16), hidden_size=8)
    with plateau.variant("groupnorm"):
        assert norms(CRNN(config)) == {"GroupNorm"}
    assert norms(CRNN(config)) == {"BatchNorm2d"}
    with plateau.variant("ctcsum"):
        ctc = textrec.train.nn.CTCLoss(blank=0, reduction="mean", zero_infinity=True)
    log_probs = torch.randn(9, 2, 5).log_softmax(2)
    targets, frames, lengths = torch.tensor([1, 2, 3, 4, 1]), torch.tensor([9, 9]), torch.tensor([1, 4])
    per_sample = torch.nn.functional.ctc_loss(log_probs, targets, frames, lengths, reduction="none")
    assert torch.allclose(ctc(log_probs, targets, frames, lengths), per_sample.mean())
    assert textrec.train.nn is torch.nn
    with pytest.raises(SystemExit, match="unknown variant"):
        with plateau.variant("sorted"):
            pass
