"""Distributed data-parallel training (docs/scale.md): a 2-process gloo run on the CPU against a 1-process run.

The ranks split each global batch, so with real data and no augmentation the two runs train on the same samples
from the same weights; batch-norm statistics are taken over each rank's half-batch, so the losses are close,
not equal.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cliutil import assert_one_clear_line, invoke
from imagegen import png_bytes, render_word, write_lmdb
from test_train import WORDS, tiny_config
from textrec.checkpoint import load_checkpoint
from textrec.data.training import StepBatchSampler
from textrec.distributed import World, torchrun_command, without_option
from textrec.train import train

ROOT = Path(__file__).resolve().parent.parent
gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)
# warmup_steps: the CLI's default, so that the command line of the last part gives the same hyper-parameters.
SETTINGS = dict(max_steps=6, batch_size=8, log_interval=1, save_interval=3, val_interval=6, warmup_steps=300)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}


@gloo
def test_two_processes_train_like_one(tmp_path):
    data = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in WORDS])
    config = tiny_config(data, tmp_path / "two", **SETTINGS)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="250", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    command = torchrun_command(2, [str(ROOT / "tests" / "dist_train.py"), str(tmp_path / "config.json")])
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    train(tiny_config(data, tmp_path / "one", **SETTINGS))
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # one set of files: rank 0's
    steps = [r["step"] for r in metrics(two) if "loss" in r]
    assert steps == list(range(1, 7))  # one line per step, none twice
    first, second = losses(one), losses(two)
    # The same weights at step 1 and the same samples: the losses differ only through batch-norm statistics
    # (by about 1e-5 relative at steps 1 and 2): DDP averaged the ranks' gradients into the 1-process update.
    for step in (1, 2):
        assert math.isclose(first[step], second[step], rel_tol=0.01), (first, second)
    weights = load_file(two / "last.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    assert load_checkpoint(two / "best.safetensors").info["step"] == 6
    # The 2-process run resumes in one process.
    result = train(tiny_config(data, two, **{**SETTINGS, "max_steps": 8}))
    assert result.steps == 8
    assert [r["step"] for r in metrics(two) if "loss" in r] == list(range(1, 9))
    # ... and on in two again, through `textrec train --nproc-per-node 2`: one console, one summary.
    command = [
        sys.executable, "-m", "cli.main", "train", "--train-data", str(data), "--val-data", str(data), "--output", str(two),
        "--max-steps", "10", "--batch-size", "8", "--lr", str(config.lr), "--channels", "16,32,48,48,64,64,64",
        "--hidden-size", "48", "--refine", "mul", "--no-augment", "--workers", "0", "--nproc-per-node", "2",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("10 steps") == 1 and "error" not in done.stderr, (done.stdout, done.stderr)
    assert "resuming from step 8" in done.stderr and "x 2 processes" in done.stderr
    assert [r["step"] for r in metrics(two) if "loss" in r] == list(range(1, 9)) + [10]


def test_ranks_split_each_global_batch():
    """Rank r of w takes every w-th key of the step's batch: together the ranks read the batch of one process."""
    one = list(StepBatchSampler([6, None], [5, 3], 0, 0, 3))
    for world in (2, 4):
        shares = [list(StepBatchSampler([6, None], [5, 3], 0, 0, 3, rank, world)) for rank in range(world)]
        for step, keys in enumerate(one):
            parts = [share[step] for share in shares]
            assert sorted(k for part in parts for k in part) == sorted(keys)
            assert len({len(part) for part in parts}) == 1


def test_world_comes_from_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    world = World.from_environment()
    assert (world.rank, world.size, world.distributed, world.is_main) == (2, 4, True, False)
    assert World().seed(7) == 7 and world.seed(7) != 7 and world.seed(7, 100) != world.seed(7)


def test_nproc_per_node_relaunches_through_torchrun(monkeypatch, tmp_path):
    import cli.train_cmd

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    launched = []
    monkeypatch.setattr(cli.train_cmd, "launch", lambda command: launched.append(command) or 3)
    args = ["train", "--train-data", "d", "--output", str(tmp_path / "r"), "--nproc-per-node", "2", "--batch-size", "8"]
    monkeypatch.setattr(sys, "argv", ["textrec", *args])
    result = invoke(*args)
    assert result.exit_code == 3, result.output
    (command,) = launched
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:] == ["cli.main", "train", "--train-data", "d", "--output", str(tmp_path / "r"), "--batch-size", "8"]
    assert without_option(["--nproc-per-node=4", "x"], "--nproc-per-node") == ["x"]
    args[-1] = "9"  # the global batch must split evenly
    monkeypatch.setattr(sys, "argv", ["textrec", *args])
    assert_one_clear_line(invoke(*args), "--batch-size 9 is the global batch", "(2)")
    args[-1] = "8"  # a time budget runs in one process: refused before anything is launched
    args += ["--time-budget", "60"]
    monkeypatch.setattr(sys, "argv", ["textrec", *args])
    assert_one_clear_line(invoke(*args), "--time-budget trains in one process")
    assert len(launched) == 1
