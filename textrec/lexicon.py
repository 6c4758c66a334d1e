"""Lexicon-constrained decoding, as the CRNN paper does it (Shi et al. 2015, section 2.2.3).

Every candidate word is scored by its CTC probability p(word | image), summed over all the
alignments of the word to the frames (the forward algorithm, here `torch.nn.functional.ctc_loss`),
and the most probable one is the reading. A small lexicon (a benchmark's 50 or 1,000 words per
image) is scored whole. A large one (a dictionary) is first cut down to the words that a CTC prefix
beam search confined to the lexicon's prefix tree ends on (`Lexicon.search`: a few milliseconds an
image for 50,000 words); should none end a word, to the words within an edit distance `max_distance`
of the unconstrained reading, found with a BK-tree as in the paper (`Lexicon.candidates`), the
distance growing until one is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import editdistance
import torch
import torch.nn.functional as F

from .charset import Charset
from .decode import Decoded, prefix_beam_search
from .errors import DataError
from .files import read_text_file

# Lexicons up to this many words are scored whole; larger ones are searched first (prefix tree, then BK-tree).
FULL_SCORING_LIMIT = 1000
# The paper's delta: candidates within this edit distance of the unconstrained reading.
MAX_DISTANCE = 3
# Prefixes kept by the search of a large lexicon's prefix tree, and the per-frame log-probability below
# which a character is not appended (as `beam_decode`).
SEARCH_BEAM = 20
SEARCH_PRUNE = -12.0
# A lexicon file larger than this is not a word list.
MAX_LEXICON_FILE_BYTES = 256 << 20


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
class _PrefixTree:
    """A lexicon's words as a tree of class indices: node 0 is the root."""

    children: list[dict[int, int]]
    last: list[int]  # the class that leads to each node (0 for the root)
    word: list[str | None]  # the word ending at each node, if one does

    @classmethod
    def build(cls, words: list[str], charset: Charset) -> "_PrefixTree":
        tree = cls([{}], [0], [None])
        for word in words:
            node = 0
            for k in charset.encode(word):
                child = tree.children[node].get(k)
                if child is None:
                    child = len(tree.children)
                    tree.children[node][k] = child
                    tree.children.append({})
                    tree.last.append(k)
                    tree.word.append(None)
                node = child
            tree.word[node] = word
        return tree


@dataclass
class Lexicon:
    """The words a reading must be one of, normalised as the charset writes them."""

    words: list[str]
    unknown: list[str] = field(default_factory=list)  # words the charset cannot write (left out, reported)
    _tree: BKTree | None = None
    # How a word was written where that differs from its normalised form (the reading reports it so).
    spelling: dict[str, str] = field(default_factory=dict)
    _prefix_tree: tuple[str, _PrefixTree] | None = None  # (the charset's characters, the tree)

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

    @classmethod
    def case_insensitive(cls, words: Iterable[str]) -> "Lexicon":
        """A lexicon matched as the 36-character protocol compares: case, punctuation and spaces ignored.

        Its words are over `CASE_INSENSITIVE` (score them on `fold_to_36` outputs); a reading reports the word
        as first written (`don't`, `Hotel`). A word with a letter or digit outside 0-9a-z (`café`) is unknown.
        """
        kept: dict[str, str] = {}
        unknown = []
        for word in words:
            word = word.strip()
            if not word:
                continue
            key = "".join(c for c in word.lower() if c.isalnum())
            if not key or CASE_INSENSITIVE.unknown_chars(key):
                unknown.append(word)
            else:
                kept.setdefault(key, word)
        return cls(list(kept), unknown, spelling={key: word for key, word in kept.items() if key != word})

    @property
    def large(self) -> bool:
        """Whether the lexicon is searched (prefix tree, BK-tree) rather than scored whole."""
        return len(self.words) > FULL_SCORING_LIMIT

    def prepare(self, charset: Charset) -> None:
        """Build a large lexicon's prefix tree now (otherwise the first reading builds it)."""
        if self.large:
            self._prefix(charset)

    def _prefix(self, charset: Charset) -> _PrefixTree:
        if self._prefix_tree is None or self._prefix_tree[0] != charset.chars:
            self._prefix_tree = (charset.chars, _PrefixTree.build(self.words, charset))
        return self._prefix_tree[1]

    def search(self, log_probs: torch.Tensor, charset: Charset, beam_width: int = SEARCH_BEAM) -> list[str]:
        """The words that a CTC prefix beam search of one image's (T, C) log-probabilities, confined to the
        lexicon's prefix tree, ends on (most probable first; none when every kept prefix is mid-word)."""
        tree = self._prefix(charset)
        beams = prefix_beam_search(
            log_probs.detach().float().cpu().tolist(), beam_width, SEARCH_PRUNE, 0,
            tree.last.__getitem__, lambda node, k: tree.children[node].get(k),
        )
        return [tree.word[node] for node in beams if tree.word[node] is not None]

    def candidates(self, reading: str, max_distance: int = MAX_DISTANCE) -> list[str]:
        """The words worth scoring for an unconstrained `reading`: all of a small lexicon, else the nearest ones."""
        if not self.large:
            return list(self.words)
        if self._tree is None:
            self._tree = BKTree(self.words)
        distance = max_distance
        while True:
            found = self._tree.within(reading, distance)
            if found:
                return [word for _, word in found]
            distance *= 2


def read_lexicon_file(path: str | Path) -> list[str]:
    """The words of a lexicon file: one a line, UTF-8 (or UTF-16 with a byte-order mark), blank lines skipped. DataError names a file that is
    unreadable, not UTF-8 or without words."""
    raw = read_text_file(path, MAX_LEXICON_FILE_BYTES, "the lexicon")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the lexicon is not UTF-8 text (byte {exc.start + 1}: {exc.reason})") from None
    words = [line.strip() for line in text.splitlines() if line.strip()]
    if not words:
        raise DataError(f"{path}: the lexicon holds no words (one word a line expected)")
    return words


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

    A small lexicon is scored whole; a large one on the words of `Lexicon.search`, else on those near
    `reading`, the unconstrained (greedy or beam) reading. The confidence is p(word | image). An empty lexicon
    returns the reading unchanged with confidence 0; equal scores go to the word nearer the reading, then to
    the earlier word.
    """
    words = (lexicon.search(log_probs, charset) or lexicon.candidates(reading)) if lexicon.large else lexicon.words
    if not words:
        return Decoded(reading, 0.0)
    scores = word_log_probs(log_probs, words, charset).tolist()
    best = max(range(len(words)), key=lambda i: (scores[i], -editdistance.eval(words[i], reading), -i))
    return Decoded(lexicon.spelling.get(words[best], words[best]), math.exp(scores[best]), scores[best])
