"""CTC decoding of model outputs into text and confidence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .charset import Charset


@dataclass(frozen=True)
class Decoded:
    text: str
    # Probability of the greedy (best) path: the product of the per-frame maximum probabilities.
    confidence: float


def greedy_decode(log_probs: torch.Tensor, charset: Charset) -> list[Decoded]:
    """Best-path decoding of (T, B, C) log-probabilities: argmax per frame, merge repeats, drop blanks."""
    best_log_prob, best = log_probs.detach().max(dim=2)  # (T, B)
    confidences = best_log_prob.sum(dim=0).exp().tolist()
    best = best.t().tolist()  # (B, T)
    results = []
    for path, confidence in zip(best, confidences):
        kept = [k for i, k in enumerate(path) if k != 0 and (i == 0 or k != path[i - 1])]
        results.append(Decoded(charset.decode(kept), float(confidence)))
    return results
