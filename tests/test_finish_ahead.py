"""Batches finished ahead in a background thread (textrec/synth/ahead.py, `textrec train --finish-ahead`).

On the CPU the thread runs without CUDA streams; the stream hand-over is checked on a lent GPU by
tools/device_check.py (it compares finished-ahead images with those of the training loop).
"""

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from imagegen import png_bytes, render_word, write_lmdb
from textrec.synth.ahead import FinishAhead
from textrec.train import TrainConfig, train

TINY = dict(channels=(16, 32, 48, 48, 64, 64, 64), hidden_size=48)


def finish(raw, step):
    return torch.tensor([raw, step])


def batches(n, unreadable=()):
    return [SimpleNamespace(raw=None if k in unreadable else 10 * k) for k in range(n)]


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_every_batch_in_order_with_the_step_it_trains_at(ahead):
    got = [(b.raw, None if images is None else images.tolist())
           for b, images in FinishAhead(batches(7, unreadable={2}), finish, first_step=100, device="cpu", ahead=ahead)]
    # the unreadable batch is kept (the training loop counts it as a step) and the steps after it do not shift
    assert got == [(0, [0, 100]), (10, [10, 101]), (None, None), (30, [30, 103]), (40, [40, 104]), (50, [50, 105]), (60, [60, 106])]


def test_a_failure_in_the_thread_reaches_the_training_loop_after_the_batches_before_it():
    def source():
        yield SimpleNamespace(raw=1)
        yield SimpleNamespace(raw=2)
        raise OSError("lmdb: record 3 unreadable")

    seen = []
    with pytest.raises(OSError, match="record 3"):
        for batch, _ in FinishAhead(source(), finish, 0, "cpu", ahead=2):
            seen.append(batch.raw)
    assert seen == [1, 2]

    def broken(raw, step):
        raise ValueError(f"cannot finish step {step}")

    with pytest.raises(ValueError, match="cannot finish step 5"):
        list(FinishAhead(batches(3), broken, 5, "cpu", ahead=2))


def test_leaving_early_stops_the_thread_and_reads_only_a_few_batches_ahead():
    pulled = []

    def source():
        for k in range(1000):
            pulled.append(k)
            yield SimpleNamespace(raw=k)

    ahead = FinishAhead(source(), finish, 0, "cpu", ahead=2)
    for batch, _ in ahead:
        if batch.raw == 3:
            break
    ahead.close()
    assert not any(t.name == "textrec-finish-ahead" for t in threading.enumerate())
    assert len(pulled) <= 4 + 2 + 2  # what was used, what the queue holds, the one being finished
    with pytest.raises(ValueError, match="ahead"):
        FinishAhead([], finish, 0, "cpu", ahead=-1)


def test_paused_holds_the_thread_between_two_batches():
    # the training thread holds it while it captures CUDA graphs (textrec/nn/graphs.py)
    started = []

    def slow(raw, step):
        started.append(step)
        time.sleep(0.005)
        return torch.tensor([raw, step])

    ahead = FinishAhead(batches(200), slow, 0, "cpu", ahead=200)  # a queue that never makes the thread wait
    steps = iter(ahead)
    next(steps)
    with ahead.paused():
        held = len(started)
        time.sleep(0.05)
        assert len(started) == held
    time.sleep(0.05)
    assert len(started) > held
    ahead.close()


def test_training_finishing_ahead_trains_on_the_same_images(tmp_path):
    """Speed only: with augmentation on (every step draws its own random scene), two batches ahead gives the run
    the same losses and weights as finishing in the loop."""
    words = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in ["cat", "door", "42", "gate"]])
    runs = {}
    for ahead in (0, 2):
        config = TrainConfig(
            train_data=[str(words), "synth"], val_data=[str(words)], output=str(tmp_path / f"run{ahead}"), max_steps=6,
            batch_size=8, lr=1e-3, warmup_steps=2, augment=True, val_interval=6, log_interval=1, save_interval=6,
            workers=0, seed=3, finish_ahead=ahead, device="cpu", **TINY,
        )
        result = train(config)
        assert result.steps == 6 and not result.interrupted
        runs[ahead] = (tmp_path / f"run{ahead}" / "metrics.jsonl").read_text().splitlines()
    losses = {ahead: [line for line in lines if '"loss"' in line] for ahead, lines in runs.items()}
    strip = lambda line: line.split('"images_per_second"')[0]  # noqa: E731  (the one field that may differ)
    assert [strip(x) for x in losses[0]] == [strip(x) for x in losses[2]] and len(losses[0]) == 6
