"""`GatedRNN`: multi-layer (bi)directional LSTM / GRU / MGU with optional refined gates.

Parameters use torch.nn.LSTM / torch.nn.GRU names and layouts (``weight_ih_l0``,
``weight_hh_l0_reverse``, ...), so vanilla weights load with ``load_state_dict`` and
``GatedRNN.from_torch`` is a plain copy. MGU uses the same names with two row blocks
``(f, n)``. A refined layer whose input width differs from the hidden width (or any refined
layer that starts as vanilla) has one more bias-free matrix, ``weight_refine_l{k}[_reverse]``
(hidden, input), that maps the input to ``x̃_t``; it is shared by all refined gates of that
layer and direction. With ``input_map``, a layer whose input is wider or narrower than the
hidden size reads it through ``weight_map_l{k}`` / ``bias_map_l{k}`` (hidden, input) first,
shared by both directions, so that ``x̃_t`` is the (mapped) layer input itself.

The library never prints: it is used inside training loops and servers whose callers
own the console; everything a caller may want to know is returned or raised.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import fused
from .cells import STEPS
from .gates import (
    GATE_ORDER,
    MEMORY_GATE,
    SIGMOID_GATES,
    check_mode,
    check_refine,
    check_refine_options,
    resolve_refine_gates,
)


class GatedRNN(nn.Module):
    """Drop-in for ``torch.nn.LSTM`` / ``torch.nn.GRU`` (and an MGU) with refined gates.

    Args:
        mode: ``"lstm"``, ``"gru"`` or ``"mgu"``.
        input_size, hidden_size, num_layers, bidirectional, batch_first, dropout: as in
            ``torch.nn.LSTM`` (dropout acts on the outputs of every layer but the last).
        refine: ``"none"`` (vanilla gates), ``"add"`` (``σ(W x + U h + b) + x̃``) or
            ``"mul"`` (``σ(W x + U h + b) ⊙ x̃``).
        refine_gates: which sigmoid gates to refine; default all of them:
            ``("i", "f", "o")`` for LSTM, ``("r", "z")`` for GRU, ``("f",)`` for MGU.
        refine_init: ``"default"`` (torch's random init for the projection; "mul" multiplies
            by ``x̃``) or ``"vanilla"`` (start-as-vanilla: every refined layer gets a projection,
            initialised to zero, and "mul" multiplies by ``1 + x̃``, so at step 0 each refined
            gate equals its vanilla gate and training grows the short connection only as it
            helps). Cannot be combined with ``input_map``, whose ``x̃ = x_t`` is never zero.
        refine_bound: ``"none"`` or ``"tanh"`` (``x̃ = tanh(W_refine x)``, or ``tanh(x)``
            without a projection: a short connection inside (-1, 1)).
        forget_bias: 0 leaves torch's random biases; otherwise the bias of the gate that keeps
            the old state is set to it at initialisation (``b_ih`` rows = value, ``b_hh`` rows
            = 0): LSTM ``f``, GRU ``z`` (``h' = (1 - z) n + z h``) and, with the opposite sign,
            MGU ``f`` (``h' = (1 - f) h + f h̃``), so a positive value means "remember" for all.
        input_map: a learned linear map (with bias) in front of every layer whose input width
            differs from ``hidden_size``, so that the refinement's ``x̃_t`` is that layer's
            (mapped) input exactly, as in the paper, with no projection.
        refine_rank: 0 (a full projection ``W_refine``, hidden × input) or r with
            ``0 < r < hidden_size``: a low-rank one, ``W_refine = W_up W_down`` with
            ``weight_refine_down_l{k}`` (r, input) and ``weight_refine_l{k}`` (hidden, r). It
            costs ``r (input + hidden)`` multiply-adds per step instead of ``input × hidden``
            (docs/refined_gates.md, "Low-rank projections"). Start-as-vanilla zeroes ``W_up``
            only, so ``W_down`` still passes gradients to it.

    ``x̃_t`` is the layer input itself when its width equals ``hidden_size`` (and the layer
    does not start as vanilla) and a learned bias-free linear projection of it otherwise (the
    paper only defines the equal-width case; a projection is the smallest addition that keeps
    the short connection).

    ``forward(x, state=None) -> (output, state)`` with torch's shapes: output
    ``(T, B, D*H)`` (``(B, T, D*H)`` if batch_first); state ``(h, c)`` for LSTM and ``h``
    for GRU / MGU, each ``(num_layers*D, B, H)``.

    Set ``record_gates = True`` (or use :func:`textrec.nn.recording_gates`) to keep the
    gate values of the last forward in ``last_gates`` (see :func:`textrec.nn.gate_stats`).
    ``fast = False`` selects the eager step-by-step path (the reference the fused path is
    tested against).

    Performance notes: the fused path (``fused.py``) has a hand-written backward and, while
    no gradient is needed, caches its stacked weights. On CPU, gradients that fade over
    hundreds of steps can become denormal floats and slow matrix products down ~100x; call
    ``torch.set_flush_denormal(True)`` in such training scripts (the library does not change
    that process-wide flag itself).
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        refine: str = "none",
        batch_first: bool = False,
        dropout: float = 0.0,
        refine_gates: Iterable[str] | None = None,
        device=None,
        dtype=None,
        refine_init: str = "default",
        refine_bound: str = "none",
        forget_bias: float = 0.0,
        input_map: bool = False,
        refine_rank: int = 0,
    ):
        super().__init__()
        self.mode = check_mode(mode)
        self.refine = check_refine(refine)
        self.refine_gates = resolve_refine_gates(self.mode, self.refine, refine_gates)
        self.refine_init, self.refine_bound = check_refine_options(self.refine, refine_init, refine_bound)
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        self.forget_bias = float(forget_bias)
        self.input_map = bool(input_map)
        self.refine_rank = self._check_rank(refine_rank, hidden_size)
        if self.input_map and self.refine_init == "vanilla":
            raise ValueError(
                "refine_init='vanilla' cannot be combined with input_map: the identity path makes x̃ the "
                "layer input itself, which is not zero, so the refined gates differ from vanilla ones from "
                "the first step; start-as-vanilla needs a zero-initialised projection (input_map=False)"
            )
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.record_gates = False
        self.last_gates: dict[str, tuple[Tensor, Tensor]] = {}
        # With record_gates: "l{layer}" -> (directions, T, B, H) states of the last forward, the
        # cell c for an LSTM and h for GRU / MGU (how large they grow shows a diverging unit).
        self.last_states: dict[str, Tensor] = {}
        self.fast = True
        self.use_torch_kernel = True  # False: textrec's own kernel on GPUs too (benchmarks compare the two)

        factory = {"device": device, "dtype": dtype}
        blocks = len(GATE_ORDER[self.mode])
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            if self.input_map and layer_input != hidden_size:
                self.register_parameter(f"weight_map_l{layer}", nn.Parameter(torch.empty(hidden_size, layer_input, **factory)))
                self.register_parameter(f"bias_map_l{layer}", nn.Parameter(torch.empty(hidden_size, **factory)))
                layer_input = hidden_size
            for direction in range(self.num_directions):
                sfx = self._suffix(layer, direction)
                self.register_parameter(f"weight_ih{sfx}", nn.Parameter(torch.empty(blocks * hidden_size, layer_input, **factory)))
                self.register_parameter(f"weight_hh{sfx}", nn.Parameter(torch.empty(blocks * hidden_size, hidden_size, **factory)))
                self.register_parameter(f"bias_ih{sfx}", nn.Parameter(torch.empty(blocks * hidden_size, **factory)))
                self.register_parameter(f"bias_hh{sfx}", nn.Parameter(torch.empty(blocks * hidden_size, **factory)))
                if self.refine_gates and (layer_input != hidden_size or self.refine_init == "vanilla"):
                    if self.refine_rank:
                        self.register_parameter(
                            f"weight_refine_down{sfx}", nn.Parameter(torch.empty(self.refine_rank, layer_input, **factory))
                        )
                    width = self.refine_rank or layer_input
                    self.register_parameter(f"weight_refine{sfx}", nn.Parameter(torch.empty(hidden_size, width, **factory)))
        self.reset_parameters()

    def _check_rank(self, rank, hidden_size) -> int:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"refine_rank must be a non-negative integer (0: a full projection), got {rank!r}")
        if rank and self.refine == "none":
            raise ValueError(f"refine_rank={rank} needs refine='add' or 'mul', not 'none'")
        if rank and self.input_map:
            raise ValueError("refine_rank cannot be combined with input_map: the identity path has no projection to factor")
        if isinstance(hidden_size, int) and rank >= hidden_size > 0:
            raise ValueError(
                f"refine_rank={rank} saves nothing: it must be below hidden_size={hidden_size} (0 for a full projection)"
            )
        return rank

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    def reset_parameters(self) -> None:
        """torch's initialisation: every weight and bias uniform in ±1/sqrt(hidden_size).

        Then, where asked: the input maps and the two factors of a low-rank projection as
        ``nn.Linear`` (uniform in ±1/sqrt(fan-in)), zero projections for a start-as-vanilla
        refinement (of a low-rank one, ``W_up`` only), and the memory gate's bias. The
        zeroing and the biases come after the random draws, so a start-as-vanilla layer draws
        the same weights after the same seed as a default one with the same parameters.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, weight in self.named_parameters():
            if "_map_" in name or (self.refine_rank and name.startswith("weight_refine")):
                fan_in = getattr(self, name.replace("bias_map", "weight_map")).shape[1]
                nn.init.uniform_(weight, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
            else:
                nn.init.uniform_(weight, -bound, bound)
        with torch.no_grad():
            if self.refine_init == "vanilla":
                for name, weight in self.named_parameters():
                    if name.startswith("weight_refine") and not name.startswith("weight_refine_down"):
                        weight.zero_()
            if self.forget_bias:
                gate, sign = MEMORY_GATE[self.mode]
                start = GATE_ORDER[self.mode].index(gate) * self.hidden_size
                rows = slice(start, start + self.hidden_size)
                for layer in range(self.num_layers):
                    for direction in range(self.num_directions):
                        sfx = self._suffix(layer, direction)
                        getattr(self, f"bias_ih{sfx}")[rows] = sign * self.forget_bias
                        getattr(self, f"bias_hh{sfx}")[rows] = 0.0

    def layer_params(self, layer: int, direction: int) -> dict[str, Tensor | None]:
        sfx = self._suffix(layer, direction)
        return {
            "w_ih": getattr(self, f"weight_ih{sfx}"),
            "w_hh": getattr(self, f"weight_hh{sfx}"),
            "b_ih": getattr(self, f"bias_ih{sfx}"),
            "b_hh": getattr(self, f"bias_hh{sfx}"),
            "w_refine": getattr(self, f"weight_refine{sfx}", None),
            "w_refine_down": getattr(self, f"weight_refine_down{sfx}", None),
        }

    def extra_repr(self) -> str:
        text = f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            text += ", bidirectional=True"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.refine != "none":
            text += f", refine={self.refine!r}, refine_gates={self.refine_gates!r}"
            if self.refine_init != "default":
                text += f", refine_init={self.refine_init!r}"
            if self.refine_bound != "none":
                text += f", refine_bound={self.refine_bound!r}"
        if self.forget_bias:
            text += f", forget_bias={self.forget_bias}"
        if self.input_map:
            text += ", input_map=True"
        if self.refine_rank:
            text += f", refine_rank={self.refine_rank}"
        return text

    @property
    def short_connection(self) -> tuple[str, float]:
        """(bound, offset) applied to ``x̃``: offset 1 makes a start-as-vanilla "mul" factor ``1 + x̃``."""
        offset = 1.0 if (self.refine == "mul" and self.refine_init == "vanilla") else 0.0
        return self.refine_bound, offset

    @classmethod
    def from_torch(
        cls,
        module: nn.Module,
        refine: str = "none",
        refine_gates: Iterable[str] | None = None,
        refine_init: str = "default",
        refine_bound: str = "none",
    ) -> "GatedRNN":
        """A GatedRNN with the configuration and a copy of the weights of a torch LSTM / GRU.

        With ``refine="none"`` (the default) the result computes the same function as
        ``module``; with a refinement, the extra projection weights (if any) start fresh,
        and with ``refine_init="vanilla"`` (zero projections) the function is again the same.
        """
        if isinstance(module, nn.LSTM):
            mode = "lstm"
        elif isinstance(module, nn.GRU):
            mode = "gru"
        else:
            raise TypeError(f"from_torch expects a torch.nn.LSTM or torch.nn.GRU, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError("torch.nn.LSTM with proj_size > 0 (projected LSTM) is not supported")
        if not module.bias:
            raise ValueError("torch recurrent modules with bias=False are not supported; GatedRNN always has biases")
        ref = next(module.parameters())
        ours = cls(
            mode,
            module.input_size,
            module.hidden_size,
            num_layers=module.num_layers,
            bidirectional=module.bidirectional,
            refine=refine,
            batch_first=module.batch_first,
            dropout=module.dropout,
            refine_gates=refine_gates,
            device=ref.device,
            dtype=ref.dtype,
            refine_init=refine_init,
            refine_bound=refine_bound,
        )
        with torch.no_grad():
            for name, value in module.named_parameters():
                getattr(ours, name).copy_(value)
        ours.train(module.training)
        return ours

    # ------------------------------------------------------------------ forward

    def _inference_weights(self, layer: int, params: list[dict]) -> dict[str, Tensor]:
        """The fused path's stacked weights, cached while no gradient is needed.

        Restacking costs as much as the whole recurrence at batch 1; the cache is keyed on
        the parameters' identity, storage and version counter, so any update (optimizer
        step, load_state_dict, .to()) rebuilds it.
        """
        key = tuple((id(p), p.data_ptr(), p._version) for d in params for p in d.values() if p is not None)
        cache = self.__dict__.setdefault("_weight_cache", {})
        hit = cache.get(layer)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            prepared = fused.prepare_weights(self.mode, params, self.refine_gates)
        cache[layer] = (key, prepared)
        return prepared

    def _initial_state(self, state, batch: int, like: Tensor):
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if state is None:
            zeros = like.new_zeros(shape)
            return (zeros, zeros) if self.mode == "lstm" else zeros
        parts = state if self.mode == "lstm" else (state,)
        if self.mode == "lstm" and not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("an LSTM state is a tuple (h, c)")
        if self.mode != "lstm" and not isinstance(state, Tensor):
            raise ValueError(f"a {self.mode.upper()} state is one tensor h, not {type(state).__name__}")
        for part in parts:
            if tuple(part.shape) != shape:
                raise ValueError(f"expected a state of shape {shape}, got {tuple(part.shape)}")
        return tuple(parts) if self.mode == "lstm" else state

    def forward(self, x: Tensor, state=None):
        if isinstance(x, PackedSequence):
            raise TypeError("GatedRNN does not take PackedSequence input; pad the batch instead")
        if self.torch_kernel_applies(x):
            return self.torch_kernel(x, state)
        if torch.is_autocast_enabled(x.device.type):
            # The recurrences write into preallocated buffers, which autocast cannot retype;
            # run them in the parameters' dtype and let the caller's autocast resume after.
            dtype = self.weight_ih_l0.dtype
            with torch.autocast(x.device.type, enabled=False):
                if state is not None:
                    state = tuple(s.to(dtype) for s in state) if self.mode == "lstm" else state.to(dtype)
                return self._forward(x.to(dtype), state)
        return self._forward(x, state)

    def short_connection_weights(self) -> list[nn.Parameter]:
        """The refined gates' projections ``weight_refine_l{k}[_reverse]``, with the down maps of
        low-rank ones (none without a projection)."""
        return [weight for name, weight in self.named_parameters() if name.startswith("weight_refine")]

    @property
    def has_torch_kernel(self) -> bool:
        """Whether torch's own RNN kernel computes this layer: vanilla LSTM and GRU layers without input
        maps (refined gates and the MGU need ours)."""
        return self.refine == "none" and self.mode in ("lstm", "gru") and not self.input_map

    def torch_kernel_enabled(self) -> bool:
        """Whether this layer runs as torch's own kernel on a GPU: it has one (`has_torch_kernel`), and
        neither ``use_torch_kernel = False`` nor TEXTREC_TORCH_RNN=0 turns that off."""
        return self.has_torch_kernel and self.use_torch_kernel and os.environ.get("TEXTREC_TORCH_RNN", "1") != "0"

    def torch_kernel_applies(self, x: Tensor) -> bool:
        """Vanilla LSTM and GRU layers on a GPU run as torch's own kernel (cuDNN): the same parameters
        and equations (see `from_torch`), several times fewer kernel launches. Gate recording needs
        ours."""
        return self.torch_kernel_enabled() and x.is_cuda and x.dim() == 3 and self.fast and not self.record_gates

    def torch_kernel(self, x: Tensor, state=None):
        """The layers through torch's fused RNN kernel (on any device; `forward` uses it on GPUs)."""
        # Under autocast the kernel runs in the autocast dtype, cast here rather than left to autocast's op lists.
        dtype = autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else self.weight_ih_l0.dtype
        if self.batch_first:
            x = x.transpose(0, 1)
        x = x.to(dtype)
        state = self._initial_state(state, x.shape[1], x)
        weights = [
            p.to(dtype)
            for layer in range(self.num_layers)
            for direction in range(self.num_directions)
            for key, p in self.layer_params(layer, direction).items()
            if key not in ("w_refine", "w_refine_down")
        ]
        with torch.autocast(x.device.type, enabled=False), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            args = (weights, True, self.num_layers, self.dropout, self.training, self.bidirectional, False)
            if self.mode == "lstm":
                out, h, c = torch._VF.lstm(x, tuple(s.to(dtype) for s in state), *args)
                new_state = (h, c)
            else:
                out, new_state = torch._VF.gru(x, state.to(dtype), *args)
        return (out.transpose(0, 1) if self.batch_first else out), new_state

    def _forward(self, x: Tensor, state):
        if x.dim() not in (2, 3):
            raise ValueError(f"expected input of shape (T, B, {self.input_size}) or (T, {self.input_size}), got {tuple(x.shape)}")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            if state is not None:
                state = tuple(s.unsqueeze(1) for s in state) if self.mode == "lstm" else state.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected input width {self.input_size}, got {x.shape[-1]}")
        if x.shape[0] == 0:
            raise ValueError("cannot run a recurrent layer over an empty sequence")
        state = self._initial_state(state, x.shape[1], x)
        h0, c0 = state if self.mode == "lstm" else (state, None)

        record = self.record_gates
        if record:
            self.last_gates, self.last_states = {}, {}
        xform = self.short_connection
        use_fast = self.fast and fused.supports(x)
        D = self.num_directions
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        h_out, c_out = [], []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            w_map = getattr(self, f"weight_map_l{layer}", None)
            if w_map is not None:
                x = nn.functional.linear(x, w_map, getattr(self, f"bias_map_l{layer}"))
            params = [self.layer_params(layer, d) for d in range(D)]
            rows = slice(layer * D, (layer + 1) * D)
            c0_rows = None if c0 is None else c0[rows]
            if use_fast:
                prepared = None if needs_grad else self._inference_weights(layer, params)
                x, h_n, c_n, gates, states = fused.run_layer(
                    self.mode, x, params, h0[rows], c0_rows, self.refine, self.refine_gates, record, prepared, xform
                )
            else:
                x, h_n, c_n, gates, states = run_layer_eager(
                    self.mode, x, params, h0[rows], c0_rows, self.refine, self.refine_gates, record, xform
                )
            h_out.append(h_n)
            if c_n is not None:
                c_out.append(c_n)
            if record:
                for name, values in gates.items():
                    self.last_gates[f"l{layer}.{name}"] = values
                self.last_states[f"l{layer}"] = states
        h_n = torch.cat(h_out, 0)
        new_state = (h_n, torch.cat(c_out, 0)) if self.mode == "lstm" else h_n
        if unbatched:
            x = x.squeeze(1)
            new_state = tuple(s.squeeze(1) for s in new_state) if self.mode == "lstm" else new_state.squeeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, new_state


