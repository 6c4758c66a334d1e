"""The GPU lease's own checks that can run without a GPU (tools/device_check.py, the documented TRAIN_ARGS)."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from textrec.checkpoint import load_checkpoint
from textrec.model import CRNN
from textrec.transfer import refines_vanilla

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import device_check  # noqa: E402


RECIPE = tomllib.loads((ROOT / "checkpoints" / "model2.toml").read_text())


def twin_section() -> str:
    """docs/model.md's prepared lease for lease 3's vanilla twin."""
    text = (ROOT / "docs" / "model.md").read_text()
    section = text[text.index("### The lease after it"):]
    return section[:section.index("\n#")]


def documented_twin_args() -> str:
    """The TRAIN_ARGS of the twin's command."""
    (found,) = re.findall(r'TRAIN_ARGS="([^"]*)"\s*\\?\s*bash tools/gpu_lease\.sh', twin_section())
    return found


def vanilla(config):
    return dataclasses.replace(config, refine="none", refine_gates=None, refine_init="default", refine_bound="none", refine_rank=0)


def test_the_recipe_continues_the_shipped_model_exactly():
    """Every lease continues the shipped model with checkpoints/model2.toml: the recipe's gates must be the
    checkpoint's, or --init-from refuses it (another architecture)."""
    shipped = load_checkpoint(ROOT / "checkpoints" / "default.safetensors").model_config
    assert shipped.refine != "none"  # issue 12: the shipped recurrent layer is refined
    assert device_check.trained_config(shipped, RECIPE, "") == shipped


def test_lease_3_started_the_recipe_refined_gates_from_a_vanilla_model_exactly_where_it_was():
    shipped = load_checkpoint(ROOT / "checkpoints" / "default.safetensors")
    plain = vanilla(shipped.model_config)
    refined = device_check.trained_config(plain, RECIPE, "")
    assert refined == shipped.model_config
    # --init-from accepts it: the same network with refined gates that start as vanilla ...
    assert refines_vanilla(plain.full_dict(), refined.full_dict())
    # ... and with the vanilla weights (projections at zero) it computes exactly what the vanilla model computes.
    weights = {k: v for k, v in shipped.state_dict.items() if not k.startswith("sequence.weight_refine")}
    before, after = CRNN(plain).eval(), CRNN(refined).eval()
    before.load_state_dict(weights)
    after.load_state_dict({**after.state_dict(), **weights})
    images = torch.rand(2, 1, 32, 160) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(after(images), before(images), atol=1e-5)


def test_the_documented_twin_trains_vanilla_gates_over_the_refined_recipe():
    shipped = load_checkpoint(ROOT / "checkpoints" / "default.safetensors").model_config
    plain = vanilla(shipped)
    assert device_check.trained_config(plain, RECIPE, documented_twin_args()) == plain


def test_trained_config_reads_only_the_refine_options():
    shipped = load_checkpoint(ROOT / "checkpoints" / "default.safetensors").model_config
    plain = vanilla(shipped)
    assert device_check.trained_config(plain, {}, "") == plain
    assert device_check.trained_config(plain, {"lr": 1e-4}, "--lr 1e-4") == plain
    config = device_check.trained_config(plain, RECIPE, "--lr 1e-4 --refine mul --refine-gates i")
    assert (config.refine, config.refine_gates, config.refine_init, config.refine_bound) == ("mul", ("i",), "vanilla", "tanh")
    config = device_check.trained_config(plain, {}, "--refine add --refine-gates all")
    assert (config.refine, config.refine_gates, config.refine_init, config.refine_bound) == ("add", None, "default", "none")


