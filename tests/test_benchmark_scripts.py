"""The speed benchmarks run end to end on tiny settings, with the shipped checkpoint where they take one.

They measure nothing here (the figures are theirs to print, side by side, on a quiet machine); these runs
only check that each script still works with the shipped architecture and ends with its JSON line.
A rank-16 shipped layer once broke benchmarks/data_speed.py (its vanilla variant kept the rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "default.safetensors"


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rnn_speed_runs_the_variants():
    result = _run(
        "rnn_speed.py", "--modes", "lstm,gru", "--variants", "add-vstart-tanh-r2,add-vstart",
        "--steps", "4", "--batch", "3", "--input", "8", "--hidden", "6", "--layers", "2",
        "--train-repeats", "1", "--infer-repeats", "1",
    )
    for key in ("train_ratio_vanilla_lstm", "train_ratio_add-vstart-tanh-r2_lstm", "infer_ratio_add-vstart_gru"):
        assert result[key] > 0


def test_rnn_speed_whole_model_of_the_shipped_checkpoint():
    result = _run("rnn_speed.py", "--whole-model", str(SHIPPED), "--variants", "add-io-vstart-tanh-r16", "--infer-repeats", "1")
    assert result["whole_infer_ratio_vanilla"] == 1.0
    assert result["whole_infer_ms_add-io-vstart-tanh-r16"] > 0


def test_data_speed_training_steps_of_the_shipped_architecture():
    result = _run("data_speed.py", "--skip-data", "--seconds", "0.1", "--batch-sizes", "2", "--device", "cpu", "--amp-dtype", "none")
    for name in ("ours_vanilla", "ours_refined_add_io", "torch_lstm"):
        assert result[f"steps_{name}_b2_images_per_second"] > 0


def test_input_widths_reports_the_work_of_width_buckets():
    result = _run("input_widths.py", "--train-data", "synth", "--batches", "4", "--batch-size", "8", "--pools", "1", "4")
    assert result["all"]["samples"] == 32
    # one batch cut alone can only save what its widest sample leaves; a pool of four never does more work than that
    assert 0 < result["pools"]["4"] <= result["pools"]["1"] <= 1
