"""The decoder options that eval and predict share: --decoder, --beam-width, --lexicon."""

from __future__ import annotations

from pathlib import Path

from textrec.decoder import Decoder, make_decoder

from .common import warn


def check_decoder_options(method: str, beam_width: int) -> None:
    """ConfigError (one line) for an unknown decoder or a bad beam width, before any work."""
    Decoder(method, beam_width)


def use_decoder(recognizer, method: str, beam_width: int, lexicon: str | Path | None, case_insensitive: bool = True) -> None:
    """Give the recognizer its decoder; warn once about lexicon words its charset cannot write."""
    recognizer.decoder = make_decoder(recognizer.charset, method, beam_width, lexicon, case_insensitive=case_insensitive)
    built = recognizer.decoder.lexicon
    if built is not None and built.unknown:
        warn(f"{lexicon}: {len(built.unknown):,} words the model's charset cannot write were left out (e.g. {built.unknown[0]!r})")