def test_the_graphs_check_runs_work_in_another_thread_and_reports_its_failure():
    # tools/device_check.py checks CUDA graphs while batches are finished in another thread, as --finish-ahead
    # does in training; here the thread's bookkeeping on the CPU (the capture itself needs a GPU).
    seen = []
    with device_check._meanwhile(lambda k: (seen.append(k), time.sleep(0.001)), torch.device("cpu")) as paused:
        time.sleep(0.05)
        with paused():  # held while the graphs are captured, as training holds FinishAhead
            held = len(seen)
            time.sleep(0.02)
            assert len(seen) == held
    assert seen[:3] == [0, 1, 2] and len(seen) > held

    def broken(k):
        raise ValueError("operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="finished in another thread during the graphed steps failed: ValueError"):
        with device_check._meanwhile(broken, torch.device("cpu")):
            time.sleep(0.02)
    with device_check._meanwhile(None, torch.device("cpu")):
        pass


def test_the_twin_repeats_lease_3s_seed():
    # lease 3 ran the recipe's seed; tools/gpu_lease.sh gives other leases their own unless SEED is set
    (seed,) = re.findall(r"SEED=(\d+) MAX_STEPS=", twin_section())
    assert int(seed) == RECIPE["seed"]
    script = (ROOT / "tools" / "gpu_lease.sh").read_text()
    assert 'SEED=${SEED:-$(( $(date +%s) % 1000000 ))}' in script and 'EXTRA+=(--seed "$SEED")' in script


@pytest.mark.parametrize(
    "agree,graphs,faster,printed,graph_checks",
    [
        (True, True, True, [], 1),  # everything works: no fallback
        (True, True, False, ["TEXTREC_TRITON_RNN=0"], 2),  # kernels no faster with graphs: the graphs checked again without
        (True, False, False, ["TEXTREC_CUDA_GRAPHS=0", "TEXTREC_TRITON_RNN=0"], 1),
        (False, True, True, ["TEXTREC_TRITON_RNN=0"], 1),  # kernels wrong: never timed, the graphs checked without them
    ],
)
def test_the_device_check_falls_back_from_the_kernels_and_graphs_in_order(
    agree, graphs, faster, printed, graph_checks, monkeypatch, capsys
):
    """tools/device_check.recurrent_paths: the Triton step kernels are checked first, the graphs with whatever the
    kernels' check left, and the kernels' speed as training will run (with the graphs if they work)."""
    calls = []

    def outcome(name, ok):
        def check(*args, **kwargs):
            calls.append((name, os.environ.get("TEXTREC_TRITON_RNN"), kwargs.get("graphs", args[2] if len(args) > 2 else None)))
            if not ok:
                raise RuntimeError(f"{name} failed")
        return check

    # unset for the check; setenv first so that the value the check exports is undone afterwards (delenv of an
    # unset variable records nothing to restore)
    monkeypatch.setenv("TEXTREC_TRITON_RNN", "1")
    monkeypatch.delenv("TEXTREC_TRITON_RNN")
    monkeypatch.setattr(device_check, "kernels_agree", outcome("agree", agree))
    monkeypatch.setattr(device_check, "graphs_agree", outcome("graphs", graphs))
    monkeypatch.setattr(device_check, "kernels_faster", outcome("faster", faster))
    device_check.recurrent_paths(SimpleNamespace(refine="add"), None, None)
    assert [line for line in capsys.readouterr().out.splitlines()] == printed
    assert sum(name == "graphs" for name, _, _ in calls) == graph_checks
    timed = [c for c in calls if c[0] == "faster"]
    assert timed == ([] if not agree else [("faster", None, graphs)])
    if graph_checks == 2 or not agree:  # the graphs' last check ran without the kernels, as training then will
        assert [c for c in calls if c[0] == "graphs"][-1][1] == "0"


def test_the_device_check_times_the_kernels_at_the_training_batch_size():
    assert device_check.training_batch(RECIPE, "") == RECIPE["batch_size"] == 1024
    assert device_check.training_batch(RECIPE, "--batch-size 2048 --seed 3") == 2048  # the next lease's TRAIN_ARGS
    assert device_check.training_batch({}, "") == 64  # textrec train's default


@pytest.mark.parametrize("two_widths_work", [True, False], ids=["two-widths-agree", "two-widths-fail"])
def test_width_buckets_get_a_graph_check_at_two_widths(two_widths_work, monkeypatch, capsys):
    """A recipe with width buckets trains batches of several widths: the graphs are checked at two widths in turn after
    the one-width check, and a failure there falls back to full-width batches (graphs kept), not to no graphs."""
    checked = []

    def graphs(config, images, steps=3, finish_meanwhile=None, widths=None):
        checked.append(widths)
        if widths and not two_widths_work:
            raise RuntimeError("capture failed")

    monkeypatch.setattr(device_check, "kernels_agree", lambda *a, **k: None)
    monkeypatch.setattr(device_check, "kernels_faster", lambda *a, **k: None)
    monkeypatch.setattr(device_check, "graphs_agree", graphs)
    images = SimpleNamespace(shape=(64, 1, 32, 160))
    device_check.recurrent_paths(SimpleNamespace(refine="add"), images, None, buckets=True)
    assert checked == [None, (160, 96)]
    assert capsys.readouterr().out.splitlines() == ([] if two_widths_work else ["WIDTH_BUCKETS=0"])
    checked.clear()
    device_check.recurrent_paths(SimpleNamespace(refine="add"), images, None)
    assert checked == [None]  # no buckets: one width only


def test_the_device_check_reads_the_width_buckets_of_the_recipe_and_train_args():
    assert device_check.width_buckets(RECIPE, "") == RECIPE.get("width_buckets", 0)
    assert device_check.width_buckets({"width_buckets": 16}, "--seed 3") == 16
    assert device_check.width_buckets({"width_buckets": 16}, "--width-buckets 0") == 0


def test_the_twin_trains_full_width_batches_as_lease_3_did():
    # whatever the recipe comes to say about width buckets, the twin repeats lease 3's full-width batches
    assert "WIDTH_BUCKETS=0" in twin_section()
    script = (ROOT / "tools" / "gpu_lease.sh").read_text()
    assert 'EXTRA+=(--width-buckets "$WIDTH_BUCKETS")' in script


def test_turning_width_buckets_off_also_clears_a_start_step():
    """textrec train refuses --width-buckets-from without buckets, so wherever the script turns buckets off (the
    device check's WIDTH_BUCKETS=0, the retry) it clears a --width-buckets-from that TRAIN_ARGS or a recipe gave."""
    script = (ROOT / "tools" / "gpu_lease.sh").read_text()
    assert 'if [ "$WIDTH_BUCKETS" = 0 ]; then EXTRA+=(--width-buckets-from 0); fi' in script
    assert "EXTRA+=(--width-buckets 0 --width-buckets-from 0 --accept-changes)" in script
