"""`textrec synth` images/s of this checkout against another one, side by side (issue 10's CPU target).

Runs `textrec synth OUT --count N --workers W` from each checkout in turn (ROUNDS times, alternating,
so that both see the same machine load), reads the images/s that the command reports (rendering and
writing only: Python start-up and imports are not counted), and prints the medians and their ratio;
the last line is one JSON object.

    git worktree add --detach /tmp/oldtree 52b782e          # the per-image Pillow renderer
    python benchmarks/synth_speed.py --baseline /tmp/oldtree --count 20000 --workers 2

Both checkouts run with this interpreter (its torch, Pillow, ...), each with its own source first on
PYTHONPATH. A baseline from before `textrec synth` had `--format` is run without it (JPEG either way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"\(([\d,.]+) images/s")


def run_synth(tree: Path, count: int, workers: int, seed: int) -> float:
    """images/s reported by `textrec synth` run from the checkout at `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree), COLUMNS="200")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-c", "from cli.main import app; app()", "synth", str(Path(tmp) / "out"),
                   "--count", str(count), "--workers", str(workers), "--seed", str(seed)]
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: textrec synth failed:\n{done.stdout}{done.stderr}")
    found = RATE.search(done.stdout)
    if not found:
        raise SystemExit(f"{tree}: no images/s in the output of textrec synth:\n{done.stdout}")
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the renderer to compare with")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating pairs of runs (this machine varies by +-5 %% between runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.baseline / "cli" / "main.py").is_file():
        raise SystemExit(f"{args.baseline}: not a textrec checkout (no cli/main.py)")
    rates: dict[str, list[float]] = {"baseline": [], "this": []}
    for round_number in range(args.rounds):
        for name, tree in (("baseline", args.baseline), ("this", ROOT)):
            rate = run_synth(tree, args.count, args.workers, args.seed + round_number)
            rates[name].append(rate)
            print(f"round {round_number + 1} {name:8s} {rate:8,.0f} images/s", flush=True)
    baseline, this = statistics.median(rates["baseline"]), statistics.median(rates["this"])
    print(f"median: baseline {baseline:,.0f}, this checkout {this:,.0f} images/s: {this / baseline:.2f}x")
    print(json.dumps({
        "count": args.count, "workers": args.workers, "rounds": args.rounds,
        "baseline_tree": str(args.baseline), "rates": rates, "ratio": round(this / baseline, 3),
        "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "machine": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
