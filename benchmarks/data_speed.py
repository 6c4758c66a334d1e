"""Training throughput, split into its parts: the data pipeline alone, and training steps alone.

    python benchmarks/data_speed.py                                  # CPU, the shipped architecture
    python benchmarks/data_speed.py --device cuda --workers 15 --batch-sizes 256 1024

1. data: images/s that the training loader's CPU workers deliver (rasterised texts and decoded real
   crops, as `--train-data` specs), for `--seconds` after a warm-up; then images/s of the device
   stage alone (`textrec.synth`: geometry, backgrounds, camera) on those batches.
2. steps: images/s of forward + CTC + backward + AdamW on random images of the model's input size
   (no data loading), per batch size, for the shipped architecture with its recurrent layer
   (vanilla gates: torch's fused kernel on a GPU, ours on a CPU), with refined `add` on i,o, tanh-bounded
   (always ours), and with torch.nn.LSTM (cuDNN on a GPU) in its place.
   On CUDA with float16 autocast, TF32 products and CUDA graphs of our recurrent kernel, as training runs;
   `--amp-dtype` as `textrec train` takes it (e.g. bfloat16 on a CPU with AMX or AVX512-BF16).
Training runs no faster than the slowest of the three. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

from textrec.charset import Charset
from textrec.checkpoint import load_checkpoint
from textrec.data.lmdb_store import close_all
from textrec.data.training import open_sources, split_batch, step_loader
from textrec.model import CRNN
from textrec.nn import for_training, tensor_core_matmuls
from textrec.predict import resolve_device
from textrec.synth.pipeline import Finisher
from textrec.train import AMP_DTYPES, adamw, mixed_precision, precision_name

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "default.safetensors")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_rates(args, charset: Charset, preprocess, frames: int, device: torch.device) -> tuple[float, float]:
    """Images/s of the loader (CPU workers) and of the device stage on the loader's batches."""
    finisher = Finisher(preprocess.height, preprocess.width, 0, device)
    sources, shares = open_sources(args.train_data, charset, frames, 0, {"max_frames": frames, "fonts": args.fonts or None})
    counts = split_batch(args.data_batch, shares)
    loader = step_loader(
        sources, counts, charset, finisher, preprocess.keep_ratio, 0, 0, 10**9, args.workers,
        prefetch_factor=4 if args.workers else None, pin_memory=device.type == "cuda",
    )
    if args.workers:
        close_all()
    batches = iter(loader)
    start = time.perf_counter()
    while time.perf_counter() - start < args.warmup:
        next(batches)
    kept = []
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        batch = next(batches)
        images += len(batch.labels)
        if len(kept) < 8:
            kept.append(batch.raw)
    loader_rate = images / (time.perf_counter() - start)
    finisher.model_input(kept[0], 0)  # warm-up
    sync(device)
    start, images, step = time.perf_counter(), 0, 0
    while time.perf_counter() - start < args.seconds:
        raw = kept[step % len(kept)]
        finisher.model_input(raw, step)
        images += raw.pixels.shape[0]
        step += 1
    sync(device)
    return loader_rate, images / (time.perf_counter() - start)


class TorchLSTM(nn.Module):
    """torch.nn.LSTM in GatedRNN's place (cuDNN on a GPU), for the comparison."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, bidirectional=True)

    def forward(self, x):
        return self.lstm(x)


def step_rate(model: nn.Module, batch: int, height: int, width: int, classes: int, device, seconds: float,
              amp_dtype: torch.dtype | None) -> float:
    for_training(model.sequence, device)  # CUDA graphs of our recurrent kernel, as `textrec train` installs them
    optimizer = adamw(model.parameters(), 1e-4, device)  # as `textrec train` builds it
    ctc = nn.CTCLoss(zero_infinity=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    images = torch.randn(batch, 1, height, width, device=device)
    lengths = torch.full((batch,), 8, dtype=torch.long)
    targets = torch.randint(1, classes, (batch * 8,), dtype=torch.long)

    def one_step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        log_probs = logits.float().log_softmax(2)
        loss = ctc(log_probs, targets, torch.full((batch,), log_probs.shape[0], dtype=torch.long), lengths)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    with tensor_core_matmuls(device):  # as `textrec train` runs its steps
        for _ in range(3):
            one_step()
        sync(device)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            one_step()
            steps += 1
        sync(device)
        return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=SHIPPED, help="architecture, charset and input size to measure")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-data", nargs="+", default=["synth"], help="--train-data specs for the data part")
    parser.add_argument("--fonts", nargs="*", default=[], help="font folders for synth")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-batch", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--skip-data", action="store_true")
    parser.add_argument("--amp-dtype", choices=[*AMP_DTYPES, "none"], default="auto", help="as textrec train's (none: --no-amp)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp_dtype = mixed_precision(None if args.amp_dtype == "none" else args.amp_dtype, device)
    checkpoint = load_checkpoint(args.checkpoint)
    config, preprocess, charset = checkpoint.model_config, checkpoint.preprocess, checkpoint.charset
    frames = CRNN(config).output_length(preprocess.width)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "cpus": os.cpu_count(), "workers": args.workers, "width": preprocess.width,
                    "precision": precision_name(amp_dtype)}
    if not args.skip_data:
        loader, scene = data_rates(args, charset, preprocess, frames, device)
        result["data_images_per_second"] = round(loader, 1)
        result["device_stage_images_per_second"] = round(scene, 1)
        print(f"data: {loader:.0f} images/s ({args.workers} workers, {' '.join(args.train_data)})", flush=True)
        print(f"device stage: {scene:.0f} images/s (batch {args.data_batch}, {device})", flush=True)
    variants = {
        "ours_vanilla": dict(refine="none", refine_gates=None, refine_init="default", refine_bound="none", refine_rank=0),
        # the shipped refined layer (issue 12; docs/model.md): add on i, o, tanh-bounded, started as vanilla, at the
        # checkpoint's own rank (16 for the shipped one)
        "ours_refined_add_io": dict(refine="add", refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh"),
        "torch_lstm": None,
    }
    for name, change in variants.items():
        for batch in args.batch_sizes:
            if change is None:
                model = CRNN(config)
                model.sequence = TorchLSTM(model.backbone.out_channels, config.hidden_size, config.num_layers)
            else:
                model = CRNN(type(config).from_dict({**config.to_dict(), **change}))
            model = model.to(device).train()
            rate = step_rate(model, batch, preprocess.height, preprocess.width, config.num_classes, device, args.seconds, amp_dtype)
            result[f"steps_{name}_b{batch}_images_per_second"] = round(rate, 1)
            print(f"steps: {name}, batch {batch}: {rate:.0f} images/s", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
