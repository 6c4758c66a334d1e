"""Ablation of the refined-gate variants on a short CRNN recipe (issue 12, item 2).

Trains every variant x seed with one recipe (a `textrec train --config` TOML file), validation split
only, and gathers per run into one JSON file:

* validation word accuracy (and 1-NED) at every validation step;
* the first validation step with accuracy > 0 (the run has left the CTC "all blank" plateau), and,
  finer, the first with 1-NED >= 0.3 (characters read before whole words are);
* the steps whose loss or gradient was not finite (the trainer skips and counts them);
* at every validation, on a fixed set of validation images: the largest |c| (LSTM cell; h for
  GRU / MGU) per layer, and the gates' saturation (share of σ below 0.05 or above 0.95), value
  range and share of values outside [0, 1], pooled and per gate (`textrec.nn.gate_stats`);
* the training loss as logged, and the wall-clock time.

Runs are resumable: a finished run (its `ablation_run.json` exists) is skipped; an interrupted
one (Ctrl-C, SIGTERM, a kill) continues from its last save when the command is run again.

    # the plan: variants x seeds (about RECIPE_SECONDS per run on this CPU, see docs/refined_gates.md)
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/refine_ablation.py --recipe checkpoints/ablation.toml \\
        --variants plan --seeds 0,1,2
    python benchmarks/refine_ablation.py --summarize docs/results/refine_ablation.json --plot-dir docs/img
    python benchmarks/refine_ablation.py --list

Variant names are tokens joined by "-", read left to right:
  [lstm|gru|mgu]  the unit (default lstm)
  none|add|mul    the refinement
  io, ifo, z ...  the refined gates, as letters (default: all of the unit's sigmoid gates)
  vstart          start as vanilla (refine_init="vanilla")
  tanh            bounded short connection (refine_bound="tanh")
  fb<x>           forget-gate bias x at init (e.g. fb1)
  map             the identity path: a linear map before each recurrent layer (input_map)
  r<N>            a low-rank projection of rank N (refine_rank), e.g. add-io-vstart-tanh-r16
e.g. `none`, `add-io-vstart`, `mul-ifo-vstart-fb1`, `mul-io-map-fb1`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import signal
import statistics
import sys
import time
import tomllib
from pathlib import Path

import torch

from textrec.charset import Charset
from textrec.checkpoint import atomic_write
from textrec.data.lmdb_store import LmdbDataset
from textrec.nn import SIGMOID_GATES, GatedRNN, gate_stats, recording_gates
from textrec.predict import Recognizer
from textrec.train import TrainCallbacks, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "docs" / "results" / "refine_ablation.json"
DEFAULT_RUNS = ROOT / "runs" / "ablation"

# The full ablation of issue 12 (LSTM): vanilla references, then every refinement option on the
# gate sets i,o and i,f,o, with `add` and `mul`.
PLAN = [
    "none", "none-fb1", "none-map",
    "add-io", "add-io-vstart", "add-io-tanh", "add-io-vstart-tanh", "add-io-map",
    "add-ifo", "add-ifo-vstart", "add-ifo-vstart-fb1", "add-ifo-tanh", "add-ifo-vstart-tanh-fb1", "add-ifo-map",
    "mul-io-vstart", "mul-ifo-vstart", "mul-ifo-vstart-fb1", "mul-ifo-vstart-tanh", "mul-io-map-fb1",
]
PILOT = ["none", "add-io-vstart"]
# What a variant name sets when it does not say otherwise: vanilla LSTM gates, today's options.
VARIANT_DEFAULTS = {"rnn": "lstm", "refine": "none", "refine_gates": [], "refine_init": "default",
                    "refine_bound": "none", "forget_bias": 0.0, "input_map": False, "refine_rank": 0}
NONFINITE = re.compile(r"^step (\d+): non-finite")
NED_MARK = 0.3  # a second, finer plateau mark: the first validation with 1-NED at least this


# ---------------------------------------------------------------- variants and recipe


def parse_variant(name: str) -> dict:
    """TrainConfig overrides for a variant name (see the module doc); ValueError if it is not one."""
    tokens = name.lower().split("-")
    values = dict(VARIANT_DEFAULTS, refine_gates=[])
    if tokens and tokens[0] in ("lstm", "gru", "mgu"):
        values["rnn"] = tokens.pop(0)
    if not tokens or tokens[0] not in ("none", "add", "mul"):
        raise ValueError(f"variant {name!r}: the refinement (none, add or mul) comes first (after the unit)")
    values["refine"] = tokens.pop(0)
    gate_letters = set(SIGMOID_GATES[values["rnn"]])
    for token in tokens:
        if token == "vstart":
            values["refine_init"] = "vanilla"
        elif token == "tanh":
            values["refine_bound"] = "tanh"
        elif token == "map":
            values["input_map"] = True
        elif token[:1] == "r" and token[1:].isdigit():
            values["refine_rank"] = int(token[1:])
        elif token.startswith("fb"):
            try:
                values["forget_bias"] = float(token[2:])
            except ValueError:
                raise ValueError(f"variant {name!r}: {token!r} is not fb<number>") from None
        elif token and set(token) <= gate_letters and len(set(token)) == len(token):
            values["refine_gates"] = list(token)
        else:
            raise ValueError(f"variant {name!r}: unknown token {token!r}")
    # Checked now, not an hour into the plan: the layer accepts the combination.
    GatedRNN(values["rnn"], 8, max(4, values["refine_rank"] + 1), **layer_options(values))  # hidden wide enough for the rank
    return values


def layer_options(values: dict) -> dict:
    """A parsed variant's keyword arguments for `GatedRNN` and `CRNNConfig` (everything but the unit)."""
    return {"refine": values["refine"], "refine_gates": tuple(values["refine_gates"]) or None,
            "refine_init": values["refine_init"], "refine_bound": values["refine_bound"],
            "forget_bias": values["forget_bias"], "input_map": values["input_map"],
            "refine_rank": values["refine_rank"]}


