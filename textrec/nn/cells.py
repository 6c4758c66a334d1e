"""One time step of each unit, written straight from the equations (the eager path).

Every step function takes the input part of the pre-activations for this step,
``xg = W_ih x_t + b_ih`` (gate blocks in torch order), the refinement input ``xt``
(``x̃_t``, or None when no gate is refined), the previous state and the recurrent
weights, and returns the new state and the gate values as ``{name: (sigmoid, value)}``
(``value`` is the refined gate; it equals ``sigmoid`` for unrefined gates).
"""

from __future__ import annotations

import torch
from torch import Tensor

GateValues = dict[str, tuple[Tensor, Tensor]]


def refine_gate(sig: Tensor, xt: Tensor | None, refine: str) -> Tensor:
    """The refined gate ``σ(...) ◇ x̃_t`` (◇ = + or ×) of Cheng et al. (2020)."""
    if refine == "add":
        return sig + xt
    if refine == "mul":
        return sig * xt
    return sig


def _gates(names, pre, xt, refine, refined) -> GateValues:
    out = {}
    for name, a in zip(names, pre):
        sig = torch.sigmoid(a)
        out[name] = (sig, refine_gate(sig, xt, refine) if name in refined else sig)
    return out


def lstm_step(xg, xt, state, w_hh, b_hh, refine, refined):
    h, c = state
    i, f, g, o = (xg + torch.nn.functional.linear(h, w_hh, b_hh)).chunk(4, -1)
    gates = _gates("ifo", (i, f, o), xt, refine, refined)
    g = torch.tanh(g)
    c = gates["f"][1] * c + gates["i"][1] * g
    h = gates["o"][1] * torch.tanh(c)
    return (h, c), gates


def gru_step(xg, xt, h, w_hh, b_hh, refine, refined):
    x_r, x_z, x_n = xg.chunk(3, -1)
    h_r, h_z, h_n = torch.nn.functional.linear(h, w_hh, b_hh).chunk(3, -1)
    gates = _gates("rz", (x_r + h_r, x_z + h_z), xt, refine, refined)
    n = torch.tanh(x_n + gates["r"][1] * h_n)
    z = gates["z"][1]
    return (1 - z) * n + z * h, gates


def mgu_step(xg, xt, h, w_hh, b_hh, refine, refined):
    """Minimal Gated Unit (Zhou et al., 2016): one forget gate, which also resets the candidate."""
    hidden = h.shape[-1]
    x_f, x_n = xg.chunk(2, -1)
    pre_f = x_f + torch.nn.functional.linear(h, w_hh[:hidden], b_hh[:hidden])
    gates = _gates("f", (pre_f,), xt, refine, refined)
    f = gates["f"][1]
    n = torch.tanh(x_n + torch.nn.functional.linear(f * h, w_hh[hidden:], b_hh[hidden:]))
    return (1 - f) * h + f * n, gates


STEPS = {"lstm": lstm_step, "gru": gru_step, "mgu": mgu_step}
