"""Loading a script of benchmarks/ as a module in a test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch):
    """benchmarks/NAME.py as a module, with benchmarks/ importable for the test's duration, as when the script
    runs (some import their neighbours, e.g. backbone_start imports bucket_plateau)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