def load_recipe(path: Path) -> dict:
    """A `textrec train --config` TOML file as TrainConfig values (CLI spellings converted)."""
    recipe = {k.replace("-", "_"): v for k, v in tomllib.loads(path.read_text(encoding="utf-8")).items()}
    if isinstance(recipe.get("channels"), str):
        recipe["channels"] = tuple(int(c) for c in recipe["channels"].split(","))
    if isinstance(recipe.get("refine_gates"), str):
        recipe["refine_gates"] = [g.strip() for g in recipe["refine_gates"].split(",") if g.strip()]
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise SystemExit(f"{path}: keys that TrainConfig lacks: {', '.join(unknown)}")
    return recipe


# ---------------------------------------------------------------- one run


class Probe(TrainCallbacks):
    """Records non-finite steps and, at every validation, gate and state statistics, into probe.jsonl."""

    def __init__(self, folder: Path, val_data: str, samples: int, preprocess_from: TrainConfig):
        self.path = folder / "probe.jsonl"
        self.val_data, self.samples = val_data, samples
        self.config = preprocess_from
        self.batch = None

    def _lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # cut by a kill
        return out

    def _write(self, lines: list[dict]) -> None:
        atomic_write(self.path, lambda h: h.write("".join(json.dumps(x) + "\n" for x in lines).encode()))

    def on_start(self, start) -> None:
        # Forget what happened after the state the run resumes from: those steps run again.
        resumed = start.resumed_from or 0
        self._write([x for x in self._lines() if x["step"] <= resumed])

    def on_event(self, message: str) -> None:
        match = NONFINITE.match(message)
        if match:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": int(match.group(1)), "nonfinite": True}) + "\n")

    def inspect_model(self, step: int, model) -> None:
        if self.batch is None:
            from textrec.data.images import Preprocess

            dataset = LmdbDataset(self.val_data)
            images = [dataset.read_image(i)[0] for i in range(min(len(dataset), self.samples))]
            pre = Preprocess(height=self.config.height, width=self.config.width, keep_ratio=self.config.keep_ratio)
            charset = Charset.from_spec(self.config.charset)
            device = next(model.parameters()).device
            self.batch = Recognizer(model, charset, pre, device).prepare(images)
        with recording_gates(model) as recorded:
            model(self.batch)
        gates = recorded["sequence"]
        names = sorted({k.split(".")[1] for k in gates})
        record = {
            "step": step,
            "gates": {k: round(v, 6) for k, v in gate_stats(gates).items()},
            "per_gate": {
                n: {k: round(v, 6) for k, v in gate_stats({k: v for k, v in gates.items() if k.endswith("." + n)}).items()}
                for n in names
            },
            "max_abs_state": {k: float(v.abs().max()) for k, v in model.sequence.last_states.items()},
        }
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def run_folder(runs: Path, variant: str, seed: int) -> Path:
    return runs / variant / f"seed{seed}"


