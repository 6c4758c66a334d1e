"""Saving and loading models and training state, safely and atomically.

A model checkpoint is one safetensors file: the weights, plus metadata holding the model
config, the charset and the preprocessing, so it loads without architecture flags and
without unpickling anything. Training state for resuming (optimizer, scheduler, RNG) is
a torch file loaded with `weights_only=True`, which refuses pickled code.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError

try:  # safetensors imports numpy.ctypeslib lazily at its first save, and numpy's C code clears any exception
    import numpy.ctypeslib  # noqa: F401  raised during that import: a Ctrl-C landing there was lost. So: up front.
except ImportError:
    pass
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .charset import Charset
from .confidence import Calibration
from .data.images import Preprocess
from .errors import CheckpointError, LabelError, OutputError
from .files import Unreadable, os_reason, read_regular
from .model import CRNN, CRNNConfig
from .model.backbones import BACKBONES
from .orientation import OrientationProbe, feature_width

FORMAT = "textrec-crnn"
FORMAT_VERSION = "1"
# Largest metadata header we accept (a real one is a few kB); guards against absurd files.
_MAX_HEADER_BYTES = 16 << 20


@dataclass
class Checkpoint:
    """A recogniser's full description: architecture, alphabet, input handling, weights, provenance."""

    model_config: CRNNConfig
    charset: Charset
    preprocess: Preprocess
    state_dict: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    source: str = "checkpoint"  # how messages name it: the file it was loaded from
    # The confidence mapping fitted by `textrec calibrate` (metadata key "calibration"); None: raw path probability.
    calibration: Calibration | None = None
    # The orientation probe fitted by `textrec calibrate --orientation-data` (metadata key "orientation").
    orientation: OrientationProbe | None = None

    def build_model(self) -> CRNN:
        model = CRNN(self.model_config)
        load_weights(model, self.state_dict, self.source)
        return model


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Write a file through `write(handle)` into a temporary sibling, fsync it, then rename it into place.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    temp = None
    try:  # one block from the temporary file's creation on, so that an interrupt anywhere removes it
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        if temp is not None:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):  # no space, quota, file-size limit, I/O error: one line naming the file
            raise OutputError(f"{path}: cannot write ({os_reason(exc)}); the previous file, if any, is unchanged") from None
        raise
    # Make the rename itself durable.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutputError(f"{path}: written, but its folder could not be synced ({os_reason(exc)})") from None


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": json.dumps(checkpoint.model_config.to_dict()),
        "charset": checkpoint.charset.chars,
        "preprocess": json.dumps(checkpoint.preprocess.to_dict()),
        "info": json.dumps(checkpoint.info),
    }
    if checkpoint.calibration is not None:  # optional: older readers ignore the key
        metadata["calibration"] = json.dumps(checkpoint.calibration.to_dict())
    if checkpoint.orientation is not None:
        metadata["orientation"] = json.dumps(checkpoint.orientation.to_dict())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint.state_dict.items()}
    data = save_safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))


