"""The datasets `eval` and `compare` read: standard benchmarks by name (`--benchmark`), or any LMDB folder (`--data`)."""

from __future__ import annotations

from pathlib import Path

from textrec.data import benchmarks as registry
from textrec.errors import BenchmarkNotFoundError
from textrec.metrics import PROTOCOLS

from .common import err_console, fail
from .decoding import check_decoder_options


def check_reading_options(benchmark: list[str], data: list[Path], protocol: str, decoder: str, beam_width: int) -> None:
    """What `eval` and `compare` are told to read and how, checked before any work: one error line if wrong."""
    if protocol not in PROTOCOLS:
        fail(f"unknown protocol {protocol!r}; choose one of 36, case, exact (62 means case)")
    check_decoder_options(decoder, beam_width)
    if not benchmark and not data:
        fail("name at least one --benchmark or --data")


def _all_targets(data_root: Path) -> list[tuple[str, Path]]:
    found, missing = registry.survey(data_root)
    if not found:
        places = ", ".join(str(p.parent) for p in registry.candidate_paths("NAME", data_root))
        fail(f"no standard benchmark LMDBs under {data_root} (looked for {', '.join(registry.BENCHMARKS)} in {places})")
    names = ", ".join(name for name, _ in found)
    absent = f"; missing: {', '.join(missing)}" if missing else ""
    err_console.print(f"found {len(found)} of {len(registry.BENCHMARKS)} standard sets under {data_root}: {names}{absent}", soft_wrap=True, markup=False)
    return found


def benchmark_targets(benchmark: list[str], data: list[Path], data_root: Path) -> list[tuple[str, Path]]:
    """(name, LMDB folder) of each --benchmark (`all`: every standard set under data_root) and each --data folder;
    a missing benchmark ends the command with one line saying how to make it."""
    targets: list[tuple[str, Path]] = []
    for name in benchmark:
        if name.lower() == "all":
            targets.extend(_all_targets(data_root))
            continue
        canonical = registry.canonical_name(name)
        if canonical != name:
            err_console.print(f"{name} means {canonical} ({registry.BENCHMARKS[canonical].description})")
        try:
            targets.append((canonical, registry.locate(canonical, data_root)))
        except BenchmarkNotFoundError as exc:
            fail(
                f"{exc}. Make it with `textrec create-lmdb GT_FILE {registry.candidate_paths(canonical, data_root)[0]}`"
                f" or point --data-root at a folder holding deep-text-recognition-benchmark's evaluation LMDBs"
            )
    targets.extend((path.name, path) for path in data)
    return targets
