"""CTC decoding of model outputs into text and confidence."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        frames = scores[:, b].tolist()
        beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (ends blank, ends char)
        for frame in frames:
            blank = frame[0]
            extend = [k for k in range(1, len(frame)) if frame[k] > prune]
            following: dict[tuple[int, ...], list[float]] = {}

            def slot(prefix):
                return following.setdefault(prefix, [-math.inf, -math.inf])

            for prefix, (p_blank, p_char) in beams.items():
                total = _logaddexp(p_blank, p_char)
                same = slot(prefix)
                same[0] = _logaddexp(same[0], total + blank)
                if prefix:  # the last character held for one more frame
                    same[1] = _logaddexp(same[1], p_char + frame[prefix[-1]])
                for k in extend:
                    longer = slot(prefix + (k,))
                    # a repeated character needs a blank between the two
                    source = p_blank if prefix and prefix[-1] == k else total
                    longer[1] = _logaddexp(longer[1], source + frame[k])
            ranked = sorted(following.items(), key=lambda item: _logaddexp(*item[1]), reverse=True)
            beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam_width]}
        prefix, (p_blank, p_char) = max(beams.items(), key=lambda item: _logaddexp(*item[1]))
        results.append(Decoded(charset.decode(list(prefix)), math.exp(_logaddexp(p_blank, p_char))))
    return results