@contextlib.contextmanager
def tensor_core_matmuls(device: torch.device | str):
    """On CUDA, float32 matrix products on TF32 tensor cores for the duration, as cuDNN already runs
    torch's own RNNs and convolutions (``torch.backends.cudnn.allow_tf32``, on by default).

    `GatedRNN`'s own recurrence keeps float32 under autocast (it writes into preallocated buffers),
    so without this its products run on the plain float32 units, several times slower than the
    tensor cores that cuDNN's kernel uses in its place. Follows ``cudnn.allow_tf32``: whoever turned
    that off for full float32 precision gets full precision here too. Restores the flag on exit.
    """
    before = torch.backends.cuda.matmul.allow_tf32
    if torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast casts to on `device_type` (bfloat16 or float16 as the caller chose), in any torch this supports."""
    getter = getattr(torch, "get_autocast_dtype", None)  # torch >= 2.4; the older getters before
    if getter is not None:
        return getter(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def refinement_input(
    x: Tensor, w_refine: Tensor | None, hidden: int, refined, xform=("none", 0.0), w_down: Tensor | None = None
) -> Tensor | None:
    """``x̃``: the input itself when widths match, else its bias-free projection (``W_refine W_down x``
    for a low-rank one); None if unused.

    ``xform = (bound, offset)``: "tanh" bounds it, and offset 1 (start-as-vanilla "mul") makes
    the factor ``1 + x̃``.
    """
    if not refined:
        return None
    if w_refine is None:
        assert x.shape[-1] == hidden
        xt = x
    else:
        xt = nn.functional.linear(x if w_down is None else nn.functional.linear(x, w_down), w_refine)
    return fused.short_connection(xt, xform)


def run_layer_eager(mode, x, params, h0, c0, refine, refined, record, xform=("none", 0.0)):
    """One layer, every direction, one time step at a time: the reference for the fused path.

    Returns (output (T, B, D*H), h_n (D, B, H), c_n (D, B, H) or None, gates, states) where
    gates maps a gate name to (sigmoid, value), each (D, T, B, H), and states is the (D, T, B, H)
    cell c (LSTM) or h (GRU, MGU); gates is empty and states None unless ``record``.
    """
    step = STEPS[mode]
    T = x.shape[0]
    outputs, h_last, c_last, recorded = [], [], [], []
    for d, p in enumerate(params):
        hidden = p["w_hh"].shape[1]
        xg = nn.functional.linear(x, p["w_ih"], p["b_ih"])
        xt = refinement_input(x, p["w_refine"], hidden, refined, xform, p["w_refine_down"])
        state = (h0[d], c0[d]) if mode == "lstm" else h0[d]
        hs = [None] * T
        cs = [None] * T
        per_gate: dict[str, list] = {g: [None] * T for g in SIGMOID_GATES[mode]}
        for t in range(T) if d == 0 else range(T - 1, -1, -1):
            state, gates = step(xg[t], None if xt is None else xt[t], state, p["w_hh"], p["b_hh"], refine, refined)
            hs[t] = state[0] if mode == "lstm" else state
            cs[t] = state[1] if mode == "lstm" else state
            if record:
                for name, values in gates.items():
                    per_gate[name][t] = values
        outputs.append(torch.stack(hs))
        h_last.append(state[0] if mode == "lstm" else state)
        if mode == "lstm":
            c_last.append(state[1])
        if record:
            recorded.append((per_gate, torch.stack(cs).detach()))
    gates, states = {}, None
    if record:
        for name in SIGMOID_GATES[mode]:
            sig = torch.stack([torch.stack([v[0] for v in r[name]]) for r, _ in recorded]).detach()
            val = torch.stack([torch.stack([v[1] for v in r[name]]) for r, _ in recorded]).detach()
            gates[name] = (sig, val)
        states = torch.stack([c for _, c in recorded])
    c_n = torch.stack(c_last) if mode == "lstm" else None
    return torch.cat(outputs, -1), torch.stack(h_last), c_n, gates, states