def run_one(recipe: dict, recipe_path: Path, variant: str, seed: int, runs: Path, samples: int) -> dict | None:
    """Train one variant x seed (or resume it); returns its summary, or None if it was interrupted."""
    folder = run_folder(runs, variant, seed)
    done = folder / "ablation_run.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    config = TrainConfig(**{**recipe, **parse_variant(variant), "seed": seed, "output": str(folder)})
    folder.mkdir(parents=True, exist_ok=True)
    probe = Probe(folder, config.val_data[0], samples, config)
    started = time.perf_counter()
    result = train(config, probe)
    seconds = time.perf_counter() - started
    with open(folder / "attempts.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"steps": result.steps, "seconds": round(seconds, 1),
                                 "interrupted": result.interrupted}) + "\n")
    if result.interrupted:
        return None
    outcome = {"steps": result.steps, "best_accuracy": result.best_accuracy, "best_step": result.best_step,
               "nonfinite_steps": result.nonfinite_steps}
    summary = summarize_run(folder, variant, seed, recipe_path, outcome)
    atomic_write(done, lambda h: h.write(json.dumps(summary, indent=1).encode()))
    return summary


def rebuild(folder: Path) -> dict:
    """A finished run's summary again from its files (after this script learnt to gather more)."""
    old = json.loads((folder / "ablation_run.json").read_text(encoding="utf-8"))
    summary = summarize_run(folder, old["variant"], old["seed"], Path(old["recipe"]), old)
    atomic_write(folder / "ablation_run.json", lambda h: h.write(json.dumps(summary, indent=1).encode()))
    return summary


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def summarize_run(folder: Path, variant: str, seed: int, recipe_path: Path, outcome: dict) -> dict:
    """`outcome`: steps, best_accuracy, best_step, nonfinite_steps (from the TrainResult)."""
    metrics, probe, attempts = (_jsonl(folder / n) for n in ("metrics.jsonl", "probe.jsonl", "attempts.jsonl"))
    val = {m["step"]: (m["val_accuracy"], m["val_ned"]) for m in metrics if "val_accuracy" in m}
    stats = {p["step"]: p for p in probe if "gates" in p}
    nonfinite = sorted({p["step"] for p in probe if p.get("nonfinite")})
    plateau_exit = next((s for s in sorted(val) if val[s][0] > 0), None)
    ned_mark = next((s for s in sorted(val) if val[s][1] >= NED_MARK), None)
    seconds = sum(a["seconds"] for a in attempts)
    return {
        "variant": variant,
        "seed": seed,
        "recipe": str(recipe_path),
        "folder": str(folder),
        "options": parse_variant(variant),
        "steps": outcome["steps"],
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, outcome["steps"]), 3),
        "best_accuracy": outcome["best_accuracy"],
        "best_step": outcome["best_step"],
        "plateau_exit_step": plateau_exit,
        "ned_mark": NED_MARK,
        "ned_mark_step": ned_mark,
        "nonfinite_steps": outcome["nonfinite_steps"],
        "nonfinite_at": nonfinite,
        "curve": [
            {
                "step": s,
                "val_accuracy": val[s][0],
                "val_ned": val[s][1],
                **({"gates": stats[s]["gates"], "per_gate": stats[s]["per_gate"],
                    "max_abs_state": max(stats[s]["max_abs_state"].values()),
                    "max_abs_state_per_layer": stats[s]["max_abs_state"]} if s in stats else {}),
            }
            for s in sorted(val)
        ],
        "loss": [{"step": m["step"], "loss": m["loss"]} for m in metrics if "loss" in m],
    }


# ---------------------------------------------------------------- the results file


