"""Collecting and summarising gate values (for saturation studies; off the normal path)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def recording_gates(module: nn.Module) -> Iterator[dict[str, dict[str, tuple[Tensor, Tensor]]]]:
    """Record gate values of every GatedRNN inside ``module`` while the block runs.

    Yields a dict ``{submodule name: last_gates}`` that is filled in when the block exits;
    ``last_gates`` maps ``"l{layer}.{gate}"`` to ``(sigmoid, value)``, each of shape
    (directions, T, B, H), detached. Recording costs memory and a little time, which is
    why it is off by default.
    """
    from .rnn import GatedRNN

    rnns = {name: m for name, m in module.named_modules() if isinstance(m, GatedRNN)}
    before = {name: m.record_gates for name, m in rnns.items()}
    result: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
    for m in rnns.values():
        m.record_gates = True
    try:
        yield result
    finally:
        for name, m in rnns.items():
            m.record_gates = before[name]
            result[name] = dict(m.last_gates)


def gate_stats(last_gates: dict[str, tuple[Tensor, Tensor]], low: float = 0.05, high: float = 0.95) -> dict[str, float]:
    """Saturation and range of recorded gates, pooled over all gates given.

    ``saturated``: share of sigmoid activations below ``low`` or above ``high`` (the
    "undertrained"/saturated region where σ' ≈ 0); ``value_min`` / ``value_max``: range of
    the gate values actually used (refined gates may leave (0, 1)); ``outside_01``: share
    of gate values outside [0, 1].
    """
    if not last_gates:
        raise ValueError("no gate values recorded; set record_gates=True and run a forward first")
    sig = torch.cat([s.reshape(-1) for s, _ in last_gates.values()]).float()
    val = torch.cat([v.reshape(-1) for _, v in last_gates.values()]).float()
    return {
        "saturated": ((sig < low) | (sig > high)).float().mean().item(),
        "below_low": (sig < low).float().mean().item(),
        "above_high": (sig > high).float().mean().item(),
        "value_min": val.min().item(),
        "value_max": val.max().item(),
        "outside_01": ((val < 0) | (val > 1)).float().mean().item(),
    }
