"""Which gates each recurrent unit has, and validation of the refinement options.

Gate names follow the papers: LSTM ``i, f, g, o`` (``g`` is the tanh candidate),
GRU ``r, z, n`` (``n`` is the tanh candidate), MGU ``f, n``. Only sigmoid gates can be
refined; the tanh candidates are not gates in the paper's sense.
"""

from __future__ import annotations

from collections.abc import Iterable

MODES = ("lstm", "gru", "mgu")
REFINES = ("none", "add", "mul")
# How the short connection starts: "default" = torch's random init of the projection (and,
# for "mul", the factor x̃ itself); "vanilla" = start-as-vanilla: a zero projection and, for
# "mul", the factor 1 + x̃, so every refined gate equals its vanilla gate at step 0.
REFINE_INITS = ("default", "vanilla")
# "tanh": x̃ = tanh(projection or input), so the short connection stays inside (-1, 1).
REFINE_BOUNDS = ("none", "tanh")

# Row blocks of weight_ih / weight_hh, in torch.nn.LSTM / torch.nn.GRU order.
GATE_ORDER = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "mgu": ("f", "n")}
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "mgu": ("f",)}
# The gate that keeps the old state, and the sign of a bias that makes it keep more:
# LSTM c' = f c + ..., GRU h' = (1 - z) n + z h, MGU h' = (1 - f) h + f h̃.
MEMORY_GATE = {"lstm": ("f", 1.0), "gru": ("z", 1.0), "mgu": ("f", -1.0)}


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


def parse_gate_names(text: str) -> list[str]:
    """`--refine-gates` as written: comma-separated gate names; "all" (or nothing) names no subset."""
    return [] if text.strip() == "all" else [g.strip() for g in text.split(",") if g.strip()]


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


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    value = str(value).lower()
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_refine_options(refine: str, refine_init: str, refine_bound: str) -> tuple[str, str]:
    """Validate ``refine_init`` / ``refine_bound``; both need a refinement to act on."""
    refine_init = check_choice("refine_init", refine_init, REFINE_INITS)
    refine_bound = check_choice("refine_bound", refine_bound, REFINE_BOUNDS)
    if refine == "none":
        for name, value, default in (("refine_init", refine_init, "default"), ("refine_bound", refine_bound, "none")):
            if value != default:
                raise ValueError(f"{name}={value!r} needs refine='add' or 'mul', not 'none'")
    return refine_init, refine_bound
