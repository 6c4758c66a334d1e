"""CTC decoding of model outputs into text and confidence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

from .charset import Charset


@dataclass(frozen=True)
class Decoded:
    text: str
    # Probability of the greedy (best) path: the product of the per-frame maximum probabilities.
    confidence: float
    # Its natural logarithm where the decoder kept it (long paths underflow the product to 0); None: ln(confidence).
    log_confidence: float | None = None

    @property
    def log_score(self) -> float:
        """ln of the confidence, from `log_confidence` when the decoder kept it (what textrec.confidence maps)."""
        if self.log_confidence is not None:
            return self.log_confidence
        return math.log(self.confidence) if self.confidence > 0 else (-math.inf if self.confidence == 0 else math.nan)


def greedy_decode(log_probs: torch.Tensor, charset: Charset) -> list[Decoded]:
    """Best-path decoding of (T, B, C) log-probabilities: argmax per frame, merge repeats, drop blanks."""
    best_log_prob, best = log_probs.detach().max(dim=2)  # (T, B)
    log_confidences = best_log_prob.sum(dim=0).tolist()
    best = best.t().tolist()  # (B, T)
    results = []
    for path, log_confidence in zip(best, log_confidences):
        kept = [k for i, k in enumerate(path) if k != 0 and (i == 0 or k != path[i - 1])]
        results.append(Decoded(charset.decode(kept), math.exp(log_confidence), float(log_confidence)))
    return results


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    top = max(a, b)
    return top + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(
    frames: list[list[float]],
    beam_width: int,
    prune: float,
    root: Hashable,
    last: Callable[[Hashable], int],
    step: Callable[[Hashable, int], Hashable | None],
) -> dict[Hashable, tuple[float, float]]:
    """CTC prefix beam search over per-frame log-probabilities (`frames[t][k]`, class 0 the blank).

    A state stands for a prefix: `root` the empty one, `last(state)` the class of its last character (0 for
    the root), `step(state, k)` the state after appending class k, or None where that is not allowed (a
    lexicon's prefix tree). Returns the `beam_width` most probable states of the last frame with the
    log-probabilities of their alignments ending in a blank and in a character; characters below `prune` in
    a frame are not appended.
    """
    beams: dict[Hashable, tuple[float, float]] = {root: (0.0, -math.inf)}
    for frame in frames:
        blank = frame[0]
        extend = [k for k in range(1, len(frame)) if frame[k] > prune]
        following: dict[Hashable, list[float]] = {}
        for state, (p_blank, p_char) in beams.items():
            total = _logaddexp(p_blank, p_char)
            same = following.setdefault(state, [-math.inf, -math.inf])
            same[0] = _logaddexp(same[0], total + blank)
            end = last(state)
            if end:  # the last character held for one more frame
                same[1] = _logaddexp(same[1], p_char + frame[end])
            for k in extend:
                longer = step(state, k)
                if longer is None:
                    continue
                slot = following.setdefault(longer, [-math.inf, -math.inf])
                # a repeated character needs a blank between the two
                source = p_blank if end == k else total
                slot[1] = _logaddexp(slot[1], source + frame[k])
        ranked = sorted(following.items(), key=lambda item: _logaddexp(*item[1]), reverse=True)
        beams = {state: (p[0], p[1]) for state, p in ranked[:beam_width]}
    return beams


def beam_decode(log_probs: torch.Tensor, charset: Charset, beam_width: int = 10, prune: float = -12.0) -> list[Decoded]:
    """CTC prefix beam search of (T, B, C) log-probabilities (Hannun et al. 2014, without a language model).

    Keeps the `beam_width` most probable prefixes, each with the probability of all its alignments
    ending in a blank and in a character; characters below `prune` (log-probability) in a frame are
    not extended. The confidence is the probability of the chosen text summed over its alignments
    (greedy decoding reports the probability of its one best path instead).
    """
    scores = log_probs.detach().float().cpu()
    results = []
    for b in range(scores.shape[1]):
        beams = prefix_beam_search(
            scores[:, b].tolist(), beam_width, prune, (), lambda prefix: prefix[-1] if prefix else 0, lambda prefix, k: prefix + (k,)
        )
        prefix, (p_blank, p_char) = max(beams.items(), key=lambda item: _logaddexp(*item[1]))
        log_confidence = _logaddexp(p_blank, p_char)
        results.append(Decoded(charset.decode(list(prefix)), math.exp(log_confidence), log_confidence))
    return results
