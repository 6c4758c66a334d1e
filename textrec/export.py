"""Export a checkpoint: a compact safetensors copy (optionally float16) or an ONNX graph.

The ONNX graph is `images (N, 1, H, W) -> logits (T, N, classes)` with a dynamic batch size N and a dynamic
width W (T = W // 4 + 1 frames). Everything needed to use it without textrec rides in the model's
`metadata_props` (string keys, JSON string values; see `onnx_metadata`): the charset and the blank index, the
preprocessing (height, width policy, normalisation, colour), the calibration and textrec's version.
docs/deploy.md runs it with onnxruntime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import logging
import math
import warnings
from pathlib import Path
from typing import List

import torch
from torch import Tensor, nn

from . import __version__
from .checkpoint import Checkpoint, atomic_write, load_checkpoint, save_checkpoint
from .data.images import MIN_INPUT_WIDTH
from .errors import CheckpointError, ConfigError, LabelError
from .files import Unreadable, read_regular
from .model import CRNN
from .nn.gates import SIGMOID_GATES
from .nn.rnn import GatedRNN, refinement_input
from .transfer import refactor_projections

FORMATS = ("safetensors", "onnx")
SUFFIXES = {".safetensors": "safetensors", ".onnx": "onnx"}
ONNX_FORMAT = "textrec-crnn-onnx"
ONNX_FORMAT_VERSION = "1"
ONNX_OPSET = 17
_MAX_ONNX_BYTES = 4 << 30


def output_format(output: str | Path, requested: str | None = None) -> str:
    """The format to write `output` in: its suffix's (.safetensors, .onnx), or `requested` for any other suffix.

    ConfigError for an unknown format, a format that contradicts the suffix, or neither a known suffix nor a format.
    """
    if requested is not None and requested not in FORMATS:
        raise ConfigError(f"unknown format {requested!r}; choose one of {', '.join(FORMATS)}")
    suffix = Path(output).suffix.lower()
    implied = SUFFIXES.get(suffix)
    if implied and requested and requested != implied:
        raise ConfigError(
            f"{output}: --format {requested} contradicts the {suffix} suffix; name the file "
            f"{Path(output).with_suffix('.' + requested).name} or leave --format out"
        )
    if implied or requested:
        return implied or requested
    raise ConfigError(
        f"{output}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
        f"name the file .safetensors or .onnx, or give --format ({', '.join(FORMATS)})"
    )


def export_safetensors(
    source: str | Path, output: str | Path, half: bool = False, dynamic_width: bool | None = None,
    min_width: int | None = None, refine_rank: int | None = None,
) -> Checkpoint:
    """Copy a checkpoint, with floating-point weights stored as float16 when `half` (half the size).

    Loading casts the weights back to the model's float32, so a half copy needs no flag to use.
    `dynamic_width` and `min_width` (None: as the source) set how inference pads its batches (see Preprocess).
    `refine_rank` (None: as the source) factors the refined gates' projections to that rank (0: full) as
    `textrec train --init-from` does (`textrec.transfer.refactor_projections`); the copy's info records the rank
    and the share of the projections' energy kept ("refactored").
    """
    checkpoint = load_checkpoint(source)
    if refine_rank is not None and refine_rank != checkpoint.model_config.refine_rank:
        _refactor(checkpoint, refine_rank)
    if dynamic_width is not None:
        checkpoint.preprocess = dataclasses.replace(checkpoint.preprocess, dynamic_width=dynamic_width)
    if min_width is not None:
        if not 0 <= min_width <= checkpoint.preprocess.width:
            raise ConfigError(f"--min-width {min_width}: give 0 to the model width ({checkpoint.preprocess.width})")
        checkpoint.preprocess = dataclasses.replace(checkpoint.preprocess, min_width=min_width)
    if half:
        checkpoint.state_dict = {
            k: v.half() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()
        }
        checkpoint.info = {**checkpoint.info, "stored_as": "float16"}
    save_checkpoint(output, checkpoint)
    return checkpoint


def _refactor(checkpoint: Checkpoint, rank: int) -> None:
    """`checkpoint` (in place) with its refined projections at `rank` (see `export_safetensors`)."""
    if checkpoint.model_config.refine == "none":
        raise ConfigError(f"--refine-rank: {checkpoint.source} has vanilla gates, so no projections to factor")
    config = dataclasses.replace(checkpoint.model_config, refine_rank=rank)
    try:
        model = CRNN(config)
    except ValueError as exc:
        raise ConfigError(f"--refine-rank {rank}: {exc}") from None
    state, energy = refactor_projections(checkpoint.state_dict, model.sequence)
    model.load_state_dict(state)  # the factors fit the new architecture exactly
    checkpoint.model_config, checkpoint.state_dict = config, state
    checkpoint.info = {**checkpoint.info, "refactored": {"rank": rank, "energy_kept": round(energy, 4)}}


# --- the recurrence as a graph loop -----------------------------------------------------------------------
# Vanilla LSTM / GRU layers export as ONNX's own LSTM / GRU operators. Everything else (refined gates, the MGU,
# input maps) runs through these scripted loops, which the exporter turns into an ONNX Loop over the frames, so
# the width stays dynamic. Everything that depends on the input alone (W_ih x + b_ih, the short connection x̃ and
# how each sigmoid gate combines with it) is computed for all frames before the loop; each step is then
# `gates = σ(pre) * scale[t] + shift[t]` (scale = x̃ or 1 and shift = 0 for "mul", scale = 1 and shift = x̃ or 0
# for "add"), the same equations as textrec/nn/cells.py.
#
# The `add` LSTM loop (the shipped model's) is leaner, because onnxruntime pays per node and step: the gate rows
# are put in the order i, f, o, g with both biases folded into the input side, each step reads one row of `xs`
# (the pre-activations, then what is added to i, f, o) and slices it at constant bounds (`hidden` is a Python int
# at export). 15-20 % faster at batch 1 than the general loop, whose `chunk` adds shape arithmetic (docs/deploy.md).


def _lstm_loop_add(xs: Tensor, w_hh_t: Tensor, hidden: int) -> Tensor:
    """xs (T, B, 7H): pre-activations of i, f, o, g, then what is added to the sigmoids of i, f, o (0 where a
    gate is not refined, or for vanilla gates behind an input map)."""
    h = torch.zeros(xs.size(1), hidden, dtype=xs.dtype)
    c = torch.zeros(xs.size(1), hidden, dtype=xs.dtype)
    outputs: List[Tensor] = []
    for t in range(xs.size(0)):
        x = xs[t]
        z = x[:, : 4 * hidden] + torch.mm(h, w_hh_t)
        s = torch.sigmoid(z[:, : 3 * hidden]) + x[:, 4 * hidden :]
        c = s[:, hidden : 2 * hidden] * c + s[:, :hidden] * torch.tanh(z[:, 3 * hidden :])
        h = s[:, 2 * hidden : 3 * hidden] * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs)


def _lstm_loop(xg: Tensor, scale: Tensor, shift: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """The general LSTM loop (torch's gate order), for `mul`: scale and shift (T, B, 3H) as above."""
    hidden = w_hh.size(1)
    h = torch.zeros(xg.size(1), hidden, dtype=xg.dtype)
    c = torch.zeros(xg.size(1), hidden, dtype=xg.dtype)
    outputs: List[Tensor] = []
    for t in range(xg.size(0)):
        i, f, g, o = (xg[t] + torch.nn.functional.linear(h, w_hh, b_hh)).chunk(4, 1)
        gates = torch.sigmoid(torch.cat([i, f, o], 1)) * scale[t] + shift[t]
        i, f, o = gates.chunk(3, 1)
        c = f * c + i * torch.tanh(g)
        h = o * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs)


