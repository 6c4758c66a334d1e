"""Lexicon-constrained decoding, as the CRNN paper does it (Shi et al. 2015, section 2.2.3).

Every candidate word is scored by its CTC probability p(word | image), summed over all the
alignments of the word to the frames (the forward algorithm, here `torch.nn.functional.ctc_loss`),
and the most probable one is the reading. A small lexicon (a benchmark's 50 or 1,000 words per
image) is scored whole. A large one (a dictionary) is first cut down to the words within an edit
distance `max_distance` of the unconstrained reading, found with a BK-tree as in the paper, so
that decoding stays fast whatever the lexicon's size; if no word is that close, the distance grows
until one is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import editdistance
import torch
import torch.nn.functional as F

from .charset import Charset
from .decode import Decoded

# Lexicons up to this many words are scored whole; larger ones go through the BK-tree first.
FULL_SCORING_LIMIT = 1000
# The paper's delta: candidates within this edit distance of the unconstrained reading.
MAX_DISTANCE = 3


class BKTree:
    """A Burkhard-Keller tree over edit distance: the words within d of a query without comparing to all."""

    def __init__(self, words: Iterable[str]):
        self.root: tuple[str, dict] | None = None
        for word in words:
            self.add(word)

    def add(self, word: str) -> None:
        if self.root is None:
            self.root = (word, {})
            return
        node = self.root
        while True:
            distance = editdistance.eval(word, node[0])
            if distance == 0:
                return
            child = node[1].get(distance)
            if child is None:
                node[1][distance] = (word, {})
                return
            node = child

    def within(self, query: str, max_distance: int) -> list[tuple[int, str]]:
        """(distance, word) of every word within `max_distance` of `query`, nearest first."""
        found, stack = [], [self.root] if self.root else []
        while stack:
            word, children = stack.pop()
            distance = editdistance.eval(query, word)
            if distance <= max_distance:
                found.append((distance, word))
            for edge, child in children.items():
                if distance - max_distance <= edge <= distance + max_distance:
                    stack.append(child)
        return sorted(found)


@dataclass
class Lexicon:
    """The words a reading must be one of, normalised as the charset writes them."""

    words: list[str]
    unknown: list[str] = field(default_factory=list)  # words the charset cannot write (left out, reported)
    _tree: BKTree | None = None

    @classmethod
    def from_words(cls, words: Iterable[str], charset: Charset) -> "Lexicon":
        kept: dict[str, None] = {}
        unknown = []
        for word in words:
            word = charset.normalize(word.strip())
            if not word:
                continue
            if charset.unknown_chars(word):
                unknown.append(word)
            else:
                kept[word] = None
        return cls(list(kept), unknown)

    def candidates(self, reading: str, max_distance: int = MAX_DISTANCE) -> list[str]:
        """The words worth scoring for an unconstrained `reading`: all of a small lexicon, else the nearest ones."""
        if len(self.words) <= FULL_SCORING_LIMIT:
            return list(self.words)
        if self._tree is None:
            self._tree = BKTree(self.words)
        distance = max_distance
        while True:
            found = self._tree.within(reading, distance)
            if found:
                return [word for _, word in found]
            distance *= 2


CASE_INSENSITIVE = Charset.from_spec("36")


def fold_to_36(log_probs: torch.Tensor, charset: Charset) -> torch.Tensor:
    """(T, ..., C) log-probabilities of any charset -> those of the 36-character protocol charset.

    Upper and lower case of a letter become one class (their probabilities add up); characters the
    protocol drops (punctuation, space) join the blank, which CTC drops too. So a case-sensitive
    model is scored against a case-insensitive lexicon by what the protocol compares.
    """
    groups: list[list[int]] = [[0]] + [[] for _ in CASE_INSENSITIVE.chars]
    index = {c: i + 1 for i, c in enumerate(CASE_INSENSITIVE.chars)}
    for k, c in enumerate(charset.chars, start=1):
        groups[index.get(c.lower(), 0)].append(k)
    folded = [torch.logsumexp(log_probs[..., g], dim=-1) if g else torch.full_like(log_probs[..., 0], float("-inf")) for g in groups]
    return torch.stack(folded, dim=-1)


def word_log_probs(log_probs: torch.Tensor, words: list[str], charset: Charset) -> torch.Tensor:
    """log p(word | image) of each word for one image's (T, C) log-probabilities (-inf: cannot be aligned)."""
    frames = log_probs.shape[0]
    targets = [charset.encode(word) for word in words]
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([k for t in targets for k in t], dtype=torch.long)
    expanded = log_probs.float().unsqueeze(1).expand(frames, len(words), log_probs.shape[1])
    inputs = torch.full((len(words),), frames, dtype=torch.long)
    loss = F.ctc_loss(expanded, flat, inputs, lengths, blank=0, reduction="none", zero_infinity=False)
    return -loss


def lexicon_decode(log_probs: torch.Tensor, lexicon: Lexicon, charset: Charset, reading: str) -> Decoded:
    """The lexicon word with the highest CTC probability for one image's (T, C) log-probabilities.

    `reading` is the unconstrained (greedy or beam) reading, which picks the candidates of a large
    lexicon. The confidence is p(word | image). An empty lexicon returns the reading unchanged with
    confidence 0; equal scores go to the word nearer the reading, then to the earlier word.
    """
    words = lexicon.candidates(reading)
    if not words:
        return Decoded(reading, 0.0)
    scores = word_log_probs(log_probs, words, charset).tolist()
    best = max(range(len(words)), key=lambda i: (scores[i], -editdistance.eval(words[i], reading), -i))
    return Decoded(words[best], float(torch.tensor(scores[best]).exp()))
