"""The Triton step kernels of the LSTM recurrence (textrec/nn/triton_steps.py).

They run on CUDA, which this machine lacks. Two checks stand in for a GPU:
* Triton's interpreter (TRITON_INTERPRET=1) runs the kernels' Python on CPU tensors; Triton reads that
  variable when it defines the kernels, so the comparison with the torch-op loop runs in a child process
  (tests/triton_interpreted.py, about 30 s);
* the interpreter skips Triton's compiler, so every specialization the wrappers launch is also compiled
  here, ahead of time, to a cubin for an H100/H200 (sm_90) with the ptxas inside Triton's wheel.
Both also passed with torch 2.11 / Triton 3.6, the GPU machine's versions (docs/testing.md). Where Triton is
not installed the kernels never run (the torch-op loop does), and these two are reported as skipped with that
reason. On a lent GPU, tools/device_check.py compares the two paths again, on CUDA.
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


NO_TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed: the kernels never run here")

# every specialization the wrappers launch: (kernel, its constexpr arguments)
SPECIALIZATIONS = [
    ("lstm_forward_step", dict(REF_I=False, REF_F=False, REF_O=False, MUL=False)),  # vanilla
    ("lstm_forward_step", dict(REF_I=True, REF_F=False, REF_O=True, MUL=False)),  # the shipped model's i, o
    ("lstm_forward_step", dict(REF_I=True, REF_F=True, REF_O=True, MUL=False)),
    ("lstm_forward_step", dict(REF_I=True, REF_F=True, REF_O=True, MUL=True)),
    ("lstm_forward_step", dict(REF_I=False, REF_F=True, REF_O=False, MUL=True)),
    ("lstm_backward_step", dict(HAS_REC=True)),
    ("lstm_backward_step", dict(HAS_REC=False)),
    ("lstm_forward_step", dict(REF_I=True, REF_F=False, REF_O=True, MUL=False, float64=True)),  # float64 layers
    ("lstm_backward_step", dict(HAS_REC=True, float64=True)),
]  # "float64": pointers and arithmetic in float64 (not a kernel argument)


@NO_TRITON
@pytest.mark.parametrize("kernel,constants", SPECIALIZATIONS, ids=lambda v: v if isinstance(v, str) else "-".join(k for k, on in v.items() if on) or "none")
def test_kernels_compile_for_a_gpu(kernel, constants):
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from textrec.nn import triton_kernels

    fn = getattr(triton_kernels, kernel)
    wide = constants.get("float64", False)
    constants = {k: v for k, v in constants.items() if k != "float64"}
    constants.update(ACC=tl.float64 if wide else tl.float32, BLOCK=triton_steps._BLOCK)
    ints = {"n", "B", "H"}
    pointer = "*fp64" if wide else "*fp32"
    signature = {
        p.name: "constexpr" if p.is_constexpr else "i32" if (p.name in ints or p.name.startswith("s_")) else pointer
        for p in fn.params
    }
    assert {n for n, kind in signature.items() if kind == "constexpr"} == set(constants)
    source = ASTSource(fn, signature, {(fn.arg_names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"] and ".entry" in compiled.asm["ptx"]


@NO_TRITON
def test_kernels_match_the_torch_ops_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("TEXTREC_TRITON_RNN", None)
    done = subprocess.run(
        [sys.executable, str(HERE / "triton_interpreted.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    # 7 variants x 2 dtypes x (train, infer), then 6 special cases (batch-first, one direction, a state, ...)
    assert sum(line.startswith("ok ") for line in lines) == 34, done.stdout
    assert {"ok gradcheck add-io-vstart-tanh", "ok gradcheck mul-all-vstart", "ok device check compares the paths"} <= set(lines)
