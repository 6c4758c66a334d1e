"""--init-from: a checkpoint's weights start a new run; a grown charset keeps the rows of known characters."""

import pytest
import torch

from imagegen import png_bytes, render_word, write_lmdb
from textrec.charset import Charset
from textrec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from textrec.data.images import Preprocess
from textrec.errors import CheckpointError
from textrec.model import CRNN, CRNNConfig
from textrec.train import TrainCallbacks, TrainConfig, train
from textrec.transfer import transfer_weights

TINY = dict(channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16)


def make_checkpoint(path, charset_spec="36", step=100, batch=8, **config):
    charset = Charset.from_spec(charset_spec)
    model_config = CRNNConfig(num_classes=charset.num_classes, **{**TINY, **config})
    torch.manual_seed(0)
    model = CRNN(model_config)
    info = {"step": step, "train_config": {"batch_size": batch}}
    save_checkpoint(path, Checkpoint(model_config, charset, Preprocess(), model.state_dict(), info))
    return load_checkpoint(path)


def test_grown_charset_maps_rows_by_character(tmp_path):
    old = make_checkpoint(tmp_path / "old.safetensors")
    charset = Charset.from_spec("95")
    model = CRNN(CRNNConfig(num_classes=charset.num_classes, **TINY))
    report = transfer_weights(model, charset, old)
    weight, bias = old.state_dict["head.weight"], old.state_dict["head.bias"]
    old_row = {c: i + 1 for i, c in enumerate(old.charset.chars)}
    new_row = {c: i + 1 for i, c in enumerate(charset.chars)}
    head_w, head_b = model.head.weight.detach(), model.head.bias.detach()
    assert torch.equal(head_w[0], weight[0]) and head_b[0] == bias[0]  # the blank
    for c in "a7z":
        assert torch.equal(head_w[new_row[c]], weight[old_row[c]])
    assert torch.equal(head_w[new_row["Q"]], weight[old_row["q"]])  # upper case starts as lower case
    assert head_b[new_row["$"]] == bias[1:].min()  # a new character does not fire at first
    assert (report.kept, len(report.from_lower), len(report.new)) == (36, 26, 33)
    assert report.new.endswith(" ") and report.dropped == ""
    # Everything below the head is the old network's.
    for name, tensor in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(tensor, old.state_dict[name]), name


def test_other_architecture_is_refused_naming_the_difference(tmp_path):
    old = make_checkpoint(tmp_path / "old.safetensors", hidden_size=24)
    charset = Charset.from_spec("36")
    model = CRNN(CRNNConfig(num_classes=charset.num_classes, **TINY))
    with pytest.raises(CheckpointError, match="hidden_size: 24 -> 16"):
        transfer_weights(model, charset, old)


def test_run_started_from_a_checkpoint_records_its_lineage(tmp_path):
    words = ["cat", "Door", "42", "Gate"]
    data = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in words])
    old = make_checkpoint(tmp_path / "old.safetensors", step=100, batch=8)
    config = TrainConfig(
        train_data=[str(data)], val_data=[str(data)], output=str(tmp_path / "run"), max_steps=4, batch_size=4,
        warmup_steps=1, augment=False, val_interval=4, save_interval=2, workers=0, charset="62", width=64,
        init_from=str(tmp_path / "old.safetensors"), **TINY,
    )
    train(config)
    new = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert new.charset.chars == Charset.from_spec("62").chars and new.preprocess.width == 64
    assert new.info["samples_seen"] == 100 * 8 + 4 * 4
    assert new.info["lineage"][-1]["samples_seen"] == 800
    assert new.info["lineage"][-1]["charset"] == old.charset.chars
    assert "seed" not in new.info["lineage"][-1]  # the old checkpoint records no training config
    # Resuming keeps the lineage and does not start from the checkpoint again.
    config.max_steps = 6
    train(config)
    resumed = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert resumed.info["samples_seen"] == 800 + 6 * 4 and resumed.info["lineage"] == new.info["lineage"]


def test_a_continuation_with_a_seed_of_its_lineage_is_told_it_draws_the_same_samples(tmp_path):
    # Every GPU lease trained with the recipe's seed from step 0, and so drew the previous lease's samples again.
    words = ["cat", "Door", "42", "Gate"]
    data = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in words])
    events = []

    class Heard(TrainCallbacks):
        def on_event(self, message: str) -> None:
            events.append(message)

    def run(name, seed, init_from=None):
        config = TrainConfig(
            train_data=[str(data)], val_data=[str(data)], output=str(tmp_path / name), max_steps=2, val_interval=2, batch_size=4, warmup_steps=1,
            augment=False, save_interval=2, workers=0, charset="36", width=64, seed=seed, init_from=init_from, **TINY,
        )
        train(config, Heard())
        return str(tmp_path / name / "last.safetensors")

    first = run("first", seed=3)
    second = run("second", seed=3, init_from=first)
    assert load_checkpoint(second).info["lineage"][-1]["seed"] == 3
    assert any("seed 3 too, so this run draws its samples again" in e for e in events)
    events.clear()
    run("third", seed=4, init_from=second)
    assert not any("draws its samples again" in e for e in events)
    events.clear()
    run("fourth", seed=3, init_from=run("other", seed=5, init_from=second))  # seed 3 is further back: still said
    assert any("seed 3 too" in e for e in events)