def read_safetensors_metadata(raw: bytes, where: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's bytes; CheckpointError when it is not one (or a pickle)."""
    if len(raw) < 8:
        raise CheckpointError(f"{where}: file is too short to be a checkpoint")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len > _MAX_HEADER_BYTES or header_len > len(raw) - 8:
        raise CheckpointError(f"{where}: not a safetensors checkpoint{_pickle_hint(raw)}")
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{where}: not a safetensors checkpoint{_pickle_hint(raw)}") from None
    return header.get("__metadata__") or {}


def _pickle_hint(raw: bytes) -> str:
    # torch.save writes a zip archive (PK) or a bare pickle (protocol byte 0x80).
    if raw[:2] == b"PK" or raw[:1] == b"\x80":
        return " (it looks like a pickle/torch.save file; textrec never unpickles model files, since that can run code)"
    return ""


# The shipped model: `checkpoints/default.safetensors` of the source tree (the Makefile's editable install).
# A copy installed elsewhere names its model through this variable instead.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default.safetensors"
CHECKPOINT_ENV = "TEXTREC_CHECKPOINT"


def shipped_checkpoint() -> Path:
    """The model to use when none is named: $TEXTREC_CHECKPOINT, else the shipped one; CheckpointError if neither."""
    named = os.environ.get(CHECKPOINT_ENV)
    if named:
        return Path(named)
    if SHIPPED_CHECKPOINT.is_file():
        return SHIPPED_CHECKPOINT
    raise CheckpointError(
        f"no checkpoint named, {CHECKPOINT_ENV} not set, and no shipped model at {SHIPPED_CHECKPOINT}"
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a textrec model checkpoint; CheckpointError says what is wrong with it."""
    path = Path(path)
    where = str(path)
    try:
        raw = read_regular(path, _MAX_CHECKPOINT_BYTES)  # never blocks on a FIFO, never reads a device
    except Unreadable as exc:
        reason = {"missing": "checkpoint file not found", "folder": "is a folder, not a checkpoint file"}
        raise CheckpointError(f"{where}: {reason.get(exc.kind, exc.reason)}") from None
    metadata = read_safetensors_metadata(raw, where)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{where}: safetensors file without textrec metadata (format={metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format version {metadata.get('format_version')!r} is not supported "
            f"(this textrec reads version {FORMAT_VERSION})"
        )
    try:
        model_config = CRNNConfig.from_dict(json.loads(metadata["model"]))
        charset = Charset(metadata["charset"])
        preprocess = Preprocess.from_dict(json.loads(metadata["preprocess"]))
        info = json.loads(metadata.get("info", "{}"))
        calibration = Calibration.from_dict(json.loads(metadata["calibration"])) if "calibration" in metadata else None
        orientation = OrientationProbe.from_dict(json.loads(metadata["orientation"])) if "orientation" in metadata else None
    except (KeyError, TypeError, ValueError, LabelError) as exc:
        raise CheckpointError(f"{where}: checkpoint metadata is incomplete or invalid ({exc})") from None
    _check_metadata(where, model_config, preprocess, info)
    if model_config.num_classes != charset.num_classes:
        raise CheckpointError(
            f"{where}: model has {model_config.num_classes} output classes but the charset needs {charset.num_classes}"
        )
    try:
        state_dict = load_safetensors_bytes(raw)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{where}: corrupt weights ({exc})") from None
    _check_weights(where, model_config, state_dict)
    if orientation is not None and len(orientation.weight) != feature_width(model_config):
        raise CheckpointError(
            f"{where}: the orientation probe has {len(orientation.weight)} weights but this model gives "
            f"{feature_width(model_config)} features"
        )
    return Checkpoint(model_config, charset, preprocess, state_dict, info, source=where, calibration=calibration,
                      orientation=orientation)


# Bounds on what a checkpoint's metadata may ask for: every size in a file is untrusted, and is checked
# before anything is allocated from it (a crafted hidden size would otherwise allocate terabytes).
_MAX_CHECKPOINT_BYTES = 4 << 30
_PREPROCESS_BOUNDS = {"height": (32, 1024), "width": (8, 8192), "min_width": (0, 8192)}  # 32: the VGG's four halvings and 2x2 conv
_MODEL_BOUNDS = {"hidden_size": (1, 8192), "num_layers": (1, 16), "num_classes": (2, 1 << 20), "in_channels": (1, 1), "refine_rank": (0, 8192)}
_MAX_CHANNELS = 8192


def _bad_int(value, low: int, high: int) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high


def _bad_number(value) -> bool:
    return not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)


def _check_metadata(where: str, model_config: CRNNConfig, preprocess: Preprocess, info) -> None:
    """Sizes and values of the metadata within bounds; CheckpointError names the field."""
    problems = []
    for name, (low, high) in _PREPROCESS_BOUNDS.items():
        value = getattr(preprocess, name)
        if _bad_int(value, low, high):
            problems.append(f"preprocess.{name} = {value!r} (expected {low} to {high})")
    for name in ("mean", "std"):
        value = getattr(preprocess, name)
        if _bad_number(value) or (name == "std" and value <= 0):
            problems.append(f"preprocess.{name} = {value!r} (expected a finite number{', above 0' if name == 'std' else ''})")
    for name in ("keep_ratio", "dynamic_width"):
        if not isinstance(getattr(preprocess, name), bool):
            problems.append(f"preprocess.{name} = {getattr(preprocess, name)!r} (expected true or false)")
    for name, (low, high) in _MODEL_BOUNDS.items():
        value = getattr(model_config, name)
        if _bad_int(value, low, high):
            problems.append(f"model.{name} = {value!r} (expected {low} to {high})")
    backbone = BACKBONES.get(model_config.backbone) if isinstance(model_config.backbone, str) else None
    if backbone is None:
        problems.append(f"model.backbone = {model_config.backbone!r} (expected one of {', '.join(BACKBONES)})")
    count = len(backbone[1]) if backbone else None
    channels = model_config.channels
    if not isinstance(channels, tuple) or (count and len(channels) != count) or any(_bad_int(c, 1, _MAX_CHANNELS) for c in channels):
        problems.append(f"model.channels = {list(channels) if isinstance(channels, tuple) else channels!r} "
                        f"(expected {count or 'its'} widths of 1 to {_MAX_CHANNELS})")
    if _bad_number(model_config.dropout) or not 0 <= model_config.dropout < 1:
        problems.append(f"model.dropout = {model_config.dropout!r} (expected 0 <= dropout < 1)")
    if _bad_number(model_config.forget_bias):
        problems.append(f"model.forget_bias = {model_config.forget_bias!r} (expected a finite number)")
    if not isinstance(info, dict):
        problems.append(f"info is {type(info).__name__} (expected an object)")
    if problems:
        raise CheckpointError(f"{where}: checkpoint metadata out of bounds: {'; '.join(problems)}")


def _check_weights(where: str, model_config: CRNNConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """The weights are the ones the metadata describes (checked on the meta device: nothing is allocated)
    and hold only finite numbers."""
    try:
        with torch.device("meta"):
            expected = CRNN(model_config).state_dict()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: checkpoint metadata is incomplete or invalid (model: {exc})") from None
    problem = _weights_mismatch(expected, state_dict)
    if problem:
        raise CheckpointError(f"{where}: weights do not fit this architecture ({problem})")
    broken = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise CheckpointError(f"{where}: weights hold non-finite values (NaN or infinity) in {shown}; the model is unusable")


def _weights_mismatch(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> str | None:
    """Which tensors are missing, unexpected or of another shape; None when they fit."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    reshaped = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", reshaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts) or None


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Load weights strictly; a mismatch becomes one line saying which tensors differ."""
    problem = _weights_mismatch(model.state_dict(), state_dict)
    if problem:
        raise CheckpointError(f"{where}: weights do not fit this architecture ({problem})")
    model.load_state_dict(state_dict)


def describe_config_difference(saved: dict, wanted: dict) -> str:
    """'key: saved -> wanted' for every differing key, for messages about mismatched runs."""
    keys = sorted(set(saved) | set(wanted))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that `atomic_write` leaves when its process is killed mid-write."""
    removed = []
    for temp in Path(folder).glob(".*.tmp"):
        try:
            temp.unlink()
            removed.append(temp)
        except FileNotFoundError:
            pass
    return removed


def save_state(path: str | Path, state: dict) -> None:
    """Save training state (tensors, numbers, strings, containers) atomically with torch.save."""
    buffer = io.BytesIO()  # serialised first, so that a failed write is the OSError itself, not torch's wrapping of it
    torch.save(state, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def _unpickling_detail(exc: Exception) -> str:
    """The reason inside torch's weights_only error, without its advice to load the file unsafely."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in str(exc).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(boilerplate):
            return line.rstrip(".")
    return "unsupported content"


def load_state(path: str | Path) -> dict:
    """Load training state with `weights_only=True`: a file that would run code is refused."""
    where = str(path)
    try:
        raw = read_regular(path, 3 * _MAX_CHECKPOINT_BYTES)  # weights plus optimizer moments
    except Unreadable as exc:
        raise CheckpointError(f"{where}: {'training state not found' if exc.kind == 'missing' else exc.reason}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; errors are reported below
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{where}: refused, not plain training state ({_unpickling_detail(exc)}); "
            "textrec never loads a file in a way that could run code from it"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{where}: corrupt training state ({str(exc).splitlines()[0] if str(exc) else exc})") from None
