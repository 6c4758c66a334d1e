"""The input side of a recurrent layer: ``W_ih x_t + b`` (with the refinement's projection) for every
time step and direction at once, and its hand-written backward.

Why a Function of its own: autograd's backward of the batched product it replaces made two
avoidable copies (the weight gradient came out transposed and was copied back, the bias was
copied into the output before the product), and the products themselves run faster through
oneDNN on CPU (below). Its backward returns the weight gradient in the weights' own layout.

On CPU, float32 products go through oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``,
the op torch's own compiler emits for linear layers on CPU) where this torch has it: at CRNN shapes
it ran 7-10 % faster than MKL's GEMM on this project's AMD EPYC development machine (MKL is tuned for
Intel CPUs). With several threads and few rows MKL's GEMM was the faster (41 rows on 2 threads: 9 %),
so oneDNN takes products of at least 64 rows per thread. ``TEXTREC_ONEDNN=0`` turns it off;
elsewhere (other devices and dtypes, a torch without the op or with oneDNN disabled) the products are
torch's ``baddbmm`` and ``bmm``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _onednn_op():
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):  # a torch built without it
        return None


_LINEAR = _onednn_op()


_ROWS_PER_THREAD = 64


def onednn_applies(t: Tensor, rows: int) -> bool:
    """Whether products of ``rows`` rows of ``t`` run through oneDNN (see the module's docstring)."""
    return (
        _LINEAR is not None
        and t.device.type == "cpu"
        and t.dtype == torch.float32
        and rows >= _ROWS_PER_THREAD * torch.get_num_threads()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and os.environ.get("TEXTREC_ONEDNN", "1") != "0"
    )


def _linear(a: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``a wᵀ + b`` through oneDNN (a: (M, K), w: (N, K), any strides)."""
    return _LINEAR(a, w, b, "none", [], "")


def directions(x: Tensor, D: int) -> Tensor:
    """(D, T, B, I): the input as each direction reads it (the reverse direction's flipped in time)."""
    return x.unsqueeze(0) if D == 1 else torch.stack((x, x.flip(0)))


def project(xd: Tensor, w_in: Tensor, b_in: Tensor) -> Tensor:
    """(D, T, B, N) products ``xd[d] W[d]ᵀ + b[d]`` of (D, T, B, I) inputs, (D, N, I) weights and (D, N) biases."""
    D, T, B, I = xd.shape
    flat = xd.reshape(D, T * B, I)
    if not onednn_applies(xd, T * B):
        return torch.baddbmm(b_in.unsqueeze(1), flat, w_in.transpose(1, 2)).view(D, T, B, w_in.shape[1])
    out = xd.new_empty(D, T * B, w_in.shape[1])
    for d in range(D):
        # One direction at a time: the second product reuses the first's freed memory (fewer fresh pages than a stack).
        out[d] = _linear(flat[d], w_in[d], b_in[d])
    return out.view(D, T, B, w_in.shape[1])


class InputProjection(torch.autograd.Function):
    """``project(directions(x, D), w_in, b_in)`` with the backward written out: the input's gradient
    sums each direction's (the reverse one flipped back), the weights' comes out (D, N, I)."""

    @staticmethod
    def forward(ctx, x, w_in, b_in):
        xd = directions(x, w_in.shape[0])
        ctx.save_for_backward(xd, w_in)
        return project(xd, w_in, b_in)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_proj):
        xd, w_in = ctx.saved_tensors
        D, T, B, I = xd.shape
        flat = d_proj.reshape(D, T * B, w_in.shape[1])
        d_x = d_w = d_b = None
        if ctx.needs_input_grad[0]:
            if onednn_applies(flat, T * B):
                parts = [_linear(flat[d], w_in[d].t(), None) for d in range(D)]
            else:
                parts = list(torch.bmm(flat, w_in).unbind(0))
            d_x = parts[0].view(T, B, I)
            if D == 2:
                d_x = d_x.add_(parts[1].view(T, B, I).flip(0))
        if ctx.needs_input_grad[1]:
            d_w = torch.bmm(flat.transpose(1, 2), xd.reshape(D, T * B, I))
        if ctx.needs_input_grad[2]:
            d_b = flat.sum(1)
        return d_x, d_w, d_b
