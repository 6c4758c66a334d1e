"""The `textrec samples` folder: a few rendered word images and their gt.txt, written without touching
anything of the user's.

The folder may be new, empty, or one that `textrec samples` wrote before (only `gt.txt` and
`word_NNN.png` files): those are replaced, stale ones included. Anything else in it is refused. The
images are rendered into a hidden sibling folder first, so a failure leaves the old folder as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from ..charset import Charset
from ..errors import OutputError
from ..files import check_output_parent, os_reason

_OWN_NAME = re.compile(r"gt\.txt|word_\d+\.png")


def foreign_entries(folder: Path) -> list[str]:
    """Names in `folder` that `textrec samples` did not write (a file of ours must be a plain file)."""
    foreign = []
    for name in sorted(os.listdir(folder)):
        if not _OWN_NAME.fullmatch(name) or not stat.S_ISREG(os.lstat(folder / name).st_mode):
            foreign.append(name)
    return foreign


def write_samples(folder: str | Path, count: int, seed: int, charset: Charset) -> list[tuple[Path, str]]:
    """Render `count` word images as PNG files plus `gt.txt` into `folder`; returns (path, label) pairs."""
    from ..synth.writer import write_sample_images

    folder = Path(folder)
    exists = os.path.lexists(folder)
    if exists:
        if folder.is_symlink() or not folder.is_dir():
            raise OutputError(f"{folder}: exists and is not a folder")
        try:
            foreign = foreign_entries(folder)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot list the folder ({os_reason(exc)})") from None
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(
                f"{folder}: holds files that `textrec samples` did not write ({shown}); give a new or empty folder"
            )
    check_output_parent(folder if not exists else folder / "gt.txt")
    missing = [p for p in [folder.parent, *folder.parent.parents] if not os.path.lexists(p)]
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        written = write_sample_images(staging, count, seed, charset)
        if exists:
            for name in os.listdir(folder):  # ours only (checked above): the previous samples, stale ones too
                (folder / name).unlink()
            for name in os.listdir(staging):
                os.replace(staging / name, folder / name)
            staging.rmdir()
        else:
            os.rename(staging, folder)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{folder}: cannot write the samples ({os_reason(exc)})") from None
        raise
    return [(folder / path.name, label) for path, label in written]
