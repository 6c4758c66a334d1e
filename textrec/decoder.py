"""The decoding choice of a Recognizer: greedy or beam search, optionally confined to a lexicon.

    rec = Recognizer.load()
    rec.decoder = make_decoder(rec.charset, "beam", beam_width=10, lexicon="words.txt")

`Recognizer.recognize_tensor` hands the model's log-probabilities to `Decoder.decode`; the default decoder is
greedy, so a Recognizer reads as it always did unless given another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .charset import Charset
from .decode import Decoded, beam_decode, greedy_decode
from .errors import ConfigError, DataError
from .lexicon import CASE_INSENSITIVE, Lexicon, fold_to_36, lexicon_decode, read_lexicon_file
from .metrics import normalize_for_eval

METHODS = ("greedy", "beam")
# `lexicon=PER_SAMPLE`: each sample brings its own lexicon (an LMDB's `lexicon-%09d` keys).
PER_SAMPLE = "per-sample"


@dataclass(frozen=True)
class Decoder:
    """How CTC log-probabilities become text.

    `method`: "greedy" (best path) or "beam" (CTC prefix beam search of `beam_width` prefixes). With a
    `lexicon` (or `per_sample` lexicons handed to `decode`), the reading is the lexicon word of the highest
    CTC probability (`textrec.lexicon`). `case_insensitive` lexicons are matched as the 36-character protocol
    compares (case and punctuation ignored, on case-folded outputs); otherwise words are scored as written,
    in the model's own charset. Build one with `make_decoder`, which makes the lexicon match this choice.
    """

    method: str = "greedy"
    beam_width: int = 10
    lexicon: Lexicon | None = None
    per_sample: bool = False
    case_insensitive: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"decoder {self.method!r}: unknown; choose one of {', '.join(METHODS)}")
        if isinstance(self.beam_width, bool) or not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ConfigError(f"beam width {self.beam_width!r}: must be a whole number of at least 1")
        if self.per_sample and self.lexicon is not None:
            raise ConfigError("a decoder takes either one lexicon or per-sample lexicons, not both")

    def describe(self) -> str:
        """One phrase for tables and results files: `greedy`, `beam 10 + lexicon (50,000 words)`."""
        text = "greedy" if self.method == "greedy" else f"beam {self.beam_width}"
        if self.per_sample:
            text += " + per-sample lexicons"
        elif self.lexicon is not None:
            text += f" + lexicon ({len(self.lexicon.words):,} words)"
        return text

    def make_lexicon(self, words: Iterable[str], charset: Charset) -> Lexicon:
        """A lexicon of `words` matched as this decoder matches (words it cannot write are in `.unknown`)."""
        if self.case_insensitive:
            return Lexicon.case_insensitive(words)
        return Lexicon.from_words(words, charset)

    def decode(
        self, log_probs: torch.Tensor, charset: Charset, lexicons: Sequence[Lexicon | None] | None = None
    ) -> list[Decoded]:
        """Readings of (T, B, C) log-probabilities. `lexicons`: one per image (None: that image is read
        unconstrained), for a per-sample decoder; without them every image uses `self.lexicon`, if any.

        An empty lexicon, or a read whose output is not finite, keeps the unconstrained reading.
        """
        if self.method == "beam":
            readings = beam_decode(log_probs, charset, self.beam_width)
        else:
            readings = greedy_decode(log_probs, charset)
        if lexicons is None:
            lexicons = [self.lexicon] * len(readings)
        if len(lexicons) != len(readings):
            raise ValueError(f"{len(lexicons)} lexicons for {len(readings)} images")
        if all(lexicon is None or not lexicon.words for lexicon in lexicons):
            return readings
        space, scores = charset, log_probs.detach().float().cpu()
        if self.case_insensitive:
            space = CASE_INSENSITIVE
            if charset.chars != space.chars:
                scores = fold_to_36(scores, charset)
        out = []
        for index, (reading, lexicon) in enumerate(zip(readings, lexicons)):
            if lexicon is None or not lexicon.words or not math.isfinite(reading.confidence):
                out.append(reading)
                continue
            text = normalize_for_eval(reading.text, "36") if self.case_insensitive else charset.normalize(reading.text)
            out.append(lexicon_decode(scores[:, index], lexicon, space, text))
        return out


def make_decoder(
    charset: Charset,
    method: str = "greedy",
    beam_width: int = 10,
    lexicon: str | Path | Iterable[str] | None = None,
    case_insensitive: bool = True,
) -> Decoder:
    """A decoder for a model of `charset`. `lexicon`: None, `PER_SAMPLE`, a word-list file (one word a line) or
    the words themselves. Words the charset cannot write are left out and listed in `decoder.lexicon.unknown`;
    DataError names a lexicon file that cannot be read, or one of which no word can be written."""
    decoder = Decoder(method, beam_width, case_insensitive=case_insensitive)
    if lexicon is None:
        return decoder
    if isinstance(lexicon, str) and lexicon == PER_SAMPLE:
        return replace(decoder, per_sample=True)
    source = None
    if isinstance(lexicon, (str, Path)):
        source, lexicon = lexicon, read_lexicon_file(lexicon)
    built = decoder.make_lexicon(lexicon, charset)
    if not built.words:
        where = source or "lexicon"
        if not built.unknown:
            raise DataError(f"{where}: the lexicon holds no words")
        raise DataError(
            f"{where}: none of its {len(built.unknown):,} words can be written with the model's charset "
            f"(e.g. {built.unknown[0]!r})"
        )
    built.prepare(CASE_INSENSITIVE if case_insensitive else charset)
    return replace(decoder, lexicon=built)
