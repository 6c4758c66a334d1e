"""CUDA graphs for `GatedRNN`'s own recurrence in training steps of a fixed shape.

On a GPU the fused recurrence (``fused.py``) launches about a dozen small kernels per time step and
layer, forward and backward, from Python: at CRNN shapes the layer's time is mostly the launching
(the H200 took 13.0 ms at batch 64 and 13.7 ms at batch 256), where cuDNN's LSTM launches one kernel
per layer. A CUDA graph records those launches once and replays them as one. Training batches have
one shape (fixed batch, images padded to the full width), which is what a graph needs.

``GraphedTraining(rnn)`` installs itself as ``rnn.forward`` (an instance attribute: parameters,
``state_dict`` and checkpoints are untouched). Its first training call captures the layer's forward
and backward with ``torch.cuda.make_graphed_callables`` for that call's input shape; later calls of
the same shape replay them; with ``max_shapes`` above 1 each new shape is captured in turn, up to that many
(width-bucketed training, textrec/data/buckets.py). Anything else runs the layer as before: evaluation, no-gradient calls,
an initial state, another shape (a batch short of unreadable samples), recorded gates, torch's own
kernel (vanilla layers on a GPU use cuDNN, one launch per layer already), a CPU tensor. A capture
that fails turns the graphs off for the run, leaves the reason in ``failure`` and passes it to
``on_failure``. `for_training` installs them where they can help; ``TEXTREC_CUDA_GRAPHS=0`` turns that off.

While a graph is captured no other thread may make CUDA calls that the capture forbids (allocating, copying
to the host, synchronising): ``quiet``, a context manager factory, keeps them quiet for the capture; training
sets it to its `FinishAhead.paused`, which holds the thread that finishes batches on a side stream. (torch
2.14 could capture in "thread_local" mode instead, but torch 2.11, the GPU machine's, has no such argument to
``make_graphed_callables``: lease 4's capture failed on it.)
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
from torch import Tensor, nn

from .rnn import GatedRNN, autocast_dtype


class _Plain(nn.Module):
    """The layer's own forward with only the input as argument, as a module (so that the graph's
    backward yields the layer's parameter gradients); the graph patches this module, not the layer."""

    def __init__(self, rnn: GatedRNN, forward: Callable):
        super().__init__()
        self.rnn = rnn
        self._forward = forward

    def forward(self, x: Tensor):
        # The layer reads its input twice (once per direction), so the input would get two gradients,
        # summed in the input buffer of the sample input's AccumulateGrad node. make_graphed_callables
        # keeps its warm-up graph alive while it captures, and in torch 2.11 (warm-up and capture on
        # different streams) that sum ran on the warm-up stream: outside the capture, so every replay
        # returned the capture-time input gradient, zero (lease 3: the backbone's gradients all zero;
        # torch warned that the AccumulateGrad node's stream did not match). Through one alias made in
        # this iteration the two gradients are summed in its own buffer, on the capturing stream, and
        # every leaf the capture differentiates gets exactly one gradient (tests/test_graphs.py).
        return self._forward(x.view_as(x))


class GraphedTraining:
    def __init__(
        self, rnn: GatedRNN, on_failure: Callable[[str], None] | None = None,
        make_graphed: Callable | None = None, device_type: str = "cuda", max_shapes: int = 1,
    ):
        self.rnn = rnn
        self.device_type = device_type  # tests run the bookkeeping on "cpu" with a stand-in make_graphed
        self.plain = rnn.forward
        self.on_failure = on_failure
        self.make_graphed = make_graphed or torch.cuda.make_graphed_callables
        # (shape, dtype, requires_grad) of each captured input -> its graphs. Width-bucketed training has a few
        # input lengths (textrec/data/buckets.py), each captured when first seen, up to `max_shapes`.
        self.graphed: dict[tuple, Callable] = {}
        self.max_shapes = max_shapes
        self.failure: str | None = None
        self.replays = 0
        self.quiet: Callable[[], AbstractContextManager] = nullcontext  # other threads' CUDA work held during a capture
        rnn.forward = self.forward

    def remove(self) -> None:
        """Give the layer its own forward back."""
        if self.rnn.__dict__.get("forward") == self.forward:
            del self.rnn.forward

    def applies(self, x: Tensor, state) -> bool:
        rnn = self.rnn
        return (
            self.failure is None and state is None and rnn.training and torch.is_grad_enabled() and x.device.type == self.device_type
            and not rnn.record_gates and not rnn.torch_kernel_applies(x)
        )

    def forward(self, x: Tensor, state=None):
        if not self.applies(x, state):
            return self.plain(x, state)
        key = (tuple(x.shape), x.dtype, x.requires_grad)
        if key not in self.graphed:
            if len(self.graphed) >= self.max_shapes:
                return self.plain(x, state)
            try:
                self.graphed[key] = self._capture(x)
            except Exception as error:  # noqa: BLE001  (any failure: train without graphs)
                self.failure = f"CUDA graphs of the recurrent layer are off: {type(error).__name__}: {error}"
                if self.on_failure:
                    self.on_failure(self.failure)
                return self.plain(x, state)
        self.replays += 1
        return self.graphed[key](x)

    def _capture(self, x: Tensor) -> Callable:
        sample = torch.randn_like(x).requires_grad_(x.requires_grad)
        plain = _Plain(self.rnn, self.plain)
        # Under autocast the layer casts its input to float32 and runs without autocast inside; the
        # graph captures that cast. The autocast cache must be off while capturing (torch's rule).
        autocast = torch.is_autocast_enabled(self.device_type)
        dtype = autocast_dtype(self.device_type)  # the caller's (bfloat16 or float16), not the device's default
        with self.quiet(), torch.autocast(self.device_type, dtype=dtype, enabled=autocast, cache_enabled=False):
            return self.make_graphed(plain, (sample,), allow_unused_input=True)


def for_training(
    module, device: torch.device | str, on_failure: Callable[[str], None] | None = None, max_shapes: int = 1
) -> GraphedTraining | None:
    """Graphs for `module` when training it on `device` can use them: a `GatedRNN` computed by textrec's own
    kernel, on CUDA, unless ``TEXTREC_CUDA_GRAPHS=0``. None otherwise (nothing installed). `max_shapes`: how many
    input shapes get their own graphs (more than one with width buckets)."""
    if (
        torch.device(device).type != "cuda" or not isinstance(module, GatedRNN) or module.torch_kernel_enabled()
        or os.environ.get("TEXTREC_CUDA_GRAPHS", "1") == "0"
    ):
        return None
    return GraphedTraining(module, on_failure=on_failure, max_shapes=max_shapes)