def _gru_loop(xg: Tensor, scale: Tensor, shift: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    hidden = w_hh.size(1)
    h = torch.zeros(xg.size(1), hidden, dtype=xg.dtype)
    outputs: List[Tensor] = []
    for t in range(xg.size(0)):
        x_r, x_z, x_n = xg[t].chunk(3, 1)
        h_r, h_z, h_n = torch.nn.functional.linear(h, w_hh, b_hh).chunk(3, 1)
        gates = torch.sigmoid(torch.cat([x_r + h_r, x_z + h_z], 1)) * scale[t] + shift[t]
        r, z = gates.chunk(2, 1)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs)


def _mgu_loop(xg: Tensor, scale: Tensor, shift: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    hidden = w_hh.size(1)
    w_f, w_n = w_hh[:hidden], w_hh[hidden:]
    b_f, b_n = b_hh[:hidden], b_hh[hidden:]
    h = torch.zeros(xg.size(1), hidden, dtype=xg.dtype)
    outputs: List[Tensor] = []
    for t in range(xg.size(0)):
        x_f, x_n = xg[t].chunk(2, 1)
        f = torch.sigmoid(x_f + torch.nn.functional.linear(h, w_f, b_f)) * scale[t] + shift[t]
        n = torch.tanh(x_n + torch.nn.functional.linear(f * h, w_n, b_n))
        h = (1 - f) * h + f * n
        outputs.append(h)
    return torch.stack(outputs)


_LOOPS = {"lstm": _lstm_loop, "lstm-add": _lstm_loop_add, "gru": _gru_loop, "mgu": _mgu_loop}
_SCRIPTED: dict = {}


def _scripted_loop(mode: str):
    """The loop of `mode` (a key of _LOOPS) compiled by TorchScript (once): what makes the exporter write an ONNX Loop."""
    if mode not in _SCRIPTED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice: the legacy exporter needs it
            _SCRIPTED[mode] = torch.jit.script(_LOOPS[mode])
    return _SCRIPTED[mode]


def _gate_factors(rnn: GatedRNN, xt: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (T, B, sigmoid gates x H): what each sigmoid gate is multiplied by, then added."""
    names = SIGMOID_GATES[rnn.mode]
    ones = torch.ones_like(like)
    zeros = torch.zeros_like(like)
    scale, shift = [], []
    for name in names:
        refined = xt is not None and name in rnn.refine_gates
        scale.append(xt if refined and rnn.refine == "mul" else ones)
        shift.append(xt if refined and rnn.refine == "add" else zeros)
    return torch.cat(scale, -1), torch.cat(shift, -1)


def _lstm_add_layer(rnn: GatedRNN, x: Tensor, xt: Tensor | None, p: dict) -> Tensor:
    """One direction of an LSTM layer through the lean `add` loop (vanilla gates behind an input map too: xt None),
    with the gate rows reordered to i, f, o, g and both biases folded."""
    hidden = rnn.hidden_size
    order = torch.cat([torch.arange(0, 2 * hidden), torch.arange(3 * hidden, 4 * hidden), torch.arange(2 * hidden, 3 * hidden)])
    xs = nn.functional.linear(x, p["w_ih"][order], (p["b_ih"] + p["b_hh"])[order])
    _, shift = _gate_factors(rnn, xt, xs[..., :hidden])
    return _scripted_loop("lstm-add")(torch.cat([xs, shift], -1), p["w_hh"][order].t(), hidden)


def _loop_layers(rnn: GatedRNN, x: Tensor) -> Tensor:
    """The layers of `rnn` over (T, B, I), starting from zero states; output (T, B, D*H)."""
    for layer in range(rnn.num_layers):
        w_map = getattr(rnn, f"weight_map_l{layer}", None)
        if w_map is not None:
            x = nn.functional.linear(x, w_map, getattr(rnn, f"bias_map_l{layer}"))
        outputs = []
        for direction in range(rnn.num_directions):
            p = rnn.layer_params(layer, direction)
            xd = x.flip(0) if direction else x
            xt = refinement_input(
                xd, p["w_refine"], rnn.hidden_size, rnn.refine_gates, rnn.short_connection, p["w_refine_down"]
            )
            if rnn.mode == "lstm" and not (xt is not None and rnn.refine == "mul"):
                out = _lstm_add_layer(rnn, xd, xt, p)
            else:  # GRU, MGU and `mul` LSTMs: the general loops
                xg = nn.functional.linear(xd, p["w_ih"], p["b_ih"])
                scale, shift = _gate_factors(rnn, xt, xg[..., : rnn.hidden_size])
                out = _scripted_loop(rnn.mode)(xg, scale, shift, p["w_hh"], p["b_hh"])
            outputs.append(out.flip(0) if direction else out)
        x = torch.cat(outputs, -1)
    return x


class _OnnxGraph(nn.Module):
    """What the exported graph computes: CRNN.forward, with its recurrence in an exportable form."""

    def __init__(self, model: CRNN):
        super().__init__()
        self.model = model
        rnn = model.sequence
        self.native = rnn.refine == "none" and rnn.mode in ("lstm", "gru") and not rnn.input_map and not rnn.batch_first

    def forward(self, images: Tensor) -> Tensor:
        features = self.model.backbone(images)  # (N, C, 1, T)
        sequence = features.squeeze(2).permute(2, 0, 1)  # (T, N, C)
        if self.native:
            output = self.model.sequence.torch_kernel(sequence)[0]
        else:
            output = _loop_layers(self.model.sequence, sequence)
        return self.model.head(output)


# --- metadata ---------------------------------------------------------------------------------------------


def onnx_preprocess(checkpoint: Checkpoint) -> dict:
    """The preprocessing as the graph's metadata states it: textrec's Preprocess fields plus what textrec's code
    does implicitly (colour, resampling, padding, the narrowest input), so that it can be reproduced elsewhere."""
    p = checkpoint.preprocess
    return {
        **p.to_dict(),
        "color": "grayscale: Pillow's convert('L') (L = 0.299 R + 0.587 G + 0.114 B), one input channel",
        "resample": "bicubic (Pillow Image.BICUBIC)",
        "resize": (
            "keep_ratio: resize to height x min(width, ceil(height * w / h)) and pad on the right to the input width "
            "by repeating the last column; otherwise stretch to height x width"
        ),
        "input_width": (
            f"dynamic_width: the batch's widest image, each image counting max({max(MIN_INPUT_WIDTH, p.min_width)}, "
            "min(width, ceil(height * w / h))), at most width; otherwise width"
            if p.keep_ratio
            else "width"
        ),
        "min_width": max(MIN_INPUT_WIDTH, p.min_width),
        "normalize": "pixel / 255, then (value - mean) / std",
        "layout": "N x 1 x height x input_width, float32",
    }


def onnx_metadata(checkpoint: Checkpoint, int8: bool = False) -> dict[str, str]:
    """The exported graph's metadata_props: every value is a JSON text."""
    calibration = checkpoint.calibration.to_dict() if checkpoint.calibration is not None else None
    values = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "textrec_version": __version__,
        # class k (k >= 1) is charset[k - 1]; class 0 is the CTC blank
        "charset": checkpoint.charset.chars,
        "blank_index": 0,
        "case_sensitive": checkpoint.charset.case_sensitive,
        "preprocess": onnx_preprocess(checkpoint),
        "output": {
            "name": "logits",
            "shape": "frames x N x classes, frames = input_width // 4 + 1",
            "decode": "greedy CTC: argmax per frame, merge repeats, drop the blank (0); "
            "path probability = product over frames of the max softmax probability",
        },
        # confidence = sigmoid(slope * ln(path probability) + intercept); null: report the path probability
        "calibration": calibration,
        "weights": f"int8 ({', '.join(INT8_OPS)} weights, onnxruntime dynamic quantisation)" if int8 else "float32",
        "model": checkpoint.model_config.to_dict(),
        "source": Path(checkpoint.source).name,  # the file's name only: no folder of the exporting machine
        "info": checkpoint.info,
    }
    return {key: json.dumps(value, ensure_ascii=False) for key, value in values.items()}


def read_onnx_graph(path: str | Path) -> tuple[bytes, dict]:
    """The bytes of a graph written by `export_onnx` and its metadata, JSON-decoded; CheckpointError names the file
    when it cannot be read, is not ONNX, or has no textrec metadata."""
    onnx = _require("onnx", "read ONNX metadata")
    try:
        data = read_regular(path, _MAX_ONNX_BYTES)
    except Unreadable as exc:
        raise CheckpointError(f"{path}: {'ONNX file not found' if exc.kind == 'missing' else exc.reason}") from None
    try:
        graph = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's decode errors have several types
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    props = {p.key: p.value for p in graph.metadata_props}
    if props.get("format") != json.dumps(ONNX_FORMAT):
        raise CheckpointError(f"{path}: an ONNX graph without textrec metadata")
    try:
        return data, {key: json.loads(value) for key, value in props.items() if not key.startswith("onnx.")}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid textrec metadata ({exc})") from None


def read_onnx_metadata(path: str | Path) -> dict:
    """The metadata of a graph written by `export_onnx`, JSON-decoded (see `read_onnx_graph`)."""
    return read_onnx_graph(path)[1]


def _require(module: str, purpose: str):
    """The module, imported; CheckpointError saying what to install when it is missing."""
    if importlib.util.find_spec(module) is None:
        extra = "export" if module == "onnx" else "onnxruntime"
        raise CheckpointError(f"to {purpose}, install the {module} package: pip install 'textrec[{extra}]'")
    return importlib.import_module(module)


# --- export -----------------------------------------------------------------------------------------------


def onnx_bytes(checkpoint: Checkpoint, opset: int = ONNX_OPSET, int8: bool = False) -> bytes:
    """The serialised ONNX model of a checkpoint, metadata included; `int8`: quantised (see `quantize_int8`)."""
    onnx = _require("onnx", "export to ONNX")
    graph = _OnnxGraph(checkpoint.build_model()).eval()
    preprocess = checkpoint.preprocess
    example = torch.zeros(1, checkpoint.model_config.in_channels, preprocess.height, preprocess.width)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer notes
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                dynamo=False,  # the TorchScript exporter: it turns the scripted recurrences into ONNX Loops
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch", 3: "width"}, "logits": {0: "frames", 1: "batch"}},
            )
    except Exception as exc:  # the exporter raises many types; report them as one line
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{checkpoint.source}: ONNX export failed ({type(exc).__name__}: {detail})") from None
    model = onnx.load_from_string(quantize_int8(buffer.getvalue()) if int8 else buffer.getvalue())
    model.doc_string = (
        "textrec CRNN text recogniser: images (N, 1, H, W) -> logits (frames, N, classes). "
        "metadata_props (JSON values) hold the charset, blank index, preprocessing and calibration."
    )
    model.producer_name, model.producer_version = "textrec", __version__
    del model.metadata_props[:]
    for key, value in onnx_metadata(checkpoint, int8).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def check_onnx(
    checkpoint: Checkpoint, data: bytes, widths: tuple[int, ...] = (), batch: int = 2, tolerance: float | None = 1e-3
) -> float | None:
    """Run the graph with onnxruntime on random inputs of a few widths and compare with the torch model.

    Returns the largest difference of log-probabilities, or None when onnxruntime is not installed; CheckpointError
    when the shapes differ, an output is not finite, or (unless `tolerance` is None) a difference is above both
    `tolerance` times the largest logit (at least 1) and ten times the model's own float32 rounding error on the same
    input (its distance from the model run in float64). The second bound is for ill-conditioned models (refined gates
    far outside (0, 1) grow the state, and with it any rounding), where two correct float32 computations that add in
    another order differ by more than the first: a wrong graph differs by far more than either.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    session = OnnxModel(data, threads=1)
    preprocess = checkpoint.preprocess
    widths = widths or tuple(sorted({MIN_INPUT_WIDTH, preprocess.width, max(MIN_INPUT_WIDTH, preprocess.width * 2 // 3 + 1)}))
    model = checkpoint.build_model().eval()
    exact = checkpoint.build_model().double().eval() if tolerance is not None else None
    generator = torch.Generator().manual_seed(0)
    worst, scale, rounding = 0.0, 1.0, 0.0
    for width in widths:
        images = torch.rand(batch, 1, preprocess.height, width, generator=generator).sub_(0.5).div_(0.5)
        with torch.inference_mode():
            logits = model(images)
            if exact is not None:
                reference = exact(images.double()).log_softmax(2)
                rounding = max(rounding, (logits.double().log_softmax(2) - reference).abs().max().item())
        got = session(images).log_softmax(2)
        if got.shape != logits.shape:
            raise CheckpointError(f"{checkpoint.source}: the ONNX graph gives shape {tuple(got.shape)} for width {width}, "
                                  f"the model {tuple(logits.shape)}")
        worst = max(worst, (got - logits.log_softmax(2)).abs().max().item())
        scale = max(scale, logits.abs().max().item())  # float rounding grows with the logits (a diverging recurrence)
    if not math.isfinite(worst) or (tolerance is not None and worst > max(tolerance * scale, 10 * rounding)):
        raise CheckpointError(f"{checkpoint.source}: the ONNX graph's outputs differ from the model's by {worst:.3g}")
    return worst


def export_onnx(
    source: str | Path, output: str | Path, opset: int = ONNX_OPSET, check: bool = True, int8: bool = False
) -> Checkpoint:
    """Write the checkpoint `source` as an ONNX graph (see the module's docstring) to `output`.

    With `check` (and onnxruntime installed) the graph is run once and compared with the model before it is
    written (an int8 graph only for its shapes and finite outputs). `int8`: see `quantize_int8`.
    """
    checkpoint = load_checkpoint(source)
    data = onnx_bytes(checkpoint, opset, int8)
    if check:
        check_onnx(checkpoint, data, tolerance=None if int8 else 1e-3)
    atomic_write(output, lambda handle: handle.write(data))
    return checkpoint


# --- running an exported graph ----------------------------------------------------------------------------

INT8_OPS = ("LSTM", "GRU", "MatMul", "Gemm")  # dynamic int8 on these; int8 convolutions (ConvInteger) run slower on CPU


def quantize_int8(data: bytes) -> bytes:
    """The graph with its recurrent and matrix-product weights in int8 (onnxruntime's dynamic quantisation).

    Smaller and faster on CPU; it changes the outputs a little (benchmarks/model_speed.py reports the accuracy).
    """
    _require("onnxruntime", "quantise an ONNX graph")
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(data)
        with _quiet_root_logger(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS))
        return target.read_bytes()


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser advises through `logging.warning`, which would also install a root handler;
    the library prints nothing, so the root logger gets a silent handler and a disabled level meanwhile."""
    root, silent, previous = logging.getLogger(), logging.NullHandler(), logging.root.manager.disable
    root.addHandler(silent)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(silent)


class OnnxModel(nn.Module):
    """An exported graph run by onnxruntime on the CPU, where `Recognizer` uses the torch CRNN:
    images (N, 1, H, W) -> logits (frames, N, classes), as a torch tensor. `threads`: onnxruntime's
    intra-op threads (default: torch's number of threads)."""

    def __init__(self, data: bytes, threads: int | None = None):
        super().__init__()
        onnxruntime = _require("onnxruntime", "run an ONNX graph")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def forward(self, images: Tensor) -> Tensor:
        inputs = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"images": inputs})[0])


