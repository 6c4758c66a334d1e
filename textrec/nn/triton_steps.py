"""The LSTM recurrence's per-step element-wise work as one Triton kernel each way (CUDA).

On a GPU the fused path (``fused.py``) is bound by kernel launches, not arithmetic: each step of
the forward launches about eight small kernels after its matrix product, each step of the
backward about five (measured on an H200 at T = 41, batch 1,024: our kernel 2.3x cuDNN, at batch 1
3x). Here a step is one matrix product and **one** kernel:

* forward: gate inputs + ``h W_hh`` → sigmoids, the refined gates' values (``σ + x̃`` or
  ``σ · x̃``), the candidate ``tanh``, the new cell, ``tanh c`` and ``h``, all written into the
  same buffers the torch-op loop writes, so the backward and the gate recording are unchanged;
* backward: ``dh``, ``dc``, the four gate pre-activation gradients and the carried ``dc · f``.

Everything before and after the loops stays as it is in ``fused.py``. The kernels run on CUDA
tensors when Triton imports; ``TEXTREC_TRITON_RNN=0`` turns them off (``tools/device_check.py``
does when they disagree with the torch ops). Under ``TRITON_INTERPRET=1`` Triton runs them on the
CPU too, which is how the tests compare them with the torch-op loop on this CPU-only machine.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from torch import Tensor

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_BLOCK = 1024


@functools.cache
def _installed() -> bool:
    # Triton ships with torch's CUDA wheels on Linux; without it the torch-op loop runs.
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _triton():
    """The kernels' module and triton.language, imported once, when a step first runs."""
    import triton.language as tl

    from . import triton_kernels

    return triton_kernels, tl


def applies(t: Tensor) -> bool:
    """Whether the per-step kernels run for tensors like ``t``: on CUDA (or on the CPU under
    Triton's interpreter), float32/float64, Triton present, not turned off."""
    return (
        (t.is_cuda or (_INTERPRETED and t.device.type == "cpu"))
        and t.dtype.is_floating_point
        and t.element_size() >= 4
        and os.environ.get("TEXTREC_TRITON_RNN", "1") != "0"
        and _installed()
    )


def _rows(t: Tensor) -> tuple[Tensor, int, int]:
    """A (D, B, W) step view as the kernels address it: the tensor, its direction and row strides."""
    if t.stride(-1) != 1:
        raise ValueError("the step kernels need unit stride along the hidden axis")
    return t, t.stride(0), t.stride(1)


def _launch(kernel, n: int, *args, **meta) -> None:
    kernel[((n + _BLOCK - 1) // _BLOCK,)](*args, BLOCK=_BLOCK, **meta)


def _acc(t: Tensor):
    """The precision the kernels compute in: float64 for float64 tensors (the gradient checks), else float32."""
    tl = _triton()[1]
    return tl.float64 if t.element_size() == 8 else tl.float32


def lstm_forward_step(xg, hw, r, S, V, c_prev, c, tc, h, refined_blocks: tuple[int, ...], refine: str) -> None:
    """One forward step into the given (D, B, ·) views; ``refined_blocks`` ⊆ {0, 1, 3} (i, f, o)."""
    kernel = _triton()[0].lstm_forward_step
    D, B, G = hw.shape
    H = G // 4
    n = D * B * H
    tensors = (xg, hw, r if r is not None else c_prev, S, V, c_prev, c, tc, h)
    args = [x for t in tensors for x in _rows(t)]
    _launch(
        kernel, n, *args, n, B, H,
        REF_I=0 in refined_blocks, REF_F=1 in refined_blocks, REF_O=3 in refined_blocks,
        MUL=refine == "mul", ACC=_acc(hw),
    )


def lstm_backward_step(d_h, rec, dc_carry, P, K, f, dh, dc, dA) -> None:
    """One backward step into the given (D, B, ·) views; ``dc_carry`` (contiguous) is updated in place."""
    kernel = _triton()[0].lstm_backward_step
    D, B, H = dh.shape
    n = D * B * H
    if not dc_carry.is_contiguous():
        raise ValueError("the carried cell gradient must be contiguous")
    tensors = (d_h, rec if rec is not None else d_h)
    args = [x for t in tensors for x in _rows(t)]
    args.append(dc_carry)
    args += [x for t in (P, K, f, dh, dc, dA) for x in _rows(t)]
    _launch(kernel, n, *args, n, B, H, HAS_REC=rec is not None, ACC=_acc(dh))
