"""`textrec train`: options -> TrainConfig -> textrec.train, with a rich progress display."""

from __future__ import annotations

import signal
import sys
import tomllib
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from textrec.distributed import World, launch, torchrun_command, without_option
from textrec.files import Unreadable, read_regular
from textrec.memory import keep_freed_memory
from textrec.model.backbones import BACKBONES, VGG_CHANNELS
from textrec.nn.gates import parse_gate_names
from textrec.train import TrainCallbacks, TrainConfig, TrainStart, check_processes
from textrec.train import train as run_training

from .common import console, err_console, fail, user_errors

MAX_EVENT_LINES = 20


class RichCallbacks(TrainCallbacks):
    """Shows the data mix, a progress bar with loss / speed / ETA, and validation lines."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.events = 0

    def on_start(self, start: TrainStart) -> None:
        table = Table(title="training data")
        for column in ("source", "samples", "share", "per batch", "dropped by screening"):
            table.add_column(column)
        for source in start.sources:
            dropped = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in source.dropped.items()) or "-"
            size = "endless" if source.size is None else str(source.size)
            if source.fonts is not None:
                size += f" ({source.fonts} fonts)"
            table.add_row(source.name, size, f"{source.share:.0%}", str(source.per_batch), dropped)
        self.progress.console.print(table)
        for source in start.sources:
            for example in source.examples:
                self.progress.console.print(f"  dropped e.g. {example}", style="dim", soft_wrap=True, markup=False)
            for path, reason in source.rejected_fonts[:5]:
                self.progress.console.print(f"  font not used: {path}: {reason}", style="dim", soft_wrap=True, markup=False)
            if len(source.rejected_fonts) > 5:
                self.progress.console.print(f"  ... and {len(source.rejected_fonts) - 5} more fonts not used", style="dim")
        val = ", ".join(f"{name} ({n})" for name, n in start.val_sets) or "none"
        processes = f" x {start.processes} processes (the batch split among them)" if start.processes > 1 else ""
        self.progress.console.print(
            f"model: {start.parameters / 1e6:.2f} M parameters, {start.frames} output frames; device: {start.device}{processes} "
            f"({start.precision}); "
            f"validation: {val}"
        )
        if start.resumed_from is not None:
            self.progress.console.print(f"[bold]resuming from step {start.resumed_from}[/]")
        if start.time_budget is not None:  # the steps are not known beforehand: no step total, no time left
            self.progress.console.print(f"training for {start.time_budget:g} s (--time-budget), at most {start.max_steps:,} steps")
        self.task = self.progress.add_task(
            "train", total=None if start.time_budget is not None else start.max_steps, completed=start.resumed_from or 0,
            loss=float("nan"), speed=0.0,
        )

    def on_step(self, step: int, loss: float, lr: float, images_per_second: float) -> None:
        self.progress.update(self.task, completed=step, loss=loss, speed=images_per_second)

    def on_validation(self, step, results, total, is_best) -> None:
        parts = ", ".join(f"{r.name} {r.accuracy:.2f}%" for r in results)
        mark = " [green]best[/]" if is_best else ""
        self.progress.console.print(
            f"step {step}: validation word acc. {total.accuracy:.2f}%, 1-NED {total.ned:.4f} ({parts}){mark}"
        )

    def on_event(self, message: str) -> None:
        self.events += 1
        if self.events <= MAX_EVENT_LINES:
            self.progress.console.print(message, style="yellow", soft_wrap=True, markup=False)
        elif self.events == MAX_EVENT_LINES + 1:
            self.progress.console.print("[yellow]further messages are counted in the summary[/]")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _merge_config_file(ctx: typer.Context, values: dict, path: Path) -> dict:
    """Values from a TOML recipe for every option not given on the command line."""
    try:
        recipe = tomllib.loads(read_regular(path, 1 << 20).decode("utf-8"))
    except Unreadable as exc:
        fail(f"{path}: cannot read the config file ({exc.reason})")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        fail(f"{path}: cannot read the config file ({exc})")
    recipe = {key.replace("-", "_"): value for key, value in recipe.items()}
    unknown = sorted(set(recipe) - set(values))
    if unknown:
        fail(f"{path}: unknown option(s) {', '.join(unknown)}; use the names of `textrec train --help`")
    merged = dict(values)
    for key, value in recipe.items():
        # Compared by name: typer may use click or its own vendored copy of it.
        source = ctx.get_parameter_source(key)
        if source is None or source.name == "DEFAULT":
            merged[key] = value
    return merged


@user_errors
def train(
    ctx: typer.Context,
    train_data: List[str] = typer.Option([], help="LMDB folder or glob, optionally :RATIO; `synth[:RATIO]` renders on the fly. Repeatable."),
    val_data: List[str] = typer.Option([], help="LMDB folder(s) for validation. Repeatable."),
    synth_fonts: List[str] = typer.Option([], help="Font file or folder for `synth`, besides the system's fonts. Repeatable."),
    output: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, config and metrics. An existing run there is resumed."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML recipe of these options (e.g. max_steps = 20000); the command line overrides it."),
    max_steps: int = typer.Option(20000, min=1),
    time_budget: Optional[float] = typer.Option(
        None, help="Seconds to train (loading included; summed over resumes): the learning rate's cosine decay ends "
        "when they are used and the run stops there, at whatever step its speed reached (--max-steps still caps it).",
    ),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warm-up then cosine decay)."),
    rnn: str = typer.Option("lstm", help="Recurrent unit: lstm, gru or mgu."),
    refine: str = typer.Option("none", help="Refined gates: none, add or mul (see docs/refined_gates.md before choosing)."),
    refine_gates: Optional[str] = typer.Option(None, help="Comma-separated sigmoid gates to refine, e.g. i,o; all (the default): every sigmoid gate of the unit."),
    refine_init: str = typer.Option("default", help="default, or vanilla: start as vanilla gates (zero projection; mul uses 1 + x̃)."),
    refine_bound: str = typer.Option("none", help="none, or tanh: bounded short connection x̃ = tanh(W x)."),
    forget_bias: float = typer.Option(0.0, help="Initial bias of the gate that keeps the state (LSTM f); 0 keeps torch's init."),
    input_map: bool = typer.Option(False, help="Linear map before each recurrent layer, so that x̃ = x_t with no projection."),
    refine_rank: int = typer.Option(
        0, min=0, help="0: full projections for x̃; r: low-rank ones (r below --hidden-size), cheaper; --init-from a "
        "refined checkpoint factors its projections (truncated SVD).",
    ),
    refine_lr_scale: float = typer.Option(
        1.0, help="The short connection's projections learn at lr × this (e.g. 0.1 when refining a trained vanilla model)."
    ),
    charset: str = typer.Option("36", help="36, 62, 94, 95 (94 + space), file:PATH, or the characters themselves."),
    hidden_size: int = typer.Option(256, min=1),
    backbone: str = typer.Option("vgg", help="Convolutional backbone: vgg (the CRNN paper's) or resnet (deep-text-recognition-benchmark's)."),
    channels: Optional[str] = typer.Option(
        None, help="The backbone's widths, comma-separated: seven for vgg (default 64,128,256,256,512,512,512), four for resnet (default 128,256,512,512)."
    ),
    height: int = typer.Option(
        32, min=32, help="Input height in pixels: 32 (the CRNN paper's) or more; the backbone averages the rows it leaves."
    ),
    width: int = typer.Option(100, min=8, help="Input width in pixels: the widest input (narrower crops keep their aspect ratio)."),
    augment: bool = typer.Option(True, help="Augment real training images on the device (synthetic ones always get their effects)."),
    val_interval: int = typer.Option(500, min=1),
    val_max_samples: Optional[int] = typer.Option(None, min=1, help="Validate on at most this many samples per set."),
    save_interval: int = typer.Option(200, min=1, help="Steps between resume saves."),
    workers: int = typer.Option(2, min=0, help="Data-loading processes."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    amp: bool = typer.Option(True, help="Mixed precision: see --amp-dtype."),
    amp_dtype: str = typer.Option(
        "auto",
        help="What --amp computes in: auto (float16 on CUDA, float32 on the CPU), bfloat16 (CUDA or CPU; on a CPU with "
        "AMX or AVX512-BF16 the steps are about 1.5x faster), float16 (CUDA).",
    ),
    scene_device: str = typer.Option("auto", help="Where batches of images are finished: auto (the training device) or cpu."),
    finish_ahead: int = typer.Option(
        0, min=0, max=64,
        help="Finish up to this many batches ahead in a background thread, on their own CUDA stream, while the step "
        "trains (0: in the training loop). Speed only: the images are the same.",
    ),
    width_buckets: int = typer.Option(
        0, min=0, max=4096,
        help="Pool the batches of this many steps, sort their samples by width and train them as batches of similar "
        "width, each cut to its widest sample: about 0.76 of the work per sample at 16 (0: every batch padded to "
        "--width). For continuing a trained model (--init-from), or from a step past the CTC blank plateau "
        "(--width-buckets-from): from the first step it keeps a new model on the plateau far longer.",
    ),
    width_buckets_from: int = typer.Option(
        0, min=0,
        help="Train full-width batches before this step and width buckets from it on (rounded up to a whole pool): "
        "from scratch, a step after the first words are read (the validation accuracy leaves 0).",
    ),
    init_from: Optional[Path] = typer.Option(
        None, help="Start from this checkpoint's weights with a fresh optimizer (the charset may grow). Ignored when resuming."
    ),
    accept_changes: bool = typer.Option(
        False, "--accept-changes",
        help="Resume even though data, batch size, learning rate, ... differ from the run's; the new values apply from here on.",
    ),
    nproc_per_node: int = typer.Option(
        1, min=1, help="Train in this many processes on this machine (torchrun; --batch-size is the global batch). See docs/scale.md."
    ),
) -> None:
    """Train a CRNN with CTC; run the same command again to resume an interrupted run."""
    values = {k: v for k, v in locals().items() if k not in ("ctx", "config")}
    if config is not None:
        values = _merge_config_file(ctx, values, config)
    if not values["train_data"]:
        fail("give at least one --train-data (or train_data in --config)")
    if values["output"] is None:
        fail("give --output (or output in --config)")
    world = World.from_environment()
    nproc = values.pop("nproc_per_node")
    if nproc > 1 and not world.distributed:  # not yet under torchrun: start it on this same command line
        if len(sys.argv) < 2 or sys.argv[1] != "train":
            fail("--nproc-per-node needs the command line `textrec train ...`; or start torchrun yourself (docs/scale.md)")
        check_processes(values["batch_size"], values["time_budget"], nproc)  # one error line, not one per process
        args = without_option(sys.argv[2:], "--nproc-per-node")
        raise typer.Exit(launch(torchrun_command(nproc, ["-m", "cli.main", "train", *args])))
    gates = values.pop("refine_gates")
    # "all" names no subset, e.g. to undo a recipe's i,o with --refine none
    values["refine_gates"] = parse_gate_names(gates) if isinstance(gates, str) else list(gates or [])
    widths = values.pop("channels")
    if isinstance(widths, str):
        try:
            widths = tuple(int(c) for c in widths.split(","))
        except ValueError:
            fail(f"--channels {widths!r}: give comma-separated whole numbers, e.g. 64,128,256,256,512,512,512")
    train_config = TrainConfig(
        **{**values, "train_data": list(values["train_data"]), "val_data": [str(p) for p in values["val_data"]],
           "synth_fonts": [str(p) for p in values["synth_fonts"]],
           "output": str(values["output"]),
           "init_from": str(values["init_from"]) if values["init_from"] else None,
           "channels": tuple(widths) if widths else BACKBONES.get(values["backbone"], (None, VGG_CHANNELS))[1]}
    )
    # Gradients that fade into denormal floats make CPU steps several times slower; flush them.
    torch.set_flush_denormal(True)
    keep_freed_memory()  # textrec/memory.py: about 5 % on CPU steps
    # A scheduler's SIGTERM is handled like Ctrl-C: the job saves its state and stops cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[speed]:.0f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not world.is_main,  # rank 0 alone reports
    ) as progress:
        result = run_training(train_config, RichCallbacks(progress))
    if not world.is_main:
        return
    summary = f"{result.steps} steps"
    if result.best_accuracy is not None:
        summary += f"; best validation word acc. {result.best_accuracy:.2f}% at step {result.best_step}"
    if result.skipped_samples:
        summary += f"; {result.skipped_samples} unreadable samples skipped"
    if result.nonfinite_steps:
        summary += f"; {result.nonfinite_steps} steps skipped for non-finite loss/gradient"
    saved = ", ".join(n for n in ("best.safetensors", "last.safetensors") if (Path(result.output) / n).is_file())
    console.print(f"{summary}. Checkpoints in {result.output} ({saved})")
    if result.interrupted:
        raise typer.Exit(130)
