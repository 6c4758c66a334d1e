"""What the synthetic renderer writes: words, numbers, dates, prices, codes and random strings.

Every text is generated to fit the charset (each rendered character normalises to one
charset character) and the CTC frame budget (`ctc_min_length(normalized) <= max_frames`);
nothing is filtered after the fact. Only punctuation that the charset has is ever drawn,
so with the 36-character charset every text is alphanumeric.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import itertools
import random
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..charset import Charset, ctc_min_length
from ..errors import DataError
from ..files import Unreadable, read_regular

MAX_TEXT_LENGTH = 25

# The shipped dictionary: 50,000 frequent English words (wordfreq 3.1.1, see resources/README.md).
DEFAULT_WORDS = "en_words.tsv.gz"
# A word list larger than this is refused (a whole corpus given by mistake, or a device).
WORDS_MAX_BYTES = 256 * 1024 * 1024

# Frequency flattening: a word is drawn with weight frequency ** WORD_FREQUENCY_POWER. With 1.0 "the" would be
# every 20th word; real signs show many rare words and names, so the tail is lifted (see docs/synth.md).
WORD_FREQUENCY_POWER = 0.3

# (kind, probability, what it is). Kinds the charset cannot write (no digits, no letters) are left out and the
# others scaled up. Kept in step with docs/synth.md.
TEXT_KINDS: tuple[tuple[str, float, str], ...] = (
    ("word", 0.56, "a dictionary word, frequency-weighted, in a case pattern (below)"),
    ("compound", 0.04, "two or three words run together (BOOKSHOP, carwash), up to 25 characters"),
    ("word_number", 0.04, "a word with a number or single letter joined (ROUTE66, 24HR, A4, Hall2)"),
    ("number", 0.08, "integers: 1-6 digits, years, phone-style digit groups"),
    ("price", 0.04, "prices and amounts: 12.99, $5, 1,200, 50%, 500ML (separators only if in the charset)"),
    ("date", 0.03, "dates and times: 12/05/2024, 2024-05-12, 10:30, 12MAY"),
    ("code", 0.06, "codes: plates, postcodes, model and flight numbers (AB12CDE, SW1A, X200, BA249)"),
    ("random", 0.07, "random characters of the charset, length 1-25 (no language prior)"),
    ("single", 0.02, "a single character"),
    ("phrase", 0.06, "two to four words separated by single spaces (only with a space in the charset)"),
)

# How dictionary words are cased: scene text is often upper-case or title-case.
CASE_PATTERNS: tuple[tuple[str, float], ...] = (("lower", 0.35), ("title", 0.28), ("upper", 0.37))

# With punctuation in the charset, this share of words gets some (trailing mark, quotes, brackets, hyphenation).
PUNCTUATION_RATE = 0.15
# Inside a phrase, this share of the words before the last ends in a mark followed by the space ("Hello, World",
# "Open: 9 AM", "Stop. Look"), mostly a comma: text as printed puts the space after the mark, never before it.
PHRASE_MARK_RATE = 0.15
PHRASE_MARKS = ",,,,.:;!-"

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_UNITS = ("ml", "kg", "g", "km", "m", "cm", "mm", "l", "hr", "h", "min", "mph", "am", "pm", "st", "nd", "rd", "th", "p", "v", "w")


def renderable_chars(charset: Charset) -> str:
    """The characters that may be drawn: each normalises to exactly one charset character.

    For a case-insensitive charset this adds the upper-case letters (their label is lower-cased).
    Whitespace is never drawn.
    """
    chars: dict[str, None] = {}
    known = set(charset.chars)
    for c in charset.chars:
        for variant in (c, c.upper(), c.lower()):
            if len(variant) == 1 and not variant.isspace() and charset.normalize(variant) in known:
                chars[variant] = None
    return "".join(chars)


@dataclass
class WordList:
    words: list[str]
    cumulative: list[float]  # cumulative weights, for bisect
    source: str
    dropped: int  # lines that could not be drawn with the charset (counted, never silent)
    examples: list[str]  # a few of them

    def draw(self, rng: random.Random) -> str:
        return self.words[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


@functools.lru_cache(maxsize=1)
def _default_words() -> tuple[tuple[str, float], ...]:
    raw = resources.files("textrec.data").joinpath("resources", DEFAULT_WORDS).read_bytes()
    pairs = []
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        word, zipf = line.split("\t")
        # zipf = log10(occurrences per billion words); weight = frequency ** power
        pairs.append((word, 10.0 ** (float(zipf) * WORD_FREQUENCY_POWER)))
    return tuple(pairs)


def read_word_lines(path: str | Path | None) -> tuple[list[tuple[str, float]], str]:
    """(word, weight) pairs of a word file: one word a line, optionally `word<TAB>weight`. None: the shipped list."""
    if path is None:
        return list(_default_words()), f"built-in English list ({DEFAULT_WORDS})"
    file = Path(path)
    try:
        text = read_regular(file, WORDS_MAX_BYTES).decode("utf-8")
    except Unreadable as exc:  # missing, a folder, a FIFO that would block, too large ...
        raise DataError(f"{file}: cannot read word list ({exc.reason})") from None
    except UnicodeDecodeError:
        raise DataError(f"{file}: word list is not UTF-8 text") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        word, tab, weight = line.partition("\t")
        value = 1.0
        if tab:
            try:
                value = float(weight)
            except ValueError:
                raise DataError(f"{file} line {number}: weight {weight!r} is not a number") from None
            if not value > 0:
                raise DataError(f"{file} line {number}: weight must be positive")
        pairs.append((word.strip(), value))
    return pairs, str(file)


def load_words(path: str | Path | None, charset: Charset, max_frames: int) -> WordList | None:
    """The drawable words of a list; None if none can be drawn (a user's list raises DataError instead)."""
    pairs, source = read_word_lines(path)
    allowed = set(renderable_chars(charset))
    words, weights, examples, dropped = [], [], [], 0
    for word, weight in pairs:
        short = 2 * len(word) - 1 <= max_frames  # fits whatever its repeats
        if word and len(word) <= MAX_TEXT_LENGTH and set(word) <= allowed and (short or fits(word, charset, max_frames)):
            words.append(word)
            weights.append(weight)
        else:
            dropped += 1
            if len(examples) < 5:
                examples.append(word)
    if not words:
        if path is not None:
            raise DataError(f"{source}: no word of the list can be written with the charset in {max_frames} frames")
        return None
    return WordList(words, list(itertools.accumulate(weights)), source, dropped, examples)


def fits(text: str, charset: Charset, max_frames: int) -> bool:
    normalized = charset.normalize(text)
    return bool(normalized) and ctc_min_length(normalized) <= max_frames


class TextSampler:
    """Draws texts (pure functions of the `random.Random` passed in) that fit the charset and frame budget."""

    def __init__(self, charset: Charset, max_frames: int = 26, words: str | Path | None = None):
        if max_frames < 1:
            raise DataError(f"max_frames must be at least 1 (got {max_frames})")
        self.charset = charset
        self.max_frames = max_frames
        self.max_length = min(MAX_TEXT_LENGTH, max_frames)
        self.alphabet = renderable_chars(charset)
        if not self.alphabet:
            raise DataError("the charset has no character that can be drawn")
        allowed = set(self.alphabet)
        # The space is never drawn alone or inside random strings, only between the words of a phrase.
        self.space = " " in charset.chars
        if self.space:
            allowed.add(" ")
        self.allowed = allowed
        self.digits = "".join(c for c in string.digits if c in allowed)
        self.lower = "".join(c for c in string.ascii_lowercase if c in allowed)
        self.upper = "".join(c for c in string.ascii_uppercase if c in allowed)
        self.letters = self.lower + self.upper
        self.punctuation = "".join(c for c in string.punctuation if c in allowed)
        self.words = load_words(words, charset, max_frames)
        kinds = {
            "word": self.words is not None,
            "compound": self.words is not None and self.max_length >= 4,
            "word_number": self.words is not None and bool(self.digits or self.upper),
            "number": bool(self.digits),
            "price": bool(self.digits),
            "date": bool(self.digits),
            "code": bool(self.digits) and bool(self.letters),
            "random": True,
            "single": True,
            "phrase": self.words is not None and self.space,
        }
        self.kinds = [(name, p) for name, p, _ in TEXT_KINDS if kinds[name]]
        self._kind_cumulative = list(itertools.accumulate(p for _, p in self.kinds))

    # ---- helpers -------------------------------------------------------------------------------------------

    def _ok(self, text: str) -> bool:
        return bool(text) and len(text) <= self.max_length and set(text) <= self.allowed and fits(
            text, self.charset, self.max_frames
        )

    def _choose(self, rng: random.Random, options: list[tuple[str, float]]) -> str:
        total = sum(w for _, w in options)
        x = rng.random() * total
        for name, weight in options:
            x -= weight
            if x < 0:
                return name
        return options[-1][0]

    def _case(self, rng: random.Random, word: str, pattern: str | None = None) -> str:
        if word != word.lower():  # a user's word with its own casing: keep it mostly
            return word.upper() if rng.random() < 0.3 and self._ok(word.upper()) else word
        pattern = pattern or self._choose(rng, list(CASE_PATTERNS))
        cased = {"lower": word, "title": word[:1].upper() + word[1:], "upper": word.upper()}[pattern]
        return cased if set(cased) <= self.allowed else word

    def _digits(self, rng: random.Random, n: int, lead_zero: bool = False) -> str:
        digits = self.digits
        out = [rng.choice(digits) for _ in range(n)]
        if not lead_zero and n > 1 and out[0] == "0" and len(digits) > 1:
            out[0] = rng.choice(digits.replace("0", "") or digits)
        return "".join(out)

    def _sep(self, rng: random.Random, options: str) -> str | None:
        usable = [c for c in options if c in self.allowed]
        return rng.choice(usable) if usable else None

    # ---- kinds ---------------------------------------------------------------------------------------------

    def _word(self, rng: random.Random) -> str:
        word = self._case(rng, self.words.draw(rng))
        if self.punctuation and rng.random() < PUNCTUATION_RATE:
            word = self._punctuate(rng, word)
        return word

    def _punctuate(self, rng: random.Random, word: str) -> str:
        style = rng.randrange(5)
        if style == 0:
            mark = self._sep(rng, ".,!?:;")
            return word + mark if mark else word
        if style == 1:
            pairs = [p for p in ('""', "''", "()", "[]") if set(p) <= self.allowed]
            if pairs:
                left, right = rng.choice(pairs)
                return left + word + right
            return word
        if style == 2:
            dash = self._sep(rng, "-/&")
            if dash:
                other = self._case(rng, self.words.draw(rng), "upper" if word.isupper() else "lower")
                return word + dash + other
            return word
        if style == 3:
            mark = self._sep(rng, "#@*&+")
            return mark + word if mark else word
        apostrophe = "'" in self.allowed and ("s" in self.allowed or "S" in self.allowed)
        return word + ("'S" if word.isupper() and "S" in self.allowed else "'s") if apostrophe else word

    def _compound(self, rng: random.Random) -> str:
        pattern = self._choose(rng, list(CASE_PATTERNS))
        parts = [self._case(rng, self.words.draw(rng), pattern) for _ in range(rng.choice((2, 2, 3)))]
        if pattern == "lower" and rng.random() < 0.3:  # camel case: BookShop
            parts = [self._case(rng, p, "title") for p in parts]
        return "".join(parts)

    def _phrase(self, rng: random.Random) -> str:
        pattern = self._choose(rng, list(CASE_PATTERNS))
        parts = [self._case(rng, self.words.draw(rng), pattern) for _ in range(rng.choice((2, 2, 2, 3, 3, 4)))]
        if self.digits and rng.random() < 0.2:  # ROUTE 66, Open 24 hours, Gate 7
            parts.insert(rng.randrange(len(parts) + 1), self._digits(rng, rng.choice((1, 2, 2, 3, 4))))
        if self.punctuation:
            for k in range(len(parts) - 1):
                mark = self._sep(rng, PHRASE_MARKS) if rng.random() < PHRASE_MARK_RATE else None
                if mark:
                    parts[k] += mark
            if rng.random() < PUNCTUATION_RATE:
                parts[-1] = self._punctuate(rng, parts[-1])
        text = " ".join(parts)
        while len(parts) > 1 and not self._ok(text):  # too long: drop words from the end
            parts.pop()
            text = " ".join(parts)
        return text

    def _word_number(self, rng: random.Random) -> str:
        word = self._case(rng, self.words.draw(rng))
        if self.digits and rng.random() < 0.8:
            extra = self._digits(rng, rng.choice((1, 1, 2, 2, 3, 4)))
        else:
            extra = rng.choice(self.upper or self.letters)
        if rng.random() < 0.5:
            return extra + word
        return word + extra

    def _number(self, rng: random.Random) -> str:
        style = rng.random()
        if style < 0.45:
            return self._digits(rng, rng.choice((1, 1, 2, 2, 2, 3, 3, 4, 5, 6)))
        if style < 0.7:
            return str(rng.randint(1890, 2035)) if set("0123456789") <= self.allowed else self._digits(rng, 4)
        groups = [self._digits(rng, n, lead_zero=True) for n in rng.choice(((3, 3, 4), (4, 3, 3), (3, 4), (5, 6), (2, 2, 2, 2)))]
        sep = self._sep(rng, "-.") if rng.random() < 0.6 else None
        return (sep or "").join(groups)

    def _price(self, rng: random.Random) -> str:
        whole = self._digits(rng, rng.choice((1, 1, 2, 2, 3, 4)))
        style = rng.random()
        dot = self._sep(rng, ".,")
        if style < 0.5 and dot:
            text = whole + dot + self._digits(rng, 2, lead_zero=True)
        elif style < 0.6 and len(whole) == 4 and "," in self.allowed:
            text = whole[0] + "," + whole[1:]
        elif style < 0.75:
            unit = rng.choice(_UNITS)
            unit = unit.upper() if rng.random() < 0.6 else unit
            text = whole + unit if set(unit) <= self.allowed else whole
        else:
            text = whole
        currency = self._sep(rng, "$") if rng.random() < 0.5 else None
        if currency:
            text = currency + text
        elif "%" in self.allowed and rng.random() < 0.15:
            text = text + "%"
        return text

    def _date(self, rng: random.Random) -> str:
        day, month = rng.randint(1, 28), rng.randint(1, 12)
        year = rng.randint(1950, 2035)
        style = rng.random()
        if style < 0.55:
            sep = self._sep(rng, "/-.")
            if sep:
                y = str(year) if rng.random() < 0.6 else f"{year % 100:02d}"
                parts = [f"{day:02d}", f"{month:02d}", y] if rng.random() < 0.7 else [str(year), f"{month:02d}", f"{day:02d}"]
                return sep.join(parts)
        elif style < 0.75:
            colon = self._sep(rng, ":.")
            if colon:
                return f"{rng.randint(0, 23):02d}{colon}{rng.choice((0, 15, 30, 45, rng.randint(0, 59))):02d}"
        name = _MONTHS[month - 1]
        name = self._case(rng, name)
        if set(name) <= self.allowed:
            return f"{day}{name}" if rng.random() < 0.5 else f"{name}{year}"
        return str(year)

    def _code(self, rng: random.Random) -> str:
        letters = self.upper or self.lower
        if self.upper and self.lower and rng.random() < 0.15:
            letters = self.lower
        shape = rng.choice(("LLDDLLL", "LLDD", "LDDL", "LDDD", "LLDDD", "LDLL", "DDLL", "LLLDDDD", "DL", "LD", "LLDDDDDD", "DDDLL"))
        text = "".join(rng.choice(letters) if c == "L" else rng.choice(self.digits) for c in shape)
        dash = self._sep(rng, "-") if len(text) > 4 and rng.random() < 0.3 else None
        if dash:
            cut = rng.randint(2, len(text) - 2)
            text = text[:cut] + dash + text[cut:]
        return text

    def _random(self, rng: random.Random) -> str:
        length = min(self.max_length, rng.choice((rng.randint(1, 8), rng.randint(1, 8), rng.randint(1, MAX_TEXT_LENGTH))))
        pool = self.alphabet
        style = rng.random()
        if style < 0.3 and self.upper and self.digits:
            pool = self.upper + self.digits
        elif style < 0.5 and self.lower:
            pool = self.lower + self.digits
        return self._fill(rng, pool, length)

    def _fill(self, rng: random.Random, pool: str, length: int) -> str:
        """`length` characters of `pool` whose CTC length stays within the budget (repeats are avoided once it is tight)."""
        out: list[str] = []
        frames = 0
        for _ in range(length):
            c = rng.choice(pool)
            repeat = bool(out) and self.charset.normalize(c) == self.charset.normalize(out[-1])
            if frames + 1 + repeat > self.max_frames:
                if frames + 1 > self.max_frames:
                    break
                others = [x for x in pool if self.charset.normalize(x) != self.charset.normalize(out[-1])]
                if not others:
                    break
                c, repeat = rng.choice(others), False
            out.append(c)
            frames += 1 + repeat
        return "".join(out)

    def _single(self, rng: random.Random) -> str:
        pool = self.upper + self.digits if rng.random() < 0.7 and (self.upper + self.digits) else self.alphabet
        return rng.choice(pool)

    # ---- entry point ---------------------------------------------------------------------------------------

    def kind(self, rng: random.Random) -> str:
        x = rng.random() * self._kind_cumulative[-1]
        return self.kinds[bisect.bisect_right(self._kind_cumulative, x)][0]

    def sample(self, rng: random.Random) -> str:
        """One text. A draw that does not fit the charset or budget is redrawn (from the same generator)."""
        for _ in range(20):
            text = getattr(self, "_" + self.kind(rng))(rng)
            if self._ok(text):
                return text
        length = rng.randint(1, min(self.max_length, 10))
        return self._fill(rng, self.alphabet, length)  # fits by construction
