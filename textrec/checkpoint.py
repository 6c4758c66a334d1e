"""Saving and loading models and training state, safely and atomically.

A model checkpoint is one safetensors file: the weights, plus metadata holding the model
config, the charset and the preprocessing, so it loads without architecture flags and
without unpickling anything. Training state for resuming (optimizer, scheduler, RNG) is
a torch file loaded with `weights_only=True`, which refuses pickled code.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .charset import Charset
from .data.images import Preprocess
from .errors import CheckpointError
from .model import CRNN, CRNNConfig

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

    def build_model(self) -> CRNN:
        model = CRNN(self.model_config)
        load_weights(model, self.state_dict, self.source)
        return model


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Write a file through `write(handle)` into a temporary sibling, fsync it, then rename it into place.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": json.dumps(checkpoint.model_config.to_dict()),
        "charset": checkpoint.charset.chars,
        "preprocess": json.dumps(checkpoint.preprocess.to_dict()),
        "info": json.dumps(checkpoint.info),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint.state_dict.items()}
    data = save_safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))


def _read_metadata(raw: bytes, where: str) -> dict[str, str]:
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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a textrec model checkpoint; CheckpointError says what is wrong with it."""
    path = Path(path)
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{where}: checkpoint file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{where}: is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read ({exc.strerror or exc})") from None
    metadata = _read_metadata(raw, where)
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
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: checkpoint metadata is incomplete or invalid ({exc})") from None
    if model_config.num_classes != charset.num_classes:
        raise CheckpointError(
            f"{where}: model has {model_config.num_classes} output classes but the charset needs {charset.num_classes}"
        )
    try:
        state_dict = load_safetensors_bytes(raw)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{where}: corrupt weights ({exc})") from None
    return Checkpoint(model_config, charset, preprocess, state_dict, info, source=where)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Load weights strictly; a mismatch becomes one line saying which tensors differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    reshaped = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", reshaped)):
            if keys:
                shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{where}: weights do not fit this architecture ({'; '.join(parts)})")
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
    atomic_write(path, lambda handle: torch.save(state, handle))


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; errors are reported below
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{where}: training state not found") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{where}: refused, not plain training state ({_unpickling_detail(exc)}); "
            "textrec never loads a file in a way that could run code from it"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{where}: corrupt training state ({str(exc).splitlines()[0] if str(exc) else exc})") from None
