"""The refined-gate paper's synthetic tasks on CPU: adding problem and counting.

For every recurrent mode (lstm, gru, mgu) and refinement (none, add, mul) this trains a
one-layer GatedRNN with a linear read-out on the final hidden state, with fixed seeds (the
same data stream and test set for every configuration), and records

* the test error over training (learning curve) and at the end,
* the steps until the test error first falls below each threshold,
* gate statistics on a test batch before and after training: the share of sigmoid
  activations below 0.05 or above 0.95 (saturation / "undertraining" region, where σ' is
  tiny) and the range of the gate values actually used (refined gates may leave (0, 1)).

Tasks (``--tasks``, comma-separated ``name:length``):

* ``adding:T``  two of T uniform numbers are marked (one in each half); regress their sum.
  Predicting the mean gives MSE ≈ 0.167; "solved" is usually MSE < 0.01.
* ``counting:T`` T symbols from an alphabet of 10 (one-hot); regress how many times the
  marked symbol (symbol 0) occurs. Error is the MSE in counts; accuracy rounds the prediction.

Results go to ``<results-dir>/refined_gates_<task><T>.json`` and a learning-curve plot to
``<img-dir>/refined_gates_<task><T>.png`` (drawn with Pillow, which textrec already needs).
``--summarize FILE...`` prints the Markdown tables of existing result files.

    nice python benchmarks/synthetic_tasks.py --tasks adding:100
    python benchmarks/synthetic_tasks.py --tasks counting:100 --steps 300 --modes lstm
    python benchmarks/synthetic_tasks.py --summarize docs/results/refined_gates_*.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from textrec.nn import GatedRNN, gate_stats, recording_gates

ALPHABET = 10
THRESHOLDS = {"adding": (0.05, 0.01), "counting": (1.0, 0.25)}
# Default training steps per task and length, sized for about a minute per run on one
# CPU core; --steps overrides.
DEFAULT_STEPS = {("adding", 100): 1500, ("adding", 200): 800, ("counting", 100): 1200}


# ---------------------------------------------------------------- data


def make_batch(task: str, T: int, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (T, batch, features) and regression targets (batch,)."""
    if task == "adding":
        values = torch.rand(T, batch, generator=gen)
        first = torch.randint(0, T // 2, (batch,), generator=gen)
        second = torch.randint(T // 2, T, (batch,), generator=gen)
        markers = torch.zeros(T, batch)
        cols = torch.arange(batch)
        markers[first, cols] = 1.0
        markers[second, cols] = 1.0
        target = values[first, cols] + values[second, cols]
        return torch.stack((values, markers), -1), target
    if task == "counting":
        symbols = torch.randint(0, ALPHABET, (T, batch), generator=gen)
        x = nn.functional.one_hot(symbols, ALPHABET).float()
        return x, (symbols == 0).sum(0).float()
    raise ValueError(f"unknown task {task!r}; choose adding or counting")


def input_size(task: str) -> int:
    return 2 if task == "adding" else ALPHABET


class Regressor(nn.Module):
    """GatedRNN followed by a linear read-out of the last hidden state."""

    def __init__(self, task: str, mode: str, refine: str, hidden: int, T: int):
        super().__init__()
        self.rnn = GatedRNN(mode, input_size(task), hidden, refine=refine)
        self.head = nn.Linear(hidden, 1)
        # targets are standardised for training: counts have mean T/10, sd sqrt(T*0.09)
        self.shift, self.scale = (1.0, 0.4) if task == "adding" else (T / ALPHABET, math.sqrt(T * 0.09))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[-1]).squeeze(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x) * self.scale + self.shift


# ---------------------------------------------------------------- one run


def evaluate(model: Regressor, task: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        pred = model.predict(x)
    out = {"mse": float(((pred - y) ** 2).mean())}
    if task == "counting":
        out["accuracy"] = float((pred.round() == y).float().mean())
    return out


def gate_summary(model: Regressor, x: torch.Tensor) -> dict:
    with torch.no_grad(), recording_gates(model) as rec:
        model(x)
    gates = rec["rnn"]
    summary = gate_stats(gates)
    summary["per_gate"] = {name.split(".", 1)[1]: gate_stats({name: v}) for name, v in gates.items()}
    return summary


def run_one(task: str, T: int, mode: str, refine: str, args) -> dict:
    steps = args.steps or DEFAULT_STEPS.get((task, T), 1000)
    torch.manual_seed(args.seed)
    model = Regressor(task, mode, refine, args.hidden, T)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_gen = torch.Generator().manual_seed(args.seed + 1)
    x_test, y_test = make_batch(task, T, args.test_size, torch.Generator().manual_seed(args.seed + 2))
    x_gate = x_test[:, :512]
    gates_init = gate_summary(model, x_gate)
    curve = [{"step": 0, "train_loss": None, **evaluate(model, task, x_test, y_test), "seconds": 0.0}]
    reached: dict[str, int | None] = {str(t): None for t in THRESHOLDS[task]}
    start, cpu_start = time.perf_counter(), time.process_time()
    running, count, stopped_early = 0.0, 0, False
    for step in range(1, steps + 1):
        x, y = make_batch(task, T, args.batch, train_gen)
        loss = ((model(x) - (y - model.shift) / model.scale) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        running += loss.item()
        count += 1
        over_budget = time.perf_counter() - start > args.budget
        if step % args.eval_every == 0 or step == steps or over_budget:
            point = {"step": step, "train_loss": running / count, **evaluate(model, task, x_test, y_test)}
            point["seconds"] = round(time.perf_counter() - start, 2)
            curve.append(point)
            running, count = 0.0, 0
            for t in THRESHOLDS[task]:
                if reached[str(t)] is None and point["mse"] < t:
                    reached[str(t)] = step
        if over_budget:
            stopped_early = step < steps
            break
    final = curve[-1]
    return {
        "task": task,
        "length": T,
        "mode": mode,
        "refine": refine,
        "steps": final["step"],
        "steps_planned": steps,
        "stopped_by_budget": stopped_early,
        "seed": args.seed,
        "seconds": final["seconds"],
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "final": {k: v for k, v in final.items() if k not in ("step", "seconds", "train_loss")},
        "best_mse": min(p["mse"] for p in curve),
        "steps_to_threshold": reached,
        "gates_init": gates_init,
        "gates_final": gate_summary(model, x_gate),
        "curve": curve,
    }


# ---------------------------------------------------------------- plot (Pillow)

COLORS = {"none": (60, 60, 60), "add": (31, 119, 180), "mul": (214, 39, 40)}


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Test MSE (log scale) against training step, one panel per mode, one line per refinement."""
    from PIL import Image, ImageDraw, ImageFont

    modes = [m for m in ("lstm", "gru", "mgu") if any(r["mode"] == m for r in runs)]
    pw, ph, ml, mr, mt, mb = 360, 260, 62, 14, 44, 46
    img = Image.new("RGB", (max(len(modes) * pw, 720), ph + 30), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
        big = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = big = ImageFont.load_default()
    # y range: from the best error to 10x the error at step 0; diverged runs (inf, NaN or
    # beyond the top) are drawn along the top edge and flagged in the legend.
    finite = [p["mse"] for r in runs for p in r["curve"] if math.isfinite(p["mse"]) and p["mse"] > 0]
    top = 10 * max(r["curve"][0]["mse"] for r in runs)
    lo = math.floor(math.log10(min(finite)))
    hi = max(math.ceil(math.log10(top)), lo + 1)
    max_step = max(r["curve"][-1]["step"] for r in runs)
    draw.text((8, 6), title, fill="black", font=big)
    for col, mode in enumerate(modes):
        x0, y0 = col * pw + ml, mt
        x1, y1 = (col + 1) * pw - mr, ph + 30 - mb
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text(((x0 + x1) // 2 - 14, y0 - 18), mode.upper(), fill="black", font=big)

        def sx(step):
            return x0 + (x1 - x0) * step / max_step

        def sy(v):
            v = 10.0**hi if not math.isfinite(v) else min(max(v, 10.0**lo), 10.0**hi)
            return y1 - (y1 - y0) * (math.log10(v) - lo) / (hi - lo)

        for e in range(lo, hi + 1):
            y = sy(10.0**e)
            draw.line((x0, y, x1, y), fill=(225, 225, 225))
            draw.text((x0 - 50, y - 7), f"1e{e}", fill="black", font=font)
        for k in range(5):
            step = round(max_step * k / 4)
            draw.text((sx(step) - 12, y1 + 4), str(step), fill="black", font=font)
        draw.text(((x0 + x1) // 2 - 30, y1 + 22), "step", fill="black", font=font)
        if col == 0:
            draw.text((4, y0 - 18), "test MSE", fill="black", font=font)
        for i, refine in enumerate(("none", "add", "mul")):
            run = next((r for r in runs if r["mode"] == mode and r["refine"] == refine), None)
            if run is None:
                continue
            pts = [(sx(p["step"]), sy(p["mse"])) for p in run["curve"]]
            draw.line(pts, fill=COLORS[refine], width=2)
            lx, ly = x1 - 130, y0 + 8 + 16 * i
            draw.line((lx, ly + 7, lx + 18, ly + 7), fill=COLORS[refine], width=3)
            diverged = not math.isfinite(run["final"]["mse"]) or run["final"]["mse"] > top
            draw.text((lx + 24, ly), refine + (" (diverged)" if diverged else ""), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def plot_title(task: str, T: int) -> str:
    return f"{task} task, T = {T}: test MSE (log scale) vs. training step"


# ---------------------------------------------------------------- tables


def fmt(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def summarize(results: list[dict]) -> str:
    lines = []
    for key in sorted({(r["task"], r["length"]) for r in results}):
        runs = [r for r in results if (r["task"], r["length"]) == key]
        task, T = key
        th = list(runs[0]["steps_to_threshold"])
        acc = task == "counting"
        lines.append(f"\n#### {task}, T = {T} ({runs[0]['steps_planned']} steps planned)\n")
        seeds = len({r["seed"] for r in runs}) > 1
        head = ["mode", "refine"] + (["seed"] if seeds else []) + ["final MSE", "best MSE"] + (["accuracy"] if acc else [])
        head += [f"steps to MSE<{t}" for t in th]
        head += ["saturated σ init→final", "σ<0.05 / σ>0.95 final", "gate value range final", "gates outside [0,1]", "wall s"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        order = ("lstm", "gru", "mgu"), ("none", "add", "mul")
        for r in sorted(runs, key=lambda r: (order[0].index(r["mode"]), order[1].index(r["refine"]), r["seed"])):
            gi, gf = r["gates_init"], r["gates_final"]
            final = r["final"]["mse"]
            shown = fmt(final) if math.isfinite(final) and final < 1e3 else f"diverged ({final:.0e})"
            row = [r["mode"], r["refine"]] + ([str(r["seed"])] if seeds else []) + [shown, fmt(r["best_mse"])]
            if acc:
                row.append(fmt(r["final"]["accuracy"], 3))
            row += [fmt(r["steps_to_threshold"][t]) for t in th]
            row += [
                f"{gi['saturated']:.1%} → {gf['saturated']:.1%}",
                f"{gf['below_low']:.1%} / {gf['above_high']:.1%}",
                f"[{gf['value_min']:.2f}, {gf['value_max']:.2f}]",
                f"{gf['outside_01']:.1%}",
                f"{r['seconds']:.0f}" + ("*" if r["stopped_by_budget"] else ""),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="adding:100,adding:200,counting:100", help="comma-separated name:length")
    p.add_argument("--modes", default="lstm,gru,mgu")
    p.add_argument("--refines", default="none,add,mul")
    p.add_argument("--steps", type=int, default=0, help="training steps per run (default: per task, about 1 min)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--budget", type=float, default=600.0, help="wall-clock cap per run in seconds (marks the run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results-dir", type=Path, default=Path("docs/results"))
    p.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    p.add_argument("--summarize", nargs="+", type=Path, help="only print tables of these result files")
    p.add_argument("--plot", nargs="+", type=Path, help="only redraw the plots of these result files")
    args = p.parse_args()

    if args.summarize:
        results = []
        for f in args.summarize:
            data = json.loads(f.read_text())
            for r in data["runs"]:
                r.setdefault("seed", data["config"]["seed"])
                results.append(r)
        print(summarize(results))
        return
    if args.plot:
        for f in args.plot:
            runs = json.loads(f.read_text())["runs"]
            plot(runs, args.img_dir / f"{f.stem}.png", plot_title(runs[0]["task"], runs[0]["length"]))
        return
    torch.set_num_threads(args.threads)
    # Gradients that fade over hundreds of steps become denormal floats, which make CPU
    # matrix products ~100x slower; flushing them to zero changes nothing measurable here.
    torch.set_flush_denormal(True)
    for spec in args.tasks.split(","):
        task, _, length = spec.partition(":")
        T = int(length or 100)
        runs = []
        for mode in args.modes.split(","):
            for refine in args.refines.split(","):
                run = run_one(task, T, mode, refine, args)
                runs.append(run)
                print(
                    f"{task}:{T} {mode:<4} {refine:<4} final mse {run['final']['mse']:.4g} "
                    f"steps→{run['steps_to_threshold']} saturated {run['gates_final']['saturated']:.1%} "
                    f"range [{run['gates_final']['value_min']:.2f}, {run['gates_final']['value_max']:.2f}] "
                    f"{run['seconds']:.0f}s",
                    flush=True,
                )
        name = f"refined_gates_{task}{T}"
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "summarize"}
        config["torch"] = torch.__version__
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / f"{name}.json").write_text(json.dumps({"config": config, "runs": runs}, indent=1))
        plot(runs, args.img_dir / f"{name}.png", plot_title(task, T))
        print(summarize(runs), flush=True)


if __name__ == "__main__":
    main()
