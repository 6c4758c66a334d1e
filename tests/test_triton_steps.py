"""The Triton step kernels of the LSTM recurrence (textrec/nn/triton_steps.py).

They run on CUDA, which this machine lacks. Triton's interpreter (TRITON_INTERPRET=1) runs the same
kernels on CPU tensors, and Triton reads that variable when it defines the kernels, so the comparison
with the torch-op loop runs in a child process (tests/triton_interpreted.py, about 30 s). Where Triton
is not installed the kernels never run (the torch-op loop does) and the comparison is reported as
skipped with that reason. On a lent GPU, tools/device_check.py compares the two paths again on CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textrec.nn import GatedRNN, triton_steps

HERE = Path(__file__).resolve().parent


def test_kernels_run_only_on_cuda_or_under_the_interpreter(monkeypatch):
    cpu = torch.zeros(2, 3)
    monkeypatch.setattr(triton_steps, "_INTERPRETED", False)
    assert not triton_steps.applies(cpu)
    monkeypatch.setattr(triton_steps, "_INTERPRETED", True)
    assert triton_steps.applies(cpu) == (importlib.util.find_spec("triton") is not None)
    assert not triton_steps.applies(cpu.half())  # half precision: the torch ops (the kernels compute in float32 only)
    monkeypatch.setenv("TEXTREC_TRITON_RNN", "0")
    assert not triton_steps.applies(cpu)


def test_the_choice_made_in_the_forward_holds_for_the_backward(monkeypatch):
    """A switch flipped between forward and backward (a benchmark timing both paths) must not mix them."""
    monkeypatch.setattr(triton_steps, "_INTERPRETED", True)
    monkeypatch.setattr(triton_steps, "_installed", lambda: True)
    calls = []
    monkeypatch.setattr(triton_steps, "lstm_forward_step", lambda *a: calls.append("forward"))
    monkeypatch.setattr(triton_steps, "lstm_backward_step", lambda *a: calls.append("backward"))
    rnn = GatedRNN("lstm", 3, 2, refine="add", refine_gates=("i", "o"))
    monkeypatch.setenv("TEXTREC_TRITON_RNN", "0")
    out, _ = rnn(torch.randn(4, 1, 3))
    monkeypatch.setenv("TEXTREC_TRITON_RNN", "1")
    out.sum().backward()
    assert calls == []  # the torch-op forward, hence the torch-op backward


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed: the kernels never run here")
def test_kernels_match_the_torch_ops_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("TEXTREC_TRITON_RNN", None)
    done = subprocess.run(
        [sys.executable, str(HERE / "triton_interpreted.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == 29, done.stdout
    assert {"ok gradcheck add-io-vstart-tanh", "ok gradcheck mul-all-vstart", "ok device check compares the paths"} <= set(lines)
