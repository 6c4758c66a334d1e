"""Errors a user can cause. Each carries one line that names the file or record at fault.

The CLI prints `str(error)` for these and exits non-zero without a traceback; anything
else escaping the library is a bug and keeps its traceback.
"""


class TextrecError(Exception):
    """Base class for problems in the user's input, reported in one line."""


class DataError(TextrecError):
    """A dataset, record or image cannot be used."""


class RecordError(DataError):
    """One record of a dataset (an LMDB entry or a gt-file line) is bad; the rest may be fine."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class LabelError(DataError):
    """A label cannot be encoded: empty, too long, or with characters outside the charset."""


class CheckpointError(TextrecError):
    """A checkpoint is missing, unsafe, corrupt or does not match what it is loaded into."""


class BenchmarkNotFoundError(DataError):
    """A benchmark name or folder does not resolve to an LMDB."""

    def __init__(self, name: str, searched: list[str]):
        looked = ", ".join(searched)
        super().__init__(f"benchmark {name} not found (looked in: {looked})")
        self.name = name
        self.searched = searched


class TrainingError(TextrecError):
    """Training cannot go on (for example, repeated non-finite losses)."""


class ConfigError(TextrecError):
    """An option value is invalid (not a number, out of range) or cannot be met here (no CUDA device)."""


class OutputError(TextrecError):
    """An output cannot be written (no space, permission, read-only file system, not a folder, ...),
    or would overwrite something the command did not make."""