def merge_results(path: Path, recipe_path: Path, recipe: dict, summaries: list[dict]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"runs": []}
    keep = {r["folder"]: r for r in data["runs"]}  # one entry per run folder
    for s in summaries:
        keep[s["folder"]] = s
    data["runs"] = sorted(keep.values(), key=lambda r: (r["recipe"], r["variant"], r["seed"], r["folder"]))
    data["recipes"] = {**data.get("recipes", {}), str(recipe_path): {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()}}
    data["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "python": platform.python_version()}
    atomic_write(path, lambda h: h.write(json.dumps(data, indent=1).encode()))


def ordered_variants(runs: list[dict]) -> list[str]:
    """The plan's order first, then any other variant by name."""
    names = {r["variant"] for r in runs}
    return [v for v in PLAN if v in names] + sorted(names - set(PLAN))


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(runs: list[dict], steps: list[int] | None = None) -> str:
    """One Markdown row per variant: mean ± sd over seeds."""
    variants = ordered_variants(runs)
    all_steps = sorted({c["step"] for r in runs for c in r["curve"]})
    steps = steps or [s for s in all_steps if s in (all_steps[len(all_steps) // 3], all_steps[2 * len(all_steps) // 3], all_steps[-1])]
    head = ["variant", "seeds"] + [f"val. acc. @ {s}" for s in steps] + [
        "left blank plateau at (per seed)", f"1-NED ≥ {NED_MARK} at (per seed)", "non-finite steps", "largest \\|c\\| (final, max)", "saturated σ (final)",
        "gate values outside [0, 1] (final)", "s / step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        at = lambda r, s, key="val_accuracy": next((c.get(key) for c in r["curve"] if c["step"] == s), None)  # noqa: E731
        finals = [r["curve"][-1] for r in rs if r["curve"]]
        row = [f"`{v}`", str(len(rs))]
        row += [_mean_sd([at(r, s) for r in rs]) for s in steps]
        row.append(", ".join(str(r["plateau_exit_step"]) if r["plateau_exit_step"] is not None else "–" for r in rs))
        row.append(", ".join(str(r.get("ned_mark_step")) if r.get("ned_mark_step") is not None else "–" for r in rs))
        row.append(", ".join(str(r["nonfinite_steps"]) for r in rs))
        states = [f.get("max_abs_state") for f in finals if f.get("max_abs_state") is not None]
        row.append(f"{max(states):.3g}" if states else "–")
        row.append(_pct([f["gates"]["saturated"] for f in finals if "gates" in f]))
        row.append(_pct([f["gates"]["outside_01"] for f in finals if "gates" in f]))
        row.append(f"{statistics.mean(r['seconds_per_step'] for r in rs):.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pct(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{100 * statistics.mean(values):.1f} %"


# ---------------------------------------------------------------- plots (Pillow, as synthetic_tasks.py)

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _nice(top: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `top` (a round top for a linear axis)."""
    if top <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(top))
    return next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= top)


def plot(runs: list[dict], path: Path, panels: list[tuple[str, str, bool]], title: str) -> None:
    """One panel per (key, label, log y): the mean over seeds per variant against the step, seeds thin."""
    from PIL import Image, ImageDraw, ImageFont

    variants = ordered_variants(runs)
    pw, ph, ml, mr, mt, mb = 430, 300, 62, 14, 56, 46
    legend_h = 18 * ((len(variants) + 2) // 3) + 8
    img = Image.new("RGB", (pw * len(panels), ph + 30 + legend_h), "white")
    draw = ImageDraw.Draw(img)
    try:
        font, big = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = big = ImageFont.load_default()
    draw.text((8, 6), title, fill="black", font=big)
    max_step = max(c["step"] for r in runs for c in r["curve"])

    def value(c, key):
        v = c.get(key) if "." not in key else c.get(key.split(".")[0], {}).get(key.split(".")[1])
        return v

    for col, (key, label, log) in enumerate(panels):
        x0, y0, x1, y1 = col * pw + ml, mt, (col + 1) * pw - mr, ph + 30 - mb
        vals = [value(c, key) for r in runs for c in r["curve"]]
        vals = [v for v in vals if v is not None and math.isfinite(v) and (v > 0 or not log)]
        if not vals:
            continue
        lo, hi = (math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))) if log else (0.0, _nice(max(vals)))
        if log and hi == lo:
            hi += 1
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, y0 - 18), label, fill="black", font=big)

        def sx(step):
            return x0 + (x1 - x0) * step / max_step

        def sy(v):
            if log:
                v = min(max(v, 10.0**lo), 10.0**hi)
                return y1 - (y1 - y0) * (math.log10(v) - lo) / (hi - lo)
            return y1 - (y1 - y0) * (v - lo) / (hi - lo)

        ticks = [10.0**e for e in range(lo, hi + 1)] if log else [hi * k / 4 for k in range(5)]
        for t in ticks:
            draw.line((x0, sy(t), x1, sy(t)), fill=(225, 225, 225))
            draw.text((x0 - 58, sy(t) - 7), f"{t:.0e}" if log else f"{t:.3g}", fill="black", font=font)
        for k in range(5):
            step = round(max_step * k / 4)
            draw.text((sx(step) - 12, y1 + 4), str(step), fill="black", font=font)
        draw.text(((x0 + x1) // 2 - 14, y1 + 22), "step", fill="black", font=font)
        for i, v in enumerate(variants):
            color = PALETTE[i % len(PALETTE)]
            light = tuple((c + 2 * 255) // 3 for c in color)
            rs = [r for r in runs if r["variant"] == v]
            for r in rs:
                pts = [(sx(c["step"]), sy(value(c, key))) for c in r["curve"] if value(c, key) is not None]
                if len(pts) > 1:
                    draw.line(pts, fill=light, width=1)
            steps = sorted({c["step"] for r in rs for c in r["curve"]})
            mean_pts = []
            for s in steps:
                xs = [value(c, key) for r in rs for c in r["curve"] if c["step"] == s and value(c, key) is not None]
                xs = [x for x in xs if math.isfinite(x)]
                if xs:
                    mean_pts.append((sx(s), sy(statistics.mean(xs))))
            if len(mean_pts) > 1:
                draw.line(mean_pts, fill=color, width=2)
    for i, v in enumerate(variants):
        color = PALETTE[i % len(PALETTE)]
        lx, ly = 12 + (i % 3) * (img.width // 3), ph + 30 + 4 + 18 * (i // 3)
        draw.line((lx, ly + 7, lx + 18, ly + 7), fill=color, width=3)
        draw.text((lx + 24, ly), v, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def plots(runs: list[dict], folder: Path, stem: str = "refine_ablation") -> list[Path]:
    accuracy = folder / f"{stem}_accuracy.png"
    plot(runs, accuracy, [("val_accuracy", "validation word accuracy (%)", False), ("val_ned", "validation 1-NED", False)],
         "CRNN ablation: validation (mean over seeds, seeds thin)")
    gates = folder / f"{stem}_gates.png"
    plot(runs, gates, [("gates.saturated", "saturated sigmoids (share)", False), ("max_abs_state", "largest |c| (log)", True)],
         "CRNN ablation: gate saturation and cell size on validation images")
    return [accuracy, gates]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--recipe", type=Path, default=ROOT / "checkpoints" / "ablation.toml")
    parser.add_argument("--variants", default="pilot", help="comma-separated names, or `plan` / `pilot`")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="folder of the run folders")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the JSON file gathering every run")
    parser.add_argument("--probe-samples", type=int, default=256, help="validation images for the gate statistics")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (JSON value), e.g. --set max_steps=100; the run folder must differ")
    parser.add_argument("--list", action="store_true", help="print the plan's variants and their options")
    parser.add_argument("--rebuild", action="store_true",
                        help="re-gather the finished runs of --variants x --seeds from their files into --results")
    parser.add_argument("--summarize", type=Path, help="print the Markdown table of a results file")
    parser.add_argument("--steps", help="steps for the table's accuracy columns, comma-separated")
    parser.add_argument("--plot-dir", type=Path, help="with --summarize: write the two PNG plots here")
    parser.add_argument("--plot-stem", default="refine_ablation", help="file name stem of the plots")
    args = parser.parse_args()

    if args.list:
        for name in PLAN:
            options = {k: v for k, v in parse_variant(name).items() if k == "refine" or v != VARIANT_DEFAULTS[k]}
            print(f"{name:28s} {json.dumps(options)}")
        return
    if args.summarize:
        data = json.loads(args.summarize.read_text(encoding="utf-8"))
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
        print(table(data["runs"], steps))
        if args.plot_dir:
            for p in plots(data["runs"], args.plot_dir, args.plot_stem):
                print(f"wrote {p}")
        return

    variants = PLAN if args.variants == "plan" else PILOT if args.variants == "pilot" else args.variants.split(",")
    for v in variants:
        parse_variant(v)
    seeds = [int(s) for s in args.seeds.split(",")]
    recipe = load_recipe(args.recipe)
    for item in args.set:
        key, _, value = item.partition("=")
        recipe[key] = json.loads(value)
    if args.rebuild:
        done = [run_folder(args.runs, v, s) for v in variants for s in seeds]
        merge_results(args.results, args.recipe, recipe, [rebuild(f) for f in done if (f / "ablation_run.json").exists()])
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `textrec train`: denormal gradients make CPU steps far slower
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    for variant in variants:
        for seed in seeds:
            folder = run_folder(args.runs, variant, seed)
            print(f"{variant} seed {seed}: {folder}", flush=True)
            summary = run_one(recipe, args.recipe, variant, seed, args.runs, args.probe_samples)
            if summary is None:
                print("interrupted; run the same command to resume", flush=True)
                sys.exit(130)
            merge_results(args.results, args.recipe, recipe, [summary])
            accuracy = ", ".join("{}: {:.1f}".format(c["step"], c["val_accuracy"]) for c in summary["curve"])
            print(f"  {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['seconds_per_step']:.2f} s/step); "
                  f"val. acc. {accuracy}; plateau left at {summary['plateau_exit_step']}; "
                  f"non-finite {summary['nonfinite_steps']}", flush=True)


if __name__ == "__main__":
    main()
