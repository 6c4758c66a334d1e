"""The training job: data mix -> CRNN -> CTC, with validation, best/last checkpoints and exact resume.

Everything the run writes lives in its output folder:
  config.json      the TrainConfig of the run
  resume.pt        full state for resuming (weights, optimizer, scheduler, step, RNG); loaded weights_only
  last.safetensors the latest model; best.safetensors the best on validation (usable with eval/predict)
  metrics.jsonl    one JSON object per log interval and per validation
All files are replaced atomically, so a run killed at any moment resumes from its last save.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from . import __version__
from .charset import Charset
from .checkpoint import (
    Checkpoint,
    atomic_write,
    describe_config_difference,
    load_checkpoint,
    load_state,
    load_weights,
    remove_temp_files,
    save_checkpoint,
    save_state,
)
from .data.images import Preprocess
from .data.lmdb_store import LmdbDataset, close_all
from .data.buckets import DEFAULT_MULTIPLE, WidthBuckets, bucket_start
from .data.training import open_sources, split_batch, step_loader
from .distributed import World
from .errors import CheckpointError, ConfigError, OutputError, TrainingError
from .evaluate import BenchmarkResult, combine, evaluate_dataset
from .files import RunLock, Unreadable, make_output_folder, os_reason, read_regular
from .model import CRNN, CRNNConfig
from .model.backbones import BACKBONES, VGG_CHANNELS
from .nn import GatedRNN, GraphedTraining, for_training, tensor_core_matmuls
from .predict import Recognizer, resolve_device
from .synth.ahead import FinishAhead
from .synth.pipeline import Finisher
from .transfer import describe_rank_change, seeds_behind, transfer_weights

# Options that define the network and its input: a resumed run must keep them.
ARCHITECTURE_KEYS = (
    "rnn", "refine", "refine_gates", "refine_init", "refine_bound", "forget_bias", "input_map", "refine_rank",
    "hidden_size", "backbone", "channels", "dropout", "charset", "height", "width", "keep_ratio",
)
# Options that give the run its meaning: a resumed run keeps them unless told otherwise (--accept-changes).
# max_steps is not among them (a run is lengthened by resuming it with more steps), nor are the options
# of where and how fast it runs (device, scene_device, workers, finish_ahead, amp, amp_dtype), of its logging, or init_from
# (ignored when resuming).
RUN_KEYS = (
    "train_data", "val_data", "val_max_samples", "synth_fonts", "batch_size", "lr", "weight_decay",
    "refine_lr_scale", "warmup_steps", "grad_clip", "augment", "seed", "width_buckets", "width_buckets_from",
)
# Files a run writes in its folder: a folder holding none of them, but other files, is not a run.
RUN_FILES = ("config.json", "resume.pt", "metrics.jsonl", "last.safetensors", "best.safetensors")


@dataclass
class TrainConfig:
    train_data: list[str]
    val_data: list[str]
    output: str
    max_steps: int = 20000
    # Seconds of training (summed over the run's processes, loading included): with it the cosine decay ends at the
    # budget's last second and the run stops there, whatever its rate (max_steps still caps it). A GPU lease uses it.
    time_budget: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 300
    grad_clip: float = 5.0
    rnn: str = "lstm"
    # Vanilla gates by default: "add" on all gates diverged in the CRNN and "mul" stalled; "add" on
    # i,o trains stably but tied vanilla on validation (docs/refined_gates.md, "STR evidence").
    refine: str = "none"
    refine_gates: list[str] = field(default_factory=list)  # empty: all sigmoid gates of the unit
    # Refined-gate variants (docs/refined_gates.md, "Variants"); defaults: the first implementation.
    refine_init: str = "default"  # "vanilla": start-as-vanilla (the refinement adds nothing at step 0)
    refine_bound: str = "none"  # "tanh": bounded short connection
    forget_bias: float = 0.0  # 0: torch's random init; else the LSTM forget-gate bias at init
    input_map: bool = False  # linear map before each recurrent layer: x̃ = x_t, no projection
    refine_rank: int = 0  # 0: full projections x̃ = W x; r: low-rank ones W_up W_down (docs/refined_gates.md)
    # The short connection's projections learn at lr × this. Adam moves a zero-initialised weight by about
    # lr per step whether or not it helps; a smaller rate lets a start-as-vanilla refinement grow slowly
    # when it continues a trained vanilla model (docs/refined_gates.md, "Continuing a trained vanilla CRNN").
    refine_lr_scale: float = 1.0
    hidden_size: int = 256
    backbone: str = "vgg"  # or "resnet" (textrec.model.backbones); `channels` are its widths
    channels: tuple[int, ...] = VGG_CHANNELS
    dropout: float = 0.0
    charset: str = "36"
    height: int = 32
    width: int = 100
    keep_ratio: bool = True
    augment: bool = True
    val_interval: int = 500
    val_max_samples: int | None = None
    log_interval: int = 20
    save_interval: int = 200
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    # What `amp` autocasts to: "auto" (float16 on CUDA, nothing on the CPU), "bfloat16" (either device; on a
    # CPU fast only with bfloat16 instructions, see `mixed_precision`), or "float16" (CUDA only).
    amp_dtype: str = "auto"
    max_bad_steps: int = 10
    # Font files or folders for the `synth` source, searched besides the system's fonts.
    synth_fonts: list[str] = field(default_factory=list)
    # A checkpoint to start from (weights only; fresh optimizer and schedule). Ignored when resuming.
    init_from: str | None = None
    # Where the batched image stage runs: "auto" (the training device) or "cpu" (e.g. to spare GPU memory).
    scene_device: str = "auto"
    # Batches finished ahead by a background thread on their own CUDA stream while the step trains (0: in the
    # training loop). Speed only: the images are the same (textrec/synth/ahead.py).
    finish_ahead: int = 0
    # Width-bucketed batches (textrec/data/buckets.py): the finished batches of this many steps are pooled, sorted
    # by content width and trained as batches of similar width, each cut to its widest sample (0: every batch is
    # padded to the full width). It decides which step trains which sample, so a run keeps it. For continuing a
    # trained model: from scratch it delayed leaving the CTC blank plateau in every seed (docs/model.md).
    width_buckets: int = 0
    # The first step trained in width buckets (rounded up to a whole pool); the steps before it train full-width
    # batches. From scratch: a step past the blank plateau, so that one run does what a full-width run resumed with
    # --width-buckets would (docs/model.md, "Input geometry").
    width_buckets_from: int = 0
    # Resume even though RUN_KEYS differ from the saved run's (the new values apply from here on).
    accept_changes: bool = False

    def to_dict(self) -> dict:
        values = asdict(self)
        values["channels"] = list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        return cls(**values)


@dataclass
class SourceInfo:
    name: str
    size: int | None  # None: endless generator
    share: float
    per_batch: int
    dropped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    fonts: int | None = None  # faces the synthetic source draws from
    rejected_fonts: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): found or named, not used


@dataclass
class TrainStart:
    """What the run is about to do, for the caller to show."""

    sources: list[SourceInfo]
    val_sets: list[tuple[str, int]]
    parameters: int
    device: str
    frames: int
    resumed_from: int | None
    max_steps: int
    processes: int = 1  # data-parallel processes, each taking batch_size / processes samples of every step
    time_budget: float | None = None  # seconds: the run ends when they are used, its steps unknown beforehand
    precision: str = "float32"  # what the forward pass computes in: "float32", "float16 mixed", "bfloat16 mixed"


@dataclass
class TrainResult:
    steps: int
    best_accuracy: float | None
    best_step: int | None
    interrupted: bool
    skipped_samples: int
    nonfinite_steps: int
    output: str


class TrainCallbacks:
    """Hooks through which the job reports progress; the default does nothing."""

    def on_start(self, start: TrainStart) -> None: ...

    def on_step(self, step: int, loss: float, lr: float, images_per_second: float) -> None: ...

    def on_validation(self, step: int, results: list[BenchmarkResult], total: BenchmarkResult, is_best: bool) -> None: ...

    def on_event(self, message: str) -> None: ...

    def inspect_model(self, step: int, model: nn.Module) -> None:
        """Called after each validation with the model in eval mode, for studies that measure it
        (gate statistics in benchmarks/refine_ablation.py). It must not change the model."""


_INT_BOUNDS = {
    "max_steps": (1, 10**12), "batch_size": (1, 1 << 20), "warmup_steps": (0, 10**12), "hidden_size": (1, 8192),
    "height": (32, 1024), "width": (8, 8192), "val_interval": (1, 10**12), "log_interval": (1, 10**12),
    "save_interval": (1, 10**12), "workers": (0, 1024), "max_bad_steps": (1, 10**12), "seed": (-(2**63), 2**64 - 1),
    "finish_ahead": (0, 64), "refine_rank": (0, 8192), "width_buckets": (0, 4096), "width_buckets_from": (0, 10**12),
}


# What --amp-dtype takes (see `mixed_precision`).
AMP_DTYPES = ("auto", "bfloat16", "float16")


def check_config(config: TrainConfig) -> None:
    """Every value within bounds before anything is built (values may come from a TOML file): ConfigError names it."""

    def bad(name: str, value, expected: str) -> ConfigError:
        return ConfigError(f"--{name.replace('_', '-')} must be {expected} (got {value!r})")

    for name, (low, high) in _INT_BOUNDS.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad(name, value, f"a whole number from {low:,} to {high:,}")
    reals = {"lr": "a finite number above 0", "grad_clip": "a finite number above 0",
             "weight_decay": "a finite number, 0 or more", "forget_bias": "a finite number",
             "refine_lr_scale": "a finite number above 0",
             "dropout": "a number from 0 up to (not including) 1"}
    for name, expected in reals.items():
        value = getattr(config, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (name in ("lr", "grad_clip", "refine_lr_scale") and value <= 0) or (name == "weight_decay" and value < 0) \
                or (name == "dropout" and not 0 <= value < 1):
            raise bad(name, value, expected)
    budget = config.time_budget
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget < math.inf):
        raise bad("time_budget", budget, "a finite number of seconds above 0")
    samples = config.val_max_samples
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 1):
        raise bad("val_max_samples", samples, "a whole number of at least 1")
    if config.backbone not in BACKBONES:
        raise bad("backbone", config.backbone, f"one of {', '.join(BACKBONES)}")
    channels, count = config.channels, len(BACKBONES[config.backbone][1])
    if len(channels) != count or any(not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= 8192 for c in channels):
        default = ",".join(map(str, BACKBONES[config.backbone][1]))
        raise bad("channels", list(channels), f"{count} whole numbers from 1 to 8192 for the {config.backbone} backbone (its default: {default})")
    for name in ("train_data", "val_data", "synth_fonts", "refine_gates"):
        value = getattr(config, name)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad(name, value, "a list of strings")
    for name in ("augment", "amp", "keep_ratio", "input_map", "accept_changes"):
        if not isinstance(getattr(config, name), bool):
            raise bad(name, getattr(config, name), "true or false")
    if config.amp_dtype not in AMP_DTYPES:
        raise bad("amp_dtype", config.amp_dtype, f"one of {', '.join(AMP_DTYPES)}")
    if config.width_buckets_from and not config.width_buckets:
        raise ConfigError(f"--width-buckets-from {config.width_buckets_from} needs --width-buckets (the pool size)")


def mixed_precision(amp_dtype: str | None, device: torch.device) -> torch.dtype | None:
    """The dtype the forward pass autocasts to on `device` for `--amp-dtype` (None: `--no-amp`), or None for
    float32 throughout (the recurrent layers and the loss stay float32 in any case). "auto" is float16 on CUDA
    (with a GradScaler) and nothing on the CPU, where bfloat16 is asked for by name: with AMX or AVX512-BF16 it
    makes the backbone's convolutions about 2.4x faster (docs/model.md, "bfloat16 on the CPU"); without them it
    is emulated and slower than float32."""
    if amp_dtype is None:
        return None
    if amp_dtype == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp_dtype == "float16" and device.type != "cuda":
        raise ConfigError(f"--amp-dtype float16 is for CUDA; on the {device.type.upper()} use bfloat16 (or --no-amp)")
    return getattr(torch, amp_dtype)


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """How a run's precision is named (`mixed_precision`'s result): "float32", "bfloat16 mixed" or "float16 mixed"."""
    return "float32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} mixed"


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16), as torch's own checks say."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, present in torch 2.11-2.14
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def model_config_for(config: TrainConfig, charset: Charset) -> CRNNConfig:
    return CRNNConfig(
        num_classes=charset.num_classes,
        rnn=config.rnn,
        refine=config.refine,
        refine_gates=tuple(config.refine_gates) or None,
        hidden_size=config.hidden_size,
        backbone=config.backbone,
        channels=tuple(config.channels),
        dropout=config.dropout,
        refine_init=config.refine_init,
        refine_bound=config.refine_bound,
        forget_bias=float(config.forget_bias),
        input_map=bool(config.input_map),
        refine_rank=config.refine_rank,
    )


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW groups: weights (decayed), biases and norms (not decayed), and the refined gates' short-connection
    projections (decayed, at lr × refine_lr_scale; a group of their own only in refined models)."""
    short = [w for module in model.modules() if isinstance(module, GatedRNN) for w in module.short_connection_weights()]
    short_ids = {id(w) for w in short}  # by identity: tensors compare element-wise
    decay, no_decay = [], []
    for parameter in model.parameters():
        if id(parameter) not in short_ids:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if short:
        groups.append({"params": short, "weight_decay": config.weight_decay, "lr_scale": config.refine_lr_scale})
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    return groups


