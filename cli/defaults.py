"""Default locations: the data root and the shipped model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .common import fail

# The project's `data/` and `checkpoints/` folders, relative to the working directory.
DEFAULT_DATA_ROOT = Path("data")
# Found relative to the source tree (the Makefile's editable install); a copy installed elsewhere
# names its model through this variable instead (or --checkpoint).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default.safetensors"
CHECKPOINT_ENV = "TEXTREC_CHECKPOINT"


def resolve_checkpoint(checkpoint: Optional[Path]) -> Path:
    """The given checkpoint, else the shipped model, else a clear error."""
    if checkpoint is not None:
        return checkpoint
    if SHIPPED_CHECKPOINT.is_file():
        return SHIPPED_CHECKPOINT
    fail(f"no --checkpoint given, {CHECKPOINT_ENV} not set, and no shipped model at {SHIPPED_CHECKPOINT}")
