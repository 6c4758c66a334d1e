"""Default locations: the data root and the shipped model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .common import fail

# The project's `data/` folder, relative to the working directory.
DEFAULT_DATA_ROOT = Path("data")
# Kept here too so that `--help` can name the variable without importing the library (and torch).
CHECKPOINT_ENV = "TEXTREC_CHECKPOINT"


def resolve_checkpoint(checkpoint: Optional[Path]) -> Path:
    """The given checkpoint (--checkpoint or $TEXTREC_CHECKPOINT, which Typer reads), else the shipped model."""
    if checkpoint is not None:
        return checkpoint
    from textrec.checkpoint import shipped_checkpoint
    from textrec.errors import CheckpointError

    try:
        return shipped_checkpoint()
    except CheckpointError as exc:
        fail(str(exc))
