"""The benchmark registry: standard evaluation sets, their sizes, and where their LMDBs live.

Names follow deep-text-recognition-benchmark's `evaluation/` folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchmarkNotFoundError


@dataclass(frozen=True)
class Benchmark:
    name: str
    samples: int
    description: str


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("IIIT5k_3000", 3000, "IIIT5K-Words test"),
        Benchmark("SVT", 647, "Street View Text test"),
        Benchmark("IC03_860", 860, "ICDAR 2003, 3+ alphanumeric characters"),
        Benchmark("IC03_867", 867, "ICDAR 2003, alphanumeric labels"),
        Benchmark("IC13_857", 857, "ICDAR 2013, 3+ alphanumeric characters"),
        Benchmark("IC13_1015", 1015, "ICDAR 2013, alphanumeric labels"),
        Benchmark("IC15_1811", 1811, "ICDAR 2015, without irregular/short words"),
        Benchmark("IC15_2077", 2077, "ICDAR 2015, all alphanumeric words"),
        Benchmark("SVTP", 645, "SVT-Perspective"),
        Benchmark("CUTE80", 288, "CUTE80 curved text"),
    ]
}

# Short names resolve to the subset most papers report.
ALIASES: dict[str, str] = {
    "IIIT5K": "IIIT5k_3000",
    "IC03": "IC03_860",
    "IC13": "IC13_857",
    "IC15": "IC15_1811",
}

# Sub-folders of the data root searched for a benchmark folder, in order.
SEARCH_DIRS = ("benchmarks", "evaluation", ".")


def canonical_name(name: str) -> str:
    """The registry name for a benchmark name or alias (case-insensitive)."""
    lookup = {key.lower(): key for key in BENCHMARKS}
    lookup.update({alias.lower(): target for alias, target in ALIASES.items()})
    try:
        return lookup[name.lower()]
    except KeyError:
        known = ", ".join([*BENCHMARKS, *ALIASES, "all"])
        raise BenchmarkNotFoundError(name, [f"the registry (known: {known})"]) from None


def candidate_paths(name: str, data_root: str | Path) -> list[Path]:
    root = Path(data_root)
    return [(root / sub / name) if sub != "." else (root / name) for sub in SEARCH_DIRS]


def locate(name: str, data_root: str | Path) -> Path:
    """The LMDB folder of a benchmark under the data root; BenchmarkNotFoundError lists where it looked."""
    canonical = canonical_name(name)
    candidates = candidate_paths(canonical, data_root)
    for path in candidates:
        if (path / "data.mdb").is_file():
            return path
    raise BenchmarkNotFoundError(canonical, [str(p) for p in candidates])


def available(data_root: str | Path) -> list[tuple[str, Path]]:
    """Every registry benchmark present under the data root, in registry order."""
    found = []
    for name in BENCHMARKS:
        try:
            found.append((name, locate(name, data_root)))
        except BenchmarkNotFoundError:
            pass
    return found


def survey(data_root: str | Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, path) of every registry benchmark found under the data root, and the names of those missing."""
    found = available(data_root)
    present = {name for name, _ in found}
    return found, [name for name in BENCHMARKS if name not in present]