def adamw(params, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW as training runs it. On CUDA its fused kernel: a few launches for all weights instead of a few per
    weight, and with a GradScaler no wait for the host to read whether the gradients overflowed.
    TEXTREC_FUSED_ADAMW=0 keeps torch's default (the lease script's retry after a failure does)."""
    fused = device.type == "cuda" and os.environ.get("TEXTREC_FUSED_ADAMW", "1") != "0"
    return torch.optim.AdamW(params, lr=lr, fused=True if fused else None)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    return _cosine((step - warmup) / max(1, total - warmup))


def _cosine(progress: float) -> float:
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


_clock = time.perf_counter  # the time budget's clock (tests replace it)


class _Schedule:
    """The learning rate's factor: linear warm-up over `warmup` steps, then cosine decay to 1 % of the peak at
    max_steps, or with a time budget at the budget's last second, when the run stops. A GPU lease's rate is known
    only once it trains (its loader warms up over minutes), so a schedule fitted to steps ended lease 4 a minute early."""

    def __init__(self, config: TrainConfig, warmup: int):
        self.config, self.warmup = config, warmup
        self.seconds_before = 0.0  # trained by the run's earlier processes
        self.warmup_end: float | None = None  # the run's second at which warm-up ended (time budget)
        self.started: float | None = None

    def start(self) -> None:
        self.started = _clock()

    def seconds(self) -> float:
        return self.seconds_before + (_clock() - self.started if self.started is not None else 0.0)

    def spent(self) -> bool:
        return self.config.time_budget is not None and self.seconds() >= self.config.time_budget

    def factor(self, step: int) -> float:
        budget = self.config.time_budget
        if budget is None or step < self.warmup:
            return _lr_factor(step, self.warmup, self.config.max_steps)
        now = self.seconds()
        if self.warmup_end is None:
            self.warmup_end = now
        return _cosine((now - self.warmup_end) / max(budget - self.warmup_end, 1e-9))

    def state_dict(self) -> dict:
        return {"seconds": self.seconds(), "warmup_end": self.warmup_end}

    def load_state_dict(self, state: dict) -> None:
        self.seconds_before, self.warmup_end = float(state["seconds"]), state["warmup_end"]


class _Run:
    """One training run's state; `train()` below is the entry point."""

    def __init__(self, config: TrainConfig, callbacks: TrainCallbacks, world: World | None = None):
        self.config = config
        self.world = world or World()
        self.callbacks = callbacks if self.world.is_main else TrainCallbacks()  # other ranks stay silent
        self.output = Path(config.output)
        self.charset = Charset.from_spec(config.charset)
        self.preprocess = Preprocess(height=config.height, width=config.width, keep_ratio=config.keep_ratio)
        self.model_config = model_config_for(config, self.charset)
        self.device = self.world.device(resolve_device(config.device))
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        try:
            self.model = CRNN(self.model_config).to(self.device)
        except ValueError as exc:  # an unknown unit, refinement or gate name
            raise TrainingError(str(exc)) from None
        if not self.world.is_main:  # every rank built the same weights (DDP also sends rank 0's); dropout differs
            torch.manual_seed(self.world.seed(config.seed))
            random.seed(self.world.seed(config.seed))
        # What runs forward and backward: the model itself, or in a distributed run its DDP wrapper
        # (which averages the gradients over the ranks). self.model is always the bare model (saved, validated).
        self.network: nn.Module = self.model
        self.frames = self.model.output_length(config.width)
        self.optimizer = adamw(_parameter_groups(self.model, config), config.lr, self.device)
        warmup = min(config.warmup_steps, max(1, config.max_steps // 10))
        self.schedule = _Schedule(config, warmup)
        # A plain function for LambdaLR: it would save an object's attributes (the config) into resume.pt.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.schedule.factor(s))
        self.ctc = nn.CTCLoss(blank=0, reduction="mean", zero_infinity=True)
        self.amp_dtype = mixed_precision(config.amp_dtype if config.amp else None, self.device)
        # float16 needs its gradients scaled against underflow; bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best_accuracy: float | None = None
        self.best_ned = 0.0  # breaks ties in accuracy (e.g. 0 % early on): the closer reading wins
        self.best_step: int | None = None
        self.skipped_samples = 0
        self.nonfinite_steps = 0
        # What the weights learnt before this run (--init-from): samples and the checkpoints they came through.
        self.prior: dict = {"samples_seen": 0, "lineage": []}
        self.accepted: str | None = None  # the line saying which changed hyper-parameters a resume accepted
        self.val_sets = [(Path(p).name, LmdbDataset(p)) for p in config.val_data]

    # --- persistence -------------------------------------------------------------------------

    def _checkpoint(self, extra: dict | None = None) -> Checkpoint:
        info = {
            "step": self.step,
            "textrec_version": __version__,
            "train_config": self.config.to_dict(),
            "samples_seen": self.prior["samples_seen"] + self.step * self.config.batch_size,
        }
        if self.prior["lineage"]:
            info["lineage"] = self.prior["lineage"]
        info.update(extra or {})
        return Checkpoint(self.model_config, self.charset, self.preprocess, self.model.state_dict(), info)

    def save_resume(self) -> None:
        # Ctrl-C / SIGTERM wait for the save to end: resume.pt and last.safetensors always match, and the
        # interrupt is never raised inside library code that could swallow it.
        with _interrupts_held():
            self._save_resume()

    def _save_resume(self) -> None:
        if not self.world.is_main:
            return
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_accuracy": self.best_accuracy,
            "best_ned": self.best_ned,
            "best_step": self.best_step,
            "skipped_samples": self.skipped_samples,
            "nonfinite_steps": self.nonfinite_steps,
            "prior": self.prior,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
            "config": self.config.to_dict(),
        }
        save_state(self.output / "resume.pt", state)
        save_checkpoint(self.output / "last.safetensors", self._checkpoint())

    def try_resume(self) -> int | None:
        path = self.output / "resume.pt"
        state = None
        if self.world.is_main:  # only rank 0 reads the folder (other nodes need not share it): it sends the state
            if path.exists():
                state = load_state(path)
            else:
                self._truncate_metrics(0)  # lines of a run killed before its first save
        state = self.world.broadcast(state)
        if state is None:
            return None
        try:
            self._restore(path, state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"{path}: incomplete or invalid training state ({type(exc).__name__}: {exc})") from None
        if self.world.is_main:
            self._truncate_metrics(self.step)
        return self.step

    def _restore(self, path: Path, state: dict) -> None:
        defaults = TrainConfig([], [], "").to_dict()  # keys that runs of older versions did not save
        saved = {k: state["config"].get(k, defaults[k]) for k in ARCHITECTURE_KEYS}
        wanted = {k: self.config.to_dict()[k] for k in ARCHITECTURE_KEYS}
        if saved != wanted:
            raise CheckpointError(
                f"{path}: the run in this folder was trained with other options "
                f"({describe_config_difference(saved, wanted)}); use the same options or another --output"
            )
        saved_run = {k: state["config"].get(k, defaults[k]) for k in RUN_KEYS}
        wanted_run = {k: self.config.to_dict()[k] for k in RUN_KEYS}
        changed = [k for k in RUN_KEYS if saved_run[k] != wanted_run[k]]
        if changed:
            difference = describe_config_difference(saved_run, wanted_run)
            if not self.config.accept_changes:
                raise CheckpointError(
                    f"{path}: the run in this folder was trained with other hyper-parameters ({difference}); "
                    "give the same values, add --accept-changes to go on with the new ones, or use another --output"
                )
            self.accepted = f"resuming with changed hyper-parameters (accepted by --accept-changes): {difference}"
        if not isinstance(state["step"], int) or state["step"] < 0:
            raise CheckpointError(f"{path}: invalid training state (step = {state['step']!r})")
        broken = [k for k, v in state["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            raise CheckpointError(f"{path}: the saved weights hold non-finite values (NaN or infinity) in {broken[0]}")
        load_weights(self.model, state["model"], str(path))
        saved_groups = len(state["optimizer"]["param_groups"])
        if saved_groups != len(self.optimizer.param_groups):  # refined runs of versions before refine_lr_scale
            raise CheckpointError(
                f"{path}: the optimizer state holds {saved_groups} parameter groups where this version uses "
                f"{len(self.optimizer.param_groups)}; start a new --output with --init-from {path.parent / 'last.safetensors'}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "schedule" in state:  # runs of versions before --time-budget: no clock to carry on
            self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.best_accuracy = state["best_accuracy"]
        self.best_ned = state.get("best_ned", 0.0)
        self.best_step = state["best_step"]
        self.skipped_samples = state["skipped_samples"]
        self.nonfinite_steps = state["nonfinite_steps"]
        self.prior = state.get("prior", self.prior)
        if self.world.is_main:  # the saved random state is rank 0's
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            random.setstate(_as_tuple(state["python_rng"]))
        else:  # the other ranks' streams follow from (seed, rank, step), whatever the number of ranks before
            torch.manual_seed(self.world.seed(self.config.seed, self.step))
            random.seed(self.world.seed(self.config.seed, self.step))
        if {"lr", "weight_decay", "refine_lr_scale"} & set(changed):  # the optimizer and schedule saved them
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            for group, wanted in zip(self.optimizer.param_groups, _parameter_groups(self.model, self.config)):
                peak = self.config.lr * wanted["lr_scale"]
                group.update(initial_lr=peak, lr=peak * factor, weight_decay=wanted["weight_decay"], lr_scale=wanted["lr_scale"])
            self.scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        if "val_data" in changed or "val_max_samples" in changed:  # another yardstick: "best" starts afresh
            self.best_accuracy, self.best_ned, self.best_step = None, 0.0, None

    def init_from(self, path: str) -> str:
        """Start from a checkpoint's weights; returns a line saying how the charset was mapped."""
        report = transfer_weights(self.model, self.charset, load_checkpoint(path))
        self.prior = {"samples_seen": report.samples_seen, "lineage": report.lineage}
        parts = [f"{report.kept} characters kept"]
        if report.from_lower:
            parts.append(f"{len(report.from_lower)} upper-case letters from their lower-case rows")
        if report.new:
            parts.append(f"{len(report.new)} new: {report.new!r}")
        if report.dropped:
            parts.append(f"{len(report.dropped)} dropped: {report.dropped!r}")
        if report.fresh:
            parts.append(f"refined gates start as vanilla ({len(report.fresh)} projections start at zero)")
        if report.rank is not None:
            parts.append(describe_rank_change(report.rank, report.rank_energy))
        line = f"initialised from {path} ({report.samples_seen:,} samples behind it): {', '.join(parts)}"
        if self.config.seed in seeds_behind(report.lineage):
            line += (
                f"; note: a run behind it trained with seed {self.config.seed} too, so this run draws its samples again"
                " in the same order (pass another --seed to draw new ones)"
            )
        return line

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the state we resume from, so the log has no duplicate steps."""
        path = self.output / "metrics.jsonl"
        if not path.exists():
            return
        try:
            text = read_regular(path).decode("utf-8", errors="replace")
        except Unreadable as exc:
            raise OutputError(f"{path}: cannot read the run's log ({exc.reason})") from None
        kept = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write(path, lambda handle: handle.write("".join(k + "\n" for k in kept).encode()))

    def log(self, record: dict) -> None:
        if not self.world.is_main:
            return
        path = self.output / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({os_reason(exc)}); the last saved state is in {self.output}") from None

    # --- validation --------------------------------------------------------------------------

    def validate(self) -> None:
        """Rank 0 validates the bare model; the other ranks wait for it."""
        if not self.world.is_main:
            self.world.barrier(self.device)
            return
        self._validate()
        self.world.barrier(self.device)

    def _validate(self) -> None:
        if not self.val_sets:
            return
        recognizer = Recognizer(self.model, self.charset, self.preprocess, self.device)
        results = [
            evaluate_dataset(recognizer, dataset, name, max_samples=self.config.val_max_samples)
            for name, dataset in self.val_sets
        ]
        total = combine(results, "validation")
        extra = {}
        if self.charset.case_sensitive:  # also the case-sensitive alphanumeric protocol, for the record
            cased = combine(
                [
                    evaluate_dataset(recognizer, d, n, protocol="62", max_samples=self.config.val_max_samples)
                    for n, d in self.val_sets
                ]
            )
            extra = {"val_accuracy_62": cased.accuracy, "val_ned_62": cased.ned}
        is_best = self.best_accuracy is None or (total.accuracy, total.ned) > (self.best_accuracy, self.best_ned)
        if is_best:
            self.best_accuracy, self.best_ned, self.best_step = total.accuracy, total.ned, self.step
            save_checkpoint(
                self.output / "best.safetensors",
                self._checkpoint({"val_accuracy": total.accuracy, "val_ned": total.ned}),
            )
        self.log(
            {
                "step": self.step,
                "val_accuracy": total.accuracy,
                "val_ned": total.ned,
                "val_samples": total.samples,
                **extra,
                "val": {r.name: {"accuracy": r.accuracy, "ned": r.ned, "samples": r.samples} for r in results},
            }
        )
        self.callbacks.on_validation(self.step, results, total, is_best)
        self.model.eval()
        with torch.no_grad():
            self.callbacks.inspect_model(self.step, self.model)

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Take the run folder (made if needed; one holding other things is refused), lock it, and train.

        A second process on the same folder is refused while this one holds the lock. A fresh run that
        fails before its first save removes the files it wrote, and the folder if it made it.
        """
        if not self.world.is_main:  # rank 0 alone takes the folder and writes in it
            with tensor_core_matmuls(self.device):
                return self._train()
        created = make_output_folder(self.output)
        try:
            self._check_folder()
            with RunLock(self.output):
                before = set(os.listdir(self.output))
                try:
                    with tensor_core_matmuls(self.device):
                        return self._train()
                except BaseException:
                    if not (self.output / "resume.pt").exists():  # nothing to resume: leave nothing behind
                        for name in set(os.listdir(self.output)) - before - {RunLock.NAME}:
                            with contextlib.suppress(OSError):
                                (self.output / name).unlink()
                    raise
        finally:
            if created and not os.listdir(self.output):
                with contextlib.suppress(OSError):
                    self.output.rmdir()

    def _check_folder(self) -> None:
        names = [n for n in os.listdir(self.output) if n != RunLock.NAME and not (n.startswith(".") and n.endswith(".tmp"))]
        if names and not set(names) & set(RUN_FILES):
            shown = ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise OutputError(
                f"{self.output}: the folder holds files that are not a textrec run ({shown}); "
                "give a new or empty --output"
            )

    def _train(self) -> TrainResult:
        config = self.config
        if self.world.is_main:
            remove_temp_files(self.output)  # half-written files of a run killed while saving
        resumed = self.try_resume()
        self.schedule.start()  # the time budget counts from here: loading the data is part of a lease's time
        # Rank 0 alone reads --init-from: DDP gives its weights to the other ranks.
        initialised = self.init_from(config.init_from) if resumed is None and config.init_from and self.world.is_main else None
        if self.world.is_main:
            atomic_write(self.output / "config.json", lambda h: h.write(json.dumps(config.to_dict(), indent=2).encode()))
        if self.world.distributed:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        graphs = self._recurrence_graphs()

        sources, shares = open_sources(
            config.train_data,
            self.charset,
            self.frames,
            config.seed,
            {"max_frames": self.frames, "fonts": list(config.synth_fonts) or None},
        )
        counts = split_batch(config.batch_size, shares)
        self.callbacks.on_start(
            TrainStart(
                sources=[_source_info(s, share, n) for s, share, n in zip(sources, shares, counts)],
                val_sets=[(name, len(d)) for name, d in self.val_sets],
                parameters=sum(p.numel() for p in self.model.parameters()),
                device=str(self.device),
                frames=self.frames,
                resumed_from=resumed,
                max_steps=config.max_steps,
                processes=self.world.size,
                time_budget=config.time_budget,
                precision=precision_name(self.amp_dtype),
            )
        )
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_bfloat16():
            self.callbacks.on_event("bfloat16 on a CPU without AMX or AVX512-BF16 is emulated: expect it slower than float32 (--no-amp)")
        if initialised:
            self.callbacks.on_event(initialised)
        if config.width_buckets and not config.width_buckets_from and resumed is None and not config.init_from:
            self.callbacks.on_event(
                "--width-buckets from scratch kept models on the CTC blank plateau far longer (docs/model.md, "
                "\"Input geometry\"): give --width-buckets-from a step after words are read (or continue a trained model, "
                "--init-from)"
            )
        if self.accepted:
            self.callbacks.on_event(self.accepted)
        end = config.max_steps
        if resumed is not None and resumed >= config.max_steps:
            self.callbacks.on_event(f"the run is already at step {resumed} (--max-steps {config.max_steps}): nothing to train")
        elif resumed is not None and self.schedule.spent():
            self.callbacks.on_event(f"the run has used its --time-budget of {config.time_budget:g} s: nothing to train")
            end = resumed
        finished, buckets = self._batches(sources, counts, end)
        interrupted = False
        bad_in_a_row = 0
        started, images_seen, waited = time.perf_counter(), 0, 0.0
        self.model.train()
        waits = _Waits(buckets or finished)
        if graphs is not None:  # the thread that finishes batches ahead waits while the graphs are captured
            graphs.quiet = finished.paused
        try:
            for batch, images in waits:
                for error in batch.errors:
                    self.callbacks.on_event(f"skipped sample: {error}")
                with _interrupts_held():  # Ctrl-C never splits a weight update from its step count
                    outcome = self._loss(batch, images)
                    self.skipped_samples += outcome.errors
                    if outcome.loss is not None:
                        bad_in_a_row = 0
                        self.step += 1
                if outcome.unreadable:
                    bad_in_a_row += 1
                    if bad_in_a_row >= config.max_bad_steps:
                        last = batch.errors[-1] if batch.errors else "in another process"
                        raise TrainingError(f"{bad_in_a_row} batches in a row had no readable sample (last error: {last})")
                    self.step += 1
                    continue
                loss = outcome.loss
                if loss is None:
                    self.nonfinite_steps += 1
                    bad_in_a_row += 1
                    self.callbacks.on_event(f"step {self.step}: non-finite loss or gradient, step skipped")
                    if bad_in_a_row >= config.max_bad_steps:
                        self.save_resume()
                        raise TrainingError(
                            f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (last at step "
                            f"{self.step}); stopped. Lower --lr; the last good state is in {self.output}"
                        )
                    self.step += 1
                    continue
                images_seen += outcome.images
                last = self.step >= end or self.schedule.spent()
                if last and self.step < end:
                    self.callbacks.on_event(f"--time-budget of {config.time_budget:g} s used at step {self.step}: stopping")
                if self.step % config.log_interval == 0 or last:
                    elapsed = time.perf_counter() - started
                    speed = images_seen / elapsed if elapsed > 0 else 0.0
                    lr = self.optimizer.param_groups[0]["lr"]
                    # the share of the interval spent waiting for batches: near 0, the steps set the pace; near 1, the data
                    data_wait = (waits.seconds - waited) / elapsed if elapsed > 0 else 0.0
                    record = {"step": self.step, "loss": loss, "lr": lr, "images_per_second": speed, "data_wait": round(data_wait, 4)}
                    if buckets and buckets.full_pixels:  # the share of full-width work the buckets' batches did, so far
                        record["width_share"] = round(buckets.pixels / buckets.full_pixels, 4)
                    self.log(record)
                    self.callbacks.on_step(self.step, loss, lr, speed)
                    started, images_seen, waited = time.perf_counter(), 0, waits.seconds
                if self.step % config.val_interval == 0 or last:
                    self.validate()
                    self.model.train()
                if self.step % config.save_interval == 0 or last:
                    self.save_resume()
                if last:
                    break
        except KeyboardInterrupt:
            interrupted = True
            self.save_resume()
            if self.world.is_main:
                remove_temp_files(self.output)  # the temporary file of a save the interrupt cut short (the lock is ours)
            self.callbacks.on_event(f"interrupted: state saved at step {self.step}; run the same command to resume")
        finally:
            finished.close()
            if graphs is not None:
                graphs.remove()
        if not (self.output / "last.safetensors").exists():
            self.save_resume()
        return TrainResult(
            steps=self.step,
            best_accuracy=self.best_accuracy,
            best_step=self.best_step,
            interrupted=interrupted,
            skipped_samples=self.skipped_samples,
            nonfinite_steps=self.nonfinite_steps,
            output=str(self.output),
        )

    def _batches(self, sources, counts: list[int], end: int) -> tuple[FinishAhead, WidthBuckets | None]:
        """The finished batches of steps `self.step` .. `end - 1`, and the width buckets that regroup them (None
        without --width-buckets): (batch, images) pairs, whichever of the two the loop iterates over."""
        config = self.config
        # The device stage finishes every batch: synthetic scenes and real-crop augmentation.
        scene_device = self.device if config.scene_device == "auto" else resolve_device(config.scene_device)
        self.finisher = Finisher(
            config.height, config.width, self.world.seed(config.seed), scene_device, self.preprocess.mean, self.preprocess.std,
            keep_ratio=config.keep_ratio, augment_real=config.augment,
        )
        # Width buckets regroup whole pools of steps: the data starts at the pool the run is in (before the first
        # bucketed step, at the run's step).
        pool = config.width_buckets
        start = bucket_start(config.width_buckets_from, pool) if pool else 0
        first = self.step - self.step % pool if pool and self.step >= start else self.step
        # Each rank reads its share of the global batch of the step (the same samples at any number of ranks).
        loader = step_loader(
            sources, counts, self.charset, self.finisher, config.keep_ratio, config.seed, first, end,
            config.workers, self.world.rank, self.world.size,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            # Its own generator: the loader must not draw from the global RNG, or a resumed run's
            # random stream (dropout) would be shifted by one draw against the uninterrupted run.
            generator=torch.Generator().manual_seed(config.seed),
            worker_init_fn=_leave_termination_to_main_process,
        )
        if config.workers > 0:
            close_all()  # the workers open their own LMDB environments
        # Batch k is finished with the random parameters of step first + k, here or ahead in a thread; buckets take a
        # whole pool at a time, so a thread finishing ahead holds the next pool while the current one trains.
        finish = self.finisher.model_input_and_widths if pool else self.finisher.model_input
        ahead = config.finish_ahead + pool if config.finish_ahead else 0
        finished = FinishAhead(loader, finish, first, self.finisher.device, ahead)
        if not pool:
            return finished, None
        seed = self.world.seed(config.seed)
        return finished, WidthBuckets(finished, pool, first, self.model.output_length, seed, skip=self.step - first, start=start)

    def _recurrence_graphs(self) -> GraphedTraining | None:
        """CUDA graphs for textrec's own recurrent kernel (refined gates, MGU) when training on one GPU:
        its per-step launches replayed as one (textrec/nn/graphs.py). TEXTREC_CUDA_GRAPHS=0 turns them off."""
        if self.world.distributed:
            return None
        # Width buckets give one input length per cut width: each gets its graphs.
        shapes = 1 + self.config.width // DEFAULT_MULTIPLE if self.config.width_buckets else 1
        return for_training(getattr(self.model, "sequence", None), self.device, self.callbacks.on_event, shapes)

    def _loss(self, batch, images: torch.Tensor | None) -> "_Outcome":
        """One optimisation step on the batch, finished as `images` (None: nothing readable), on every rank's
        share of it, which all ranks agree on."""
        loss = None
        if images is not None:
            images = images.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.network(images)
            log_probs = logits.float().log_softmax(2)
            frames, size = log_probs.shape[:2]
            input_lengths = torch.full((size,), frames, dtype=torch.long)
            loss = self.ctc(log_probs, batch.targets, input_lengths, batch.target_lengths)
        value = float(loss.detach()) if loss is not None else 0.0
        finite = loss is not None and math.isfinite(value)
        # Summed over the ranks, so that all take the same decision (a rank left out of the backward
        # pass would stall the others' gradient exchange): any rank's failure skips the step for all.
        unreadable, bad, total, errors, images = self.world.total(
            [loss is None, loss is not None and not finite, value if finite else 0.0, len(batch.errors), len(batch.labels)],
            self.device,
        )
        outcome = _Outcome(None, bool(unreadable), int(errors), int(images))
        self.optimizer.zero_grad(set_to_none=True)
        if unreadable or bad:
            return outcome
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if not torch.isfinite(grad_norm):  # the same on every rank: DDP averaged the gradients
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # let the scaler back off; its own skip would hide the count
            return outcome
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        outcome.loss = total / self.world.size
        return outcome


class _Waits:
    """Iterates over `batches`, adding up in `seconds` the time spent waiting for each (issue 10: whether the data
    or the training step sets the pace)."""

    def __init__(self, batches: Iterable):
        self.batches = batches
        self.seconds = 0.0

    def __iter__(self) -> Iterator:
        batches = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                item = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield item


@dataclass
class _Outcome:
    """A step's result over all ranks: the mean loss (None: no update), and what the ranks read."""

    loss: float | None
    unreadable: bool  # some rank had no readable sample
    errors: int  # samples that could not be read
    images: int  # samples trained on


@contextlib.contextmanager
def _interrupts_held():
    """Hold SIGINT (Ctrl-C) and SIGTERM until the block ends, then hand them to the Python handlers that were there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: handler for s, handler in previous.items() if callable(handler)}
    held = []
    for number in previous:
        signal.signal(number, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for signum, frame in held:
        previous[signum](signum, frame)


def _leave_termination_to_main_process(worker_id: int) -> None:
    """Workers ignore SIGTERM: a scheduler signals the whole process group, and the main process
    must be the one to stop, save its state and end the workers (torch's workers already leave
    SIGINT to it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _as_tuple(value):
    """random.setstate needs tuples; a weights_only load may return lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _source_info(source, share: float, per_batch: int) -> SourceInfo:
    screening = getattr(source, "screening", None)
    dropped, examples = {}, []
    if screening is not None:
        dropped = {
            k: getattr(screening, k) for k in ("empty", "unknown_chars", "too_long", "unreadable") if getattr(screening, k)
        }
        examples = list(screening.examples)
    fonts = getattr(source, "font_count", None)
    rejected = list(getattr(source, "rejected_fonts", []))
    return SourceInfo(source.name, source.size, share, per_batch, dropped, examples, fonts, rejected)


def check_processes(batch_size: int, time_budget: float | None, processes: int) -> None:
    """ConfigError unless the run can be split among `processes`: `batch_size` is the global batch, so each must
    take an equal share of it, and a time budget needs one process (the ranks' clocks would differ)."""
    if batch_size % processes:
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch and must divide by the number of processes "
            f"({processes}): each takes an equal share"
        )
    if time_budget is not None and processes > 1:
        raise ConfigError("--time-budget trains in one process: the ranks' clocks would stop them at different steps")


def train(config: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train (or resume, when `config.output` holds a run) and return a summary.

    Under torchrun (WORLD_SIZE > 1) each process trains on its share of every batch: `batch_size` is the
    global batch and must divide by the number of processes; only rank 0 writes files and calls `callbacks`.
    """
    check_config(config)
    world = World.from_environment()
    check_processes(config.batch_size, config.time_budget, world.size)
    with world.process_group(world.device(resolve_device(config.device))):
        return _Run(config, callbacks or TrainCallbacks(), world).run()
