"""Export a checkpoint: a compact safetensors copy (optionally float16) or an ONNX graph."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import warnings
from pathlib import Path

import torch

from .checkpoint import Checkpoint, atomic_write, load_checkpoint, save_checkpoint
from .errors import CheckpointError

FORMATS = ("safetensors", "onnx")


def export_safetensors(
    source: str | Path, output: str | Path, half: bool = False, dynamic_width: bool | None = None
) -> Checkpoint:
    """Copy a checkpoint, with floating-point weights stored as float16 when `half` (half the size).

    Loading casts the weights back to the model's float32, so a half copy needs no flag to use.
    `dynamic_width` (None: as the source) sets how inference pads its batches (see Preprocess).
    """
    checkpoint = load_checkpoint(source)
    if dynamic_width is not None:
        checkpoint.preprocess = dataclasses.replace(checkpoint.preprocess, dynamic_width=dynamic_width)
    if half:
        checkpoint.state_dict = {
            k: v.half() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()
        }
        checkpoint.info = {**checkpoint.info, "stored_as": "float16"}
    save_checkpoint(output, checkpoint)
    return checkpoint


def export_onnx(source: str | Path, output: str | Path, opset: int = 17) -> Checkpoint:
    """An ONNX graph `images (N, 1, H, W) -> logits (T, N, classes)` with a dynamic batch size.

    The preprocessing (size, mean, std) and charset are not part of the graph: they are in the
    checkpoint's metadata, and the caller applies them.
    """
    if importlib.util.find_spec("onnx") is None:
        raise CheckpointError("ONNX export needs the onnx package: pip install 'textrec[export]'")
    checkpoint = load_checkpoint(source)
    model = checkpoint.build_model().eval()
    model.sequence.fast = False  # the step-by-step path is plain tensor ops that the exporter can trace
    preprocess = checkpoint.preprocess
    example = torch.zeros(1, checkpoint.model_config.in_channels, preprocess.height, preprocess.width)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {1: "batch"}},
            )
    except Exception as exc:  # the exporter raises many types; report them as one line
        raise CheckpointError(f"{source}: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    atomic_write(output, lambda handle: handle.write(buffer.getvalue()))
    return checkpoint
