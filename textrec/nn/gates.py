"""Which gates each recurrent unit has, and validation of the refinement options.

Gate names follow the papers: LSTM ``i, f, g, o`` (``g`` is the tanh candidate),
GRU ``r, z, n`` (``n`` is the tanh candidate), MGU ``f, n``. Only sigmoid gates can be
refined; the tanh candidates are not gates in the paper's sense.
"""

from __future__ import annotations

from collections.abc import Iterable

MODES = ("lstm", "gru", "mgu")
REFINES = ("none", "add", "mul")

# Row blocks of weight_ih / weight_hh, in torch.nn.LSTM / torch.nn.GRU order.
GATE_ORDER = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "mgu": ("f", "n")}
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "mgu": ("f",)}


def check_mode(mode: str) -> str:
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"unknown recurrent mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def check_refine(refine: str) -> str:
    refine = str(refine).lower()
    if refine not in REFINES:
        raise ValueError(f"unknown refinement {refine!r}; choose one of {', '.join(REFINES)}")
    return refine


def resolve_refine_gates(mode: str, refine: str, refine_gates: Iterable[str] | None) -> tuple[str, ...]:
    """The refined gates, in the mode's gate order: all sigmoid gates unless a subset is named."""
    allowed = SIGMOID_GATES[mode]
    if refine == "none":
        if refine_gates:
            raise ValueError(f"refine_gates={tuple(refine_gates)!r} needs refine='add' or 'mul', not 'none'")
        return ()
    if refine_gates is None:
        return allowed
    if isinstance(refine_gates, str):
        raise ValueError(f"refine_gates must be a sequence of gate names such as {allowed!r}, not a string")
    names = tuple(refine_gates)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(
            f"cannot refine gate(s) {', '.join(map(repr, unknown))} of {mode}; its sigmoid gates are {', '.join(allowed)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"refine_gates lists a gate twice: {names!r}")
    return tuple(g for g in allowed if g in names)
