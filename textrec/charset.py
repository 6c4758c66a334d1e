"""Character sets and CTC label coding.

Index 0 is the CTC blank; character `k` of the charset has index `k + 1`.
A charset with no upper-case letters is case-insensitive: labels are lower-cased
before encoding, as in the 36-character benchmark protocol.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

from .errors import LabelError

PRESETS: dict[str, str] = {
    # The standard benchmark alphabet (case-insensitive, alphanumeric).
    "36": string.digits + string.ascii_lowercase,
    # Case-sensitive alphanumeric.
    "62": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    # Printable ASCII without whitespace, as deep-text-recognition-benchmark's --sensitive 94.
    "94": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
    # Printable ASCII with the space: text as printed, multi-word crops included.
    "95": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation + " ",
}

DEFAULT_CHARSET = "36"


@dataclass(frozen=True)
class Charset:
    chars: str

    def __post_init__(self) -> None:
        if not self.chars:
            raise LabelError("charset is empty")
        if len(set(self.chars)) != len(self.chars):
            dupes = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise LabelError(f"charset has repeated characters: {''.join(dupes)!r}")

    @classmethod
    def from_spec(cls, spec: str) -> "Charset":
        """A preset name ("36", "62", "94", "95"), `file:PATH` (one line of characters), or the literal characters."""
        if spec in PRESETS:
            return cls(PRESETS[spec])
        if spec.startswith("file:"):
            path = spec[5:]
            from .files import Unreadable, read_regular

            try:
                text = read_regular(path, 1 << 20).decode("utf-8")
                text = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")  # as universal newlines read it
            except Unreadable as exc:
                raise LabelError(f"charset file {path}: {exc.reason}") from None
            except UnicodeDecodeError as exc:
                raise LabelError(f"charset file {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            return cls(text)
        return cls(spec)

    @functools.cached_property  # asked per character by the text sampler
    def case_sensitive(self) -> bool:
        return any(c.isupper() for c in self.chars)

    @property
    def num_classes(self) -> int:
        """Output classes of the CTC head: the characters plus the blank."""
        return len(self.chars) + 1

    def _index(self) -> dict[str, int]:
        # Built lazily and cached on the (frozen) instance.
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c: i + 1 for i, c in enumerate(self.chars)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def normalize(self, label: str) -> str:
        """The label as the model is trained to emit it (lower-cased for a case-insensitive charset)."""
        return label if self.case_sensitive else label.lower()

    def unknown_chars(self, label: str) -> str:
        """Characters of the (normalised) label that the charset cannot encode, in order, without repeats."""
        index = self._index()
        seen: dict[str, None] = {}
        for c in self.normalize(label):
            if c not in index:
                seen[c] = None
        return "".join(seen)

    def encode(self, label: str) -> list[int]:
        """Class indices of a label; raises LabelError for an empty label or unknown characters."""
        text = self.normalize(label)
        if not text:
            raise LabelError("empty label")
        unknown = self.unknown_chars(text)
        if unknown:
            raise LabelError(f"label {label!r} has characters outside the charset: {unknown!r}")
        index = self._index()
        return [index[c] for c in text]

    def decode(self, indices) -> str:
        """Text for class indices (blank and out-of-range indices are skipped)."""
        n = len(self.chars)
        return "".join(self.chars[i - 1] for i in indices if 0 < i <= n)


def ctc_min_length(label: str) -> int:
    """Output frames CTC needs for a label: one per character plus a blank between repeated characters."""
    repeats = sum(1 for a, b in zip(label, label[1:]) if a == b)
    return len(label) + repeats