def onnx_recognizer(source: str | Path, int8: bool = False, threads: int | None = None):
    """A `Recognizer` (no orientation search) whose model runs with onnxruntime instead of torch.

    `source`: a checkpoint (exported in memory, about a second) or a graph written by `export_onnx` (its charset,
    preprocessing and calibration come from its metadata). `int8`: quantise it first (see `quantize_int8`).
    """
    from .charset import Charset
    from .confidence import Calibration
    from .data.images import Preprocess
    from .predict import Recognizer

    source = Path(source)
    if source.suffix.lower() == ".onnx":
        data, meta = read_onnx_graph(source)
        try:
            charset = Charset(meta["charset"])
            stated = meta["preprocess"]
            preprocess = Preprocess.from_dict({f.name: stated[f.name] for f in dataclasses.fields(Preprocess) if f.name != "min_width"})
            # The graph states the effective minimum, at least MIN_INPUT_WIDTH, which every input gets anyway
            if stated.get("min_width", 0) > MIN_INPUT_WIDTH:
                preprocess = dataclasses.replace(preprocess, min_width=stated["min_width"])
            calibration = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        except (KeyError, TypeError, ValueError, LabelError) as exc:
            raise CheckpointError(f"{source}: incomplete textrec metadata ({exc})") from None
        if int8:
            data = quantize_int8(data)
    else:
        checkpoint = load_checkpoint(source)
        charset, preprocess, calibration = checkpoint.charset, checkpoint.preprocess, checkpoint.calibration
        data = onnx_bytes(checkpoint, int8=int8)
    return Recognizer(OnnxModel(data, threads), charset, preprocess, device="cpu", calibration=calibration)
